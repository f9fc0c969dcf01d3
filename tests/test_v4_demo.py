"""Demo v4 files (``gsv-triton demo-voice --sovits-version v4``) are in upstream's formats and run;
and a LoRA file built from known deltas with the same writer merges to base + B @ A."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export import demo_v4
from export.checkpoints import load_pickle_zip, read_sovits_v4, read_vocoder_v4
from export.v4_model import build_v4
from export.v4_pipeline import synthesize
from export.v4_vocoder import HOP, build_vocoder
from ops.cli import main as cli_main
from python_backend.spectrogram import reference_spectrogram
from tests.conftest import kit_files


def _shapes(state) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_full_layout_is_upstreams():
    layouts = kit_files("v4/layout_s2_v4.json")
    if not layouts:
        pytest.skip("no v4/layout_s2_v4.json in the kit")
    ref = json.loads(layouts[0].read_text())
    full = demo_v4.s2_v4_layout(demo_v4.s2_v4_config("full")["model"], "full")
    assert full == {k: tuple(v) for k, v in ref["keys"].items()}
    assert demo_v4.vocoder_layout("full") == {k: tuple(v) for k, v in ref["vocoder_keys"].items()}


def test_tiny_layout_is_the_kits():
    files = kit_files("v4/s2_v4_tiny.pth")
    if not files:
        pytest.skip("no v4/s2_v4_tiny.pth in the kit")
    kit = load_pickle_zip(files[0], files[0].read_bytes())
    assert demo_v4.s2_v4_layout(demo_v4.s2_v4_config("tiny")["model"], "tiny") == _shapes(kit["weight"])
    assert demo_v4.s2_v4_config("tiny")["model"] == kit["config"]["model"]
    voc = kit_files("v4/vocoder_v4_tiny.pth")
    if voc:
        assert demo_v4.vocoder_layout("tiny") == _shapes(read_vocoder_v4(voc[0]).state_dict)


def test_lora_from_known_deltas_merges_to_base_plus_BA(tmp_path):
    base_path = demo_v4.write_base(tmp_path / "s2Gv4.pth", "tiny", 3)
    loaded = load_pickle_zip(base_path, base_path.read_bytes())
    base = loaded["weight"]
    rank, gen = 4, torch.Generator().manual_seed(7)
    target = "cfm.estimator.transformer_blocks.1.attn.to_out.0.weight"
    out, inp = base[target].shape
    known = {target: (torch.randn(rank, inp, generator=gen), torch.randn(out, rank, generator=gen))}
    used = demo_v4.write_lora(tmp_path / "lora.pth", base, loaded["config"], rank, 5, known)
    assert (tmp_path / "lora.pth").read_bytes()[:2] == b"04"
    merged = read_sovits_v4(base_path, tmp_path / "lora.pth")
    assert merged.lora.rank == rank and merged.lora.merged_targets == len(used) == 4 * 2
    for key, (a, b) in used.items():
        expect = base[key].double() + b.double() @ a.double()
        np.testing.assert_allclose(merged.state_dict[key].double().numpy(), expect.numpy(), atol=1e-5, rtol=0)
    a, b = known[target]
    np.testing.assert_allclose(  # the known delta, as stored in fp16, is what was merged
        (merged.state_dict[target].double() - base[target].double()).numpy(),
        (b.half().double() @ a.half().double()).numpy(), atol=1e-5, rtol=0)
    lora_file = load_pickle_zip(tmp_path / "lora.pth", b"PK" + (tmp_path / "lora.pth").read_bytes()[2:])
    assert lora_file["lora_rank"] == rank and lora_file["config"]["train"]["lora_rank"] == str(rank)
    assert torch.equal(merged.state_dict["bridge.0.weight"], lora_file["weight"]["bridge.0.weight"])
    assert not torch.equal(merged.state_dict["bridge.0.weight"], base["bridge.0.weight"])
    assert torch.equal(merged.state_dict["enc_p.proj.weight"], base["enc_p.proj.weight"])  # frozen: the base's


def test_demo_voice_cli_writes_v4_files_that_run(tmp_path, capsys):
    assert cli_main(["demo-voice", str(tmp_path), "--size", "tiny", "--sovits-version", "v4"]) == 0
    assert "--sovits-base" in capsys.readouterr().out
    base, lora, voc = tmp_path / "s2Gv4.pth", tmp_path / "sovits.pth", tmp_path / "vocoder.pth"
    assert base.read_bytes()[:2] == b"PK" and lora.read_bytes()[:2] == b"04"
    ckpt = read_sovits_v4(base, lora)
    model, vocoder = build_v4(ckpt), build_vocoder(read_vocoder_v4(voc, ckpt))
    import soundfile as sf

    ref, rate = sf.read(str(tmp_path / "ref.wav"), dtype="float32")
    assert rate == 32000
    ref = torch.from_numpy(ref[: 32000 * 2].copy())[None]
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1024, (1, 1, 30), generator=g)
    prompt_codes = torch.randint(0, 1024, (1, 1, 50), generator=g)
    phones, prompt_phones = torch.randint(0, 732, (1, 12), generator=g), torch.randint(0, 732, (1, 9), generator=g)
    spec = torch.from_numpy(reference_spectrogram(ref.numpy()))[None]
    tr = synthesize(model, vocoder, codes, phones, prompt_codes, prompt_phones, spec, ref, 2,
                    lambda k, n: torch.randn(1, 100, n, generator=g))
    assert tr.mel_norm.shape == (1, 100, 4 * 30)
    assert tr.wav.shape == (4 * 30 * HOP,)
    assert torch.isfinite(tr.wav).all() and tr.wav.abs().max() <= 1.0 and tr.wav.abs().max() > 0
