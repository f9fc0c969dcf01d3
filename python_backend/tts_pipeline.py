"""The ``tts`` pipeline without Triton: sentences -> phones + BERT -> one voice request -> chunks.

The Triton adapter (``triton_tts``) passes two callables: ``bert(text) -> [N, 1024]`` (the
shared BERT model, called once per Chinese segment) and ``voice(model, inputs) -> iterator of chunks`` (the voice model,
through BLS). Everything else, and every error, is decided here and unit-tested.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from python_backend.layout import voice_model
from python_backend.text.frontend import bert_features
from python_backend.tts_request import TTSRequest

BERT_DIM = 1024


@dataclass
class VoiceChunk:
    """One response of the voice model."""

    audio: np.ndarray
    version: int
    sample_rate: int
    finish_reason: str = ""
    final: bool = False


@dataclass
class Utterance:
    """What a whole request produced (the non-streaming answer)."""

    audio: list[np.ndarray] = field(default_factory=list)
    version: int = -1
    sample_rate: int = 0
    finish_reasons: list[str] = field(default_factory=list)

    def add(self, chunk: VoiceChunk) -> None:
        if chunk.audio.size:
            self.audio.append(chunk.audio.astype(np.float32))
        self.version, self.sample_rate = chunk.version, chunk.sample_rate
        if chunk.finish_reason:
            self.finish_reasons.append(chunk.finish_reason)

    def joined(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)


def voice_inputs(request: TTSRequest, bert: Callable[[str], np.ndarray], stream: bool,
                 max_tokens: int | None, request_id: str,
                 reference: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The voice model's input tensors for all sentences of a request (``reference``: the REF_*
    tensors of a per-request reference, ``python_backend.reference.prepare``)."""
    phones, feats, counts = [], [], []
    for sentence in request.sentences:
        seq = sentence.phones
        feats.append(bert_features(seq, bert))   # BERT once per Chinese segment, as upstream
        phones.append(seq.phone_ids.astype(np.int64))
        counts.append(seq.phone_ids.size)
    inputs = {
        "PHONES": np.concatenate(phones),
        "BERT": np.concatenate(feats, axis=1).astype(np.float32),
        "SENTENCE_PHONES": np.asarray(counts, np.int32),
        "STREAM": np.array([stream]),
        "REQUEST_ID": np.array([request_id.encode()], dtype=object),
        "TOP_K": np.array([int(request.params["TOP_K"])], np.int32),
    }
    for name in ("TOP_P", "TEMPERATURE", "REPETITION_PENALTY", "NOISE_SCALE", "SPEED"):
        inputs[name] = np.array([request.params[name]], np.float32)
    if request.seed is not None:
        inputs["SEED"] = np.array([request.seed], np.int64)
    if request.sample_steps is not None:
        inputs["SAMPLE_STEPS"] = np.array([request.sample_steps], np.int32)
    if max_tokens is not None:
        inputs["MAX_TOKENS"] = np.array([max_tokens], np.int32)
    if reference is not None:
        inputs.update(reference)
    return inputs


def synthesize(request: TTSRequest, bert: Callable[[str], np.ndarray],
               voice: Callable[[str, dict], Iterable[VoiceChunk]], stream: bool = False,
               max_tokens: int | None = None, request_id: str | None = None,
               reference: Callable[[TTSRequest], dict[str, np.ndarray]] | None = None) -> Iterator[VoiceChunk]:
    """Yield the voice model's chunks for ``request``, checking they all come from one version.
    ``reference(request)`` prepares a per-request reference's tensors (cached by the caller)."""
    rid = request_id or uuid.uuid4().hex
    ref = reference(request) if (reference is not None and request.reference is not None) else None
    inputs = voice_inputs(request, bert, stream, max_tokens, rid, ref)
    version = None
    for chunk in voice(voice_model(request.voice), inputs):
        if version is None:
            version = chunk.version
        elif chunk.version != version:  # the property the product rests on: never mix versions
            raise RuntimeError(f"voice {request.voice} answered with versions {version} and {chunk.version} in one request")
        yield chunk
