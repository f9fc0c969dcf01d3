"""Bounded work on a real tritonserver (tiny random-weight voice): the reproductions of the
review, now refused or capped.

The server runs with small limits (environment variables, as ``gsv-triton serve --max-*`` sets
them): 6 sentences per request, 10 sentences in progress per voice; and in benchmark mode
(``GSV_BENCH_IGNORE_EOS``), so every sentence runs to its token budget and a long request
really is long (the random GPT otherwise stops at a random point).
"""
from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from ops.client import _inputs, stream, synthesize
from tests.triton_fixtures import metric, require_tritonserver, start_server, wait_until
from tests.voices import demo_voice, export_voice

pytestmark = pytest.mark.integration
LIMITS = {"GSV_MAX_SENTENCES": "6", "GSV_MAX_QUEUED_SENTENCES": "10", "GSV_BENCH_IGNORE_EOS": "1"}
_S = "今天天气很好我们一起去公园散步然后回家吃饭晚上再看一部电影今天天气很好我们一起去公园"
LONG = "。".join([_S] * 6) + "。"  # 6 sentences of 95 phones: a budget of 810 tokens each


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_tritonserver()
    root = tmp_path_factory.mktemp("bounded")
    repo = root / "repo"
    repo.mkdir()
    export_voice(demo_voice(root / "src", 3), repo, "alpha", aux=root / "src")
    saved = {k: os.environ.get(k) for k in LIMITS}
    os.environ.update(LIMITS)  # TritonProcess hands the server this process's environment
    try:
        proc = start_server(repo, log_dir=root)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    yield proc
    proc.stop()



