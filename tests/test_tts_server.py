"""The whole pipeline on a real tritonserver, called with real tritonclient (HTTP and gRPC).

Two tiny random-weight voices are exported into one repository and served side by side.
Random-weight GPTs rarely emit EOS, so requests cap the tokens per sentence (MAX_TOKENS).
"""
from __future__ import annotations

import queue
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ops.client import ClientError, stream, synthesize
from tests.triton_fixtures import metric, require_tritonserver, start_server
from tests.voices import demo_voice, export_voice

pytestmark = pytest.mark.integration
VOICES = ("alpha", "beta")
TEXT = "今天天气很好。我们去公园散步吧！"
FIXED = {"TOP_K": 1, "SEED": 7, "MAX_TOKENS": 30}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_tritonserver()
    root = tmp_path_factory.mktemp("tts")
    repo = root / "repo"
    repo.mkdir()
    for seed, voice in enumerate(VOICES, start=3):
        src = root / voice
        export_voice(demo_voice(src, seed), repo, voice, aux=src)
    proc = start_server(repo, log_dir=root, timeout=600)  # 2 cores: loads slow down under others' work
    yield proc
    proc.stop()


def healthy(server) -> bool:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as resp:
        return resp.status == 200


def test_http_and_grpc_give_the_same_audio(server):
    a = synthesize(TEXT, "alpha", server.grpc_url, **FIXED)
    b = synthesize(TEXT, "alpha", server.http_url, http=True, **FIXED)
    assert a.sample_rate == 32000 and a.voice_version == 1
    assert a.audio.size > 32000 * 0.5 and np.all(np.isfinite(a.audio)) and np.abs(a.audio).max() > 1e-4
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-5)
    assert set(a.finish_reason.split(",")) <= {"eos", "budget"}


def test_same_seed_same_audio_and_seed_matters(server):
    """Same tokens and samples; float rounding may differ by ~1e-6 because a request's own
    sentences can share a batch in one run and not in the next."""
    one = synthesize(TEXT, "alpha", server.grpc_url, SEED=11, MAX_TOKENS=30)
    two = synthesize(TEXT, "alpha", server.grpc_url, SEED=11, MAX_TOKENS=30)
    other = synthesize(TEXT, "alpha", server.grpc_url, SEED=12, MAX_TOKENS=30)
    assert one.audio.size == two.audio.size
    np.testing.assert_allclose(one.audio, two.audio, atol=1e-5)
    assert one.audio.size != other.audio.size or not np.allclose(one.audio, other.audio)


def test_pinned_version_is_the_one_that_answers(server):
    """VOICE_VERSION pins a loaded version (the gateway's voice_version); both models honour it."""
    free = synthesize(TEXT, "alpha", server.grpc_url, **FIXED)
    pinned = synthesize(TEXT, "alpha", server.grpc_url, VOICE_VERSION=1, **FIXED)
    streamed = stream(TEXT, "alpha", server.grpc_url, VOICE_VERSION=1, **FIXED)
    assert pinned.voice_version == streamed.voice_version == 1
    np.testing.assert_allclose(pinned.audio, free.audio, atol=1e-5)


def test_long_text_is_split_and_spoken_in_order(server):
    single = synthesize("今天天气很好。", "alpha", server.grpc_url, **FIXED)
    double = synthesize("今天天气很好。我们去公园散步吧！", "alpha", server.grpc_url, **FIXED)
    pause = int(0.3 * 32000)
    assert double.audio.size > single.audio.size + pause
    np.testing.assert_allclose(double.audio[: single.audio.size], single.audio, atol=1e-4)


def test_stream_first_chunk_arrives_before_the_last_is_computed(server):
    # several sentences: each makes at least 11 tokens (EOS is masked that long), so the
    # stream has many chunks whatever the random GPT does
    text = "今天天气很好。我们一起去公园散步。然后回家吃饭。明天还要上班。"
    full = synthesize(text, "alpha", server.grpc_url, TOP_K=1, SEED=5, MAX_TOKENS=120)
    got = stream(text, "alpha", server.grpc_url, TOP_K=1, SEED=5, MAX_TOKENS=120)
    assert got.chunks >= 4
    assert got.chunk_times[0] < got.chunk_times[-1]
    assert got.audio.size == full.audio.size
    assert np.max(np.abs(got.audio - full.audio)) < 0.5 * max(np.abs(full.audio).max(), 1e-3)
    assert got.voice_version == full.voice_version


def test_sixteen_concurrent_requests_across_voices_no_crosstalk(server):
    solo = {v: synthesize(TEXT, v, server.grpc_url, **FIXED) for v in VOICES}
    assert solo["alpha"].audio.size != solo["beta"].audio.size or not np.allclose(solo["alpha"].audio, solo["beta"].audio)
    jobs = [VOICES[i % 2] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda v: (v, synthesize(TEXT, v, server.grpc_url, **FIXED)), jobs))
    for voice, speech in results:
        assert speech.audio.size == solo[voice].audio.size, voice
        np.testing.assert_allclose(speech.audio, solo[voice].audio, atol=1e-3, err_msg=voice)


