"""v4 (CFM + 48 kHz vocoder) conformance: torch modules, then the exported graphs through
onnxruntime, against every ``v4/golden_s2_v4_*.npz`` in the kit.

Pairing (kit README): ``golden_s2_v4_<size>.npz`` <-> ``s2_v4_<size>.pth`` + ``vocoder_v4_<size>.pth``;
``golden_s2_v4_lora_<size>.npz`` <-> base ``s2_v4_<size>.pth`` + LoRA ``s2_v4_lora_<size>.pth`` (merged)
+ the same vocoder. Checked: reference mel (numpy and torch), ge, fea_ref/fea_todo, each recorded
DiT step, each CFM chunk from its recorded noise, the vocoder, and the whole chained synthesis,
with the kit's tolerances. Batching: padded rows (padding filled with noise, not zeros) give
their solo results in the encoder, cfm_step and vocoder graphs.
"""
from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.checkpoints import read_sovits_v4, read_vocoder_v4
from export.errors import CheckpointError
from export.onnx_io import export_graph
from export.v4_model import build_v4, reference_mel
from export.v4_pipeline import T_CHUNK, prompt_window, synthesize
from export.v4_stages import STAGES, v4_graph_specs
from export.v4_vocoder import build_vocoder
from python_backend import mel_v4
from python_backend.spectrogram import reference_spectrogram
from tests.conftest import kit_files

ATOL_STAGE = 1e-4  # ge, fea, mel (kit: stage fed golden inputs)
ATOL_CFM, RTOL_CFM = 1e-3, 1e-3  # cfm{k}_out, cfm0_step_v
ATOL_WAV = 1e-3  # wav from cfm_mel
ATOL_E2E = 2e-3  # chained: cfm_mel_norm, wav_final
GOLDENS = kit_files("v4/golden_s2_v4_*.npz")


def _files(golden):
    stem = golden.stem[len("golden_"):]  # s2_v4_<size> or s2_v4_lora_<size>
    folder = golden.parent
    if stem.startswith("s2_v4_lora_"):
        size = stem[len("s2_v4_lora_"):]
        return folder / f"s2_v4_{size}.pth", folder / f"{stem}.pth", folder / f"vocoder_v4_{size}.pth"
    size = stem[len("s2_v4_"):]
    return folder / f"{stem}.pth", None, folder / f"vocoder_v4_{size}.pth"


def _params():
    return [pytest.param(p, id=p.stem[len("golden_"):]) for p in GOLDENS] or [pytest.param(None, id="no-v4-goldens")]


@pytest.fixture(scope="module", params=_params())
def case(request, kit):
    golden = request.param
    if golden is None:
        pytest.skip(f"no v4/golden_s2_v4_*.npz in {kit}")
    base, lora, voc = _files(golden)
    for f in (base, lora, voc):
        if f is not None and not f.is_file():
            pytest.skip(f"{golden.name} has no {f.name}")
    ckpt = read_sovits_v4(base, lora)
    vckpt = read_vocoder_v4(voc, ckpt)
    return {"name": golden.stem, "ckpt": ckpt, "model": build_v4(ckpt), "vocoder": build_vocoder(vckpt),
            "g": dict(np.load(golden))}


@pytest.fixture(scope="module")
def graphs(case, tmp_path_factory):
    out = tmp_path_factory.mktemp(case["name"])
    sessions = {}
    for spec in v4_graph_specs(case["model"], case["vocoder"]):
        report = export_graph(spec, out, optimize=True)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions[spec.name] = ort.InferenceSession(str(out / report.file), opts, providers=["CPUExecutionProvider"])
    return sessions


