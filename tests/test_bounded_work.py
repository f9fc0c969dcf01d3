"""Bounded work per request, without Triton: the limits record, the text caps in ``tts``'s
parser, and in the voice engine a fair intake, a per-request audio cap, a bounded queue and
noise drawn per chunk (not for the whole token budget at submit).

The Triton side (a flood through ``tts`` and straight into ``voice_<NAME>``, a normal request
meeting its deadline beside a long one, cancellation of a non-streaming request whose client
timed out) is in ``tests/test_bounded_work_server.py``.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from python_backend.limits import Limits
from python_backend.tts_request import RequestError, parse
from python_backend.voice_engine import (
    FINISH_BUDGET, NOISE_BLOCK, EngineBusy, RequestGroup, VoiceEngine, noise_frames, request_noise,
)
from tests.test_voice_engine import Collector, make_request, version_dir  # noqa: F401 (the fixture)


def _text_inputs(text: str, **extra) -> dict:
    return {"TEXT": np.array([text.encode()], dtype=object), "VOICE": np.array([b"demo"], dtype=object),
            "LANGUAGE": np.array([b"zh"], dtype=object), **extra}


# --------------------------------------------------------------------------- limits


def test_limits_from_env_and_errors():
    limits = Limits.from_env({"GSV_MAX_SENTENCES": "5", "GSV_MAX_AUDIO_S": "12.5"})
    assert limits.max_sentences == 5 and limits.max_audio_s == 12.5 and limits.max_queued_sentences == 512
    assert limits.audio_tokens(1.0) == 313 and limits.audio_tokens(0.25) == 79  # slow speech: fewer tokens
    for bad in ("0", "-3", "many", "nan"):
        with pytest.raises(ValueError, match="GSV_MAX_SENTENCES"):
            Limits.from_env({"GSV_MAX_SENTENCES": bad})
    assert limits.check_sentences([3] * 5) is None
    assert "6 sentences; the limit is 5" in limits.check_sentences([3] * 6)
    assert "401 phones; the limit is 400" in limits.check_sentences([401])


def test_flood_text_is_refused_before_any_work():
    """The reproduction: 2000 characters of "啊。" (hundreds of sentences, an 82k-token budget)."""
    with pytest.raises(RequestError, match=r"TEXT: the text makes \d{3,} sentences; the limit is 100") as err:
        parse(_text_inputs("啊。" * 1000), Limits())
    assert "\n" not in str(err.value)
    ok = parse(_text_inputs("今天天气很好。" * 10), Limits())
    assert 1 <= len(ok.sentences) <= 100


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def engine(version_dir):
    """Benchmark mode (EOS never ends a sentence) so every sentence runs to its cap."""
    eng = VoiceEngine(version_dir, max_batch=4, ignore_eos=True, max_queued=40)
    yield eng
    eng.close(timeout=120)


def test_noise_is_drawn_per_chunk_and_equals_the_whole():
    whole = request_noise(7, 3 * NOISE_BLOCK + 10, 192, 0.5)
    for start, stop in ((0, 5), (NOISE_BLOCK - 3, NOISE_BLOCK + 4), (2 * NOISE_BLOCK + 1, 3 * NOISE_BLOCK + 10)):
        np.testing.assert_array_equal(noise_frames(7, start, stop, 192, 0.5), whole[:, start:stop])
    assert not np.array_equal(noise_frames(8, 0, 5, 192, 0.5), whole[:, :5])
    assert not np.any(noise_frames(7, 0, 5, 192, 0.0))


def test_submit_allocates_no_noise_for_the_budget(engine):
    """30 sentences at speed 0.25 used to draw 30 x 12001 latent frames x 192 channels of noise
    at submit (about 276 MB); now submit keeps only the requests."""
    reqs = [make_request(200, data_seed=i, max_tokens=1500, speed=0.25, seed=i) for i in range(30)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        handles = engine.submit_group(reqs, [Collector() for _ in reqs], RequestGroup(tokens=1))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    for h in handles:
        h.cancel()
    for h in handles:
        assert h.wait(120)
    assert peak < 8 << 20, f"submit allocated {peak / 2**20:.1f} MiB"


def test_audio_cap_ends_the_request_with_budget(engine):
    """One allowance for all sentences of a request: together they stop at the cap (plus at
    most one token per other row of the same step)."""
    reqs = [make_request(8, data_seed=i, max_tokens=200, seed=i) for i in range(6)]
    cols = [Collector() for _ in reqs]
    handles = engine.submit_group(reqs, cols, RequestGroup(tokens=40))
    for h in handles:
        assert h.wait(120)
    total = sum(h.generated for h in handles)
    assert 40 <= total <= 40 + engine.max_rows_per_request, total
    assert {c.final.finish_reason for c in cols} == {FINISH_BUDGET}
    assert sum(1 for h in handles if h.generated == 0) >= 2  # later sentences never started


def test_full_queue_refuses_the_whole_request(engine):
    hold = [make_request(8, data_seed=i, max_tokens=1500, seed=i) for i in range(36)]
    handles = engine.submit_group(hold, [Collector() for _ in hold])
    try:
        with pytest.raises(EngineBusy, match=r"the voice is busy \(36 sentences in progress, limit 40\)"):
            engine.submit_group([make_request(8, max_tokens=5) for _ in range(5)], [Collector() for _ in range(5)])
        h = engine.submit_group([make_request(8, max_tokens=5, seed=1)], [Collector()])[0]  # 37 <= 40: accepted
        h.cancel()
    finally:
        for x in handles:
            x.cancel()
    for x in handles:
        assert x.wait(120)
    assert h.wait(120)


def test_a_long_request_does_not_starve_a_later_one(engine):
    """A 30-sentence request fills the intake first; a one-sentence request sent right after it
    is admitted beside the long request's first rows (it holds at most 2 of the 4: fewest rows
    first), not behind its 30 sentences, and finishes while most of them still wait. (FIFO
    admission put it behind all 30.)"""
    long = [make_request(8, data_seed=i, max_tokens=40, seed=i) for i in range(30)]
    long_handles = engine.submit_group(long, [Collector() for _ in long])
    short = engine.submit_group([make_request(8, data_seed=99, max_tokens=40, seed=99)], [Collector()])[0]
    assert short.wait(120)
    for h in long_handles:
        assert h.wait(300)
    assert engine.max_rows_per_request == 2
    later = [h for h in long_handles if h.admitted_at > short.admitted_at]
    assert len(later) >= 26, f"only {len(later)} of the long request's sentences were admitted after the short one"
    finished_after = [h for h in long_handles if h.done_at > short.done_at]
    assert len(finished_after) >= 20
