"""Upstream api_v2's ``/tts`` request as typed data: fields, defaults, checks and the ``tts`` call.

Field names and defaults are upstream's (``api_v2.py``'s ``TTS_Request``); ``voice`` and
``voice_version`` are this gateway's. A GET sends them as query parameters (strings,
``aux_ref_audio_paths`` repeated), a POST as one JSON object. Unknown fields, wrong types and
out-of-range values are refused with ``RequestError`` (HTTP 400, or 404 for a voice), whose
message names the field and the value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from ops import audio_encode
from ops.text_cut import METHODS as CUT_METHODS
from ops.text_cut import cut

#: the language modes of ``tts`` (upstream v2's names; the check is case-insensitive, as upstream's)
LANGUAGES = ("all_zh", "zh", "en", "auto", "all_ja", "ja", "all_ko", "ko", "all_yue", "yue", "auto_yue")
MEDIA_TYPES = ("wav", "raw", "ogg", "aac", "flac")
MAX_TEXT_CHARS = 20000   # per gateway request; sent to tts in requests of at most tts's 2000
MAX_AUX_REFS = 8
#: fields upstream reads that mean nothing here: accepted (type-checked), then ignored
IGNORED = ("batch_size", "batch_threshold", "split_bucket", "parallel_infer", "fragment_interval",
           "super_sampling", "overlap_length", "min_chunk_length")


class RequestError(ValueError):
    """What the client sent wrong; ``status`` is the HTTP status (400, or 404 for a voice)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False

    def check(self, name: str, value: float) -> None:
        low_ok = value > self.low if self.low_open else value >= self.low
        if not (math.isfinite(value) and low_ok and value <= self.high):
            bracket = "(" if self.low_open else "["
            raise RequestError(f"{name}: {value!r} out of range {bracket}{self.low:g}, {self.high:g}]")


# tts's ranges (python_backend.tts_request.PARAMS) for what is sent on; loose ones for the ignored
RANGES = {
    "top_k": Range(1, 1024), "top_p": Range(0.0, 1.0, low_open=True), "temperature": Range(0.0, 5.0, low_open=True),
    "repetition_penalty": Range(1.0, 3.0), "speed_factor": Range(0.25, 4.0), "seed": Range(-1, 2**63 - 1),
    "batch_size": Range(1, 1024), "batch_threshold": Range(0.0, 1.0), "fragment_interval": Range(0.0, 10.0),
    "sample_steps": Range(1, 64), "overlap_length": Range(0, 1000), "min_chunk_length": Range(0, 10000),
    "voice_version": Range(1, 2**31 - 1),
}


@dataclass
class ApiV2Request:
    text: str | None = None               #: required: the text to speak
    text_lang: str | None = None          #: required: its language mode (LANGUAGES)
    ref_audio_path: str | None = None     #: a clip under --ref-root (None: the voice's own reference)
    aux_ref_audio_paths: list | None = None  #: extra clips under --ref-root, their timbre averaged in
    prompt_lang: str | None = None        #: the clip transcript's language (default: text_lang)
    prompt_text: str = ""                 #: the clip's transcript ("": upstream's reference-free mode)
    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    text_split_method: str = "cut5"       #: cut0-cut5 (ops.text_cut)
    batch_size: int = 1
    batch_threshold: float = 0.75
    split_bucket: bool = True
    speed_factor: float = 1.0
    fragment_interval: float = 0.3        #: accepted; tts pauses 0.3 s between sentences
    seed: int = -1                        #: -1: random
    media_type: str = "wav"
    streaming_mode: bool | int = False    #: 0/false whole; 1/true per sentence; 2, 3 per chunk
    parallel_infer: bool = True
    repetition_penalty: float = 1.35
    sample_steps: int = 32
    super_sampling: bool = False
    overlap_length: int = 2
    min_chunk_length: int = 16
    voice: str | None = None              #: extension: the voice (default: the gateway's --default-voice)
    voice_version: int | None = None      #: extension: pin a loaded version of the voice

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def from_json(cls, data) -> "ApiV2Request":
        if not isinstance(data, dict):
            raise RequestError("the body must be a JSON object")
        return cls._build(data, from_query=False)

    @classmethod
    def from_query(cls, query) -> "ApiV2Request":
        """``query``: a multidict of strings (aiohttp's ``request.query``)."""
        data = {}
        for key in set(query.keys()):
            values = query.getall(key)
            data[key] = list(values) if key == "aux_ref_audio_paths" else values[-1]
        return cls._build(data, from_query=True)

    @classmethod
    def _build(cls, data: dict, from_query: bool) -> "ApiV2Request":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise RequestError(f"unknown field(s): {', '.join(unknown)}")
        values = {}
        for name, raw in data.items():
            values[name] = _coerce(name, _KINDS[name], raw, from_query)
        return cls(**values).validate()

    # ---- checks --------------------------------------------------------------------------

    def validate(self) -> "ApiV2Request":
        if self.text in (None, ""):
            raise RequestError("text is required")
        if self.text_lang in (None, ""):
            raise RequestError("text_lang is required")
        self.text_lang = _language("text_lang", self.text_lang)
        if self.prompt_lang not in (None, ""):
            self.prompt_lang = _language("prompt_lang", self.prompt_lang)
        else:
            self.prompt_lang = None
        if len(self.text) > MAX_TEXT_CHARS:
            raise RequestError(f"text has {len(self.text)} characters; the limit is {MAX_TEXT_CHARS}")
        if self.media_type not in MEDIA_TYPES:
            raise RequestError(f"media_type: {self.media_type} is not supported; use one of {', '.join(MEDIA_TYPES)}")
        try:
            audio_encode.require(self.media_type)
        except audio_encode.EncodeError as exc:
            raise RequestError(f"media_type: {exc}") from None
        if self.text_split_method not in CUT_METHODS:
            raise RequestError(f"text_split_method: {self.text_split_method} is not supported; "
                               f"use one of {', '.join(CUT_METHODS)}")
        if isinstance(self.streaming_mode, bool):
            self.streaming_mode = int(self.streaming_mode)
        if self.streaming_mode not in (0, 1, 2, 3):
            raise RequestError("the value of streaming_mode must be 0, 1, 2, 3 (int) or true/false (bool)")
        for name, spec in RANGES.items():
            value = getattr(self, name)
            if value is not None:
                spec.check(name, value)
        if self.ref_audio_path in ("",):
            self.ref_audio_path = None
        if self.ref_audio_path is None and (self.prompt_text or self.aux_ref_audio_paths):
            raise RequestError("prompt_text and aux_ref_audio_paths need ref_audio_path")
        if self.aux_ref_audio_paths and len(self.aux_ref_audio_paths) > MAX_AUX_REFS:
            raise RequestError(f"aux_ref_audio_paths: {len(self.aux_ref_audio_paths)} clips; the limit is {MAX_AUX_REFS}")
        if not self.lines():
            raise RequestError(f"text has nothing to speak after {self.text_split_method}")
        return self

    # ---- what goes to tts ----------------------------------------------------------------

    def lines(self) -> list[str]:
        """The text cut by ``text_split_method``: the pieces tts speaks one after another."""
        return cut(self.text, self.text_split_method)

    def tts_params(self) -> dict[str, float | int]:
        """tts inputs (PARAM_TYPES names) for the sampling options."""
        params = {"TOP_K": self.top_k, "TOP_P": self.top_p, "TEMPERATURE": self.temperature,
                  "REPETITION_PENALTY": self.repetition_penalty, "SPEED": self.speed_factor}
        if self.seed >= 0:
            params["SEED"] = self.seed
        if self.sample_steps is not None:
            params["SAMPLE_STEPS"] = self.sample_steps  # v4 voices' CFM steps; v2 voices ignore it, as upstream
        return params


