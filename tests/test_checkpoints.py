"""Checkpoint reading: formats, version detection, and refusal of unsafe or broken files."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch

from export.checkpoints import read_gpt, read_sovits
from export.errors import CheckpointError, UnsafeCheckpointError


class _Evil:
    """Pickles as a call to os.system: the classic checkpoint attack."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _save(obj, path: Path, header: bytes = b"PK") -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    path.write_bytes(header + data[2:])
    return path


def test_kit_gpt_reads_as_v2(kit):
    ckpt = read_gpt(kit / "s1_tiny.ckpt")
    assert ckpt.version == "v2"
    assert "ar_predict_layer.weight" in ckpt.state_dict
    assert not any(k.startswith("model.") for k in ckpt.state_dict)
    assert ckpt.config["model"]["EOS"] == 1024


@pytest.mark.parametrize("stem,version", [("s2_v2_tiny", "v2"), ("s2_v2ProPlus_tiny", "v2ProPlus")])
def test_kit_sovits_versions(kit, stem, version):
    ckpt = read_sovits(kit / f"{stem}.pth")
    assert ckpt.version == version
    assert isinstance(ckpt.config, dict) and isinstance(ckpt.config["model"], dict)
    assert not any(k.startswith("enc_q.") for k in ckpt.state_dict)


def test_hparams_as_plain_dict_is_accepted(kit, tmp_path):
    src = read_sovits(kit / "s2_v2_tiny.pth")
    path = _save({"weight": src.state_dict, "config": src.config, "info": "dict config"}, tmp_path / "dict.pth")
    assert read_sovits(path).version == "v2"


def test_v2pro_header_detected(kit, tmp_path):
    src = read_sovits(kit / "s2_v2ProPlus_tiny.pth")
    path = _save({"weight": src.state_dict, "config": src.config, "info": ""}, tmp_path / "pro.pth", header=b"05")
    assert read_sovits(path).version == "v2Pro"


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _save({"weight": {}, "config": _Evil(marker), "info": ""}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        read_gpt(path)
    with pytest.raises(UnsafeCheckpointError):
        read_sovits(path)
    assert not marker.exists()


@pytest.mark.parametrize("header,needle", [(b"03", "v3 LoRA"), (b"04", "v4 LoRA")])
def test_lora_headers_refused(tmp_path, header, needle):
    path = _save({"weight": {}, "config": {}}, tmp_path / "lora.pth", header=header)
    with pytest.raises(CheckpointError, match=f"{needle}.*not supported yet"):
        read_sovits(path)


def test_truncated_zip(kit, tmp_path):
    data = (kit / "s2_v2_tiny.pth").read_bytes()
    path = tmp_path / "trunc.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|damaged|bad"):
        read_sovits(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a SoVITS checkpoint"):
        read_sovits(path)
    with pytest.raises(CheckpointError, match="not a GPT checkpoint"):
        read_gpt(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        read_gpt(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_sovits(tmp_path)


def test_swapped_roles(kit):
    with pytest.raises(CheckpointError, match="SoVITS"):
        read_gpt(kit / "s2_v2_tiny.pth")
    with pytest.raises(CheckpointError, match="GPT"):
        read_sovits(kit / "s1_tiny.ckpt")


def test_v1_refused(kit, tmp_path):
    src = read_sovits(kit / "s2_v2_tiny.pth")
    weights = dict(src.state_dict)
    weights["enc_p.text_embedding.weight"] = torch.zeros(322, 192, dtype=torch.float16)
    path = _save({"weight": weights, "config": src.config}, tmp_path / "v1.pth")
    with pytest.raises(CheckpointError, match="v1"):
        read_sovits(path)


def test_zip_without_pickle(tmp_path):
    path = tmp_path / "empty.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/version", "3")
    with pytest.raises(CheckpointError, match="no data.pkl"):
        read_gpt(path)
