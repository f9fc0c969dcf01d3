"""The golden validation sample of a voice version: fixed inputs, torch outputs, and the check.

Export runs the torch modules on fixed inputs and stores inputs and outputs in
``golden.npz``; at load the server runs the same inputs through the loaded graphs and
refuses the version when they disagree beyond the tolerance of its precision. The same
check runs at export right after the graphs are written, so a broken export never lands.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from python_backend import sampling
from python_backend.gpt_runner import GPTRunner
from python_backend.onnx_stage import OnnxStage

GOLDEN_FILE = "golden.npz"
GREEDY_STEPS = 16

# Per precision: max abs difference of logits and wav, and minimum agreements / SNR.
TOLERANCES = {
    "fp32": {"logits_atol": 5e-3, "wav_atol": 5e-3, "top1_min": 0.99, "wav_snr_min_db": 40.0},
    "fp16": {"logits_atol": float("inf"), "wav_atol": float("inf"), "top1_min": 0.85, "wav_snr_min_db": 15.0},
}
INT8_DECODE = {"top1_min": 0.75}


@dataclass
class GoldenSample:
    phones: np.ndarray  # [1, P] reference + target phones
    bert: np.ndarray  # [1, 1024, P]
    prompts: np.ndarray  # [1, T]
    forced: np.ndarray  # [1, F] tokens fed one at a time after the prompt
    codes: np.ndarray  # [1, C] tokens for the SoVITS check
    target_phones: np.ndarray  # [1, Pt]
    ge: np.ndarray  # [1, gin, 1]
    prefill_logits: np.ndarray  # [1, V]
    step_logits: np.ndarray  # [1, F, V]
    greedy: np.ndarray  # [G] torch greedy tokens (top_k 1, no penalty, EOS masked early)
    wav: np.ndarray  # [S]
    #: v4: the CFM steps and noise seed the torch wav was made with (python_backend.v4_synthesis)
    cfm_steps: np.ndarray | None = None
    cfm_seed: np.ndarray | None = None

    def save(self, folder: Path) -> Path:
        path = Path(folder) / GOLDEN_FILE
        np.savez(path, **{k: v for k, v in self.__dict__.items() if v is not None})
        return path

    @classmethod
    def load(cls, folder: Path) -> "GoldenSample":
        optional = ("cfm_steps", "cfm_seed")
        with np.load(Path(folder) / GOLDEN_FILE) as data:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k not in optional or k in data.files})


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    n = min(reference.size, test.size)
    ref, err = reference.ravel()[:n].astype(np.float64), (test.ravel()[:n] - reference.ravel()[:n]).astype(np.float64)
    noise = float(np.sum(err * err))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(float(np.sum(ref * ref)), 1e-20) / noise)


def forced_step_logits(runner: GPTRunner, sample: GoldenSample) -> tuple[np.ndarray, np.ndarray]:
    logits, k, v = runner.prefill(sample.phones, sample.bert, sample.prompts)
    cache = runner.start_cache(k, v)
    steps = []
    pos = sample.prompts.shape[1]
    for i, token in enumerate(sample.forced[0]):
        steps.append(runner.step(np.array([[token]]), np.array([pos + i]), cache))
    return logits, np.stack(steps, axis=1)


def synthesize(sovits: OnnxStage, vocoder: OnnxStage, codes: np.ndarray, phones: np.ndarray, ge: np.ndarray) -> np.ndarray:
    latent = sovits.run(
        codes=codes.astype(np.int64), code_lengths=np.array([codes.shape[1]], np.int64),
        phones=phones.astype(np.int64), phone_lengths=np.array([phones.shape[1]], np.int64),
        ge=ge.astype(np.float32), noise=np.zeros((1, int(sovits.metadata.get("latent_channels", 192)), 1), np.float32),
        speed=np.ones(1, np.float32),
    )
    hop = int(sovits.metadata.get("hop", 640))
    wav = vocoder.run(latent=latent["latent"], ge=ge.astype(np.float32))["wav"]
    return wav[0, : int(latent["latent_lengths"][0]) * hop]


def measure(runner: GPTRunner, sovits: OnnxStage, vocoder: OnnxStage, sample: GoldenSample) -> dict[str, float]:
    """Agreement of the graphs with the stored torch outputs."""
    wav = synthesize(sovits, vocoder, sample.codes, sample.target_phones, sample.ge)
    return {**measure_gpt(runner, sample), **measure_wav(wav, sample)}


def measure_gpt(runner: GPTRunner, sample: GoldenSample) -> dict[str, float]:
    """The GPT graphs against the stored torch logits and greedy tokens."""
    prefill, steps = forced_step_logits(runner, sample)
    ref_steps = sample.step_logits[0]
    top1 = np.mean(np.argmax(steps[0], -1) == np.argmax(ref_steps, -1))
    greedy = runner.generate(sample.phones, sample.bert, sample.prompts, top_k=1, repetition_penalty=1.0,
                             max_new_tokens=sample.greedy.size, seed=0)
    n = min(greedy.size, sample.greedy.size)
    return {
        "prefill_logits_max_abs": float(np.max(np.abs(prefill - sample.prefill_logits))),
        "step_logits_max_abs": float(np.max(np.abs(steps - sample.step_logits))),
        "step_top1_agreement": float(top1),
        "greedy_match": float(np.mean(greedy[:n] == sample.greedy[:n])) if n else 1.0,
    }


def measure_wav(wav: np.ndarray, sample: GoldenSample) -> dict[str, float]:
    """A waveform the graphs made from the golden inputs against the stored torch one."""
    return {
        "wav_max_abs": float(np.max(np.abs(wav[: sample.wav.size] - sample.wav[: wav.size]))) if wav.size else float("inf"),
        "wav_snr_db": snr_db(sample.wav, wav),
        "wav_length_match": float(wav.size == sample.wav.size),
    }


def synthesize_v4(stages, prompt, codes: np.ndarray, phones: np.ndarray, ge: np.ndarray, steps: int,
                  seed: int) -> np.ndarray:
    """v4: the golden codes through encoder -> CFM -> vocoder (``python_backend.v4_synthesis``)."""
    return stages.synthesize(codes.reshape(-1), phones.reshape(-1), ge, prompt, int(steps), int(seed))[1]


def failures(metrics: dict[str, float], tolerances: dict[str, float]) -> list[str]:
    """Reasons the metrics fail the tolerances (empty when the version is good)."""
    out = []
    if not metrics["wav_length_match"]:
        out.append("wav length differs from the golden sample")
    for key, limit_key in (("prefill_logits_max_abs", "logits_atol"), ("step_logits_max_abs", "logits_atol"),
                           ("wav_max_abs", "wav_atol")):
        value = metrics[key]
        if not np.isfinite(value) and np.isfinite(tolerances.get(limit_key, np.inf)) or value > tolerances.get(limit_key, np.inf):
            out.append(f"{key} {value:.3g} > {tolerances[limit_key]:.3g}")
        if np.isnan(value):
            out.append(f"{key} is NaN")
    if metrics["step_top1_agreement"] < tolerances.get("top1_min", 0.0):
        out.append(f"step top-1 agreement {metrics['step_top1_agreement']:.3f} < {tolerances['top1_min']}")
    if not metrics["wav_snr_db"] >= tolerances.get("wav_snr_min_db", -np.inf):
        out.append(f"wav SNR {metrics['wav_snr_db']:.1f} dB < {tolerances['wav_snr_min_db']} dB")
    return out


def greedy_reference(step_fn, prefill_fn, sample_inputs, eos: int, steps: int = GREEDY_STEPS) -> np.ndarray:
    """Greedy decode (top_k 1, no penalty, EOS masked for the first steps) over any prefill/step pair."""
    phones, bert, prompts = sample_inputs
    logits, k, v = prefill_fn(phones, bert, prompts)
    out = []
    for i in range(steps):
        masked = sampling.mask_eos(logits, i, eos)
        token = int(np.argmax(masked[0]))
        out.append(token)
        if token == eos:
            break
        logits, k, v = step_fn(np.array([[token]]), np.array([prompts.shape[1] + i]), k, v)
    return np.array([t for t in out if t != eos], dtype=np.int64)
