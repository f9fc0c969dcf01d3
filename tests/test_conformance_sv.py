"""Speaker verification (v2Pro/v2ProPlus) conformance: numpy features, the torch ERes2NetV2 and the
exported ``sv`` graph against the kit's goldens.

Runs for every ``golden_sv_seed<S>.npz`` in the kit (both clips of each). The SV checkpoint is
``sv_seed<S>.ckpt`` lying beside the golden when there is one (an official-format file, e.g. the
real pretrained one with its own goldens), else the file the kit's rule gives for seed S, written
in the official format; either way it is read through the restricted reader. Tolerances as the
kit states them: audio16k and fbank within 1e-4, sv_emb within 1e-3 of its scale.
"""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch

from export.sv_model import expected_layout, load_sv
from python_backend import sv_features
from python_backend.speaker_verification import SVEmbedder
from tests.conftest import kit_files

FEATURE_ATOL = 1e-4
EMB_RTOL = 1e-3
CLIPS = ("", "_b")
GOLDENS = kit_files("golden_sv_seed*.npz")


def _seed(golden) -> int:
    match = re.fullmatch(r"golden_sv_seed(\d+)", golden.stem)
    assert match, f"{golden.name}: expected golden_sv_seed<S>.npz"
    return int(match.group(1))


def _params():
    return [pytest.param(p, id=p.stem[len("golden_sv_"):]) for p in GOLDENS] or [pytest.param(None, id="no-sv-goldens")]


@pytest.fixture(scope="module", params=_params())
def case(request, kit, sv_build):
    golden = request.param
    if golden is None:
        pytest.skip(f"no golden_sv_seed*.npz in {kit}")
    seed = _seed(golden)
    beside = golden.parent / f"sv_seed{seed}.ckpt"
    build = sv_build(seed, beside if beside.is_file() else None)
    model, _ = load_sv(build.ckpt)
    return {"g": dict(np.load(golden)), "model": model, "build": build}


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64).reshape(-1), np.asarray(want, np.float64).reshape(-1)
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_layout_is_the_official_architecture(kit):
    if not (kit / "layout_sv.json").is_file():
        pytest.skip(f"no layout_sv.json in {kit}")
    official = json.loads((kit / "layout_sv.json").read_text())
    mine = [[k, list(shape), str(dtype).removeprefix("torch.")] for k, (shape, dtype) in expected_layout().items()]
    assert mine == official


@pytest.mark.parametrize("clip", CLIPS)
def test_resample_to_16k(case, clip):
    g = case["g"]
    got = sv_features.to_16k(g["audio32k" + clip])
    assert got.shape == g["audio16k" + clip].shape and got.dtype == np.float32
    np.testing.assert_allclose(got, g["audio16k" + clip], atol=FEATURE_ATOL, rtol=0)


@pytest.mark.parametrize("clip", CLIPS)
def test_fbank(case, clip):
    g = case["g"]
    from_golden_16k = sv_features.fbank(g["audio16k" + clip])
    assert from_golden_16k.shape == g["fbank" + clip].shape and from_golden_16k.dtype == np.float32
    np.testing.assert_allclose(from_golden_16k, g["fbank" + clip], atol=FEATURE_ATOL, rtol=0)
    np.testing.assert_allclose(sv_features.features(g["audio32k" + clip])[0], g["fbank" + clip], atol=FEATURE_ATOL, rtol=0)


@pytest.mark.parametrize("clip", CLIPS)
def test_torch_embedding(case, clip):
    g = case["g"]
    with torch.no_grad():
        emb = case["model"](torch.from_numpy(g["fbank" + clip])[None]).numpy()
    assert emb.shape == (1, 20480)
    assert _rel(emb, g["sv_emb" + clip]) < EMB_RTOL


@pytest.mark.parametrize("clip", CLIPS)
def test_onnx_embedding_from_32k_audio(case, clip):
    """The whole serving path: 32 kHz clip -> numpy features -> sv.onnx."""
    g = case["g"]
    emb = SVEmbedder(case["build"].graph).embed(g["audio32k" + clip])
    assert emb.shape == (1, 20480) and emb.dtype == np.float32
    assert _rel(emb, g["sv_emb" + clip]) < EMB_RTOL


def test_onnx_graph_signature(case):
    model = onnx.load(str(case["build"].graph), load_external_data=False)

    def dims(t):
        return [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]

    assert {i.name: dims(i) for i in model.graph.input} == {"fbank": ["batch", "frames", 80]}
    assert {o.name: dims(o) for o in model.graph.output} == {"sv_emb": ["batch", 20480]}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["model_type"] == "gpt-sovits-sv" and meta["dim"] == "20480" and meta["num_mel_bins"] == "80"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
