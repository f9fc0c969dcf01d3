"""The gateway's web console (``GET /``) against a real tritonserver, a control service and
headless Chromium: the voice list with routing from the control service, live events, and
speaking (streamed from ``GET /tts``, and with an uploaded clip through ``POST /console/api/tts``).

Two tiny random-weight voices on the session's tritonserver (``demo_triton``, shared with
``test_gateway``). Chromium and chromedriver come from Debian (``apt-get install
chromium chromium-driver``; ``.ci/run`` installs them), selenium from the ``test`` extra.
"""
from __future__ import annotations

import http.client
import io
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from python_backend import history, layout
from tests.gateway_fixtures import Control, Gateway, get, post
from tests.voices import REF_TEXT

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
TEXT = "今天天气很好。"
WAIT_S = 180   # generous upper bounds for waits on a busy 2-core machine, never a timing assertion
# beta gets a routing entry (as `gsv-triton canary` writes it) so the page has a canary to show;
# its canary is its only version, so requests are served as before
BETA_ROUTE = {"active": 1, "canary": 1, "weight": 0.25}
XSS_REASON = '<img src=x onerror="window.pwned=1"><b>bold</b> & "quotes"'


@pytest.fixture(scope="module")
def stack(demo_triton):
    triton, root = demo_triton
    repo = root / "repo"
    routing = layout.routing_file(repo)
    routing.write_text(json.dumps({"beta": BETA_ROUTE}))
    started = []
    try:
        # the control service with a token, as in production: the gateway sends it for /events
        token = "console-test-token-0123456789"
        control = Control(repo, triton, root / "console-control.log", env={"GSV_CONTROL_TOKEN": token})
        started.append(control)
        gateway = Gateway(triton.grpc_url, root / "refs", root / "console-gateway.log", "--control", control.url,
                          "--control-token", token, admin_key=triton.admin_key)
        started.append(gateway)
        yield {"root": root, "repo": repo, "triton": triton, "control": control, "gateway": gateway}
    finally:
        for proc in reversed(started):
            proc.stop()
        routing.unlink()