def _tts(server, text: str, timeout: float = 120, **params):
    """One ``tts`` call over gRPC; Triton's own exception (status and message) on failure."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return client.infer("tts", _inputs(grpcclient, text, "alpha", None, params), client_timeout=timeout)
    finally:
        client.close()


def _in_flight(server) -> float:
    return metric(server, "gsv_voice_in_flight", model="voice_alpha")


def test_flood_through_tts_is_refused_and_the_server_keeps_serving(server):
    with pytest.raises(InferenceServerException) as err:
        _tts(server, "啊。" * 1000)
    message = str(err.value)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "sentences; the limit is 6 per request (GSV_MAX_SENTENCES)" in message
    assert "\n" not in err.value.message()
    assert synthesize("今天天气很好。", "alpha", server.grpc_url, MAX_TOKENS=20, SEED=1).audio.size > 0


def test_calling_the_voice_model_directly_is_bounded_too(server):
    """The reproduction sent 1500 one-phone sentences straight to ``voice_<NAME>`` (5.9 MiB, +630
    MiB in the stub): the voice model checks the same limits before slicing anything."""
    n = 1500
    inputs = {"PHONES": np.full(n, 5, np.int64), "BERT": np.zeros((1024, n), np.float32),
              "SENTENCE_PHONES": np.ones(n, np.int32)}
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        tensors = []
        for name, value in inputs.items():
            t = grpcclient.InferInput(name, list(value.shape), {np.int64: "INT64", np.float32: "FP32",
                                                                np.int32: "INT32"}[value.dtype.type])
            t.set_data_from_numpy(value)
            tensors.append(t)
        client.async_stream_infer("voice_alpha", tensors)
        result, error = answers.get(timeout=60)
    finally:
        client.stop_stream()
        client.close()
    assert result is None and error is not None
    assert "1500 sentences; the limit is 6 per request" in str(error), error
    assert wait_until(lambda: _in_flight(server) == 0, 10)


def test_a_normal_request_meets_its_deadline_beside_long_ones_and_a_full_voice_says_unavailable(server):
    """A long streamed request holds 6 sentences of the voice's 10; a second long request (6
    more) is refused with UNAVAILABLE before any work starts, and a one-sentence request sent
    meanwhile gets a row at once (fair admission) and finishes within its deadline.

    (The long request streams, so both kinds of request meet at the voice: the non-streaming
    case is ``test_a_short_request_finishes_while_a_long_one_waits_for_its_first_sentence``.)"""
    errors: list = []

    def long_request():
        try:
            stream(LONG, "alpha", server.grpc_url, SEED=3, timeout=600)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            errors.append(exc)

    first = threading.Thread(target=long_request)
    first.start()
    assert wait_until(lambda: _in_flight(server) >= 1, 60), "the long request never started"
    with pytest.raises(InferenceServerException) as busy:
        _tts(server, LONG, SEED=4)
    assert busy.value.status() == "StatusCode.UNAVAILABLE" and "the voice is busy" in str(busy.value), busy.value
    assert _in_flight(server) == 1  # the long one is still going
    started = time.monotonic()
    short = synthesize("你好。", "alpha", server.grpc_url, MAX_TOKENS=20, SEED=5, timeout=60)
    elapsed = time.monotonic() - started
    assert short.audio.size > 0
    assert _in_flight(server) == 1, "the short request should finish while the long one still runs"
    first.join(600)
    assert not errors, errors
    print(f"one-sentence request beside a 6-sentence one: {elapsed:.1f} s")


# a short first sentence (23 phones: 234 tokens), then four long ones (117 phones: 986 tokens each)
_LONGER = ("今天天气很好我们一起去公园散步然后回家吃饭晚上再看一部电影" * 2)[:58]
CANCEL_TEXT = "今天天气很好我们去散步。" + "。".join([_LONGER] * 4) + "。"


def test_non_streaming_request_is_cancelled_when_its_client_times_out(server):
    """The client gives up after 2 s; Triton cancels the request, the ``tts`` instance sees it
    after the voice's next response (a sentence, or the heartbeat the voice sends about every
    half second for tts) and tells the voice, and the voice drops the remaining sentences
    (counted as cancelled) instead of finishing them. Without the heartbeat the instance would
    look only between sentences, which here run together and end at about the same time."""
    before = metric(server, "gsv_voice_requests_total", reason="cancelled")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.infer("tts", _inputs(grpcclient, CANCEL_TEXT, "alpha", None, {"SEED": 9}), client_timeout=2)
    finally:
        client.close()
    assert wait_until(lambda: metric(server, "gsv_voice_requests_total", reason="cancelled") > before, 60), \
        "the voice never dropped the abandoned request"
    assert wait_until(lambda: _in_flight(server) == 0, 30)
    assert synthesize("你好。", "alpha", server.grpc_url, MAX_TOKENS=20, SEED=5).audio.size > 0


def test_a_short_request_finishes_while_a_long_one_waits_for_its_first_sentence(server):
    """Non-streaming requests reach the voice together: each ``tts`` instance (a stub process of
    its own) serves one request, so a long request waiting for its first sentence (a BLS call
    into the decoupled voice returns only with it) holds up no other. With one ``tts`` stub the
    short request waited at the ``tts`` boundary until that whole sentence was done."""
    errors: list = []

    def long_request():
        try:
            _tts(server, _LONGER + "。", timeout=600, SEED=11)  # one sentence of 986 tokens (EOS ignored)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            errors.append(exc)

    first = threading.Thread(target=long_request)
    first.start()
    assert wait_until(lambda: _in_flight(server) >= 1, 60), "the long request never reached the voice"
    started = time.monotonic()
    short = synthesize("你好。", "alpha", server.grpc_url, MAX_TOKENS=20, SEED=5, timeout=120)
    elapsed = time.monotonic() - started
    assert short.audio.size > 0
    still_running = first.is_alive() and _in_flight(server) == 1
    first.join(600)
    assert not errors, errors
    assert still_running, "the short request waited for the long one's first sentence"
    print(f"one-sentence tts request beside a long one waiting for its first sentence: {elapsed:.1f} s")
