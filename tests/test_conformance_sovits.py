"""SoVITS (s2) conformance: torch modules and exported stage graphs against the kit's goldens.

Runs for every ``golden_s2_*.npz`` in the kit (tiny and, where present, full-size kits):
numpy reference spectrogram, speaker conditioning ``ge``, decoded waveform (noise 0, speed
1), prompt codes; then the same through onnxruntime on the exported ``speaker``,
``sovits`` -> ``vocoder`` and ``prompt_codes`` graphs. Batching tests check that padded
rows do not leak into other rows.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from export.errors import CheckpointError
from export.onnx_io import export_graph
from export.sovits_model import build_sovits, interpolate_rows, load_sovits
from export.sovits_stages import STAGES, sovits_graph_specs, vocoder_tail_samples
from python_backend.spectrogram import reference_spectrogram
from tests.conftest import kit_files

ATOL = 1e-3
GOLDENS = kit_files("golden_s2_*.npz")


def _params():
    return [pytest.param(p, id=p.stem[len("golden_"):]) for p in GOLDENS] or [pytest.param(None, id="no-s2-goldens")]


@pytest.fixture(scope="module", params=_params())
def case(request, kit):
    golden = request.param
    if golden is None:
        pytest.skip(f"no golden_s2_*.npz in {kit}")
    pth = golden.parent / (golden.stem[len("golden_"):] + ".pth")
    if not pth.is_file():
        pytest.skip(f"{golden.name} has no checkpoint {pth.name}")
    ckpt, model = load_sovits(pth)
    data = dict(np.load(golden))
    return {"name": golden.stem, "ckpt": ckpt, "model": model, "g": data}


@pytest.fixture(scope="module")
def graphs(case, tmp_path_factory):
    out = tmp_path_factory.mktemp(case["name"])
    sessions = {}
    for spec in sovits_graph_specs(case["model"]):
        report = export_graph(spec, out, optimize=True)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions[spec.name] = ort.InferenceSession(str(out / report.file), opts, providers=["CPUExecutionProvider"])
    return sessions


def _sv(case):
    g = case["g"]
    return torch.from_numpy(g["sv_emb"]) if case["model"].cfg.is_pro else None


def _max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# ----------------------------------------------------------------------------- torch


def test_spectrogram_numpy(case):
    g = case["g"]
    spec = reference_spectrogram(g["ref_audio"])
    assert spec.shape == g["refer_spec"].shape[1:]
    assert spec.dtype == np.float32
    np.testing.assert_allclose(spec, g["refer_spec"][0], atol=ATOL, rtol=1e-5)


def test_torch_ge(case):
    g = case["g"]
    with torch.no_grad():
        ge = case["model"].get_ge(torch.from_numpy(g["refer_spec"]), _sv(case)).numpy()
    assert ge.shape == g["ge"].shape
    assert _max_err(ge, g["ge"]) < ATOL


def test_torch_decode_wav(case):
    g = case["g"]
    with torch.no_grad():
        wav = case["model"].decode(torch.from_numpy(g["codes"]), torch.from_numpy(g["phones"]),
                                   torch.from_numpy(g["refer_spec"]), _sv(case)).numpy()
    assert wav.shape == g["wav"].shape
    assert _max_err(wav, g["wav"]) < ATOL


def test_torch_prompt_codes(case):
    g = case["g"]
    with torch.no_grad():
        codes = case["model"].extract_codes(torch.from_numpy(g["ssl"])).numpy()
    np.testing.assert_array_equal(codes, g["prompt_codes"][:, 0])


def test_strict_key_accounting(case):
    ckpt = case["ckpt"]
    missing = copy.copy(ckpt)
    missing.state_dict = {k: v for k, v in ckpt.state_dict.items() if k != "enc_p.proj.bias"}
    with pytest.raises(CheckpointError, match="missing"):
        build_sovits(missing)
    extra = copy.copy(ckpt)
    extra.state_dict = {**ckpt.state_dict, "dec.surprise.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected"):
        build_sovits(extra)


# ----------------------------------------------------------------------------- onnx


def _sovits_feeds(codes, phones, ge, noise=None, speed=1.0, code_lengths=None, phone_lengths=None):
    b = codes.shape[0]
    return {
        "codes": codes.astype(np.int64),
        "code_lengths": np.asarray(code_lengths if code_lengths is not None else [codes.shape[1]] * b, dtype=np.int64),
        "phones": phones.astype(np.int64),
        "phone_lengths": np.asarray(phone_lengths if phone_lengths is not None else [phones.shape[1]] * b, dtype=np.int64),
        "ge": ge.astype(np.float32),
        "noise": noise if noise is not None else np.zeros((b, 192, 2 * codes.shape[1]), np.float32),
        "speed": np.asarray([speed], dtype=np.float32),
    }


def test_onnx_metadata(case, graphs):
    cfg = case["model"].cfg
    assert set(graphs) == set(STAGES)
    for name, sess in graphs.items():
        meta = sess.get_modelmeta().custom_metadata_map
        assert meta["stage"] == name
        assert meta["model_type"] == "gpt-sovits-s2"
        assert meta["sovits_version"] == case["ckpt"].version
        assert meta["sample_rate"] == "32000" and meta["hop"] == "640"
        assert meta["gin_channels"] == str(cfg.gin_channels)
        assert json.loads(meta["inputs"]) == [i.name for i in sess.get_inputs()]


def test_onnx_speaker(case, graphs):
    g = case["g"]
    feeds = {"refer_spec": reference_spectrogram(g["ref_audio"])[None]}
    if case["model"].cfg.is_pro:
        feeds["sv_emb"] = g["sv_emb"]
    (ge,) = graphs["speaker"].run(["ge"], feeds)
    assert _max_err(ge, g["ge"]) < ATOL


def test_onnx_sovits_vocoder_wav(case, graphs):
    g = case["g"]
    codes = g["codes"][:, 0]
    latent, lengths = graphs["sovits"].run(None, _sovits_feeds(codes, g["phones"], g["ge"]))
    assert latent.shape == (1, 192, 2 * codes.shape[1])
    assert lengths.tolist() == [2 * codes.shape[1]]
    (wav,) = graphs["vocoder"].run(["wav"], {"latent": latent, "ge": g["ge"]})
    assert wav.shape == (1, g["wav"].shape[-1])
    assert _max_err(wav, g["wav"][:, 0]) < ATOL
    # noise given as one zero frame (missing frames count as 0) is the same as noise 0
    short = _sovits_feeds(codes, g["phones"], g["ge"], noise=np.zeros((1, 192, 1), np.float32))
    latent1, _ = graphs["sovits"].run(None, short)
    assert _max_err(latent1, latent) == 0.0


def test_onnx_noise_matches_torch(case, graphs):
    g = case["g"]
    codes = g["codes"][:, 0]
    noise = (np.random.default_rng(0).standard_normal((1, 192, 2 * codes.shape[1])) * 0.5).astype(np.float32)
    latent, _ = graphs["sovits"].run(None, _sovits_feeds(codes, g["phones"], g["ge"], noise=noise))
    with torch.no_grad():
        ref, _ = case["model"].latent(torch.from_numpy(codes), torch.tensor([codes.shape[1]]), torch.from_numpy(g["phones"]),
                                      torch.tensor([g["phones"].shape[1]]), torch.from_numpy(g["ge"]),
                                      torch.from_numpy(noise), torch.ones(1))
    assert _max_err(latent, ref.numpy()) < ATOL
    zero, _ = graphs["sovits"].run(None, _sovits_feeds(codes, g["phones"], g["ge"]))
    assert _max_err(latent, zero) > 1e-3  # the noise input is used


def test_onnx_prompt_codes(case, graphs):
    g = case["g"]
    (codes,) = graphs["prompt_codes"].run(["codes"], {"ssl": g["ssl"]})
    np.testing.assert_array_equal(codes, g["prompt_codes"][:, 0])


# ----------------------------------------------------------------------------- batching


def _two_requests(g):
    codes, phones, ge = g["codes"][:, 0], g["phones"], g["ge"]
    t, p = codes.shape[1], phones.shape[1]
    tb, pb = max(2, t - 11), max(1, p - 6)
    a = (codes, phones, ge)
    b = (np.ascontiguousarray(codes[:, 3:3 + tb]), np.ascontiguousarray(phones[:, :pb]), (ge * 0.9 + 0.01).astype(np.float32))
    return a, b


def _pad(x, n, value=0):
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])], constant_values=value)


def _batch(a, b):
    t = max(a[0].shape[1], b[0].shape[1])
    p = max(a[1].shape[1], b[1].shape[1])
    return _sovits_feeds(
        np.concatenate([_pad(a[0], t), _pad(b[0], t)]), np.concatenate([_pad(a[1], p), _pad(b[1], p)]),
        np.concatenate([a[2], b[2]]), code_lengths=[a[0].shape[1], b[0].shape[1]],
        phone_lengths=[a[1].shape[1], b[1].shape[1]],
    )


def test_onnx_batch_matches_single(case, graphs, record_property):
    """Every row of a padded batch equals its solo run, tail included (the vocoder masks each
    row past its length at every upsampling stage)."""
    a, b = _two_requests(case["g"])
    feeds = _batch(a, b)
    latent, lengths = graphs["sovits"].run(None, feeds)
    assert lengths.tolist() == [2 * a[0].shape[1], 2 * b[0].shape[1]]
    assert lengths[0] != lengths[1], "the test needs rows of different lengths"
    wav_batch = graphs["vocoder"].run(["wav"], {"latent": latent, "ge": feeds["ge"]})[0]
    errors = []
    for row, req in enumerate((a, b)):
        alone, alone_len = graphs["sovits"].run(None, _sovits_feeds(*req))
        n = int(alone_len[0])
        assert lengths[row] == n
        assert _max_err(latent[row, :, :n], alone[0]) < 1e-4
        assert not latent[row, :, n:].any(), "latent beyond a row's length must be zero"
        wav_alone = graphs["vocoder"].run(["wav"], {"latent": alone, "ge": req[2]})[0][0]
        got = wav_batch[row, : n * 640]
        assert got.shape == wav_alone.shape
        err = _max_err(got, wav_alone)
        errors.append(err)
        assert err <= 1e-4, f"row {row}: batched wav differs from solo by {err:.2e} (tail included)"
        tail = wav_alone[-vocoder_tail_samples(case["model"].cfg):]
        assert np.abs(tail).max() > 1e-3, "the tail must carry signal for the comparison to mean anything"
    record_property("vocoder_batch_max_err", errors)


def test_torch_generator_mask_full_lengths_is_identity(case):
    """Passing full lengths (or None) changes nothing: the golden path stays as it was."""
    g = case["g"]
    torch.manual_seed(0)
    z = torch.randn(2, 192, 30) * 0.3
    ge = torch.from_numpy(np.concatenate([g["ge"], g["ge"] * 0.9]))
    with torch.no_grad():
        plain = case["model"].vocode(z, ge)
        full = case["model"].vocode(z, ge, torch.tensor([30, 30]))
    assert torch.equal(plain, full)


def test_vocoder_graph_lengths_from_zeros(case, graphs):
    """The graph reads each row's length from its latent's zero tail, like the torch mask."""
    g = case["g"]
    torch.manual_seed(1)
    z = torch.randn(2, 192, 24) * 0.3
    z[1, :, 17:] = 0
    ge = torch.from_numpy(np.concatenate([g["ge"], g["ge"]]))
    with torch.no_grad():
        ref = case["model"].vocode(z, ge, torch.tensor([24, 17])).squeeze(1).numpy()
    (wav,) = graphs["vocoder"].run(["wav"], {"latent": z.numpy(), "ge": ge.numpy()})
    assert _max_err(wav[0], ref[0]) < 1e-4
    assert _max_err(wav[1, : 17 * 640], ref[1, : 17 * 640]) < 1e-4
    assert not wav[1, 17 * 640:].any()


def test_interpolate_rows_matches_upstream():
    torch.manual_seed(0)
    y = torch.randn(3, 5, 41)
    lengths = torch.tensor([41, 30, 7])
    for speed in (0.6, 0.8, 1.0, 1.25, 1.7):
        out, new_len = interpolate_rows(y, lengths, torch.tensor([speed]))
        for r in range(3):
            n = int(lengths[r])
            ref = y[r:r + 1, :, :n]
            if speed != 1.0:
                ref = F.interpolate(ref, size=int(n / speed) + 1, mode="linear")
            assert int(new_len[r]) == ref.shape[-1]
            assert torch.allclose(out[r, :, : ref.shape[-1]], ref[0], atol=1e-5)
            assert not out[r, :, ref.shape[-1]:].any()


def test_onnx_batch_speed(case, graphs):
    a, b = _two_requests(case["g"])
    feeds = _batch(a, b)
    for speed in (0.8, 1.25):
        feeds["speed"] = np.asarray([speed], np.float32)
        latent, lengths = graphs["sovits"].run(None, feeds)
        for row, req in enumerate((a, b)):
            alone, alone_len = graphs["sovits"].run(None, _sovits_feeds(*req, speed=speed))
            n = int(alone_len[0])
            assert n == int(2 * req[0].shape[1] / speed) + 1
            assert lengths[row] == n
            assert _max_err(latent[row, :, :n], alone[0]) < 1e-4
            with torch.no_grad():
                ref, _ = case["model"].latent(torch.from_numpy(req[0]), torch.tensor([req[0].shape[1]]),
                                              torch.from_numpy(req[1]), torch.tensor([req[1].shape[1]]),
                                              torch.from_numpy(req[2]), None, torch.tensor([speed]))
            assert _max_err(alone, ref.numpy()) < ATOL