def T(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def _err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _steps(g) -> int:
    return int(g["sample_steps"])


def _chunks(g) -> list[int]:
    return sorted(int(k[3:-6]) for k in g if k.startswith("cfm") and k.endswith("_noise"))


# ----------------------------------------------------------------------------- torch


def test_reference_mel_numpy_and_torch(case):
    g = case["g"]
    np.testing.assert_allclose(mel_v4.log_mel(g["ref_audio_32k"]), g["ref_mel"][0], atol=ATOL_STAGE, rtol=0)
    np.testing.assert_allclose(mel_v4.reference_mel(g["ref_audio_32k"]), g["ref_mel_norm"][0], atol=ATOL_STAGE, rtol=0)
    np.testing.assert_allclose(reference_mel(T(g["ref_audio_32k"])).numpy(), g["ref_mel_norm"], atol=ATOL_STAGE, rtol=0)
    np.testing.assert_allclose(reference_spectrogram(g["ref_audio_32k"]), g["refer_spec"][0], atol=ATOL_CFM, rtol=1e-5)


def test_torch_ge_and_fea(case):
    g, m = case["g"], case["model"]
    with torch.no_grad():
        fea_ref, ge = m.decode_encp(T(g["prompt_codes"]), T(g["prompt_phones"]), T(g["refer_spec"]))
        fea_todo, _ = m.decode_encp(T(g["codes"]), T(g["phones"]), T(g["refer_spec"]), ge)
    mel2 = T(g["ref_mel_norm"])
    fea_ref, _, t_min = prompt_window(fea_ref, mel2)
    assert t_min == int(g["T_min"])
    assert _err(ge, g["ge"]) < ATOL_STAGE
    assert fea_ref.shape == g["fea_ref"].shape and _err(fea_ref, g["fea_ref"]) < ATOL_STAGE
    assert fea_todo.shape == g["fea_todo"].shape and _err(fea_todo, g["fea_todo"]) < ATOL_STAGE


def _prompt_x(g, k):
    mu = g[f"cfm{k}_mu"]
    prompt = g[f"cfm{k}_prompt"]
    px = np.zeros((1, prompt.shape[1], mu.shape[1]), np.float32)
    px[:, :, :prompt.shape[2]] = prompt
    return px


def test_torch_each_dit_step(case):
    g, m = case["g"], case["model"]
    px, mu = T(_prompt_x(g, 0)), T(g["cfm0_mu"])
    lengths = T(g["cfm0_x_lens"]).long()
    for j in range(g["cfm0_step_x"].shape[0]):
        with torch.no_grad():
            v = m.cfm.estimator(T(g["cfm0_step_x"][j]), px, mu, lengths, T(g["cfm0_step_t"][j]), T(g["cfm0_step_d"][j]))
        np.testing.assert_allclose(v.numpy(), g["cfm0_step_v"][j], atol=ATOL_CFM, rtol=RTOL_CFM)


def test_torch_chained_synthesis(case):
    g = case["g"]
    tr = synthesize(case["model"], case["vocoder"], T(g["codes"]), T(g["phones"]), T(g["prompt_codes"]),
                    T(g["prompt_phones"]), T(g["refer_spec"]), T(g["ref_audio_32k"]), _steps(g),
                    lambda k, n: T(g[f"cfm{k}_noise"]))
    assert len(tr.chunks) == int(g["n_chunks"]) and T_CHUNK - tr.t_min == int(g["chunk_len"])
    for k, chunk in enumerate(tr.chunks):  # each chunk fed its recorded noise
        assert chunk["mu"].shape == g[f"cfm{k}_mu"].shape and _err(chunk["mu"], g[f"cfm{k}_mu"]) < ATOL_STAGE
        assert _err(chunk["prompt"], g[f"cfm{k}_prompt"]) < ATOL_CFM
        np.testing.assert_allclose(chunk["out"].numpy(), g[f"cfm{k}_out"], atol=ATOL_CFM, rtol=RTOL_CFM)
    assert tr.mel_norm.shape == g["cfm_mel_norm"].shape and _err(tr.mel_norm, g["cfm_mel_norm"]) < ATOL_E2E
    assert tr.wav.shape == g["wav_final"].shape and _err(tr.wav, g["wav_final"]) < ATOL_E2E


def test_every_key_accounted_for(case):
    ckpt = case["ckpt"]
    missing = copy.copy(ckpt)
    missing.state_dict = {k: v for k, v in ckpt.state_dict.items() if k != "cfm.estimator.proj_out.bias"}
    with pytest.raises(CheckpointError, match="missing"):
        build_v4(missing)
    extra = copy.copy(ckpt)
    extra.state_dict = {**ckpt.state_dict, "cfm.estimator.surprise.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected"):
        build_v4(extra)


# ----------------------------------------------------------------------------- onnx


def _encode(graphs, codes, phones, ge, speed=1.0):
    codes = np.asarray(codes).reshape(codes.shape[0], -1)
    fea, lengths = graphs["encoder"].run(None, {
        "codes": codes, "code_lengths": np.full(codes.shape[0], codes.shape[1], np.int64), "phones": phones,
        "phone_lengths": np.full(phones.shape[0], phones.shape[1], np.int64), "ge": ge,
        "speed": np.array([speed], np.float32)})
    return fea, lengths


def _step(graphs, x, px, lengths, plens, t, d, mu):
    return graphs["cfm_step"].run(None, {"x": x, "prompt_x": px, "lengths": np.asarray(lengths, np.int64),
                                         "prompt_lengths": np.asarray(plens, np.int64),
                                         "t": np.asarray(t, np.float32), "d": np.asarray(d, np.float32), "mu": mu})


def _run_cfm(graphs, mu, prompt, noise, steps):
    """The engine's loop for one chunk: Euler steps over the cfm_step graph."""
    n, p = mu.shape[1], prompt.shape[2]
    px = np.zeros_like(noise)
    px[:, :, :p] = prompt
    x = noise.copy()
    x[:, :, :p] = 0
    t, d = 0.0, 1 / steps
    for _ in range(steps):
        x, _v = _step(graphs, x, px, [n], [p], [t], [d], mu)
        t += d
    return x


def test_graph_metadata(graphs):
    meta = graphs["cfm_step"].get_modelmeta().custom_metadata_map
    assert meta["sample_rate"] == "48000" and meta["sovits_version"] == "v4"
    assert meta["t_ref"] == "500" and meta["t_chunk"] == "1000" and meta["hop"] == "480"
    assert set(graphs) == set(STAGES)
    for sess in graphs.values():
        assert sess.get_modelmeta().custom_metadata_map["sample_rate"] == "48000"


def test_onnx_ge_fea(case, graphs):
    g = case["g"]
    (ge,) = graphs["speaker"].run(None, {"refer_spec": g["refer_spec"]})
    assert _err(ge, g["ge"]) < ATOL_STAGE
    fea_ref, _ = _encode(graphs, g["prompt_codes"], g["prompt_phones"], g["ge"])
    fea_todo, lengths = _encode(graphs, g["codes"], g["phones"], g["ge"])
    t_min = g["fea_ref"].shape[2]
    assert _err(fea_ref[:, :, :t_min], g["fea_ref"]) < ATOL_STAGE
    assert fea_todo.shape == g["fea_todo"].shape and _err(fea_todo, g["fea_todo"]) < ATOL_STAGE
    assert lengths.tolist() == [g["fea_todo"].shape[2]]


def test_onnx_each_dit_step(case, graphs):
    g = case["g"]
    px, mu = _prompt_x(g, 0), g["cfm0_mu"]
    n, p = mu.shape[1], g["cfm0_prompt"].shape[2]
    for j in range(g["cfm0_step_x"].shape[0]):
        x = g["cfm0_step_x"][j]
        x_next, v = _step(graphs, x, px, [n], [p], g["cfm0_step_t"][j], g["cfm0_step_d"][j], mu)
        np.testing.assert_allclose(v, g["cfm0_step_v"][j], atol=ATOL_CFM, rtol=RTOL_CFM)
        if j + 1 < g["cfm0_step_x"].shape[0]:  # the step's x_next is the next recorded input
            np.testing.assert_allclose(x_next, g["cfm0_step_x"][j + 1], atol=ATOL_CFM, rtol=RTOL_CFM)


def test_onnx_each_chunk_and_vocoder(case, graphs):
    g = case["g"]
    for k in _chunks(g):
        out = _run_cfm(graphs, g[f"cfm{k}_mu"], g[f"cfm{k}_prompt"], g[f"cfm{k}_noise"], _steps(g))
        np.testing.assert_allclose(out, g[f"cfm{k}_out"], atol=ATOL_CFM, rtol=RTOL_CFM)
    mel = g["cfm_mel_norm"]
    (wav,) = graphs["vocoder"].run(None, {"mel_norm": mel, "mel_lengths": np.array([mel.shape[2]], np.int64)})
    assert wav.shape == (1, g["wav_final"].shape[0]) and _err(wav[0], g["wav_final"]) < ATOL_WAV


def test_onnx_chained_synthesis(case, graphs):
    """The whole request over the graphs, the way the engine runs it (numpy mel prompt)."""
    g = case["g"]
    (ge,) = graphs["speaker"].run(None, {"refer_spec": reference_spectrogram(g["ref_audio_32k"])[None]})
    fea_ref, _ = _encode(graphs, g["prompt_codes"], g["prompt_phones"], ge)
    fea_todo, _ = _encode(graphs, g["codes"], g["phones"], ge)
    mel2 = mel_v4.reference_mel(g["ref_audio_32k"])[None]
    t_min = min(mel2.shape[2], fea_ref.shape[2], 500)
    fea_ref, mel2 = fea_ref[:, :, :min(mel2.shape[2], fea_ref.shape[2])][:, :, -t_min:], \
        mel2[:, :, :min(mel2.shape[2], fea_ref.shape[2])][:, :, -t_min:]
    chunk_len, outs = T_CHUNK - t_min, []
    for k, start in enumerate(range(0, fea_todo.shape[2], chunk_len)):
        chunk = fea_todo[:, :, start:start + chunk_len]
        mu = np.concatenate([fea_ref, chunk], 2).transpose(0, 2, 1).copy()
        out = _run_cfm(graphs, mu, mel2, g[f"cfm{k}_noise"], _steps(g))[:, :, t_min:]
        mel2, fea_ref = out[:, :, -t_min:], chunk[:, :, -t_min:]
        outs.append(out)
    mel = np.concatenate(outs, 2)
    assert _err(mel, g["cfm_mel_norm"]) < ATOL_E2E
    (wav,) = graphs["vocoder"].run(None, {"mel_norm": mel, "mel_lengths": np.array([mel.shape[2]], np.int64)})
    assert _err(wav[0], g["wav_final"]) < ATOL_E2E


# ----------------------------------------------------------------------------- batching


def _pad(a, n, axis, rng):
    """Pad with noise (not zeros): padding must not matter at all."""
    shape = list(a.shape)
    shape[axis] = n - a.shape[axis]
    return np.concatenate([a, rng.standard_normal(shape).astype(a.dtype)], axis) if shape[axis] else a


def test_cfm_step_padded_rows_equal_solo(case, graphs):
    g = case["g"]
    rng = np.random.default_rng(0)
    rows = []
    for k, t, plen in ((1, 0.25, None), (0, 0.5, None), (1, 0.0, 200)):
        mu, px = g[f"cfm{k}_mu"], _prompt_x(g, k)
        plen = plen or g[f"cfm{k}_prompt"].shape[2]
        px[:, :, plen:] = 0
        x = g[f"cfm{k}_noise"].copy()
        x[:, :, :plen] = 0
        rows.append((x, px, mu.shape[1], plen, t, 1 / (k + 3), mu))
    solo = [_step(graphs, x, px, [n], [p], [t], [d], mu) for x, px, n, p, t, d, mu in rows]
    n_max = max(r[2] for r in rows)
    batch = [np.concatenate([_pad(r[i], n_max, 2 if i < 2 else 1, rng) for r in rows]) for i in (0, 1, 6)]
    x_next, v = _step(graphs, batch[0], batch[1], [r[2] for r in rows], [r[3] for r in rows],
                      [r[4] for r in rows], [r[5] for r in rows], batch[2])
    for b, (row, (sx, sv)) in enumerate(zip(rows, solo)):
        n = row[2]
        assert _err(x_next[b:b + 1, :, :n], sx) < 1e-4, f"row {b}"
        assert _err(v[b:b + 1, :n], sv) < 1e-4, f"row {b}"
        assert not x_next[b, :, n:].any() and not x_next[b, :, :row[3]].any()


def test_encoder_padded_rows_equal_solo(case, graphs):
    g = case["g"]
    ge = g["ge"]
    solo = [_encode(graphs, g[c], g[p], ge) for c, p in (("codes", "phones"), ("prompt_codes", "prompt_phones"))]
    codes = [g["codes"].reshape(1, -1), g["prompt_codes"].reshape(1, -1)]
    phones = [g["phones"], g["prompt_phones"]]
    tc, tp = max(c.shape[1] for c in codes), max(p.shape[1] for p in phones)
    fea, lengths = graphs["encoder"].run(None, {
        "codes": np.concatenate([np.pad(c, ((0, 0), (0, tc - c.shape[1])), constant_values=7) for c in codes]),
        "code_lengths": np.array([c.shape[1] for c in codes], np.int64),
        "phones": np.concatenate([np.pad(p, ((0, 0), (0, tp - p.shape[1])), constant_values=5) for p in phones]),
        "phone_lengths": np.array([p.shape[1] for p in phones], np.int64),
        "ge": np.concatenate([ge, ge]), "speed": np.ones(1, np.float32)})
    for b, (sf, sl) in enumerate(solo):
        assert lengths[b] == sl[0]
        assert _err(fea[b, :, :sl[0]], sf[0]) < 1e-4
        assert not fea[b, :, sl[0]:].any()


def test_vocoder_padded_rows_equal_solo(case, graphs):
    g = case["g"]
    rng = np.random.default_rng(1)
    mels = [g["cfm_mel_norm"][:, :, :150], g["cfm_mel_norm"][:, :, 200:297]]
    solo = [graphs["vocoder"].run(None, {"mel_norm": m, "mel_lengths": np.array([m.shape[2]], np.int64)})[0]
            for m in mels]
    (wav,) = graphs["vocoder"].run(None, {"mel_norm": np.concatenate([_pad(m, 150, 2, rng) for m in mels]),
                                          "mel_lengths": np.array([m.shape[2] for m in mels], np.int64)})
    for b, s in enumerate(solo):
        n = s.shape[1]
        assert _err(wav[b, :n], s[0]) < 1e-4
        assert not wav[b, n:].any()


def test_encoder_speed_frames_and_padded_rows(case):
    """speed != 1 (not in the goldens): upstream's frame count 2 * (int(2T / speed) + 1) per row,
    wns1 masked past int(4T / speed) + 1, and a padded row equal to its solo run."""
    g, m = case["g"], case["model"]
    speed = torch.tensor([1.25])
    codes = [T(g["codes"]).reshape(1, -1), T(g["prompt_codes"]).reshape(1, -1)]
    phones = [T(g["phones"]), T(g["prompt_phones"])]
    ge = T(g["ge"])
    solo = []
    with torch.no_grad():
        for c, p in zip(codes, phones):
            fea, n = m.encode(c, torch.tensor([c.shape[1]]), p, torch.tensor([p.shape[1]]), ge, speed)
            n_up = 2 * (int(2 * c.shape[1] / 1.25) + 1)
            assert fea.shape[2] == n_up and n.tolist() == [n_up]
            assert not fea[:, :, int(4 * c.shape[1] / 1.25) + 1:].any()
            solo.append(fea)
        tc, tp = codes[0].shape[1], max(p.shape[1] for p in phones)
        fea, n = m.encode(torch.cat([_pad_tokens(c, tc) for c in codes]), torch.tensor([c.shape[1] for c in codes]),
                          torch.cat([_pad_tokens(p, tp) for p in phones]), torch.tensor([p.shape[1] for p in phones]),
                          torch.cat([ge, ge]), speed)
    for b, s in enumerate(solo):
        assert n[b] == s.shape[2] and _err(fea[b, :, :s.shape[2]], s[0]) < 1e-4


def _pad_tokens(x: torch.Tensor, n: int) -> torch.Tensor:
    """Pad token ids [1, L] to [1, n] with a non-zero id (padding must not matter)."""
    return torch.nn.functional.pad(x, (0, n - x.shape[1]), value=3)
