"""A reference clip per request (api_v2's ref_audio_path + prompt_text) on a real tritonserver.

The voice's own export reference sent per request must give what the voice gives without one
(greedy sampling, fixed seed); different references in concurrent requests must not bleed into
each other; bad clips get INVALID_ARG and cache nothing.
"""
from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from ops.client import ClientError, Reference, stream, synthesize
from tests.triton_fixtures import require_tritonserver, start_server
from tests.voices import REF_TEXT, demo_voice, export_voice

pytestmark = pytest.mark.integration
TEXT = "今天天气很好，我们去公园散步吧。"
FIXED = {"TOP_K": 1, "SEED": 7, "MAX_TOKENS": 30}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    require_tritonserver()
    root = tmp_path_factory.mktemp("refs")
    repo = root / "repo"
    repo.mkdir()
    src = demo_voice(root / "alpha", 3)
    export_voice(src, repo, "alpha", aux=src)
    # a v2ProPlus voice on the same shared HuBERT/BERT/G2PW (one set per repository), plus gsv_sv
    pro = demo_voice(root / "pro", 4, version="v2ProPlus")
    export_voice(pro, repo, "pro", "--sv-model", str(pro / "sv.ckpt"))
    proc = start_server(repo, log_dir=root)
    yield proc, src
    proc.stop()


@pytest.fixture(scope="module")
def version_dir(served, tmp_path_factory):
    server, _ = served
    from python_backend import layout

    vdir = layout.voice_dir(server.repo, "alpha")
    return vdir / str(layout.version_numbers(vdir)[-1])


def _own_reference(src) -> Reference:
    return Reference.from_files(src / "ref.wav", REF_TEXT, "zh")


