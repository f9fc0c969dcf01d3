"""``gsv-triton gateway`` against a real tritonserver: upstream api_v2 and OpenAI's speech API.

Two tiny random-weight voices; the gateway runs as its own process (``gsv-triton gateway``)
with ``--max-tokens`` so the babbling random GPTs stay short.
"""
from __future__ import annotations

import http.client
import io
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from ops import audio_encode
from tests.gateway_fixtures import ROOT, Gateway, get, post
from tests.voices import REF_TEXT

pytestmark = pytest.mark.integration

# upstream api_v2's docstring example, as written there (only host and port differ)
GET_EXAMPLE = ("/tts?text=先帝创业未半而中道崩殂，今天下三分，益州疲弊，此诚危急存亡之秋也。&text_lang=zh"
               "&ref_audio_path=archive_jingyuan_1.wav&prompt_lang=zh&prompt_text=我是「罗浮」云骑将军景元。不必拘谨，"
               "「将军」只是一时的身份，你称呼我景元便可&text_split_method=cut5&batch_size=1&media_type=wav"
               "&streaming_mode=true")
# the docstring's POST body with its defaults, filled in with the GET example's values
POST_EXAMPLE = {
    "text": "先帝创业未半而中道崩殂，今天下三分，益州疲弊，此诚危急存亡之秋也。", "text_lang": "zh",
    "ref_audio_path": "archive_jingyuan_1.wav", "aux_ref_audio_paths": [],
    "prompt_text": "我是「罗浮」云骑将军景元。不必拘谨，「将军」只是一时的身份，你称呼我景元便可", "prompt_lang": "zh",
    "top_k": 15, "top_p": 1, "temperature": 1, "text_split_method": "cut5", "batch_size": 1, "batch_threshold": 0.75,
    "split_bucket": True, "speed_factor": 1.0, "fragment_interval": 0.3, "seed": -1, "parallel_infer": True,
    "repetition_penalty": 1.35, "sample_steps": 32, "super_sampling": False, "streaming_mode": False,
    "overlap_length": 2, "min_chunk_length": 16,
}
SHORT = {"text": "今天天气很好。", "text_lang": "zh"}


def decode(body: bytes, media: str) -> tuple[np.ndarray, int]:
    if media in ("raw", "pcm"):
        return np.frombuffer(body, "<i2").astype(np.float32) / 32768, 32000
    audio, rate = sf.read(io.BytesIO(body), dtype="float32")
    return audio, rate


@pytest.fixture(scope="module")
def stack(demo_triton):
    triton, root = demo_triton
    gateway = Gateway(triton.grpc_url, root / "refs", root / "gateway.log", admin_key=triton.admin_key)
    yield triton, gateway, root
    gateway.stop()


def test_get_example_verbatim_streams_a_playable_wav(stack):
    _, gw, _ = stack
    status, headers, body = get(gw.url + urllib.parse.quote(GET_EXAMPLE, safe="/?=&"))
    assert status == 200, body[:300]
    assert headers["X-Voice-Version"] == "1" and headers["Content-Type"] == "audio/wav"
    assert body[4:8] == b"\xff\xff\xff\xff" and body[40:44] == b"\xff\xff\xff\xff"   # streaming header
    audio, rate = decode(body, "wav")
    assert rate == 32000 and audio.size > 3200 and np.abs(audio).max() > 1e-3


def test_post_example_gives_a_wav(stack):
    _, gw, _ = stack
    status, headers, body = post(gw.url + "/tts", POST_EXAMPLE)
    assert status == 200, body[:300]
    audio, rate = decode(body, "wav")
    assert rate == 32000 and audio.size > 3200 and headers["X-Voice-Version"] == "1"


@pytest.mark.parametrize("media", ["wav", "raw", "ogg", "flac", "aac"])
@pytest.mark.parametrize("mode", [False, 1, 2, 3])
def test_every_media_type_and_streaming_mode(stack, media, mode):
    _, gw, _ = stack
    status, headers, body = post(gw.url + "/tts", {**SHORT, "media_type": media, "streaming_mode": mode})
    if media not in audio_encode.available():
        assert status == 400 and media in json.loads(body)["message"]
        return
    assert status == 200, body[:300]
    assert headers["Content-Type"] == audio_encode.CONTENT_TYPES[media]
    if media == "aac":
        assert body[:2] in (b"\xff\xf1", b"\xff\xf9")   # ADTS sync word
        return
    audio, rate = decode(body, media)
    assert rate == 32000 and audio.size > 1600 and np.all(np.isfinite(audio))


