"""The v2Pro/v2ProPlus speaker embedding from a 32 kHz clip, with numpy features and the exported graph.

``SVEmbedder(onnx_path).embed(wav32k)`` computes what upstream feeds SoVITS as ``sv_emb``: the
clip resampled to 16 kHz, its 80-bin Kaldi fbank, then ERes2NetV2 (``sv.onnx`` of the shared
``gsv_sv`` model). One class for the exporter (a voice's reference, computed once) and the
Triton model (zero-shot references), so both compute the same thing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from python_backend import sv_features
from python_backend.errors import RequestError
from python_backend.onnx_stage import OnnxStage, StageError

MODEL_TYPE = "gpt-sovits-sv"
SV_EMB_DIM = 20480
SAMPLE_RATE = 32000
MIN_SAMPLES = 2 * sv_features.FRAME_LENGTH  # one 25 ms fbank frame after halving the rate
MAX_SECONDS = 30  # as audio.MAX_SECONDS; activations grow with length (references are 3-10 s)


def check_wav32k(wav: np.ndarray | None, name: str = "WAV32K") -> np.ndarray:
    """A mono 32 kHz clip as float32 [N], or RequestError naming what is wrong."""
    if wav is None:
        raise RequestError(f"{name} missing")
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise RequestError(f"{name} must have shape [N] (mono), got {list(wav.shape)}")
    limit = MAX_SECONDS * SAMPLE_RATE
    if not MIN_SAMPLES <= wav.shape[0] <= limit:
        raise RequestError(f"{name} has {wav.shape[0]} samples; {MIN_SAMPLES} to {limit} allowed "
                           f"({MAX_SECONDS} s at {SAMPLE_RATE} Hz)")
    if not np.isfinite(wav).all():
        raise RequestError(f"{name} contains NaN or infinite samples")
    return wav.astype(np.float32, copy=False)


class SVEmbedder:
    """``sv.onnx`` plus its numpy front end; metadata is checked when the graph is opened."""

    def __init__(self, onnx_path: str | Path, options=None, provider_list=None):
        self.stage = OnnxStage(onnx_path, MODEL_TYPE, inputs=("fbank",), outputs=("sv_emb",),
                               options=options, provider_list=provider_list)
        meta = self.stage.metadata
        expected = {"dim": SV_EMB_DIM, "num_mel_bins": sv_features.NUM_MEL_BINS, "sample_rate": sv_features.SV_RATE}
        wrong = {k: meta.get(k) for k, v in expected.items() if str(meta.get(k)) != str(v)}
        if wrong:
            raise StageError(f"{self.stage.path}: metadata {wrong}, this server computes {expected}")

    def embed(self, wav32k: np.ndarray) -> np.ndarray:
        """sv_emb [1, 20480] float32 of a mono 32 kHz clip in [-1, 1] (peak-limited as the reference)."""
        fbank = sv_features.features(check_wav32k(wav32k))
        return self.stage.run(fbank=fbank)["sv_emb"].astype(np.float32, copy=False)