def _variants(src) -> list[Reference]:
    """Four different clips made from the demo clip (reversed, quieter, shifted in time)."""
    base = _own_reference(src)
    audio, rate = base.audio, base.sample_rate
    clips = [audio, audio[::-1].copy(), 0.3 * audio, np.roll(audio, rate // 2)]
    return [Reference(audio=c.astype(np.float32), sample_rate=rate, text=REF_TEXT, language="zh") for c in clips]


def _metric(server, event: str, model: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gsv_reference_cache_total{") and f'event="{event}"' in line and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_own_reference_per_request_equals_the_default(served):
    server, src = served
    default = synthesize(TEXT, "alpha", server.grpc_url, **FIXED)
    sent = synthesize(TEXT, "alpha", server.grpc_url, reference=_own_reference(src), **FIXED)
    assert sent.audio.size == default.audio.size
    np.testing.assert_allclose(sent.audio, default.audio, atol=2e-3)
    streamed = stream(TEXT, "alpha", server.grpc_url, reference=_own_reference(src), **FIXED)
    assert streamed.audio.size == default.audio.size


def test_pro_voice_own_reference_per_request_equals_the_default(served):
    """v2ProPlus: the clip's speaker-verification embedding comes from gsv_sv per request."""
    server, _ = served
    pro = server.repo.parent / "pro"
    default = synthesize(TEXT, "pro", server.grpc_url, **FIXED)
    sent = synthesize(TEXT, "pro", server.grpc_url, reference=_own_reference(pro), **FIXED)
    assert sent.audio.size == default.audio.size
    np.testing.assert_allclose(sent.audio, default.audio, atol=2e-3)


def test_aux_clips_are_fused_into_the_speaker_conditioning(served):
    """Upstream averages the speaker conditioning over the main and auxiliary clips."""
    for voice in ("alpha", "pro"):
        server, _ = served
        own = _own_reference(server.repo.parent / voice)
        other = _variants(server.repo.parent / voice)[1].audio
        fused = Reference(audio=own.audio, sample_rate=own.sample_rate, text=own.text, language="zh", aux=[other])
        a = synthesize(TEXT, voice, server.grpc_url, reference=fused, **FIXED)
        b = synthesize(TEXT, voice, server.grpc_url, reference=fused, **FIXED)
        plain = synthesize(TEXT, voice, server.grpc_url, reference=own, **FIXED)
        assert a.audio.size == b.audio.size and np.allclose(a.audio, b.audio, atol=1e-4), voice
        assert a.audio.size != plain.audio.size or not np.allclose(a.audio, plain.audio, atol=1e-4), voice


def test_a_reference_changes_the_voice_and_is_cached(served):
    server, src = served
    other = _variants(src)[1]
    from python_backend.model_config import TTS_INSTANCES

    hits = _metric(server, "hit", "tts")
    a = synthesize(TEXT, "alpha", server.grpc_url, reference=other, **FIXED)
    b = synthesize(TEXT, "alpha", server.grpc_url, reference=other, **FIXED)
    default = synthesize(TEXT, "alpha", server.grpc_url, **FIXED)
    assert a.audio.size == b.audio.size and np.allclose(a.audio, b.audio, atol=1e-4)
    assert a.audio.size != default.audio.size or not np.allclose(a.audio, default.audio, atol=1e-3)
    # each tts instance keeps its own cache: with one more request than instances, some instance
    # sees the clip a second time (the voice model, one instance, hit on the second request)
    for _ in range(TTS_INSTANCES - 1):
        assert synthesize(TEXT, "alpha", server.grpc_url, reference=other, **FIXED).audio.size == a.audio.size
    assert _metric(server, "hit", "tts") >= hits + 1
    assert _metric(server, "hit", "voice_alpha") >= 1


def test_reference_free_request_speaks_without_prompt_tokens(served):
    """No REF_TEXT: upstream's reference-free mode (the clip only conditions SoVITS)."""
    server, src = served
    own = _own_reference(src)
    free = Reference(audio=own.audio, sample_rate=own.sample_rate, text=None, language="zh")
    a = synthesize(TEXT, "alpha", server.grpc_url, reference=free, **FIXED)
    b = synthesize(TEXT, "alpha", server.grpc_url, reference=free, **FIXED)
    prompted = synthesize(TEXT, "alpha", server.grpc_url, reference=own, **FIXED)
    assert a.audio.size > 0 and a.audio.size == b.audio.size and np.allclose(a.audio, b.audio, atol=1e-4)
    assert a.audio.size != prompted.audio.size or not np.allclose(a.audio, prompted.audio, atol=1e-3)


def test_versions_exported_before_reference_free_support_refuse_it(version_dir, tmp_path):
    """A prefill graph without the ``empty_prompts`` mark (older exports) cannot take T = 0."""
    import shutil

    import onnx

    from python_backend.spectrogram import reference_spectrogram
    from python_backend.voice_engine import RequestError, VoiceEngine

    old = tmp_path / "1"
    shutil.copytree(version_dir, old)
    graph = onnx.load(str(old / "gpt_prefill.onnx"))
    kept = [p for p in graph.metadata_props if p.key != "empty_prompts"]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    onnx.save(graph, str(old / "gpt_prefill.onnx"))
    engine = VoiceEngine(old)
    try:
        spec = reference_spectrogram(np.random.default_rng(0).standard_normal(32000 * 4).astype(np.float32) * 0.1)
        with pytest.raises(RequestError, match="re-export"):
            engine.make_reference(np.zeros(0, np.int64), np.zeros((1024, 0), np.float32), None, [spec])
    finally:
        engine.close(timeout=5)


def test_concurrent_requests_with_different_references_do_not_bleed(served):
    server, src = served
    refs = _variants(src)
    solo = [synthesize(TEXT, "alpha", server.grpc_url, reference=r, **FIXED) for r in refs]
    jobs = [i % 4 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: (i, synthesize(TEXT, "alpha", server.grpc_url, reference=refs[i], **FIXED)),
                                jobs))
    for i, speech in results:
        assert speech.audio.size == solo[i].audio.size, i
        np.testing.assert_allclose(speech.audio, solo[i].audio, atol=1e-3, err_msg=f"reference {i}")


def _bad(src, case: str) -> Reference:
    ref = _own_reference(src)
    rate = ref.sample_rate
    if case == "short":
        ref.audio = ref.audio[: rate]
    elif case == "long":
        ref.audio = np.tile(ref.audio, int(np.ceil(12 * rate / ref.audio.size)))[: 12 * rate]
    elif case == "silent":
        ref.audio = np.zeros(4 * rate, np.float32)
    elif case == "nan":
        ref.audio = ref.audio.copy()
        ref.audio[10] = np.nan
    elif case == "rate":
        ref.sample_rate = 4000
    elif case == "aux":
        ref.aux = [ref.audio[: rate] for _ in range(9)]
    elif case == "kana_text":
        ref.text = "こんにちは、元気ですか。"
    return ref


@pytest.mark.parametrize("case,needle", [
    ("short", "use 3-10 s"), ("long", "use 3-10 s"), ("silent", "silent"), ("nan", "NaN"),
    ("rate", "outside 8000-48000"), ("aux", "at most 8"), ("kana_text", "Japanese kana"),
])
def test_bad_references_are_invalid_arg_and_others_keep_being_served(served, case, needle):
    server, src = served
    with pytest.raises(ClientError) as info:
        synthesize(TEXT, "alpha", server.grpc_url, reference=_bad(src, case), **FIXED)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert synthesize(TEXT, "alpha", server.grpc_url, **FIXED).audio.size > 0


def test_a_failed_reference_caches_nothing(served):
    server, src = served
    bad = _bad(src, "kana_text")
    hits = _metric(server, "hit", "tts")
    for _ in range(2):
        with pytest.raises(ClientError):
            synthesize(TEXT, "alpha", server.grpc_url, reference=bad, **FIXED)
    assert _metric(server, "hit", "tts") == hits


def test_ref_text_without_ref_audio_is_refused(served, tmp_path):
    server, src = served
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from ops.client import _inputs

    inputs = _inputs(grpcclient, TEXT, "alpha", None, FIXED)
    extra = grpcclient.InferInput("REF_TEXT", [1], "BYTES")
    extra.set_data_from_numpy(np.array([REF_TEXT.encode()], dtype=object))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("tts", inputs + [extra])
    assert "REF_TEXT needs REF_AUDIO" in info.value.message()
    assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"


def test_say_takes_a_reference(served, tmp_path):
    from ops import cli

    server, src = served
    out = tmp_path / "out.wav"
    assert cli.main(["say", TEXT, "--voice", "alpha", "--url", server.grpc_url, "-o", str(out), "--seed", "7",
                     "--top-k", "1", "--max-tokens", "30", "--ref-audio", str(src / "ref.wav"),
                     "--ref-text", REF_TEXT, "--ref-lang", "zh", "--aux-ref", str(src / "ref.wav")]) == 0
    audio, rate = sf.read(str(out))
    assert rate == 32000 and audio.size > 0