def test_openai_client_plain_and_streaming(stack):
    from openai import OpenAI

    _, gw, _ = stack
    client = OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    models = client.models.list()
    assert {m.id for m in models.data} == {"alpha", "beta"}
    for fmt in ("wav", "flac", "mp3", "opus"):
        reply = client.audio.speech.create(model="tts-1", voice="beta", input="今天天气很好。", response_format=fmt)
        audio, _ = decode(reply.content, fmt)
        assert audio.size > 1600, fmt
    pcm = client.audio.speech.create(model="tts-1", voice="beta", input="你好。", response_format="pcm", speed=1.5)
    assert len(pcm.content) > 3200
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alpha", input="今天天气很好。我们去公园散步吧！", response_format="wav") as resp:
        assert resp.headers["x-voice-version"] == "1"
        body = b"".join(resp.iter_bytes())
    assert decode(body, "wav")[0].size > 3200
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alpha", input="今天天气很好。", response_format="pcm", stream_format="sse") as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[-1:]] == ["speech.audio.done"]
    assert all(e["type"] == "speech.audio.delta" for e in events[:-1]) and len(events) > 1
    import base64

    assert sum(len(base64.b64decode(e["audio"])) for e in events[:-1]) > 3200


def test_openai_errors_have_openai_shape(stack):
    from openai import BadRequestError, NotFoundError, OpenAI

    _, gw, _ = stack
    client = OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(NotFoundError):
        client.audio.speech.create(model="tts-1", voice="nobody", input="你好。")
    with pytest.raises(BadRequestError, match="speed"):
        client.audio.speech.create(model="tts-1", voice="alpha", input="你好。", speed=9)
    with pytest.raises(BadRequestError, match="4096"):
        client.audio.speech.create(model="tts-1", voice="alpha", input="好" * 4097)


def test_sixteen_concurrent_requests_across_two_voices(stack):
    _, gw, _ = stack
    fixed = {**SHORT, "media_type": "raw", "top_k": 1, "seed": 7}

    def run(voice):
        status, headers, body = post(gw.url + "/tts", {**fixed, "voice": voice})
        assert status == 200, body[:300]
        return headers["X-Voice-Version"], np.frombuffer(body, "<i2").astype(np.int32)

    solo = {v: run(v) for v in ("alpha", "beta")}
    assert solo["alpha"][1].size != solo["beta"][1].size or np.abs(solo["alpha"][1] - solo["beta"][1]).max() > 100
    voices = ["alpha", "beta"] * 8
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, voices))
    for voice, (version, audio) in zip(voices, results):
        assert version == "1"
        assert audio.size == solo[voice][1].size, voice
        assert np.abs(audio - solo[voice][1]).max() <= 40, voice   # float rounding across batch shapes


@pytest.mark.parametrize("body,status,needle", [
    ({"text_lang": "zh"}, 400, "text is required"),
    ({"text": "你好"}, 400, "text_lang is required"),
    ({**SHORT, "text_lang": "fr"}, 400, "text_lang: fr is not supported"),
    ({**SHORT, "prompt_lang": "xx", "ref_audio_path": "archive_jingyuan_1.wav"}, 400, "prompt_lang"),
    ({**SHORT, "ref_audio_path": "../outside.wav"}, 400, "without '..'"),
    ({**SHORT, "ref_audio_path": "/etc/passwd"}, 400, "relative"),
    ({**SHORT, "ref_audio_path": "escape.wav"}, 400, "outside the reference folder"),
    ({**SHORT, "ref_audio_path": "missing.wav"}, 400, "does not exist"),
    ({**SHORT, "ref_audio_path": "notes.txt"}, 400, "not a readable audio file"),
    ({**SHORT, "voice": "nobody"}, 404, "not loaded"),
    ({**SHORT, "voice_version": 9}, 404, "version 9 is not loaded"),
    ({**SHORT, "media_type": "mp4"}, 400, "media_type: mp4"),
    ({**SHORT, "top_k": 0}, 400, "top_k"),
    ({**SHORT, "temperature": -1}, 400, "temperature"),
    ({**SHORT, "speed_factor": 10}, 400, "speed_factor"),
    ({**SHORT, "streaming_mode": 7}, 400, "streaming_mode"),
    ({**SHORT, "text_split_method": "cut9"}, 400, "text_split_method"),
    ({**SHORT, "bogus": 1}, 400, "unknown field(s): bogus"),
    ({**SHORT, "top_k": "many"}, 400, "top_k: expected an integer"),
])
def test_bad_requests_get_400_message(stack, body, status, needle):
    _, gw, _ = stack
    got, _, raw = post(gw.url + "/tts", body)
    assert got == status
    assert needle in json.loads(raw)["message"]


