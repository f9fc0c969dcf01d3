"""The v4 reference mel (upstream ``mel_fn_v4`` + ``norm_spec``) in numpy, for serving without torch.

v4's CFM is prompted with the reference audio's mel: 32 kHz audio, reflect-padded
(n_fft - hop) / 2 = 480 samples each side, STFT (n_fft = win = 1280, hop 320, periodic Hann,
center=False), magnitude sqrt(re^2 + im^2 + 1e-8), a 100-band Slaney mel filterbank (librosa's
default: fmin 0, fmax sr/2, slaney norm), log(clamp(x, 1e-5)), then scaled to [-1, 1] with
spec_min -12 and spec_max 2. One frame per 320 samples (100 frames/s), the CFM's frame rate.
The filterbank is computed here (librosa's formula) so serving needs numpy only.
"""
from __future__ import annotations

import numpy as np

from python_backend.spectrogram import EPS, stft_magnitude  # noqa: F401 (EPS: export.v4_model reads it here)

SAMPLE_RATE = 32000
N_FFT = 1280
WIN = 1280
HOP = 320
N_MELS = 100
FMIN = 0.0
FMAX = None
SPEC_MIN = -12.0
SPEC_MAX = 2.0
CLAMP = 1e-5


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN,
                   fmax: float | None = FMAX) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32, librosa.filters.mel(htk=False, norm="slaney")."""
    fmax = sr / 2.0 if fmax is None else fmax
    fft_freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


_FILTERBANK = mel_filterbank()


def norm_spec(x: np.ndarray) -> np.ndarray:
    return (x - SPEC_MIN) / (SPEC_MAX - SPEC_MIN) * 2 - 1


def denorm_spec(y: np.ndarray) -> np.ndarray:
    return (y + 1) / 2 * (SPEC_MAX - SPEC_MIN) + SPEC_MIN


def log_mel(wav32k: np.ndarray) -> np.ndarray:
    """Mono 32 kHz float audio ([N] or [1, N]) -> log mel [100, F] float32, F = N // 320 for N a
    multiple of 320 (upstream ``mel_fn_v4``)."""
    mag = stft_magnitude(wav32k, N_FFT, HOP, WIN)  # [bins, F] float64
    mel = _FILTERBANK.astype(np.float64) @ mag
    return np.log(np.maximum(mel, CLAMP)).astype(np.float32)


def reference_mel(wav32k: np.ndarray) -> np.ndarray:
    """The CFM prompt: ``norm_spec(mel_fn_v4(wav))`` [100, F] float32 in about [-1, 1]."""
    return norm_spec(log_mel(wav32k)).astype(np.float32)
