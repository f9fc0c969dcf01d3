"""A reference clip sent with a request (api_v2's ``ref_audio_path``/``prompt_text``), Triton-free.

``parse_reference`` checks what the client sent (``REF_AUDIO``, ``REF_SAMPLE_RATE``,
``REF_TEXT``, ``REF_LANGUAGE``, ``AUX_REF_AUDIO`` + ``AUX_REF_LENGTHS``) and names the first
problem in one line; ``prepare`` turns it into the tensors a voice model needs, as upstream
computes them:

* the 3-10 s rule on the clip (upstream: 48,000-160,000 samples at 16 kHz);
* SSL input: the clip at 16 kHz plus upstream's trailing silence (``audio.prompt_input``);
* spectrogram of each clip (main and auxiliary) at 32 kHz, peak-limited as upstream;
* the 32 kHz clips themselves, for Pro voices' speaker verification;
* the transcript's phones, read as upstream reads a prompt text (``reference_phones``).

The tensors are cached by ``ReferenceCache`` under a key that hashes the audio (and sample
rate), the transcript and its language: every request with the same clip and text reuses
them, and no two different references can share an entry.  A failed reference caches nothing.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from python_backend.audio import _peak_limit, prompt_input, resample
from python_backend.errors import RequestError
from python_backend.spectrogram import reference_spectrogram

MIN_SECONDS, MAX_SECONDS = 3.0, 10.0
MIN_RATE, MAX_RATE = 8000, 48000
MAX_AUX = 8
AUX_MIN_SECONDS, AUX_MAX_SECONDS = 0.5, 30.0
SILENT_PEAK = 1e-4


@dataclass
class Clip:
    samples: np.ndarray  # float32 [N] mono, as sent
    rate: int

    @property
    def seconds(self) -> float:
        return self.samples.size / float(self.rate)


@dataclass
class ReferenceRequest:
    """A checked per-request reference (nothing computed yet)."""

    main: Clip
    text: str | None  #: None: upstream's reference-free mode (no prompt tokens, no reference phones)
    language: str
    aux: list[Clip] = field(default_factory=list)
    key: str = ""


def _check_clip(samples, rate: int, name: str, low: float, high: float) -> Clip:
    wav = np.asarray(samples)
    if wav.ndim != 1 or wav.size == 0:
        raise RequestError(f"{name} must be a non-empty 1-D array of mono samples, got shape {list(wav.shape)}")
    if not np.issubdtype(wav.dtype, np.floating):
        raise RequestError(f"{name} must be float32 samples in [-1, 1], got {wav.dtype}")
    if not np.all(np.isfinite(wav)):
        raise RequestError(f"{name} contains NaN or infinite samples")
    clip = Clip(wav.astype(np.float32, copy=False), rate)
    if not low <= clip.seconds <= high:
        raise RequestError(f"{name} is {clip.seconds:.2f} s long; use {low:g}-{high:g} s of speech")
    if float(np.abs(clip.samples).max()) < SILENT_PEAK:
        raise RequestError(f"{name} is silent")
    return clip


def _rate(value) -> int:
    if value is None:
        raise RequestError("REF_SAMPLE_RATE is required with REF_AUDIO (e.g. 32000)")
    arr = np.asarray(value).reshape(-1)
    if arr.size != 1:
        raise RequestError(f"REF_SAMPLE_RATE must hold one value, got {arr.size}")
    rate = int(arr[0])
    if not MIN_RATE <= rate <= MAX_RATE:
        raise RequestError(f"REF_SAMPLE_RATE {rate} outside {MIN_RATE}-{MAX_RATE} Hz")
    return rate


def reference_key(ref: ReferenceRequest) -> str:
    """sha256 over everything that decides the reference's tensors."""
    h = hashlib.sha256()
    text = b"\x01" if ref.text is None else b"\x02" + ref.text.encode()   # free vs any transcript
    for part in (text, b"\0", ref.language.encode(), b"\0"):
        h.update(part)
    for clip in [ref.main, *ref.aux]:
        h.update(np.int64(clip.rate).tobytes())
        h.update(np.int64(clip.samples.size).tobytes())
        h.update(np.ascontiguousarray(clip.samples, np.float32).tobytes())
    return h.hexdigest()


def parse_reference(inputs: dict, text_of: Callable[[object, str], str], default_language: str) -> ReferenceRequest | None:
    """The request's reference inputs, checked; None when it sends none (the voice's own).

    ``text_of(raw, name)`` decodes a BYTES input (the caller's UTF-8 rules)."""
    audio = inputs.get("REF_AUDIO")
    others = [n for n in ("REF_TEXT", "REF_LANGUAGE", "REF_SAMPLE_RATE", "AUX_REF_AUDIO", "AUX_REF_LENGTHS")
              if inputs.get(n) is not None]
    if audio is None:
        if others:
            raise RequestError(f"{others[0]} needs REF_AUDIO (the reference clip)")
        return None
    rate = _rate(inputs.get("REF_SAMPLE_RATE"))
    main = _check_clip(audio, rate, "REF_AUDIO", MIN_SECONDS, MAX_SECONDS)
    text = None  # no transcript: upstream's reference-free mode
    if inputs.get("REF_TEXT") is not None:
        text = text_of(inputs["REF_TEXT"], "REF_TEXT").strip()
        if not text:
            raise RequestError("REF_TEXT is empty (leave it out for the reference-free mode)")
    language = default_language
    if inputs.get("REF_LANGUAGE") is not None:
        language = text_of(inputs["REF_LANGUAGE"], "REF_LANGUAGE").strip().lower()
    aux = _aux_clips(inputs.get("AUX_REF_AUDIO"), inputs.get("AUX_REF_LENGTHS"), rate)
    ref = ReferenceRequest(main=main, text=text, language=language, aux=aux)
    ref.key = reference_key(ref)
    return ref


