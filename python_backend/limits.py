"""Per-request and per-voice work limits: what one client request may cost, checked where the
work is (``tts`` before it calls the voice, and again in the voice model, which clients can call
directly).

Every limit reads an environment variable of the tritonserver process (``gsv-triton serve``
passes its ``--max-*`` options this way), so the ``tts`` models and every voice model of a
server agree. A request over a limit is refused whole with INVALID_ARG naming the limit; a
voice whose queue is full answers UNAVAILABLE (retry later), before any work starts.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

TOKENS_PER_SECOND = 25  # semantic tokens per second of audio at speed 1
BUSY = "the voice is busy"  # how a full voice starts its refusal (tts maps it to UNAVAILABLE)


@dataclass(frozen=True)
class Limits:
    max_sentences: int = 100  #: sentences per request (2000 characters of prose make about 35-70)
    max_sentence_phones: int = 400  #: phones per sentence (a 60-character sentence has at most about 200)
    max_audio_s: float = 600.0  #: seconds of audio per request, all sentences together (speed included)
    max_queued_sentences: int = 512  #: sentences waiting or decoding in one voice version
    max_in_flight: int = 256  #: requests inside one tts/tts_stream model (more: UNAVAILABLE)

    ENV = {"max_sentences": "GSV_MAX_SENTENCES", "max_sentence_phones": "GSV_MAX_SENTENCE_PHONES",
           "max_audio_s": "GSV_MAX_AUDIO_S", "max_queued_sentences": "GSV_MAX_QUEUED_SENTENCES",
           "max_in_flight": "GSV_MAX_IN_FLIGHT"}

    @classmethod
    def from_env(cls, environ=None) -> "Limits":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(cls.ENV[f.name])
            if raw is None or raw == "":
                continue
            try:
                value = float(raw) if f.type in ("float", float) else int(raw)
            except ValueError:
                raise ValueError(f"{cls.ENV[f.name]}={raw!r} is not a number") from None
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{cls.ENV[f.name]}={raw!r} must be positive")
            values[f.name] = value
        return cls(**values)

    def audio_tokens(self, speed: float) -> int:
        """Semantic tokens that make ``max_audio_s`` of audio at ``speed`` (slower speech: fewer tokens)."""
        return max(1, math.ceil(self.max_audio_s * TOKENS_PER_SECOND * float(speed)))

    def check_sentences(self, phone_counts: list[int]) -> str | None:
        """The reason a request's sentences are over a limit, or None."""
        if len(phone_counts) > self.max_sentences:
            return (f"the text makes {len(phone_counts)} sentences; the limit is {self.max_sentences} per request "
                    f"({self.ENV['max_sentences']}): split it into several requests")
        longest = max(phone_counts, default=0)
        if longest > self.max_sentence_phones:
            return (f"a sentence has {longest} phones; the limit is {self.max_sentence_phones} "
                    f"({self.ENV['max_sentence_phones']})")
        return None
