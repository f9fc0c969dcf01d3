"""Speaker-verification features in numpy: the 16 kHz clip and the 80-bin Kaldi fbank upstream feeds ERes2NetV2.

v2Pro/v2ProPlus condition SoVITS on an ERes2NetV2 embedding of the reference. Upstream gets the
16 kHz input with torchaudio's ``Resample(32000, 16000)`` (windowed-sinc, Hann window, 6 zero
crossings, rolloff 0.99) and the features with a Kaldi ``fbank`` port (25 ms Povey window, 10 ms
shift, dither 0, DC removal, pre-emphasis 0.97, 512-point FFT power, 80 triangular mel bins from
20 Hz to Nyquist, natural log floored at float32 epsilon, no mean normalisation). Both are
re-derived here without torch, because this runs inside Triton's Python backend.
"""
from __future__ import annotations

from functools import lru_cache
from math import ceil, gcd

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SV_RATE = 16000
NUM_MEL_BINS = 80
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms
FFT_SIZE = 512  # frame length rounded up to a power of two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
FLOAT32_EPS = float(np.finfo(np.float32).eps)  # Kaldi's log floor


@lru_cache(maxsize=8)
def sinc_kernel(src: int, dst: int, zero_crossings: int = 6, rolloff: float = 0.99) -> tuple[np.ndarray, int]:
    """Polyphase windowed-sinc filter of torchaudio's default resampler: ([dst, taps] float32, pad).

    Row ``i`` produces output phase ``i`` from ``taps`` input samples starting ``pad`` before
    the aligned input position; the cutoff sits at ``rolloff`` times the lower Nyquist rate.
    """
    step = gcd(src, dst)
    src, dst = src // step, dst // step
    cutoff = min(src, dst) * rolloff
    pad = ceil(zero_crossings * src / cutoff)
    taps = np.arange(-pad, pad + src, dtype=np.float64) / src
    t = (taps[None, :] - np.arange(dst, dtype=np.float64)[:, None] / dst) * cutoff
    t = np.clip(t, -zero_crossings, zero_crossings)
    window = np.cos(t * np.pi / (2 * zero_crossings)) ** 2
    kernel = np.sinc(t) * window * (cutoff / src)
    return kernel.astype(np.float32), pad


def resample(wav: np.ndarray, src: int, dst: int) -> np.ndarray:
    """``wav`` [N] from ``src`` Hz to ``dst`` Hz as torchaudio's ``Resample(src, dst)`` computes it."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if src == dst:
        return wav.copy()
    kernel, pad = sinc_kernel(src, dst)
    step = gcd(src, dst)
    src_n, dst_n = src // step, dst // step
    padded = np.pad(wav, (pad, pad + src_n))
    windows = sliding_window_view(padded, kernel.shape[1])[::src_n]  # one row per block of src_n inputs
    out = (windows.astype(np.float64) @ kernel.T.astype(np.float64)).reshape(-1)
    return out[: ceil(dst_n * wav.size / src_n)].astype(np.float32)


def to_16k(wav32k: np.ndarray) -> np.ndarray:
    """The 16 kHz clip upstream's v2Pro path embeds, from the 32 kHz reference."""
    return resample(wav32k, 32000, SV_RATE)


@lru_cache(maxsize=4)
def mel_banks(num_bins: int = NUM_MEL_BINS, rate: int = SV_RATE) -> np.ndarray:
    """Kaldi's triangular mel filters, [num_bins, FFT_SIZE // 2 + 1] float32 (Nyquist bin weight 0).

    Built in float32 step by step as upstream builds them: the low filters span one or two FFT
    bins, so a bin lying on a filter edge moves a log energy by ~2e-4 between float32 and exact
    filters, more than the kit allows. (Only the log itself is taken in float64 and rounded.)
    """
    f32 = np.float32
    low, high = 1127.0 * np.log1p(LOW_FREQ / 700.0), 1127.0 * np.log1p(rate / 2 / 700.0)
    delta, base = f32((high - low) / (num_bins + 1)), f32(low)
    index = np.arange(num_bins, dtype=f32)[:, None]
    left, center, right = base + index * delta, base + (index + f32(1)) * delta, base + (index + f32(2)) * delta
    freqs = np.arange(FFT_SIZE // 2, dtype=f32) * f32(rate / FFT_SIZE)
    fft_mel = (f32(1127.0) * np.log((f32(1.0) + freqs / f32(700.0)).astype(np.float64)).astype(f32))[None, :]
    rising = (fft_mel - left) / (center - left)
    falling = (right - fft_mel) / (right - center)
    banks = np.maximum(f32(0.0), np.minimum(rising, falling))
    return np.pad(banks, ((0, 0), (0, 1))).astype(f32)


@lru_cache(maxsize=1)
def povey_window() -> np.ndarray:
    """A Hann window raised to 0.85: Kaldi's default, zero at both ends."""
    n = np.arange(FRAME_LENGTH, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / (FRAME_LENGTH - 1))) ** 0.85


def frame_count(samples: int) -> int:
    """Frames Kaldi keeps (``snip_edges``: only frames that fit entirely)."""
    return 0 if samples < FRAME_LENGTH else 1 + (samples - FRAME_LENGTH) // FRAME_SHIFT


def fbank(wav16k: np.ndarray, num_bins: int = NUM_MEL_BINS) -> np.ndarray:
    """Log mel filterbank energies [T, num_bins] float32 of a 16 kHz clip in [-1, 1] (not int16-scaled)."""
    wav = np.asarray(wav16k, dtype=np.float64).reshape(-1)
    count = frame_count(wav.size)
    if count == 0:
        raise ValueError(f"{wav.size} samples at 16 kHz is shorter than one {FRAME_LENGTH}-sample fbank frame")
    frames = sliding_window_view(wav, FRAME_LENGTH)[::FRAME_SHIFT][:count]
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # first sample is its own predecessor
    frames = (frames - PREEMPHASIS * previous) * povey_window()
    power = np.abs(np.fft.rfft(frames, n=FFT_SIZE, axis=1)) ** 2
    energies = power @ mel_banks(num_bins).astype(np.float64).T
    return np.log(np.maximum(energies, FLOAT32_EPS)).astype(np.float32)


def features(wav32k: np.ndarray) -> np.ndarray:
    """32 kHz reference -> the graph's ``fbank`` input [1, T, 80] float32."""
    return fbank(to_16k(wav32k))[None]
