"""Per-request reference parsing and its cache (pure logic; test_reference_server runs them for real)."""
from __future__ import annotations

import numpy as np
import pytest

from python_backend.errors import RequestError
from python_backend.reference import ReferenceCache, parse_reference, split_by_lengths
from python_backend.tts_request import decode_text

RATE = 16000


def clip(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def b(text: str) -> np.ndarray:
    return np.array([text.encode()], dtype=object)


def inputs(**extra):
    return {"REF_AUDIO": clip(), "REF_SAMPLE_RATE": np.array([RATE], np.int32), "REF_TEXT": b("你好，世界。"), **extra}


def test_no_reference_inputs_means_the_voices_own():
    assert parse_reference({}, decode_text, "zh") is None


def test_key_depends_on_audio_text_language_and_aux():
    keys = {
        parse_reference(inputs(), decode_text, "zh").key,
        parse_reference(inputs(REF_AUDIO=clip(seed=1)), decode_text, "zh").key,
        parse_reference(inputs(REF_TEXT=b("你好。")), decode_text, "zh").key,
        parse_reference(inputs(), decode_text, "all_zh").key,
        parse_reference(inputs(AUX_REF_AUDIO=clip(1.0)[None], AUX_REF_LENGTHS=np.array([RATE], np.int32)),
                        decode_text, "zh").key,
    }
    assert len(keys) == 5
    assert parse_reference(inputs(), decode_text, "zh").key == parse_reference(inputs(), decode_text, "zh").key


@pytest.mark.parametrize("extra,needle", [
    ({"REF_AUDIO": clip(2.0)}, "use 3-10 s"),
    ({"REF_AUDIO": clip(11.0)}, "use 3-10 s"),
    ({"REF_AUDIO": np.zeros(4 * RATE, np.float32)}, "silent"),
    ({"REF_AUDIO": np.full(4 * RATE, np.inf, np.float32)}, "NaN or infinite"),
    ({"REF_AUDIO": clip()[None]}, "1-D"),
    ({"REF_SAMPLE_RATE": np.array([96000], np.int32)}, "outside 8000-48000"),
    ({"REF_SAMPLE_RATE": None}, "REF_SAMPLE_RATE is required"),
    ({"REF_TEXT": b("   ")}, "REF_TEXT is empty"),
    ({"AUX_REF_AUDIO": np.zeros((9, RATE), np.float32) + 0.1, "AUX_REF_LENGTHS": np.full(9, RATE, np.int32)}, "at most 8"),
    ({"AUX_REF_AUDIO": np.zeros((1, RATE), np.float32) + 0.1}, "go together"),
    ({"AUX_REF_AUDIO": np.zeros((1, RATE), np.float32) + 0.1, "AUX_REF_LENGTHS": np.array([RATE + 1], np.int32)}, "outside"),
])
def test_bad_references_name_the_cause(extra, needle):
    with pytest.raises(RequestError) as info:
        parse_reference({k: v for k, v in inputs(**extra).items() if v is not None}, decode_text, "zh")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_no_transcript_is_the_reference_free_mode():
    free = parse_reference({k: v for k, v in inputs().items() if k != "REF_TEXT"}, decode_text, "zh")
    assert free.text is None
    assert free.key != parse_reference(inputs(REF_TEXT=b("。")), decode_text, "zh").key


def test_text_without_audio_is_refused():
    with pytest.raises(RequestError, match="REF_TEXT needs REF_AUDIO"):
        parse_reference({"REF_TEXT": b("你好")}, decode_text, "zh")


def test_cache_is_bounded_in_entries_and_bytes_and_counts():
    cache = ReferenceCache(max_entries=2, max_bytes=1000)
    blob = lambda n: {"x": np.zeros(n, np.uint8)}  # noqa: E731
    assert cache.put("a", blob(400)) == 0 and cache.put("b", blob(400)) == 0
    assert cache.get("a") is not None            # a is now the most recent
    assert cache.put("c", blob(400)) == 1         # entries: b evicted
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.put("d", blob(900)) == 2         # bytes: a and c evicted
    assert len(cache) == 1 and cache.bytes == 900
    assert cache.put("huge", blob(5000)) == 0 and cache.get("huge") is None
    assert cache.stats == {"hits": 2, "misses": 2, "evictions": 3}


def test_get_or_compute_stores_only_successes():
    cache = ReferenceCache()

    def fail():
        raise RequestError("bad clip")

    with pytest.raises(RequestError):
        cache.get_or_compute("k", fail)
    assert len(cache) == 0
    value, hit, _ = cache.get_or_compute("k", lambda: {"x": np.ones(3)})
    assert not hit and cache.get_or_compute("k", fail)[1]


def test_split_by_lengths_checks_the_total():
    flat = np.arange(10)
    assert [p.tolist() for p in split_by_lengths(flat, np.array([3, 7]), 0)] == [[0, 1, 2], [3, 4, 5, 6, 7, 8, 9]]
    with pytest.raises(RequestError):
        split_by_lengths(flat, np.array([3, 3]), 0)