@pytest.mark.parametrize("kwargs,code,needle", [
    ({"voice": "nobody"}, "NOT_FOUND", "not loaded"),
    ({"text": "   "}, "INVALID_ARG", "empty or whitespace"),
    ({"text": "好" * 2001}, "INVALID_ARG", "limit"),
    ({"TOP_P": 1.5}, "INVALID_ARG", "TOP_P 1.5 out of range"),
    ({"SPEED": 0.0}, "INVALID_ARG", "SPEED 0 out of range"),
    ({"TOP_K": 0}, "INVALID_ARG", "TOP_K 0 out of range"),
    ({"VOICE_VERSION": 9}, "NOT_FOUND", "has no version 9 loaded"),
])
def test_errors_are_clear_coded_and_others_keep_being_served(server, kwargs, code, needle):
    args = {"text": TEXT, "voice": "alpha", **FIXED, **kwargs}
    text, voice = args.pop("text"), args.pop("voice")
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(synthesize, TEXT, "beta", server.grpc_url, **FIXED)
        with pytest.raises(ClientError) as info:
            synthesize(text, voice, server.grpc_url, **args)
        assert good.result().audio.size > 0
    message = str(info.value)
    assert needle in message and "\n" not in message and "Traceback" not in message
    grpc_status = _grpc_status(text, voice, server, args)
    assert grpc_status == {"NOT_FOUND": "StatusCode.NOT_FOUND", "INVALID_ARG": "StatusCode.INVALID_ARGUMENT"}[code]
    http_status = _http_status(text, voice, server, args)
    assert http_status == {"NOT_FOUND": 404, "INVALID_ARG": 400}[code]
    assert healthy(server)


@pytest.mark.parametrize("mode,text", [
    ("all_zh", "长得很长，还没还你。"),
    ("en", "Hello world, how are you today?"),
    ("auto", "今天天气很好。Hello! こんにちは。안녕하세요."),
    ("all_ja", "今日はとても良い天気ですね。"),
    ("all_ko", "오늘은 날씨가 정말 좋네요."),
    ("all_yue", "今日天氣好好，我哋去公園行下啦。"),
])
def test_every_language_mode_speaks(server, mode, text):
    speech = synthesize(text, "alpha", server.grpc_url, language=mode, **FIXED)
    assert speech.audio.size > 0 and np.all(np.isfinite(speech.audio))


@pytest.mark.parametrize("language,text,needle", [
    ("fr", TEXT, "unsupported language 'fr'"),
    ("all_zh", "こんにちは、元気ですか。", "Japanese kana"),
    ("zh", "你好\x07。", "control character"),
])
def test_text_the_mode_cannot_speak_is_invalid_arg(server, language, text, needle):
    with pytest.raises(ClientError) as info:
        synthesize(text, "alpha", server.grpc_url, language=language, **FIXED)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert synthesize(TEXT, "alpha", server.grpc_url, **FIXED).audio.size > 0


def _raw_inputs(module, text: bytes, voice: str, params: dict):
    from ops.client import _inputs

    inputs = _inputs(module, "x", voice, None, params)
    inputs[0].set_data_from_numpy(np.array([text], dtype=object))
    return inputs


def _grpc_status(text, voice, server, params) -> str:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.infer("tts", _raw_inputs(grpcclient, text.encode(), voice, params))
    except InferenceServerException as exc:
        return str(exc.status())
    return "OK"


def _http_status(text, voice, server, params) -> int:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.infer("tts", _raw_inputs(httpclient, text.encode(), voice, params))
    except InferenceServerException as exc:
        return int(re.search(r"\d{3}", str(exc.status())).group()) if exc.status() else -1
    return 200


def test_invalid_utf8_is_invalid_arg(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("tts", _raw_inputs(grpcclient, b"\xff\xfe\xfa", "alpha", FIXED))
    assert "not valid UTF-8" in info.value.message() and str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert healthy(server)



def test_dropped_stream_frees_its_decode_slot(server):
    text = "。".join(["今天天气很好我们一起去公园散步然后回家吃饭"] * 12) + "。"
    before = metric(server, "gsv_voice_requests_total", reason="cancelled")
    chunks: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: chunks.put((result, error)))
    from ops.client import _inputs

    client.async_stream_infer("tts_stream", _inputs(grpcclient, text, "alpha", None, {"MAX_TOKENS": 1500, "SEED": 1}))
    result, error = chunks.get(timeout=120)
    assert error is None and result.as_numpy("AUDIO").size > 0
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.time() + 60
    while time.time() < deadline and metric(server, "gsv_voice_requests_total", reason="cancelled") <= before:
        time.sleep(0.2)
    assert metric(server, "gsv_voice_requests_total", reason="cancelled") > before
    deadline = time.time() + 60
    while time.time() < deadline and metric(server, "gsv_voice_in_flight", model="voice_alpha") > 0:
        time.sleep(0.2)
    assert metric(server, "gsv_voice_in_flight", model="voice_alpha") == 0
    assert synthesize(TEXT, "alpha", server.grpc_url, **FIXED).audio.size > 0


def test_tts_config_serves_requests_in_several_instances_with_a_bounded_queue():
    """The checked-in ``tts`` config is the generated one: several instances (one request each,
    so that many reach the voice together) and a queue that answers UNAVAILABLE when full."""
    from pathlib import Path

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from python_backend.model_config import TTS_INSTANCES, TTS_QUEUE, tts_model_spec

    path = Path(__file__).resolve().parent.parent / "model_repository" / "tts" / "config.pbtxt"
    assert path.read_text() == tts_model_spec().render(), "regenerate model_repository/tts/config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert TTS_INSTANCES >= 2 and config.instance_group[0].count == TTS_INSTANCES
    assert config.dynamic_batching.default_queue_policy.max_queue_size == TTS_QUEUE > 0
    assert not config.model_transaction_policy.decoupled  # one response per request, from execute's thread
