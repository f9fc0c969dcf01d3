"""Speaker verification without the kit: reading SV checkpoints safely, refusing other architectures,
the numpy features' edges, request checks and the gsv_sv config. Fast: nothing full-size is built."""
from __future__ import annotations

import os
from math import ceil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from export.checkpoints import read_state_dict
from export.errors import CheckpointError, InputError, UnsafeCheckpointError
from export.sv_model import check_layout, expected_layout
from python_backend import layout, sv_features
from python_backend.errors import RequestError
from python_backend.model_config import sv_model_spec
from python_backend.onnx_stage import StageError
from python_backend.speaker_verification import SVEmbedder, check_wav32k


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- checkpoint reading

def test_module_state_dict_with_metadata_reads_as_plain_tensors(tmp_path):
    """torch.save(module.state_dict()) pickles an OrderedDict carrying ``_metadata``: accepted."""
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    torch.save(module.state_dict(), tmp_path / "sd.ckpt")
    state, digest = read_state_dict(tmp_path / "sd.ckpt", "--sv-model")
    assert list(state) == list(module.state_dict()) and len(digest) == 64
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())


def test_unsafe_sv_checkpoint_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Evil(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="refused to unpickle global"):
        read_state_dict(tmp_path / "evil.ckpt", "--sv-model")
    assert not marker.exists()


def test_legacy_and_non_state_dict_files_named(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="pre-1.6 torch format"):
        read_state_dict(tmp_path / "old.ckpt", "--sv-model")
    torch.save({"weight": {"a": torch.zeros(1)}, "config": {}}, tmp_path / "nested.ckpt")
    with pytest.raises(CheckpointError, match=r"not a bare state dict of tensors \(found keys \['config', 'weight'\]\)"):
        read_state_dict(tmp_path / "nested.ckpt", "--sv-model")


def _meta_state() -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in expected_layout().items()}


def test_layout_check_names_the_differences():
    state = _meta_state()
    check_layout(Path("sv.ckpt"), state)  # the official layout passes
    assert len(state) == 1001 and state["seg_1.weight"].shape == (192, 40960)
    del state["fuse34.local_att.0.bias"]
    state["layer4.2.conv3.weight"] = torch.empty(2048, 512, 1, 1, device="meta")
    state["pool.weight"] = torch.empty(1, device="meta")
    with pytest.raises(InputError) as info:
        check_layout(Path("sv.ckpt"), state)
    msg = str(info.value)
    assert "\n" not in msg
    assert "1 missing: fuse34.local_att.0.bias" in msg and "1 unexpected: pool.weight" in msg
    assert "layer4.2.conv3.weight [2048, 512, 1, 1] (expected [2048, 768, 1, 1])" in msg


# ---------------------------------------------------------------- numpy features

def test_fbank_frames_and_short_input():
    assert sv_features.frame_count(399) == 0 and sv_features.frame_count(400) == 1 and sv_features.frame_count(80000) == 498
    assert sv_features.fbank(np.zeros(400, np.float32)).shape == (1, 80)  # silence: the log floor, finite
    assert np.isfinite(sv_features.fbank(np.zeros(400, np.float32))).all()
    with pytest.raises(ValueError, match="shorter than one 400-sample fbank frame"):
        sv_features.fbank(np.zeros(399, np.float32))


@pytest.mark.parametrize("src,dst", [(32000, 16000), (48000, 16000), (16000, 32000), (44100, 32000)])
def test_resample_keeps_in_band_tones_and_torchaudio_length(src, dst):
    n = int(src * 0.5) + 7
    t = np.arange(n) / src
    out = sv_features.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), src, dst)
    assert out.shape == (ceil(n * dst / src),) and out.dtype == np.float32
    want = np.sin(2 * np.pi * 1000 * np.arange(out.size) / dst)
    middle = slice(out.size // 4, 3 * out.size // 4)  # away from the zero-padded edges
    assert np.abs(out[middle] - want[middle]).max() < 2e-3


def test_mel_banks_are_kaldi_triangles():
    banks = sv_features.mel_banks()
    assert banks.shape == (80, 257) and banks.dtype == np.float32
    assert (banks >= 0).all() and banks.max() <= 1.0 and not banks[:, -1].any()
    assert (banks.argmax(axis=1) == np.sort(banks.argmax(axis=1))).all()  # centres rise with the bin


# ---------------------------------------------------------------- serving checks

@pytest.mark.parametrize("wav,text", [
    (None, "WAV32K missing"),
    (np.zeros((2, 1600), np.float32), "shape [N] (mono), got [2, 1600]"),
    (np.zeros(799, np.float32), "799 samples; 800 to 960000 allowed"),
    (np.zeros(30 * 32000 + 1, np.float32), "960001 samples"),
    (np.array([0.0] * 900 + [np.inf], np.float32), "NaN or infinite"),
])
def test_bad_wav32k_is_a_request_error(wav, text):
    with pytest.raises(RequestError) as info:
        check_wav32k(wav)
    assert text in str(info.value)


def test_embedder_refuses_a_graph_of_another_kind(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["fbank"], ["sv_emb"])], "g",
                              [helper.make_tensor_value_info("fbank", TensorProto.FLOAT, [1, "t", 80])],
                              [helper.make_tensor_value_info("sv_emb", TensorProto.FLOAT, [1, "t", 80])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"model_type": "gpt-sovits-ssl"})
    onnx.save(model, str(tmp_path / "sv.onnx"))
    with pytest.raises(StageError, match="model_type 'gpt-sovits-ssl', expected 'gpt-sovits-sv'"):
        SVEmbedder(tmp_path / "sv.onnx")
    helper.set_model_props(model, {"model_type": "gpt-sovits-sv", "dim": "192", "num_mel_bins": "80", "sample_rate": "16000"})
    onnx.save(model, str(tmp_path / "sv.onnx"))
    with pytest.raises(StageError, match="metadata {'dim': '192'}"):
        SVEmbedder(tmp_path / "sv.onnx")


def test_sv_model_config_parses_and_name_is_reserved():
    config = text_format.Parse(sv_model_spec().render(), model_config_pb2.ModelConfig())
    assert config.name == layout.SV_MODEL == "gsv_sv" and config.backend == "python"
    assert [(i.name, list(i.dims)) for i in config.input] == [("WAV32K", [-1])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("SV_EMB", [1, 20480])]
    assert layout.SV_MODEL in layout.RESERVED
