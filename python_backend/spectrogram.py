"""Reference spectrogram for SoVITS speaker conditioning, in numpy (no torch on the serving side).

Matches upstream ``spectrogram_torch`` for v2-family models: reflect-pad (n_fft - hop) / 2
samples on each side, STFT with a periodic Hann window, center=False, onesided, and
magnitude sqrt(re^2 + im^2 + 1e-8).
"""
from __future__ import annotations

import numpy as np

N_FFT = 2048
HOP = 640
WIN = 2048
EPS = 1e-8  # checked against the kit's refer_spec (1e-6 is off by 3e-4 on quiet bins)
SAMPLE_RATE = 32000


def hann_periodic(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float64)


def stft_magnitude(wav32k: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """Mono float audio ([N] or [1, N]) -> float64 magnitude [n_fft//2+1, F]: reflect-pad
    (n_fft - hop) // 2 each side, periodic Hann (centred in n_fft when shorter), center=False,
    sqrt(re^2 + im^2 + EPS). Shared by the v2 reference spectrogram and v4's reference mel."""
    x = np.asarray(wav32k, dtype=np.float64)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise ValueError(f"expected mono audio [N] or [1, N], got shape {np.shape(wav32k)}")
    pad = (n_fft - hop) // 2
    if x.shape[0] <= pad:
        raise ValueError(f"reference audio too short: {x.shape[0]} samples, need more than {pad}")
    x = np.pad(x, (pad, pad), mode="reflect")
    n_frames = (x.shape[0] - n_fft) // hop + 1
    if n_frames < 1:
        raise ValueError(f"reference audio too short for one {n_fft}-sample frame")
    window = hann_periodic(win)
    if win < n_fft:  # torch.stft centers a shorter window inside n_fft
        left = (n_fft - win) // 2
        window = np.pad(window, (left, n_fft - win - left))
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(x[idx] * window[None, :], n=n_fft, axis=1)
    return np.sqrt(spec.real**2 + spec.imag**2 + EPS).T


def reference_spectrogram(wav32k: np.ndarray, n_fft: int = N_FFT, hop: int = HOP, win: int = WIN) -> np.ndarray:
    """Mono 32 kHz float audio ([N] or [1, N]) -> linear magnitude spectrogram [n_fft//2+1, F] float32.

    F = (N + 2*pad - n_fft) // hop + 1 with pad = (n_fft - hop) // 2 (N // hop frames for N a
    multiple of hop). The caller applies any loudness normalization beforehand.
    """
    return stft_magnitude(wav32k, n_fft, hop, win).astype(np.float32)