def multipart(fields: dict[str, str], clip: bytes | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    if clip is not None:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="ref_audio"; filename="clip.wav"\r\n'
                  f"Content-Type: audio/wav\r\n\r\n".encode())
        out.write(clip + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_form(url: str, fields: dict[str, str], clip: bytes | None = None):
    body, content_type = multipart(fields, clip)
    return post(url + "/console/api/tts", None, raw=body, content_type=content_type)


def pcm(body: bytes) -> np.ndarray:
    assert body[:4] == b"RIFF" and body[36:40] == b"data"
    return np.frombuffer(body[44:], "<i2").astype(np.int32)


# ---- the console's API --------------------------------------------------------------------

def test_page_and_assets_are_served(stack):
    gw = stack["gateway"]
    status, headers, body = get(gw.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/console/static/console.js"' in body
    for asset, kind in (("console.js", "javascript"), ("console.css", "text/css")):
        status, headers, body = get(gw.url + "/console/static/" + asset)
        assert status == 200 and kind in headers["Content-Type"] and body
    assert get(gw.url + "/console/static/../gateway.py")[0] == 404


def test_voices_show_routing_read_from_the_control_service(stack):
    status, _, body = get(stack["gateway"].url + "/console/api/voices")
    assert status == 200
    data = json.loads(body)
    assert data["control"] is True and data["control_error"] is None
    rows = {row["name"]: row for row in data["voices"]}
    assert rows["alpha"] == {"name": "alpha", "versions": [1], "active": 1, "canary": None, "canary_weight": None}
    assert rows["beta"] == {"name": "beta", "versions": [1], "active": 1, "canary": 1, "canary_weight": 0.25}


def test_events_are_passed_through_from_the_control_service(stack):
    """The control service wants its token for /events; the gateway (--control-token) sends it."""
    status, _, _ = get(stack["control"].url + "/events?replay=1", timeout=10)
    assert status == 401
    gw = stack["gateway"]
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=WAIT_S)
    try:
        conn.request("GET", "/console/api/events?replay=1")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        seen = []
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
            if line == ": connected":
                break
        assert {e["voice"] for e in seen} >= {"alpha", "beta"}
        assert all(e["event"] in history.EVENTS for e in seen)
    finally:
        conn.close()


def test_uploaded_clip_reaches_tts_like_ref_audio_path(stack):
    """The console's multipart upload and api_v2's ref_audio_path give the same audio (greedy,
    fixed seed): the clip is sent as REF_AUDIO/REF_TEXT/REF_LANGUAGE on the api_v2 path."""
    gw, root = stack["gateway"], stack["root"]
    clip = (root / "alpha" / "ref.wav").read_bytes()
    fixed = {"top_k": "1", "seed": "3"}
    status, headers, body = post_form(gw.url, {"text": TEXT, "voice": "alpha", "version": "", "language": "zh",
                                               "ref_text": REF_TEXT, "ref_language": "zh", **fixed}, clip)
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "audio/wav" and headers["X-Voice-Version"] == "1"
    assert body[4:8] == b"\xff\xff\xff\xff"   # streamed
    api_v2 = {"text": TEXT, "text_lang": "zh", "ref_audio_path": "archive_jingyuan_1.wav", "prompt_text": REF_TEXT,
              "prompt_lang": "zh", "top_k": 1, "seed": 3, "streaming_mode": True}
    status, _, direct = post(gw.url + "/tts", api_v2)
    assert status == 200
    a, b = pcm(body), pcm(direct)
    assert a.size == b.size and a.size > 1600 and np.abs(a - b).max() <= 40
    # another clip (the same one at half the rate) changes the audio: the upload is used
    audio, rate = sf.read(io.BytesIO(clip), dtype="float32")
    other = io.BytesIO()
    sf.write(other, audio[::2], rate // 2, format="WAV")
    status, _, changed = post_form(gw.url, {"text": TEXT, "voice": "alpha", "language": "zh", "ref_text": REF_TEXT,
                                            **fixed}, other.getvalue())
    assert status == 200
    c = pcm(changed)
    assert c.size != a.size or np.abs(c - a).max() > 100


@pytest.mark.parametrize("fields,clip,status,needle", [
    ({"voice": "alpha", "language": "zh"}, None, 400, "text is required"),
    ({"text": TEXT, "voice": "alpha"}, None, 400, "text_lang is required"),
    ({"text": TEXT, "voice": "alpha", "language": "fr"}, None, 400, "text_lang: fr is not supported"),
    ({"text": TEXT, "voice": "nobody", "language": "zh"}, None, 404, "not loaded"),
    ({"text": TEXT, "voice": "alpha", "version": "9", "language": "zh"}, None, 404, "version 9 is not loaded"),
    ({"text": TEXT, "voice": "alpha", "language": "zh", "top_k": "0"}, None, 400, "top_k"),
    ({"text": TEXT, "voice": "alpha", "language": "zh", "bogus": "1"}, None, 400, "unknown field(s): bogus"),
    ({"text": TEXT, "voice": "alpha", "language": "zh", "ref_text": "你好"}, None, 400, "ref_text needs ref_audio"),
    ({"text": TEXT, "voice": "alpha", "language": "zh"}, b"not audio at all", 400, "ref_audio: not a readable audio"),
])
def test_bad_console_requests_get_the_api_v2_error_shape(stack, fields, clip, status, needle):
    got, _, raw = post_form(stack["gateway"].url, fields, clip)
    assert got == status
    assert needle in json.loads(raw)["message"]


def test_console_bodies_are_bounded_and_must_be_forms(stack):
    gw = stack["gateway"]
    got, _, raw = post(gw.url + "/console/api/tts", {"text": TEXT, "language": "zh"})
    assert got == 400 and "multipart/form-data" in json.loads(raw)["message"]
    big, content_type = multipart({"text": TEXT, "voice": "alpha", "language": "zh"}, b"\0" * (10 << 20))
    got, _, raw = post(gw.url + "/console/api/tts", None, raw=big, content_type=content_type)
    assert got == 400 and "larger than" in json.loads(raw)["message"]


def test_without_control_routing_is_unknown_and_events_404(stack):
    root, triton = stack["root"], stack["triton"]
    gw = Gateway(triton.grpc_url, root / "refs", root / "console-gateway-plain.log", admin_key=triton.admin_key)
    try:
        status, _, body = get(gw.url + "/console/api/voices")
        data = json.loads(body)
        assert status == 200 and data["control"] is False
        assert [(r["name"], r["versions"], r["active"], r["canary"]) for r in data["voices"]] == [
            ("alpha", [1], None, None), ("beta", [1], None, None)]
        status, _, body = get(gw.url + "/console/api/events")
        assert status == 404 and "--control" in json.loads(body)["message"]
    finally:
        gw.stop()


# ---- the page in headless Chromium --------------------------------------------------------

@pytest.fixture
def browser(tmp_path):
    chromedriver = shutil.which("chromedriver")
    if not CHROMIUM.is_file() or not chromedriver:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1100",
                "--disable-background-networking", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        state = driver.execute_script("return JSON.stringify(window.gsvConsole || null)")
        status = driver.execute_script("return (document.getElementById('status') || {}).textContent")
        raise AssertionError(f"gave up waiting for {what}; console state {state}; status {status!r}; "
                             f"browser log {driver.get_log('browser')}") from None


def test_console_in_headless_chromium(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    gw, root, repo = stack["gateway"], stack["root"], stack["repo"]
    driver = browser
    driver.get(gw.url + "/")
    _wait(driver, lambda d: d.execute_script("return window.gsvConsole && window.gsvConsole.voicesLoaded") >= 1,
          "the voice list")
    rows = driver.execute_script("""return Object.fromEntries([...document.querySelectorAll('#voices tbody tr')]
        .map((r) => [r.dataset.voice, [...r.cells].map((c) => c.textContent)]))""")
    assert rows["alpha"] == ["alpha", "1", "1", "—"]
    assert rows["beta"] == ["beta", "1", "1", "1 (25% of requests)"]
    assert [o.text for o in Select(driver.find_element(By.ID, "voice")).options] == ["alpha", "beta"]
    assert len(Select(driver.find_element(By.ID, "language")).options) == 11

    # past events replayed, then a live one whose reason is markup: shown as text
    _wait(driver, lambda d: d.execute_script("return window.gsvConsole.events") >= 2, "the replayed events")
    history.append(repo, history.Event(voice="beta", version=1, event="failed", reason=XSS_REASON))
    _wait(driver, lambda d: XSS_REASON in d.find_element(By.ID, "events").text, "the live event")
    assert driver.find_elements(By.CSS_SELECTOR, "#events img, #events b") == []
    assert driver.execute_script("return window.pwned === undefined")

    # speak: streamed playback from GET /tts
    driver.find_element(By.ID, "text").send_keys(TEXT)
    Select(driver.find_element(By.ID, "language")).select_by_value("zh")
    Select(driver.find_element(By.ID, "voice")).select_by_value("beta")
    Select(driver.find_element(By.ID, "version")).select_by_value("1")
    driver.find_element(By.ID, "speak").click()
    _wait(driver, lambda d: d.execute_script("return document.getElementById('player').readyState") >= 2
          and d.execute_script("return window.gsvConsole.loadeddata") >= 1, "the streamed audio")
    src = driver.execute_script("return document.getElementById('player').currentSrc")
    assert "/tts?" in src and "voice=beta" in src and "voice_version=1" in src and "streaming_mode=true" in src

    # speak with an uploaded reference clip: POST /console/api/tts
    driver.find_element(By.ID, "ref-audio").send_keys(str(root / "alpha" / "ref.wav"))
    driver.find_element(By.ID, "ref-text").send_keys(REF_TEXT)
    driver.find_element(By.ID, "speak").click()
    _wait(driver, lambda d: d.execute_script("return document.getElementById('player').currentSrc").startswith("blob:")
          and d.execute_script("return document.getElementById('player').readyState") >= 2, "the uploaded-clip audio")
    assert driver.execute_script("return window.gsvConsole.bytes") > 44 + 1600 * 2
    assert driver.execute_script("return document.getElementById('player').duration") > 0

    shot = tmp_path / "console.png"
    assert driver.save_screenshot(str(shot))
    assert shot.is_file() and shot.stat().st_size > 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")

    assert driver.execute_script("return window.gsvConsole.errors") == []
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    log = gw.log.read_text()
    assert "[gateway] api_v2 voice=beta version=1" in log and "[gateway] console voice=beta version=1" in log
