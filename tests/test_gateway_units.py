"""The gateway's pure parts without a server: cut methods, request checks, encoders, paths."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf
from multidict import MultiDict

from ops import audio_encode
from ops.gateway import pack_lines
from ops.gateway_apiv2 import ApiV2Request, RequestError, resolve_reference
from ops.gateway_openai import SpeechError, SpeechRequest
from ops.text_cut import cut, cut0, cut1, cut2, cut3, cut4, cut5

# ---- cut methods (expected values worked out from upstream's rules) -----------------------


def test_cut0_keeps_the_text_and_blanks_pure_punctuation():
    assert cut0("你好，世界。") == "你好，世界。"
    assert cut0("!?. ,") == "\n"


def test_cut1_groups_four_sentences_and_the_tail_joins_the_last_group():
    text = "一，二，三，四，五，六，七，八，九，"
    assert cut1(text) == "一，二，三，四，\n五，六，七，八，九，"
    assert cut1("一，二，三，四，五") == "一，二，三，四，五。"   # 5-8 sentences: one group, with the added stop
    assert cut1("一，二，三") == "一，二，三"                      # up to 4: the text as given
    assert cut1("一……二——三") == "一……二——三"


def test_cut2_about_fifty_characters_and_a_short_tail_joins():
    a, b = "甲" * 30 + "，", "乙" * 30 + "，"
    assert cut2(a + b + a + b) == a + b + "\n" + a + b
    assert cut2(a + b + "丙。") == a + b + "丙。"
    assert cut2("短句") == "短句"


def test_cut3_and_cut4_cut_at_full_stops():
    assert cut3("第一句。第二句。。") == "第一句\n第二句"
    assert cut4("One. Two costs 3.5 dollars. Three.") == "One\n Two costs 3.5 dollars\n Three"


def test_cut5_cuts_after_every_mark_but_decimal_points():
    assert cut5("你好，世界！价格是3.14元。ok") == "你好，\n世界！\n价格是3.14元。\nok"
    assert cut5("，，。") == ""
    assert cut5("a;b、c") == "a;\nb、\nc"


def test_cut_drops_empty_lines_and_refuses_unknown_methods():
    assert cut("你好。\n\n世界。", "cut0") == ["你好。", "世界。"]
    with pytest.raises(ValueError, match="cut9"):
        cut("x", "cut9")


@pytest.mark.parametrize("method", ["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"])
def test_cut_methods_scan_long_adversarial_text_in_one_pass(method):
    # 200k characters of marks and digits: a quadratic method would take minutes here
    text = ("1.2.3…，" * 25000) + "好"
    assert isinstance(cut(text, method), list)


def test_pack_lines_respects_the_tts_limit():
    lines = ["好" * 900, "好" * 900, "好" * 900, "长" * 4500]
    texts = pack_lines(lines, 2000)
    assert all(len(t) <= 2000 for t in texts)
    assert "".join(t.replace("\n", "") for t in texts) == "".join(lines)


# ---- api_v2 requests ----------------------------------------------------------------------


def test_defaults_are_upstreams():
    req = ApiV2Request.from_json({"text": "你好", "text_lang": "ZH"})
    assert (req.top_k, req.top_p, req.temperature, req.text_split_method) == (15, 1.0, 1.0, "cut5")
    assert (req.repetition_penalty, req.fragment_interval, req.seed, req.media_type) == (1.35, 0.3, -1, "wav")
    assert req.text_lang == "zh" and req.streaming_mode == 0
    assert "SEED" not in req.tts_params() and req.tts_params()["TOP_K"] == 15


def test_sample_steps_reaches_tts_for_v4_voices():
    """upstream api_v2's sample_steps (default 32) is v4's CFM step count: sent on as SAMPLE_STEPS."""
    assert ApiV2Request.from_json({"text": "x", "text_lang": "en"}).tts_params()["SAMPLE_STEPS"] == 32
    assert ApiV2Request.from_json({"text": "x", "text_lang": "en", "sample_steps": 8}).tts_params()["SAMPLE_STEPS"] == 8
    with pytest.raises(RequestError, match="sample_steps"):
        ApiV2Request.from_json({"text": "x", "text_lang": "en", "sample_steps": 65}).validate()


def test_query_strings_are_typed_like_upstreams():
    query = MultiDict([("text", "你好"), ("text_lang", "zh"), ("top_k", "5"), ("streaming_mode", "true"),
                       ("split_bucket", "false"), ("seed", "42"), ("aux_ref_audio_paths", "a.wav"),
                       ("aux_ref_audio_paths", "b.wav"), ("ref_audio_path", "r.wav")])
    req = ApiV2Request.from_query(query)
    assert req.top_k == 5 and req.streaming_mode == 1 and req.split_bucket is False
    assert req.aux_ref_audio_paths == ["a.wav", "b.wav"] and req.tts_params()["SEED"] == 42
    assert ApiV2Request.from_query(MultiDict(text="x", text_lang="en", streaming_mode="3")).streaming_mode == 3


@pytest.mark.parametrize("body,needle", [
    ({"text_lang": "zh"}, "text is required"),
    ({"text": "x"}, "text_lang is required"),
    ({"text": "x", "text_lang": "xx"}, "text_lang: xx is not supported"),
    ({"text": "x", "text_lang": "en", "prompt_lang": "xx"}, "prompt_lang: xx"),
    ({"text": "x", "text_lang": "en", "top_p": 0}, "top_p"),
    ({"text": "x", "text_lang": "en", "top_k": 1.5}, "top_k: expected an integer"),
    ({"text": "x", "text_lang": "en", "seed": -2}, "seed"),
    ({"text": "x", "text_lang": "en", "split_bucket": "maybe"}, "split_bucket: expected true or false"),
    ({"text": "x", "text_lang": "en", "streaming_mode": 4}, "streaming_mode must be 0, 1, 2, 3"),
    ({"text": "x", "text_lang": "en", "streaming_mode": "fast"}, "streaming_mode must be 0, 1, 2, 3"),
    ({"text": "x", "text_lang": "en", "media_type": "mp4"}, "media_type: mp4"),
    ({"text": "x", "text_lang": "en", "prompt_text": "hi"}, "need ref_audio_path"),
    ({"text": "x", "text_lang": "en", "aux_ref_audio_paths": "a.wav"}, "a list of paths"),
    ({"text": "x", "text_lang": "en", "voice_version": 0}, "voice_version"),
    ({"text": "x", "text_lang": "en", "temperature": float("nan")}, "finite"),
    ({"text": "，。", "text_lang": "zh"}, "nothing to speak"),
    ({"text": "x", "text_lang": "en", "return_fragment": True}, "unknown field(s): return_fragment"),
    ([1, 2], "JSON object"),
])
def test_bad_requests_name_the_field(body, needle):
    with pytest.raises(RequestError) as info:
        ApiV2Request.from_json(body)
    assert needle in str(info.value) and info.value.status == 400


def test_reference_paths_stay_inside_the_root(tmp_path):
    root = tmp_path / "refs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.wav").write_bytes(b"x")
    (tmp_path / "secret.wav").write_bytes(b"x")
    os.symlink(tmp_path / "secret.wav", root / "link.wav")
    os.symlink(root / "sub" / "a.wav", root / "inside.wav")
    assert resolve_reference(root, "sub/a.wav") == (root / "sub" / "a.wav").resolve()
    assert resolve_reference(root, "inside.wav") == (root / "sub" / "a.wav").resolve()
    for path, needle in [("../secret.wav", "'..'"), ("sub/../../secret.wav", "'..'"), (str(tmp_path / "secret.wav"),
                         "relative"), ("link.wav", "outside"), ("nope.wav", "does not exist"), ("sub", "not a file"),
                         ("", "empty")]:
        with pytest.raises(RequestError, match=needle):
            resolve_reference(root, path)
    with pytest.raises(RequestError, match="--ref-root"):
        resolve_reference(None, "sub/a.wav")


# ---- OpenAI requests ----------------------------------------------------------------------


def test_openai_request_defaults_and_checks():
    req = SpeechRequest.from_json({"model": "tts-1", "input": "hello", "voice": "alpha"})
    assert (req.response_format, req.speed, req.stream_format) == ("mp3", 1.0, "audio")
    for body, param in [({"model": "m", "input": "x" * 4097, "voice": "a"}, "input"),
                        ({"model": "m", "input": "x", "voice": "a", "speed": 0.1}, "speed"),
                        ({"model": "m", "input": "x", "voice": "a", "response_format": "ogg"}, "response_format"),
                        ({"model": "m", "input": "x", "voice": "a", "stream_format": "ws"}, "stream_format"),
                        ({"model": "m", "input": "x"}, "voice"),
                        ({"model": "m", "input": "x", "voice": "a", "colour": "red"}, "colour")]:
        with pytest.raises(SpeechError) as info:
            SpeechRequest.from_json(body)
        assert info.value.param == param


# ---- encoders -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in audio_encode.available() if n not in ("raw", "pcm", "aac")])
def test_streamed_encoding_is_one_playable_file(name):
    audio = (0.3 * np.sin(np.arange(32000) * 0.05)).astype(np.float32)
    enc = audio_encode.Encoder(name, 32000)
    body = b"".join([enc.push(audio[i:i + 4000]) for i in range(0, audio.size, 4000)] + [enc.close()])
    decoded, rate = sf.read(io.BytesIO(body), dtype="float32")
    assert decoded.size >= audio.size * (rate / 32000) * 0.95
    if name in ("wav", "flac"):
        np.testing.assert_allclose(decoded, audio, atol=1e-4)


def test_wav_stream_header_says_unknown_sizes_and_pcm_is_int16():
    header = audio_encode.wav_stream_header(32000)
    assert len(header) == 44 and header[4:8] == b"\xff" * 4 and header[40:44] == b"\xff" * 4
    assert audio_encode.to_int16(np.array([2.0, -2.0, 0.5], np.float32)).tolist() == [32767, -32767, 16383]


def test_unavailable_format_names_the_available_ones():
    with pytest.raises(audio_encode.EncodeError, match="available: wav, raw, pcm"):
        audio_encode.require("wma")


# ---- the console --------------------------------------------------------------------------


def test_console_reads_routing_from_control_metrics():
    from ops.gateway_console import merge_voices, parse_routing

    metrics = """# HELP gsv_active_version active version of each voice (from the repository)
