"""Request parsing and sentence ordering (pure logic; the server tests run them for real)."""
from __future__ import annotations

import numpy as np
import pytest

from python_backend.tts_request import INVALID_ARG, MAX_TEXT_CHARS, NOT_FOUND, RequestError, parse
from python_backend.voice_engine import AudioChunk
from python_backend.voice_request import Utterance, split_sentences


def b(text) -> np.ndarray:
    return np.array([text.encode("utf-8") if isinstance(text, str) else text], dtype=object)


def good(**extra):
    return {"TEXT": b("你好。今天天气很好！Hello world."), "VOICE": b("demo"), **extra}


def test_parse_splits_sentences_and_applies_defaults():
    req = parse(good())
    assert req.voice == "demo" and req.language == "auto"
    assert len(req.sentences) >= 2
    assert req.params["TOP_K"] == 15 and req.params["REPETITION_PENALTY"] == 1.35
    assert all(s.phones.phone_ids.size > 0 for s in req.sentences)


@pytest.mark.parametrize("inputs,needle,code", [
    ({"TEXT": b("   "), "VOICE": b("demo")}, "empty or whitespace", INVALID_ARG),
    ({"TEXT": b(b"\xff\xfe"), "VOICE": b("demo")}, "not valid UTF-8", INVALID_ARG),
    ({"TEXT": b("x" * (MAX_TEXT_CHARS + 1)), "VOICE": b("demo")}, "limit", INVALID_ARG),
    ({"TEXT": b("你好"), "VOICE": b("../etc")}, "not a safe folder name", NOT_FOUND),
    (good(LANGUAGE=b("fr")), "unsupported language 'fr'", INVALID_ARG),
    (good(TOP_K=np.array([0], np.int32)), "TOP_K 0 out of range", INVALID_ARG),
    (good(TOP_P=np.array([0.0], np.float32)), "TOP_P 0 out of range", INVALID_ARG),
    (good(SPEED=np.array([9.0], np.float32)), "SPEED 9 out of range", INVALID_ARG),
    (good(TEMPERATURE=np.array([np.nan], np.float32)), "finite", INVALID_ARG),
    (good(SEED=np.array([-1], np.int64)), "SEED", INVALID_ARG),
    (good(VOICE_VERSION=np.array([0], np.int32)), "VOICE_VERSION must be a positive integer", INVALID_ARG),
    ({"TEXT": b("……！！"), "VOICE": b("demo")}, "nothing pronounceable", INVALID_ARG),
])
def test_bad_requests_name_the_cause(inputs, needle, code):
    with pytest.raises(RequestError) as info:
        parse(inputs)
    assert needle in str(info.value) and info.value.code == code
    assert "\n" not in str(info.value)


def test_voice_version_pin_is_optional():
    assert parse(good()).voice_version is None
    assert parse(good(VOICE_VERSION=np.array([3], np.int32))).voice_version == 3


def test_split_sentences_checks_counts():
    phones = np.arange(6)
    bert = np.zeros((1024, 6), np.float32)
    assert [p.size for p, _ in split_sentences(phones, bert, np.array([2, 4]))] == [2, 4]
    with pytest.raises(RequestError, match="sum to 6"):
        split_sentences(phones, bert, np.array([2, 3]))
    with pytest.raises(RequestError, match="does not match"):
        split_sentences(phones, np.zeros((1024, 5)), None)


def test_utterance_orders_sentences_and_sends_one_final():
    sent = []
    utt = Utterance(2, 1000, sent.append)
    second, first = utt.emit_for(1), utt.emit_for(0)
    second(AudioChunk(np.full(3, 2.0, np.float32), True, "eos", 1))  # sentence 2 finishes first
    assert sent == []
    first(AudioChunk(np.full(2, 1.0, np.float32), False, None, 1))
    first(AudioChunk(np.full(2, 1.5, np.float32), True, "budget", 1))
    audio = np.concatenate([o.audio for o in sent])
    assert [o.final for o in sent] == [False, False, True]
    assert audio[:4].tolist() == [1.0, 1.0, 1.5, 1.5] and audio[-3:].tolist() == [2.0, 2.0, 2.0]
    assert audio.size == 2 + 2 + 300 + 3  # 0.3 s pause between the sentences
    assert [o.finish_reason for o in sent if o.finish_reason] == ["budget", "eos"]


def test_utterance_heartbeat_is_empty_non_final_and_stops_after_the_final():
    sent = []
    utt = Utterance(1, 1000, sent.append)
    utt.heartbeat()
    assert len(sent) == 1 and sent[0].audio.size == 0 and not sent[0].final and not sent[0].finish_reason
    utt.emit_for(0)(AudioChunk(np.ones(2, np.float32), True, "eos", 1))
    utt.heartbeat()  # after the final: nothing more goes out
    assert [o.final for o in sent] == [False, True]


def test_utterance_error_sends_single_final_error():
    sent = []
    utt = Utterance(2, 1000, sent.append)
    utt.emit_for(0)(AudioChunk(np.zeros(0, np.float32), True, "error", 0, error="graph exploded"))
    utt.emit_for(1)(AudioChunk(np.ones(2, np.float32), True, "eos", 1))
    assert len(sent) == 1 and sent[0].final and sent[0].error == "graph exploded"
