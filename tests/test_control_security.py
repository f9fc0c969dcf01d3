"""The control service's defences: bearer token, JSON-only POSTs with Origin/Host allow-lists,
typed request bodies, clean reasons, signed and coalesced Redis sync, redacted Redis passwords,
bounded event streams and paginated replay.

Unit tests first (no servers); then one module-scoped stack: one tritonserver, one control
service (token, Redis secret, a password-protected redis-server) on a tiny demo voice.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops import cli, control, swap, sync
from python_backend import history, layout
from tests.redis_fixtures import redis_server

VOICE = "sec"
TOKEN = "t0ken-for-the-control-service-tests"
SECRET = "shared-redis-secret-for-tests"
REDIS_PASSWORD = "Redis-Passw0rd-never-logged"
ROOT = Path(__file__).resolve().parents[1]


# ---- units: request records ----

def test_request_records_accept_good_bodies():
    assert control.parse_request("publish", b'{"voice": "alpha"}') == control.PublishRequest("alpha", None)
    assert control.parse_request("publish", b'{"voice": "alpha", "version": 3}').version == 3
    rb = control.parse_request("rollback", json.dumps({"voice": "a", "to": 2, "reason": "bad\x1b[31m\nx\u202e"}).encode())
    assert rb == control.RollbackRequest("a", 2, "bad[31m x")
    assert control.parse_request("canary", b'{"voice": "a", "version": 4, "weight": 0}').weight == 0.0
    assert control.parse_request("canary", b'{"voice": "a", "version": 4, "weight": 0.25}').weight == 0.25
    assert control.parse_request("promote", b'{"voice": "a"}') == control.PromoteRequest("a")


@pytest.mark.parametrize("action, body", [
    ("rollback", '{"voice": "a", "to": [1]}'),
    ("publish", '{"voice": "a", "version": 1e999}'),
    ("publish", '{"voice": "a", "version": true}'),
    ("publish", '{"voice": "a", "version": 1.0}'),
    ("publish", '{"voice": "a", "version": 0}'),
    ("publish", '{"voice": "a", "version": 1000000001}'),
    ("publish", '{"voice": "a", "version": "2"}'),
    ("publish", '{"voice": "a", "version": 1' + "0" * 5000 + '}'),
    ("canary", '{"voice": "a", "version": 2, "weight": NaN}'),
    ("canary", '{"voice": "a", "version": 2, "weight": Infinity}'),
    ("canary", '{"voice": "a", "version": 2, "weight": 1.5}'),
    ("canary", '{"voice": "a", "version": 2, "weight": false}'),
    ("canary", '{"voice": "a", "version": 2}'),
    ("publish", '{"voice": "../etc"}'),
    ("publish", '{"voice": 7}'),
    ("publish", '{"voice": "a", "extra": 1}'),
    ("publish", '{"voice": "a", "voice": "b"}'),
    ("publish", '["a"]'),
    ("publish", 'voice=a'),
    ("publish", '{"voice": "a"'),
    ("rollback", '{"voice": "a", "reason": 5}'),
    ("rollback", json.dumps({"voice": "a", "reason": "x" * 501})),
    ("promote", '{}'),
])
def test_request_records_refuse_bad_bodies(action, body):
    with pytest.raises(control.BadRequest) as info:
        control.parse_request(action, body.encode())
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_request_records_refuse_bytes_that_are_not_utf8():
    with pytest.raises(control.BadRequest, match="UTF-8"):
        control.parse_request("publish", b'{"voice": "\xff"}')


# ---- units: redaction, signing, clean text ----

@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://user:pa:ss@host:6379/0", "redis://user:***@host:6379/0"),
    ("rediss://:p%40ss@host/1", "rediss://:***@host/1"),
    ("redis://onlypassword@host", "redis://***@host"),
    ("redis://u:p@ss@host:1/0?db=1", "redis://u:***@host:1/0?db=1"),
    ("redis://host/0?password=xx&db=1", "redis://host/0?password=***&db=1"),
    ("unix:///run/redis.sock?password=zz", "unix:///run/redis.sock?password=***"),
])
def test_redact_url(url, shown):
    assert sync.redact_url(url) == shown


def test_signed_messages_check_and_forgeries_do_not():
    now = time.time()
    good = sync.make_message("alpha", 2, "publish", "r1", SECRET, now=now)
    assert sync.parse_message(good, SECRET, now=now) == {"voice": "alpha", "version": 2, "action": "publish",
                                                        "origin": "r1"}
    assert sync.parse_message(good, None)["voice"] == "alpha"  # a replica without a secret still reads it
    unsigned = sync.make_message("alpha", 2, "publish", "r1", None, now=now)
    assert sync.parse_message(unsigned, None)["version"] == 2
    forged = json.loads(good)
    forged["voice"] = "beta"
    cases = {"unsigned": unsigned, "bad_signature": json.dumps(forged),
             "stale": sync.make_message("alpha", 2, "publish", "r1", SECRET, now=now - 3600)}
    cases["bad_signature_secret"] = sync.make_message("alpha", 2, "publish", "r1", "another-secret", now=now)
    for kind, message in cases.items():
        with pytest.raises(sync.BadMessage) as info:
            sync.parse_message(message, SECRET, now=now)
        assert info.value.kind == kind.replace("_secret", "")
    for bad in (b"not json", b"[1]", b'{"voice": "../x", "version": 1, "action": "publish"}',
                b'{"voice": "a", "version": true, "action": "publish"}',
                b'{"voice": "a", "version": 1, "action": "drop tables"}', b"x" * 5000, 12):
        with pytest.raises(sync.BadMessage) as info:
            sync.parse_message(bad, None)
        assert info.value.kind == "malformed"


def test_history_text_is_stripped_of_control_characters(tmp_path):
    event = history.Event("alpha", 1, "failed", reason="a\x1b[31mb\x07\r\nc\x9b2J\u202ed", label="l\x1b]0;t\x07")
    assert event.reason == "a[31mb  c2Jd" and event.label == "l]0;t"
    history.append(tmp_path, event)
    raw = {"voice": "alpha", "version": 2, "event": "failed", "reason": "\x1b[2Jforeign", "label": "", "time": 1.0,
           "host": "h"}
    with open(history.history_path(tmp_path), "a", encoding="utf-8") as handle:  # another writer, unsanitized
        handle.write(json.dumps(raw, ensure_ascii=False) + "\n")
    assert [e.reason for e in history.read(tmp_path)] == ["a[31mb  c2Jd", "[2Jforeign"]


def test_versions_table_escapes_what_is_left():
    row = swap.VersionRow(1, "active", label="l\x1b[31m\u202e", reason="r\x07\x9b\u2028")
    table = swap.format_rows([row])
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202e\u2028]", table.replace("\n", ""))
    assert "l\\e[31m\\u202e" in table and "r\\x07\\x9b\\u2028" in table
    line = swap._json_line(row.to_dict())
    assert json.loads(line)["label"] == row.label and "\x1b" not in line and "\u202e" not in line


class _Request:
    def __init__(self, headers: dict, content_type: str = "application/json"):
        self.headers, self.content_type = headers, content_type


def test_access_rules_without_a_server():
    open_ = control.Access.make(None, bind="127.0.0.1")
    ok = {"Host": "127.0.0.1:8003"}
    assert open_.refusal(_Request(ok), write=True) is None
    for host in ("localhost:8003", "[::1]:8003", "LOCALHOST", "127.0.0.1"):
        assert open_.refusal(_Request({"Host": host}), write=True) is None, host
    assert open_.refusal(_Request({}), write=True)[0] == 403  # no Host at all
    assert open_.refusal(_Request({"Host": "attacker.example:8003"}), write=True)[0] == 403
    assert open_.refusal(_Request({**ok, "Origin": "https://attacker.example"}), write=True)[0] == 403
    assert open_.refusal(_Request(ok, "text/plain"), write=True)[0] == 415
    assert open_.refusal(_Request(ok, "text/plain"), write=False) is None  # GET /events: no body
    listed = control.Access.make(TOKEN, origins=["https://console.example/"], hosts=["ctl.internal"], bind="0.0.0.0")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert listed.refusal(_Request({"Host": "ctl.internal:8003", "Origin": "https://CONSOLE.example", **auth}),
                          write=True) is None
    status, _, headers = listed.refusal(_Request({"Host": "ctl.internal"}), write=True)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert listed.refusal(_Request({"Host": "ctl.internal", "Authorization": f"bearer {TOKEN}x"}), True)[0] == 401
    anywhere = control.Access.make(TOKEN, hosts=["*"])
    assert anywhere.refusal(_Request({"Host": "10.1.2.3:8003", **auth}), write=True) is None


def test_non_loopback_bind_without_a_token_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != control.TOKEN_ENV}
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com"):
        done = subprocess.run([sys.executable, "-m", "ops.control", "--repo", str(tmp_path), "--triton",
                               "127.0.0.1:1", "--host", host, "--port", "1"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done
        assert len(done.stderr.strip().splitlines()) == 1 and "token" in done.stderr
    assert control.is_loopback("127.0.0.1") and control.is_loopback("::1") and control.is_loopback("localhost")
    assert not control.is_loopback("0.0.0.0") and not control.is_loopback("10.0.0.1")


# ---- the stack ----

@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis"), REDIS_PASSWORD) as url:
        yield url


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    from tests.gateway_fixtures import Control
    from tests.triton_fixtures import require_tritonserver, start_server
    from tests.voices import demo_voice, export_voice

    require_tritonserver()
    root = tmp_path_factory.mktemp("control_security")
    src, repo = root / "src", root / "repo"
    repo.mkdir()
    export_voice(demo_voice(src, 5), repo, VOICE, aux=src)
    triton = start_server(repo, log_dir=root / "triton")
    started = [triton]
    try:
        log = root / "control.log"
        ctl = Control(repo, triton, log, "--redis", redis_url, "--replica-id", "sec-r1",
                      env={control.TOKEN_ENV: TOKEN, sync.SECRET_ENV: SECRET})
        started.append(ctl)
        deadline = time.monotonic() + 30
        while "gsv_control_redis_connected 1" not in metrics_text(ctl):
            assert ctl.proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield {"root": root, "repo": repo, "triton": triton, "control": ctl, "log": log, "redis": redis_url}
    finally:
        for item in reversed(started):
            item.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(ctl, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", ctl.port, timeout=300)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.headers), resp.read()
    finally:
        conn.close()


def post_json(ctl, path: str, body, headers: dict | None = None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(ctl, "POST", path, data, {"Content-Type": "application/json", **AUTH, **(headers or {})})


def metrics_text(ctl) -> str:
    return call(ctl, "GET", "/metrics")[2].decode()


def metric(ctl, name: str) -> float:
    """Sum of a metric's samples (all label sets) in the control service's /metrics."""
    total = 0.0
    for line in metrics_text(ctl).splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.split()[-1])
    return total


def repo_state(repo: Path) -> tuple:
    return (swap.present_versions(repo, VOICE), history.history_path(repo).read_bytes(),
            layout.routing_file(repo).read_bytes() if layout.routing_file(repo).exists() else b"",
            (layout.voice_dir(repo, VOICE) / "config.pbtxt").read_bytes())


def add_version_copy(repo: Path, source: int, version: int, label: str = "") -> Path:
    """A new version folder copied from ``source`` and renamed in like an export."""
    staging = layout.staging_root(repo) / f"sec-test-{version}"
    shutil.copytree(layout.voice_dir(repo, VOICE) / str(source), staging)
    if label:
        manifest = json.loads((staging / "manifest.json").read_text(encoding="utf-8"))
        manifest["label"] = label
        (staging / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    target = layout.voice_dir(repo, VOICE) / str(version)
    staging.rename(target)
    history.append(repo, history.Event(VOICE, version, "staged", label=f"copy of {source}"))
    return target


def one_line_error(body: bytes) -> str:
    text = body.decode()
    assert "\n" not in text.strip() and "Traceback" not in text and 'File "' not in text, text
    return json.loads(text)["error"]


@pytest.mark.integration
def test_cross_site_posts_are_refused_and_change_nothing(stack):
    ctl, repo = stack["control"], stack["repo"]
    before = repo_state(repo)
    body = json.dumps({"voice": VOICE, "to": 1}).encode()
    # a form post from any web page: text/plain, cross-origin (even with the token, it is refused)
    for headers, codes in [
        ({"Content-Type": "text/plain", "Origin": "http://evil.example"}, {403, 415}),
        ({"Content-Type": "text/plain", **AUTH}, {415}),
        ({"Content-Type": "application/x-www-form-urlencoded", **AUTH}, {415}),
        ({"Content-Type": "text/plain", "Origin": "http://evil.example", **AUTH}, {403, 415}),
        ({"Content-Type": "application/json", "Origin": "http://evil.example", **AUTH}, {403}),
        ({"Content-Type": "application/json", "Origin": "null", **AUTH}, {403}),
        ({"Content-Type": "application/json", "Host": f"rebound.example:{ctl.port}", **AUTH}, {403, 421}),
    ]:
        for path in ("/publish", "/rollback", "/promote"):
            status, _, answer = call(ctl, "POST", path, body, headers)
            assert status in codes, (path, headers, status, answer)
            one_line_error(answer)
    # the event stream refuses a rebound Host or a foreign Origin too
    assert call(ctl, "GET", "/events", headers={"Host": "rebound.example", **AUTH})[0] == 403
    assert call(ctl, "GET", "/events", headers={"Origin": "http://evil.example", **AUTH})[0] == 403
    assert repo_state(repo) == before


@pytest.mark.integration
def test_a_token_is_required_for_posts_and_events(stack):
    ctl = stack["control"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer " + TOKEN[:-1] + "\u00e9"}):
        status, answer_headers, answer = call(ctl, "POST", "/promote", json.dumps({"voice": VOICE}).encode(),
                                              {"Content-Type": "application/json", **headers})
        assert status == 401 and answer_headers.get("WWW-Authenticate", "").startswith("Bearer"), (headers, answer)
        one_line_error(answer)
    assert call(ctl, "GET", "/events")[0] == 401
    assert call(ctl, "GET", "/health")[0] == 200 and call(ctl, "GET", "/metrics")[0] == 200  # open
    status, _, answer = post_json(ctl, "/promote", {"voice": VOICE})  # with the token: reaches swap.promote
    assert status == 409 and "no canary" in one_line_error(answer)


@pytest.mark.integration
@pytest.mark.parametrize("path, body", [
    ("/rollback", b'{"voice": "%s", "to": [1]}' % VOICE.encode()),
    ("/publish", b'{"voice": "%s", "version": 1e999}' % VOICE.encode()),
    ("/publish", b'{"voice": "%s", "version": true}' % VOICE.encode()),
    ("/canary", b'{"voice": "%s", "version": 2, "weight": NaN}' % VOICE.encode()),
    ("/publish", b'{"voice": "%s", "surprise": 1}' % VOICE.encode()),
    ("/publish", b"\xff\xfe"),
])
def test_bad_bodies_get_400_with_one_line(stack, path, body):
    before = repo_state(stack["repo"])
    status, headers, answer = post_json(stack["control"], path, body)
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert one_line_error(answer).startswith("bad request:")
    assert repo_state(stack["repo"]) == before


@pytest.mark.integration
def test_bodies_over_64_kib_are_refused(stack):
    status, _, answer = post_json(stack["control"], "/rollback", {"voice": VOICE, "reason": "x" * 70000})
    assert status == 413
    one_line_error(answer)


@pytest.mark.integration
def test_reason_is_stored_stripped_and_printed_escaped(stack, capsys):
    """Publish a copy as v2 and roll back to v1 with a reason full of escape sequences, through the
    control service; the announcements it sends are signed."""
    import redis

    ctl, repo = stack["control"], stack["repo"]
    listener = redis.Redis.from_url(stack["redis"]).pubsub()
    listener.subscribe(swap.CHANNEL)
    listener.get_message(timeout=5)  # the subscription confirmation
    add_version_copy(repo, 1, 2)
    status, _, answer = post_json(ctl, "/publish", {"voice": VOICE, "version": 2})
    assert status == 200, answer
    reason = "\x1b[31mred\x1b[0m\x07 \u202eevil\ttab"
    status, _, answer = post_json(ctl, "/rollback", {"voice": VOICE, "to": 1, "reason": reason})
    assert status == 200, answer
    rolled = [e for e in history.read(repo, VOICE) if e.event == "rolled_back"]
    assert rolled and rolled[-1].version == 2
    assert rolled[-1].reason == "rolled back to version 1: [31mred[0m evil tab"
    raw = history.history_path(repo).read_text(encoding="utf-8")
    assert "\x1b" not in raw and "\\u001b" not in raw and "\u202e" not in raw
    messages = []
    deadline = time.monotonic() + 10
    while len(messages) < 2 and time.monotonic() < deadline:
        got = listener.get_message(timeout=1)
        if got and got["type"] == "message":
            messages.append(got["data"])
    listener.close()
    assert [sync.parse_message(m, SECRET)["action"] for m in messages] == ["publish", "rollback"]
    # a label that reaches the table raw (a manifest written by someone else) is shown escaped
    add_version_copy(repo, 1, 3, label="\x1b]0;owned\x07\x1b[2J")
    assert cli.main(["versions", VOICE, "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\e]0;owned\\x07\\e[2J" in out
    assert "[31mred[0m evil tab" in out
    assert cli.main(["versions", VOICE, "--repo", str(repo), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[-1]["label"] == "\x1b]0;owned\x07\x1b[2J"  # JSON keeps the text, escaped


def publish_raw(redis_url: str, messages: list) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for message in messages:
        pipe.publish(swap.CHANNEL, message)
    pipe.execute()
    client.close()


def loads(ctl) -> float:
    return metric(ctl, "gsv_control_loads_total")


@pytest.mark.integration
def test_forged_redis_messages_are_ignored(stack):
    """v3 (added by the test before) is in the repository but not loaded: a message that gets
    through would load it. None of these may."""
    ctl = stack["control"]
    before = loads(ctl)
    dropped = metric(ctl, "gsv_control_redis_dropped_total")
    forged = json.loads(sync.make_message(VOICE, 3, "publish", "attacker", SECRET))
    forged["sig"] = "0" * 64
    messages = [sync.make_message(VOICE, 3, "publish", "attacker", None),  # unsigned
                json.dumps(forged),  # wrong HMAC
                sync.make_message(VOICE, 3, "publish", "attacker", "not-the-secret"),  # another secret
                sync.make_message(VOICE, 3, "publish", "attacker", SECRET, now=time.time() - 3600),  # replayed
                b"\x1b[31m not json", json.dumps({"voice": "../../etc", "action": "publish"})]
    publish_raw(stack["redis"], messages)
    deadline = time.monotonic() + 10
    while metric(ctl, "gsv_control_redis_dropped_total") < dropped + len(messages):
        assert time.monotonic() < deadline, metrics_text(ctl)
        time.sleep(0.2)
    time.sleep(1.0)
    assert loads(ctl) == before
    assert swap.ready_versions(stack["triton"].grpc_url, VOICE, stack["triton"].admin_key) == [1]
    text = metrics_text(ctl)
    for reason in ("unsigned", "bad_signature", "stale", "malformed"):
        assert f'gsv_control_redis_dropped_total{{reason="{reason}"}}' in text, text


@pytest.mark.integration
def test_a_burst_of_messages_for_one_voice_costs_at_most_two_loads(stack):
    ctl, triton = stack["control"], stack["triton"]
    before = loads(ctl)
    burst = [sync.make_message(VOICE, 3, "publish", "other-replica", SECRET) for _ in range(1000)]
    publish_raw(stack["redis"], burst)
    slowest = 0.0
    deadline = time.monotonic() + 120
    while call(ctl, "GET", f"/health?voice={VOICE}&version=3")[0] != 200:
        started = time.monotonic()
        assert call(ctl, "GET", "/health")[0] == 200  # responsive while it follows
        slowest = max(slowest, time.monotonic() - started)
        assert time.monotonic() < deadline, stack["log"].read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(2.0)  # the follow waiting behind the first one, if any, runs (and finds nothing to do)
    assert swap.ready_versions(triton.grpc_url, VOICE, triton.admin_key) == [3]
    assert 1 <= loads(ctl) - before <= 2
    assert metric(ctl, "gsv_control_redis_coalesced_total") >= 900
    assert slowest < 5.0


@pytest.mark.integration
def test_the_redis_password_is_never_logged(stack):
    text = stack["log"].read_text()
    assert "redis://:***@127.0.0.1" in text  # the address is logged, without the password
    assert REDIS_PASSWORD not in text and TOKEN not in text and SECRET not in text


def _sse_events(resp) -> list[tuple[str, int | None, dict]]:
    """(event, id, data) of a finite event stream, read to its end."""
    out, name, ident = [], None, None
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            ident = int(line[4:])
        elif line.startswith("data: "):
            out.append((name, ident, json.loads(line[6:])))
            name, ident = None, None
    return out


@pytest.mark.integration
def test_an_event_stream_client_that_never_reads_is_dropped(stack):
    ctl, repo = stack["control"], stack["repo"]
    quiet = socket.socket()
    quiet.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    quiet.connect(("127.0.0.1", ctl.port))
    quiet.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{ctl.port}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                  .encode())
    try:
        deadline = time.monotonic() + 10
        while metric(ctl, "gsv_control_sse_clients") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        dropped = metric(ctl, "gsv_control_sse_dropped_total")
        # 2000 events in one write: more than a client's queue holds, all at once
        line = {"voice": "flood", "version": 1, "event": "staged", "reason": "x" * 200, "label": "", "host": "test"}
        data = "".join(json.dumps({**line, "time": time.time() + i * 1e-6}) + "\n" for i in range(2000)).encode()
        fd = os.open(history.history_path(repo), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        deadline = time.monotonic() + 30
        while metric(ctl, "gsv_control_sse_dropped_total") < dropped + 1 or metric(ctl, "gsv_control_sse_clients"):
            assert time.monotonic() < deadline, metrics_text(ctl)
            time.sleep(0.2)
        quiet.settimeout(10)
        got = b""
        while True:
            chunk = quiet.recv(65536)
            if not chunk:
                break
            got += chunk
        assert b"event: dropped" in got and got.count(b"event: staged") < 300
    finally:
        quiet.close()
    assert call(ctl, "GET", "/health")[0] == 200


@pytest.mark.integration
def test_replay_is_paginated(stack):
    ctl, repo = stack["control"], stack["repo"]
    size = history.history_path(repo).stat().st_size
    total = len(history.read(repo))
    assert total > 2000
    conn = http.client.HTTPConnection("127.0.0.1", ctl.port, timeout=60)
    pages, since = [], 0
    for _ in range(2):
        conn.request("GET", f"/events?since={since}&limit=50", headers=AUTH)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["X-Replay-More"] == "1"
        events = _sse_events(resp)  # the page ends with `more` and the stream closes
        assert [n for n, _, _ in events][-1] == "more" and len(events) == 51
        since = events[-1][2]["next"]
        assert since == int(resp.headers["X-Replay-Next"]) == events[-2][1]
        pages.append(events[:-1])
        conn.close()
    first, second = pages
    assert second[0][1] > first[-1][1]  # contiguous: the second page starts where the first ended
    read = history.read(repo)[:100]
    assert [d["time"] for _, _, d in first + second] == [e.time for e in read]
    # Last-Event-ID continues the same way (an EventSource reconnecting); limits are capped
    conn.request("GET", "/events?limit=99999", headers={"Last-Event-ID": str(since), **AUTH})
    resp = conn.getresponse()
    events = _sse_events(resp)
    assert len(events) == control.REPLAY_MAX + 1 and events[0][2]["time"] == history.read(repo)[100].time
    conn.close()
    # ?replay=1: the last `limit` events, then live
    conn.request("GET", "/events?replay=1&limit=5", headers=AUTH)
    resp = conn.getresponse()
    assert resp.headers["X-Replay-More"] == "0"
    seen = []
    for raw in resp:
        text = raw.decode().rstrip("\n")
        if text.startswith("id: "):
            seen.append(int(text[4:]))
        if text == ": connected":
            break
    conn.close()
    assert len(seen) == 5 and seen[-1] == size
    for bad in ("since=-1", "since=abc", "limit=0", "limit=1e3"):
        assert call(ctl, "GET", f"/events?{bad}", headers=AUTH)[0] == 400