# TYPE gsv_active_version gauge
gsv_active_version{voice="alpha"} 3.0
gsv_active_version{voice="beta"} 1.0
gsv_active_version{voice="gone"} 2.0
gsv_canary_version{voice="alpha"} 4.0
gsv_canary_weight{voice="alpha"} 0.1
gsv_swaps_total{voice="alpha"} 2.0
"""
    routing = parse_routing(metrics)
    assert routing["alpha"] == {"active": 3, "canary": 4, "canary_weight": 0.1}
    assert routing["beta"] == {"active": 1, "canary": None, "canary_weight": None}
    rows = merge_voices({"alpha": [3, 4], "beta": [1]}, routing)
    assert [(r["name"], r["versions"], r["active"], r["canary"]) for r in rows] == [
        ("alpha", [3, 4], 3, 4), ("beta", [1], 1, None), ("gone", [], 2, None)]
    assert merge_voices({"alpha": [3]}, None) == [
        {"name": "alpha", "versions": [3], "active": None, "canary": None, "canary_weight": None}]


def test_console_decodes_uploaded_clips_to_mono():
    from ops.gateway_console import decode_clip

    stereo = np.stack([np.full(1600, 0.5, np.float32), np.zeros(1600, np.float32)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 16000, format="FLAC")
    audio, rate = decode_clip(buf.getvalue())
    assert rate == 16000 and audio.shape == (1600,) and abs(float(audio.mean()) - 0.25) < 1e-3
    with pytest.raises(RequestError, match="ref_audio: not a readable audio file"):
        decode_clip(b"RIFF nonsense")


def test_console_page_escapes_server_strings():
    """The page's script shows server strings through textContent/option.text only."""
    from ops.gateway_console import CONSOLE_DIR

    script = (CONSOLE_DIR / "console.js").read_text()
    assert "innerHTML" not in script.replace("never innerHTML", "") and "insertAdjacentHTML" not in script
    assert "document.write" not in script
    assert {p.name for p in CONSOLE_DIR.iterdir()} >= {"index.html", "console.js", "console.css"}
