"""Reference clip loading and resampling (numpy/scipy; used at export and for zero-shot requests)."""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

MIN_SECONDS = 1.0
MAX_SECONDS = 30.0
# Upstream appends 0.3 * 32000 zero samples to the 16 kHz clip before SSL (0.6 s of silence).
PROMPT_SILENCE_SAMPLES = 9600


class AudioError(ValueError):
    """The reference clip is missing, unreadable, empty or silent."""


@dataclass
class ReferenceClip:
    wav32k: np.ndarray  # float32 [N], peak-limited like upstream
    wav16k: np.ndarray  # float32 [M]
    seconds: float


def resample(wav: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return wav.astype(np.float32)
    g = gcd(src, dst)
    return resample_poly(wav.astype(np.float64), dst // g, src // g).astype(np.float32)


def _peak_limit(wav: np.ndarray) -> np.ndarray:
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    return wav / min(2.0, peak) if peak > 1.0 else wav


def load_reference(path: str | Path) -> ReferenceClip:
    path = Path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(f"{path}: reference clip not found") from None
    except (RuntimeError, sf.LibsndfileError, OSError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    mono = data.mean(axis=1)
    seconds = mono.size / float(rate) if rate else 0.0
    if mono.size == 0:
        raise AudioError(f"{path}: reference clip is empty")
    if not np.all(np.isfinite(mono)) or float(np.abs(mono).max()) < 1e-4:
        raise AudioError(f"{path}: reference clip is silent or invalid; use 3-10 s of clean speech")
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise AudioError(f"{path}: reference clip is {seconds:.2f} s; use {MIN_SECONDS:g}-{MAX_SECONDS:g} s (3-10 s is best)")
    wav32k = _peak_limit(resample(mono, rate, 32000))
    wav16k = _peak_limit(resample(mono, rate, 16000))
    return ReferenceClip(wav32k=wav32k, wav16k=wav16k, seconds=seconds)


def prompt_input(wav16k: np.ndarray) -> np.ndarray:
    """The SSL input upstream builds for prompt extraction: the clip plus trailing silence."""
    return np.concatenate([wav16k, np.zeros(PROMPT_SILENCE_SAMPLES, dtype=np.float32)])[None, :]