def _aux_clips(audio, lengths, rate: int) -> list[Clip]:
    if audio is None and lengths is None:
        return []
    if audio is None or lengths is None:
        raise RequestError("AUX_REF_AUDIO and AUX_REF_LENGTHS go together")
    audio = np.asarray(audio)
    lengths = np.asarray(lengths).reshape(-1)
    if audio.ndim != 2:
        raise RequestError(f"AUX_REF_AUDIO must be [clips, samples], got shape {list(audio.shape)}")
    if audio.shape[0] != lengths.size:
        raise RequestError(f"AUX_REF_LENGTHS has {lengths.size} values for {audio.shape[0]} clips")
    if lengths.size > MAX_AUX:
        raise RequestError(f"{lengths.size} auxiliary clips; at most {MAX_AUX}")
    clips = []
    for i, n in enumerate(lengths.astype(np.int64)):
        if not 0 < n <= audio.shape[1]:
            raise RequestError(f"AUX_REF_LENGTHS[{i}] = {int(n)} outside 1-{audio.shape[1]}")
        clips.append(_check_clip(audio[i, :n], rate, f"AUX_REF_AUDIO[{i}]", AUX_MIN_SECONDS, AUX_MAX_SECONDS))
    return clips


def clip_32k(clip: Clip) -> np.ndarray:
    """The clip at 32 kHz, peak-limited as upstream does before its spectrogram."""
    return _peak_limit(resample(clip.samples, clip.rate, 32000))


def prepare(ref: ReferenceRequest, phones_of: Callable[[str, str], object], ssl_of: Callable[[np.ndarray], np.ndarray],
            bert_of: Callable[[object], np.ndarray]) -> dict[str, np.ndarray]:
    """The voice model's REF_* inputs for ``ref``.

    ``phones_of(text, language)`` → PhoneSequence (``frontend.reference_phones``),
    ``ssl_of(wav16k_with_silence)`` → SSL [768, T] (``gsv_ssl``), ``bert_of(seq)`` → [1024, P].
    Reference-free (no transcript): no phones, no SSL; the voice then prompts with nothing."""
    clips32 = [clip_32k(c) for c in [ref.main, *ref.aux]]
    specs = [reference_spectrogram(w) for w in clips32]
    out = {
        "REF_KEY": np.array([ref.key.encode()], dtype=object),
        "REF_PHONES": np.zeros(0, np.int64),
        "REF_BERT": np.zeros((1024, 0), np.float32),
        "REF_SPECS": np.concatenate(specs, axis=1).astype(np.float32),
        "REF_SPEC_FRAMES": np.array([s.shape[1] for s in specs], np.int32),
        "REF_WAV32K": np.concatenate(clips32).astype(np.float32),
        "REF_WAV_LENGTHS": np.array([w.size for w in clips32], np.int32),
    }
    if ref.text is not None:
        seq = phones_of(ref.text, ref.language)
        wav16k = _peak_limit(resample(ref.main.samples, ref.main.rate, 16000))
        out["REF_SSL"] = np.asarray(ssl_of(prompt_input(wav16k)[0]), np.float32)
        out["REF_PHONES"] = np.asarray(seq.phone_ids, np.int64)
        out["REF_BERT"] = np.asarray(bert_of(seq), np.float32)
    return out


def split_by_lengths(flat: np.ndarray, lengths: np.ndarray, axis: int) -> list[np.ndarray]:
    """Inverse of the concatenation in ``prepare`` (specs along frames, clips along samples)."""
    lengths = np.asarray(lengths).reshape(-1).astype(np.int64)
    if lengths.size == 0 or np.any(lengths <= 0) or int(lengths.sum()) != flat.shape[axis]:
        raise RequestError(f"lengths {lengths.tolist()[:9]} do not add up to {flat.shape[axis]}")
    edges = np.concatenate([[0], np.cumsum(lengths)])
    return [np.take(flat, np.arange(a, b), axis=axis) for a, b in zip(edges[:-1], edges[1:])]


def nbytes(value) -> int:
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if hasattr(value, "nbytes") and callable(value.nbytes):
        return int(value.nbytes())
    return int(getattr(value, "nbytes", 0))


class ReferenceCache:
    """LRU cache bounded in entries and bytes, with hit/miss/eviction counts; thread-safe.

    ``get_or_compute`` computes outside the lock (a slow reference does not block others) and
    stores only successful results."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 256 << 20):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a reference cache needs room for at least one entry")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[str, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "evictions": 0}

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: str):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.stats["misses"] += 1
                return None
            self._items.move_to_end(key)
            self.stats["hits"] += 1
            return item[0]

    def put(self, key: str, value) -> int:
        """Store ``value``; returns how many entries were evicted to make room."""
        size = nbytes(value)
        evicted = 0
        with self._lock:
            if size > self.max_bytes:
                return 0  # larger than the whole cache: not kept
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            while self._items and (len(self._items) >= self.max_entries or self._bytes + size > self.max_bytes):
                _, (_, gone) = self._items.popitem(last=False)
                self._bytes -= gone
                evicted += 1
            self._items[key] = (value, size)
            self._bytes += size
            self.stats["evictions"] += evicted
        return evicted

    def get_or_compute(self, key: str, compute: Callable[[], object]) -> tuple[object, bool, int]:
        """(value, hit, entries evicted to store it)."""
        value = self.get(key)
        if value is not None:
            return value, True, 0
        value = compute()
        return value, False, self.put(key, value)
