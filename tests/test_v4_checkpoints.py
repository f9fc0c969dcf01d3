"""Reading v4 files: base detection, LoRA merge (upstream's merge_and_unload), vocoder checks, and a
one-line CheckpointError for each refusal (LoRA without base, base of another version, mismatched
rank or targets, v3, a vocoder of the wrong shape)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from export import demo
from export.checkpoints import load_pickle_zip, read_sovits_v4, read_vocoder_v4
from export.errors import CheckpointError
from tests.conftest import kit_files

BASES = [p for p in kit_files("v4/s2_v4_*.pth") if not p.name.startswith("s2_v4_lora_")]


def _base():
    if not BASES:
        pytest.skip("no v4/s2_v4_*.pth in the conformance kit")
    return BASES[0]


def _lora_for(base):
    lora = base.parent / base.name.replace("s2_v4_", "s2_v4_lora_")
    if not lora.is_file():
        pytest.skip(f"no LoRA fixture {lora.name}")
    return lora


def _load(path):
    data = path.read_bytes()
    return load_pickle_zip(path, b"PK" + data[2:])


def _write(path, obj, header=b"PK"):
    demo._save_s2(obj, path, header)
    return path


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_base_reads_as_v4():
    ckpt = read_sovits_v4(_base())
    assert ckpt.version == "v4" and ckpt.lora is None
    assert any(k.startswith("cfm.estimator.") for k in ckpt.state_dict)
    assert not any(k.startswith("enc_q.") for k in ckpt.state_dict)


def test_lora_merge_matches_upstream_sample():
    base = _base()
    lora = _lora_for(base)
    merged = read_sovits_v4(base, lora)
    plain = read_sovits_v4(base)
    assert merged.lora is not None and merged.lora.rank == _load(lora)["lora_rank"]
    assert set(merged.state_dict) == set(plain.state_dict)
    sample = base.parent / "lora_merged_cfm_weights_sample.npz"
    if not sample.is_file():
        pytest.skip("no lora_merged_cfm_weights_sample.npz")
    s = np.load(sample)
    keys = [k[len("merged/"):] for k in s.files if k.startswith("merged/")]
    assert keys
    for key in keys:
        got = merged.state_dict[key].numpy()
        np.testing.assert_allclose(got, s[f"merged/{key}"], atol=1e-6, rtol=0)
        assert np.abs(got - plain.state_dict[key].float().numpy()).max() > 0  # the LoRA changed it


def test_non_cfm_tensors_come_from_the_lora_file():
    base = _base()
    lora = _lora_for(base)
    lw = _load(lora)["weight"]
    merged = read_sovits_v4(base, lora)
    key = next(k for k in lw if k.startswith("bridge."))
    assert torch.equal(merged.state_dict[key], lw[key])


def test_lora_without_base_is_refused():
    lora = _lora_for(_base())
    with pytest.raises(CheckpointError, match="LoRA.*not a base model.*base") as exc:
        read_sovits_v4(lora)
    _one_line(exc)


def test_lora_on_a_v2_base_is_refused():
    v2 = kit_files("s2_v2_tiny.pth")
    if not v2:
        pytest.skip("no v2 base in the kit")
    with pytest.raises(CheckpointError, match="v2-family.*not a v4 base") as exc:
        read_sovits_v4(v2[0], _lora_for(_base()))
    _one_line(exc)


def test_v3_files_are_refused(tmp_path):
    base = _base()
    obj = _load(base)
    obj["config"]["model"]["version"] = "v3"
    with pytest.raises(CheckpointError, match="v3 SoVITS files are not supported"):
        read_sovits_v4(_write(tmp_path / "v3.pth", obj))
    obj["config"]["model"]["version"] = None
    obj["config"].pop("version", None)
    with pytest.raises(CheckpointError, match="cannot be told apart"):
        read_sovits_v4(_write(tmp_path / "unknown.pth", obj))
    assert read_sovits_v4(tmp_path / "unknown.pth", version_hint="v4").version == "v4"
    lora = _load(_lora_for(base))
    with pytest.raises(CheckpointError, match="v3 LoRA files are not supported"):
        read_sovits_v4(base, _write(tmp_path / "v3lora.pth", lora, b"03"))


def test_mismatched_rank_is_refused(tmp_path):
    base = _base()
    obj = _load(_lora_for(base))
    obj["lora_rank"] = obj["lora_rank"] // 2
    obj["config"]["train"]["lora_rank"] = str(obj["lora_rank"])
    with pytest.raises(CheckpointError, match="mismatched rank") as exc:
        read_sovits_v4(base, _write(tmp_path / "rank.pth", obj, b"04"))
    _one_line(exc)
    obj = _load(_lora_for(base))
    obj["config"]["train"]["lora_rank"] = "3"
    with pytest.raises(CheckpointError, match="disagrees with config.train.lora_rank"):
        read_sovits_v4(base, _write(tmp_path / "rank2.pth", obj, b"04"))


def test_mismatched_targets_are_refused(tmp_path):
    base = _base()
    src = _load(_lora_for(base))
    cases = {}
    dropped = copy.deepcopy(src)
    key = next(k for k in dropped["weight"] if ".to_v.lora_A." in k)
    dropped["weight"] = {k: v for k, v in dropped["weight"].items() if ".to_v.lora_" not in k or ".0.attn" not in k}
    cases["no A/B pair"] = dropped
    foreign = copy.deepcopy(src)
    foreign["weight"][key.replace("transformer_blocks.0.", "transformer_blocks.99.")] = foreign["weight"][key]
    cases["does not have"] = foreign
    other = copy.deepcopy(src)
    other["weight"][key.replace("to_v", "ff.ff.2").replace(".attn.", ".")] = other["weight"][key]
    cases["targets another module"] = other
    narrow = copy.deepcopy(src)
    narrow["weight"][key] = narrow["weight"][key][:, :-1].clone()
    cases["does not fit the base weight"] = narrow
    for needle, obj in cases.items():
        with pytest.raises(CheckpointError, match=needle) as exc:
            read_sovits_v4(base, _write(tmp_path / "bad.pth", obj, b"04"))
        _one_line(exc)


def test_plain_file_as_lora_is_refused():
    base = _base()
    with pytest.raises(CheckpointError, match="not a v4 LoRA file"):
        read_sovits_v4(base, base)


def _vocoder(base):
    voc = base.parent / base.name.replace("s2_v4_", "vocoder_v4_")
    if not voc.is_file():
        pytest.skip(f"no vocoder {voc.name}")
    return voc


def test_vocoder_reads_and_wrong_shapes_are_refused(tmp_path):
    base = _base()
    sovits = read_sovits_v4(base)
    voc = read_vocoder_v4(_vocoder(base), sovits)
    assert "conv_pre.weight" in voc.state_dict
    bad = dict(voc.state_dict)
    bad["conv_pre.weight"] = bad["conv_pre.weight"][:, :80].clone()
    torch.save(bad, tmp_path / "voc80.pth")
    with pytest.raises(CheckpointError, match="takes 80 mel bins but the SoVITS model makes") as exc:
        read_vocoder_v4(tmp_path / "voc80.pth", sovits)
    _one_line(exc)
    torch.save({"conv_post.weight": bad["conv_post.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not a v4 vocoder state dict"):
        read_vocoder_v4(tmp_path / "partial.pth", sovits)


def test_vocoder_that_does_not_fit_the_generator_is_refused():
    from export.checkpoints import V4Vocoder
    from export.v4_vocoder import build_vocoder

    voc = read_vocoder_v4(_vocoder(_base()))
    wrong = dict(voc.state_dict)
    w = wrong["resblocks.0.convs2.0.weight"]
    wrong["resblocks.0.convs2.0.weight"] = torch.zeros(w.shape[0], w.shape[1], w.shape[2] + 2)
    with pytest.raises(CheckpointError, match="vocoder shape mismatch") as exc:
        build_vocoder(V4Vocoder(voc.path, wrong, voc.sha256))
    _one_line(exc)
    missing = {k: v for k, v in voc.state_dict.items() if k != "conv_post.bias"}
    with pytest.raises(CheckpointError, match=r"missing \['conv_post.bias'\]"):
        build_vocoder(V4Vocoder(voc.path, missing, voc.sha256))
    strides = {k: v for k, v in voc.state_dict.items() if not k.startswith("ups.4.")}
    with pytest.raises(CheckpointError, match="do not fit upstream v4 strides"):
        build_vocoder(V4Vocoder(voc.path, strides, voc.sha256))


def test_v3_full_model_header_is_refused(tmp_path):
    path = _write(tmp_path / "v3full.pth", _load(_base()), b"02")  # upstream's header of a v3 full model
    with pytest.raises(CheckpointError, match="v3 SoVITS files are not supported"):
        read_sovits_v4(path)


def test_official_base_is_known_by_its_hash(tmp_path, monkeypatch):
    """Upstream knows the official s2Gv4.pth by the md5 of its first 8 KiB, not by its config."""
    import hashlib

    from export import checkpoints

    obj = _load(_base())
    obj["config"]["model"]["version"] = None
    obj["config"].pop("version", None)
    path = _write(tmp_path / "s2Gv4.pth", obj)
    with pytest.raises(CheckpointError, match="cannot be told apart"):
        read_sovits_v4(path)
    md5 = hashlib.md5(path.read_bytes()[:8192]).hexdigest()
    monkeypatch.setitem(checkpoints._OFFICIAL_MD5_8K, md5, "v4")
    assert read_sovits_v4(path).version == "v4"
    monkeypatch.setitem(checkpoints._OFFICIAL_MD5_8K, md5, "v3")
    with pytest.raises(CheckpointError, match="v3 SoVITS files are not supported"):
        read_sovits_v4(path)