def test_bad_bodies_and_publishing_endpoints(stack):
    _, gw, _ = stack
    got, _, raw = post(gw.url + "/tts", None, raw=b"{not json")
    assert got == 400 and "not valid JSON" in json.loads(raw)["message"]
    got, _, raw = post(gw.url + "/tts", None, raw=b"x" * ((1 << 20) + 1))
    assert got == 400 and "larger than" in json.loads(raw)["message"]
    got, _, raw = get(gw.url + "/tts?text_lang=zh")
    assert got == 400 and json.loads(raw) == {"message": "text is required"}
    for path in ("/set_gpt_weights?weights_path=x.ckpt", "/set_sovits_weights?weights_path=x.pth",
                 "/set_refer_audio?refer_audio_path=a.wav", "/control?command=restart"):
        got, _, raw = get(gw.url + path)
        assert got == 400 and "gsv-triton publish" in json.loads(raw)["message"], path
    assert get(gw.url + "/health")[0] == 200


def test_reference_clip_is_sent_as_tts_reference_inputs(stack):
    """ref_audio_path/prompt_text/prompt_lang reach tts as REF_*: the same audio as tritonclient
    sending that clip itself (greedy, fixed seed)."""
    from ops.client import Reference, synthesize

    triton, gw, root = stack
    fixed = {**SHORT, "media_type": "raw", "top_k": 1, "seed": 3}
    status, _, sent = post(gw.url + "/tts", {**fixed, "ref_audio_path": "archive_jingyuan_1.wav",
                                            "prompt_text": REF_TEXT, "prompt_lang": "zh"})
    assert status == 200
    ref = Reference.from_files(root / "refs" / "archive_jingyuan_1.wav", REF_TEXT, "zh")
    direct = synthesize(SHORT["text"], "alpha", triton.grpc_url, language="zh", reference=ref, TOP_K=1, SEED=3,
                        MAX_TOKENS=20)
    a = np.frombuffer(sent, "<i2").astype(np.int32)
    b = audio_encode.to_int16(direct.audio).astype(np.int32)
    assert a.size == b.size and np.abs(a - b).max() <= 40


def test_over_the_limit_gets_503_and_a_dropped_client_cancels(stack):
    triton, _, root = stack
    refs = root / "refs"
    gw = Gateway(triton.grpc_url, refs, root / "gateway-limit.log", "--max-in-flight", "1",
                 admin_key=triton.admin_key)
    try:
        long_text = "今天天气很好。我们一起去公园散步。然后回家吃饭。明天还要上班。" * 3
        body = json.dumps({"text": long_text, "text_lang": "zh", "streaming_mode": 2, "media_type": "raw"})
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=120)
        conn.request("POST", "/tts", body=body.encode(), headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 60
        while json.loads(get(gw.url + "/health")[2])["in_flight"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, headers, raw = post(gw.url + "/tts", SHORT)
        assert status == 503 and int(headers["Retry-After"]) >= 1 and "busy" in json.loads(raw)["message"]
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read(64)
        conn.sock.close()   # the client goes away mid-stream
        conn.close()
        while "cancelled by the client" not in triton.log_tail(400):
            assert time.monotonic() < deadline + 60, "tts_stream was not cancelled"
            time.sleep(0.2)
        while json.loads(get(gw.url + "/health")[2])["in_flight"]:
            time.sleep(0.05)
        assert post(gw.url + "/tts", SHORT)[0] == 200
    finally:
        gw.stop()
    log = (root / "gateway.log").read_text()
    assert "[gateway] api_v2 voice=alpha version=1 audio_s=" in log and "latency_s=" in log


def test_text_longer_than_one_tts_request_runs_on_one_version(stack):
    _, gw, _ = stack
    text = "今天天气很好" * 350   # 2100 characters: two tts requests, the second pinned to the first's version
    status, headers, body = post(gw.url + "/tts", {"text": text, "text_lang": "zh", "text_split_method": "cut0",
                                                   "media_type": "raw"}, timeout=600)
    assert status == 200 and headers["X-Voice-Version"] == "1" and len(body) > 32000


def test_readme_curl_examples_work(stack, tmp_path):
    """The first api_v2 and the OpenAI curl of the README's Gateway section, run as written
    (only the address and the voice name changed)."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    _, gw, _ = stack
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("## Gateway", 1)[1]
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    commands = [blocks[1].splitlines()[0], blocks[2].replace("\\\n", " ").strip()]
    for command in commands:
        command = command.replace("127.0.0.1:9880", f"127.0.0.1:{gw.port}").replace("myvoice", "alpha")
        done = subprocess.run(command + " -w '%{http_code}'", shell=True, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.stdout.strip() == "200", (command, done.stdout, done.stderr)
    assert decode((tmp_path / "out.wav").read_bytes(), "wav")[0].size > 1600
    assert decode((tmp_path / "out.mp3").read_bytes(), "mp3")[0].size > 1600