# ---- field types -------------------------------------------------------------------------

_KINDS = {
    "text": "str", "text_lang": "str", "ref_audio_path": "str", "aux_ref_audio_paths": "list", "prompt_lang": "str",
    "prompt_text": "str", "top_k": "int", "top_p": "float", "temperature": "float", "text_split_method": "str",
    "batch_size": "int", "batch_threshold": "float", "split_bucket": "bool", "speed_factor": "float",
    "fragment_interval": "float", "seed": "int", "media_type": "str", "streaming_mode": "mode",
    "parallel_infer": "bool", "repetition_penalty": "float", "sample_steps": "int", "super_sampling": "bool",
    "overlap_length": "int", "min_chunk_length": "int", "voice": "str", "voice_version": "int",
}
_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n"}


def _coerce(name: str, kind: str, raw, from_query: bool):
    def bad(expected: str):
        return RequestError(f"{name}: expected {expected}, got {raw!r}")

    if raw is None:
        if kind in ("str", "list") or name == "voice_version":
            return None
        raise bad("a value")
    if kind == "str":
        if not isinstance(raw, str):
            raise bad("a string")
        return raw
    if kind == "list":
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise bad("a list of paths")
        return raw
    if kind == "bool":
        return _bool(raw, bad)
    if kind == "mode":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        try:
            return _int(raw, bad)
        except RequestError:
            raise RequestError("the value of streaming_mode must be 0, 1, 2, 3 (int) or true/false (bool)") from None
    if kind == "int":
        return _int(raw, bad)
    return _float(raw, bad)


def _bool(raw, bad):
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise bad("true or false")


def _int(raw, bad) -> int:
    if isinstance(raw, bool):
        raise bad("an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise bad("an integer")


def _float(raw, bad) -> float:
    if isinstance(raw, bool):
        raise bad("a number")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise bad("a number") from None
    else:
        raise bad("a number")
    if not math.isfinite(value):
        raise bad("a finite number")
    return value


def _language(name: str, value: str) -> str:
    mode = value.strip().lower()
    if mode not in LANGUAGES:
        raise RequestError(f"{name}: {value} is not supported; use one of {', '.join(LANGUAGES)}")
    return mode


# ---- reference clips ---------------------------------------------------------------------

def resolve_reference(root: Path | None, path: str, name: str = "ref_audio_path") -> Path:
    """``path`` as a file inside ``root``: relative, no ``..``, no symlink leading out; else 400."""
    if root is None:
        raise RequestError(f"{name}: this gateway reads no reference files (start it with --ref-root DIR)")
    if not path or "\x00" in path:
        raise RequestError(f"{name}: empty or invalid path")
    rel = Path(path)
    if rel.is_absolute() or path.startswith(("/", "\\")) or ".." in rel.parts or ".." in path.replace("\\", "/").split("/"):
        raise RequestError(f"{name}: {path!r} must be a path relative to the reference folder, without '..'")
    base = root.resolve()
    try:
        target = (base / rel).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise RequestError(f"{name}: {path!r} does not exist in the reference folder") from None
    except (OSError, RuntimeError) as exc:
        raise RequestError(f"{name}: {path!r} cannot be read ({type(exc).__name__})") from None
    if not target.is_relative_to(base):
        raise RequestError(f"{name}: {path!r} leads outside the reference folder")
    if not target.is_file():
        raise RequestError(f"{name}: {path!r} is not a file")
    return target

