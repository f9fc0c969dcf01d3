"""A ``tts`` request as typed data: decoded, range-checked, split into sentences and phones.

Triton-free so every error branch is unit-tested; ``triton_tts`` only moves tensors in and
out. Each error carries the Triton status it maps to (INVALID_ARG for what the client sent
wrong, NOT_FOUND for a voice that is not loaded).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from python_backend.errors import INVALID_ARG, NOT_FOUND, RequestError  # noqa: F401 (re-exported)
from python_backend.layout import LayoutError, check_voice_name
from python_backend.limits import Limits
from python_backend.reference import ReferenceRequest, parse_reference
from python_backend.text.frontend import PhoneSequence, TextError, normalize_language
from python_backend.text.frontend import sentences as text_sentences

MAX_TEXT_CHARS = 2000
SENTENCE_MAX_CHARS = 60


@dataclass(frozen=True)
class ParamRange:
    name: str
    low: float
    high: float
    default: float
    low_open: bool = False


MAX_SAMPLE_STEPS = 64  # v4 CFM steps (upstream api_v2 defaults to 32, its web UI to 8)

PARAMS = {
    "TOP_K": ParamRange("TOP_K", 1, 1024, 15),
    "TOP_P": ParamRange("TOP_P", 0.0, 1.0, 1.0, low_open=True),
    "TEMPERATURE": ParamRange("TEMPERATURE", 0.0, 5.0, 1.0, low_open=True),
    "REPETITION_PENALTY": ParamRange("REPETITION_PENALTY", 1.0, 3.0, 1.35),
    "NOISE_SCALE": ParamRange("NOISE_SCALE", 0.0, 2.0, 0.5),
    "SPEED": ParamRange("SPEED", 0.25, 4.0, 1.0),
}


@dataclass
class Sentence:
    text: str
    phones: PhoneSequence


@dataclass
class TTSRequest:
    text: str
    voice: str
    language: str = "auto"
    params: dict[str, float] = field(default_factory=lambda: {k: p.default for k, p in PARAMS.items()})
    seed: int | None = None
    sentences: list[Sentence] = field(default_factory=list)
    reference: ReferenceRequest | None = None  #: a clip sent with the request (None: the voice's own)
    voice_version: int | None = None  #: a pinned version of the voice (None: the active one, or a canary)
    sample_steps: int | None = None  #: v4 voices: CFM Euler steps (None: the version's default; v2 ignores it)


def decode_text(raw, name: str) -> str:
    """BYTES tensor element -> str; invalid UTF-8 is the client's error."""
    if raw is None:
        raise RequestError(f"{name} is required")
    value = np.asarray(raw, dtype=object).reshape(-1)
    if value.size != 1:
        raise RequestError(f"{name} must hold exactly one element, got {value.size}")
    item = value[0]
    if isinstance(item, str):
        return item
    try:
        return bytes(item).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{name} is not valid UTF-8 (byte {exc.start})") from None


def scalar(raw, name: str) -> float | None:
    if raw is None:
        return None
    value = np.asarray(raw).reshape(-1)
    if value.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got {value.size}")
    number = float(value[0])
    if not math.isfinite(number):
        raise RequestError(f"{name} must be finite, got {number}")
    return number


def check_param(name: str, value: float | None) -> float:
    spec = PARAMS[name]
    if value is None:
        return spec.default
    low_ok = value > spec.low if spec.low_open else value >= spec.low
    if not (low_ok and value <= spec.high):
        bracket = "(" if spec.low_open else "["
        raise RequestError(f"{name} {value:g} out of range {bracket}{spec.low:g}, {spec.high:g}]")
    if name == "TOP_K" and value != int(value):
        raise RequestError(f"TOP_K must be an integer, got {value:g}")
    return value


def parse(inputs: dict[str, object], limits: Limits | None = None) -> TTSRequest:
    """Raw input arrays by name (None when absent) -> a checked request with its sentences,
    refused when they are over the work limits (``python_backend.limits``)."""
    text = decode_text(inputs.get("TEXT"), "TEXT")
    voice = decode_text(inputs.get("VOICE"), "VOICE").strip()
    try:
        check_voice_name(voice)
    except LayoutError as exc:
        raise RequestError(f"VOICE: {exc}", NOT_FOUND) from None
    language = decode_text(inputs["LANGUAGE"], "LANGUAGE") if inputs.get("LANGUAGE") is not None else "auto"
    try:
        language = normalize_language(language)
    except TextError as exc:
        raise RequestError(f"LANGUAGE: {exc}") from None
    if not text.strip():
        raise RequestError("TEXT is empty or whitespace")
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(f"TEXT has {len(text)} characters; the limit is {MAX_TEXT_CHARS} per request")
    params = {name: check_param(name, scalar(inputs.get(name), name)) for name in PARAMS}
    seed_value = scalar(inputs.get("SEED"), "SEED")
    seed = None
    if seed_value is not None:
        if seed_value < 0 or seed_value != int(seed_value):
            raise RequestError(f"SEED must be a non-negative integer, got {seed_value:g}")
        seed = int(seed_value)
    request = TTSRequest(text=text, voice=voice, language=language, params=params, seed=seed,
                         voice_version=_voice_version(inputs.get("VOICE_VERSION")),
                         sample_steps=_sample_steps(inputs.get("SAMPLE_STEPS")))
    request.reference = parse_reference(inputs, decode_text, language)
    if request.reference is not None:
        try:
            request.reference.language = normalize_language(request.reference.language)
        except TextError as exc:
            raise RequestError(f"REF_LANGUAGE: {exc}") from None
    request.sentences = sentences(text, language)
    problem = (limits or Limits.from_env()).check_sentences([s.phones.phone_ids.size for s in request.sentences])
    if problem:
        raise RequestError(f"TEXT: {problem}")
    return request


def _sample_steps(raw) -> int | None:
    value = scalar(raw, "SAMPLE_STEPS")
    if value is None:
        return None
    if not 1 <= value <= MAX_SAMPLE_STEPS or value != int(value):
        raise RequestError(f"SAMPLE_STEPS must be an integer in [1, {MAX_SAMPLE_STEPS}], got {value:g}")
    return int(value)


def _voice_version(raw) -> int | None:
    value = scalar(raw, "VOICE_VERSION")
    if value is None:
        return None
    if value < 1 or value != int(value):
        raise RequestError(f"VOICE_VERSION must be a positive integer, got {value:g}")
    return int(value)


def sentences(text: str, language: str) -> list[Sentence]:
    """Upstream's text front end over sentences of at most SENTENCE_MAX_CHARS characters."""
    try:
        seqs = text_sentences(text, language, max_chars=SENTENCE_MAX_CHARS)
    except TextError as exc:
        raise RequestError(f"TEXT: {exc}") from None
    return [Sentence(seq.norm_text, seq) for seq in seqs]
