"""Hot swap on real tritonservers kept in step through a real redis-server.

One tiny random-weight voice; three replicas (each a tritonserver + a ``gsv-triton control``
service, with a ``gsv-triton gateway`` in front) on one repository and one Redis, shared by the
whole module, in this order: health -> publish v2 through replica 1 under load (SSE, replicas 2
and 3 follow, metrics; a client keeps calling the three gateways) -> a bad publish (v3) is
refused -> rollback to v1 (all three follow, the client still calling) -> canary v4 at 0.5 and
promote -> versions table -> a late replica.
Requests cap the tokens per sentence (random GPTs rarely emit EOS).
"""
from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops import cli, swap
from ops import server as srv
from ops.client import synthesize
from python_backend import history, layout
from tests.redis_fixtures import redis_server
from tests.triton_fixtures import free_ports, require_tritonserver, start_server
from tests.voices import demo_voice, export_args, export_voice

pytestmark = pytest.mark.integration
VOICE = "demo"
TEXT = "今天天气很好。"
FIXED = {"TOP_K": 1, "SEED": 7, "MAX_TOKENS": 8}


# ---- fixtures ----

@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_tritonserver()
    root = tmp_path_factory.mktemp("swap")
    src, repo = root / "src", root / "repo"
    repo.mkdir()
    export_voice(demo_voice(src, 3), repo, VOICE, aux=src)
    return {"root": root, "src": src, "repo": repo}


@dataclass
class Replica:
    triton: srv.TritonProcess
    control: subprocess.Popen
    port: int

    @property
    def grpc(self) -> str:
        return self.triton.grpc_url

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.control.terminate()
        try:
            self.control.wait(10)
        except subprocess.TimeoutExpired:
            self.control.kill()
        self.triton.stop()


def start_replica(repo: Path, redis_url: str, name: str, log_dir: Path) -> Replica:
    triton = start_server(repo, log_dir=log_dir / name)
    port = free_ports(1)[0]
    log = open(log_dir / f"control-{name}.log", "wb")
    control = subprocess.Popen(
        [sys.executable, "-m", "ops.control", "--repo", str(repo), "--triton", triton.grpc_url,
         "--triton-http", triton.http_url, "--triton-metrics", triton.metrics_url.split("//")[-1].split("/")[0],
         "--port", str(port), "--redis", redis_url, "--replica-id", name, "--converge-interval", "2"],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=srv._die_with_parent)
    replica = Replica(triton, control, port)
    deadline = time.monotonic() + 60
    while get(replica, "/health")[0] != 200 or get(replica, "/metrics")[1].find("gsv_control_redis_connected 1") < 0:
        if control.poll() is not None or time.monotonic() > deadline:
            replica.stop()
            raise RuntimeError(f"control service {name} did not start: {(log_dir / f'control-{name}.log').read_text()}")
        time.sleep(0.2)
    return replica


@pytest.fixture(scope="module")
def replicas(world, redis_url, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    started = []
    try:
        for name in ("r1", "r2", "r3"):
            started.append(start_replica(world["repo"], redis_url, name, logs))
        yield started
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture(scope="module")
def gateways(replicas, tmp_path_factory):
    """A gateway in front of each replica (gateways are stateless: one per Triton here)."""
    from tests.gateway_fixtures import Gateway

    logs = tmp_path_factory.mktemp("gateways")
    (logs / "refs").mkdir()
    started = []
    try:
        for i, replica in enumerate(replicas):
            started.append(Gateway(replica.grpc, logs / "refs", logs / f"gateway-{i}.log",
                                   admin_key=replica.triton.admin_key))
        yield started
    finally:
        for gateway in started:
            gateway.stop()


class ClusterClient:
    """Calls the gateways in turn (api_v2 /tts) until stopped; every failure is recorded."""

    def __init__(self, gateways):
        from tests.gateway_fixtures import post

        self.gateways, self.post = gateways, post
        self.stop, self.failures, self.seen = threading.Event(), [], []
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        i = 0
        while not self.stop.is_set():
            gw = self.gateways[i % len(self.gateways)]
            i += 1
            try:
                status, headers, body = self.post(gw.url + "/tts", {"text": TEXT, "text_lang": "zh", "voice": VOICE,
                                                                   "top_k": 1, "seed": 7, "media_type": "raw"},
                                                  timeout=120)
                if status != 200:
                    self.failures.append((gw.url, status, body[:200]))
                else:
                    self.seen.append((i % len(self.gateways), int(headers["X-Voice-Version"])))
            except Exception as exc:  # noqa: BLE001 - every failure is a test failure
                self.failures.append((gw.url, repr(exc)))

    def __enter__(self):
        self.thread.start()
        return self

    def wait_all(self, version: int, timeout: float = 120) -> None:
        """Until a request through every gateway has been answered by ``version``."""
        deadline = time.monotonic() + timeout
        while {gw for gw, v in self.seen if v == version} != set(range(len(self.gateways))):
            if time.monotonic() > deadline or not self.thread.is_alive():
                break
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(300)


# ---- helpers ----

def get(replica: Replica, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(replica.base + path, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def say(replica: Replica) -> int:
    return synthesize(TEXT, VOICE, replica.grpc, timeout=60, **FIXED).voice_version


def wait_serving(replica: Replica, version: int, timeout: float = 90) -> None:
    """Until the replica's control service says the version is READY and new requests get it."""
    deadline = time.monotonic() + timeout
    while get(replica, f"/health?voice={VOICE}&version={version}")[0] != 200 or say(replica) != version:
        if time.monotonic() > deadline:
            raise AssertionError(f"replica {replica.grpc} does not serve version {version}: "
                                 f"{get(replica, f'/health?voice={VOICE}&version=latest')}")
        time.sleep(0.5)


def events(repo: Path, event: str) -> list[history.Event]:
    return [e for e in history.read(repo, VOICE) if e.event == event]


class SSE:
    """Reads a control service's /events in a thread; ``got`` is a list of (event, data)."""

    def __init__(self, replica: Replica):
        self.conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=120)
        self.conn.request("GET", "/events")
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200 and self.resp.headers["Content-Type"].startswith("text/event-stream")
        self.got: list[tuple[str, dict]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        name = None
        try:
            for raw in self.resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    self.got.append((name, json.loads(line[6:])))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):  # AttributeError: closed under us
            pass

    def wait_for(self, event: str, version: int, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(n == event and d["version"] == version for n, d in self.got):
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.conn.close()


def add_version_copy(repo: Path, source: int, version: int, broken: bool = False) -> Path:
    """A new version folder made from an existing one, staged and renamed in like an export
    (faster than exporting again; VOICE_VERSION comes from the folder name)."""
    staging = layout.staging_root(repo) / f"test-{version}"
    shutil.copytree(layout.voice_dir(repo, VOICE) / str(source), staging)
    if broken:
        (staging / "vocoder.onnx").unlink()
    target = layout.voice_dir(repo, VOICE) / str(version)
    staging.rename(target)
    history.append(repo, history.Event(VOICE, version, "staged", label=f"copy of {source}"))
    return target


# ---- tests, in order ----

def test_health_endpoints(replicas):
    r1 = replicas[0]
    code, body = get(r1, "/health")
    assert code == 200 and json.loads(body)["redis"] is True
    # the demo exports installed G2PW; upstream's dictionaries were not given
    assert json.loads(body)["text_frontend"] == {"g2pw": True, "upstream_dictionaries": False}
    code, body = get(r1, f"/health?voice={VOICE}&version=latest")
    assert code == 200 and json.loads(body) == {"voice": VOICE, "version": 1, "state": "READY", "reason": ""}
    assert get(r1, f"/health?voice={VOICE}&version=1")[0] == 200
    code, body = get(r1, f"/health?voice={VOICE}&version=9")
    assert code == 503 and json.loads(body)["state"] != "READY"
    code, body = get(r1, "/health?voice=nobody&version=latest")
    assert code == 503 and "no version" in json.loads(body)["reason"]
    assert get(r1, f"/health?voice={VOICE}&version=abc")[0] == 400


def test_publish_switches_new_requests_with_no_failed_request(world, replicas, gateways, redis_url, monkeypatch):
    """The clients start once the export is done, so what runs under their load is the swap
    itself: load + validation in Triton, the switch, the release of v1. With the export too
    (torch and onnxruntime on a 2-core machine, even at background priority) the clients'
    requests intermittently exceeded their deadline; exporting on the serving host is slow
    for its clients, which is why publish lowers its priority."""
    import export.voice_export as voice_export

    r1, r2, r3 = replicas
    sse = SSE(r1)
    stop, failures, seen = threading.Event(), [], []
    published_at = [float("inf")]

    def client():
        while not stop.is_set():
            started = time.monotonic()
            try:
                seen.append((started, say(r1)))
            except Exception as exc:  # noqa: BLE001 - every failure is a test failure
                failures.append(repr(exc))

    pool = ThreadPoolExecutor(4)
    workers = []
    real_export = voice_export.export_voice

    def export_then_load(opts):
        target = real_export(opts)
        workers.extend(pool.submit(client) for _ in range(4))
        time.sleep(2)  # requests in flight on v1 when the load starts
        return target

    monkeypatch.setattr(voice_export, "export_voice", export_then_load)
    with ClusterClient(gateways) as cluster:
        try:
            code = cli.main(["publish", *export_args(world["src"], world["repo"], VOICE), "--label", "second",
                             "--url", r1.grpc, "--redis", redis_url])
            published_at[0] = time.monotonic()
            time.sleep(3)  # keep the load on after the swap
        finally:
            stop.set()
            for w in workers:
                w.result()
            pool.shutdown()
        wait_serving(r2, 2)  # the other replicas follow through Redis while the client keeps calling
        wait_serving(r3, 2)
        cluster.wait_all(2)
    assert code == 0
    assert failures == []
    assert cluster.failures == [] and len(cluster.seen) >= 3, cluster.failures
    assert {gw for gw, version in cluster.seen if version == 2} == {0, 1, 2}  # every gateway saw v2
    assert {v for _, v in seen} <= {1, 2} and 1 in {v for _, v in seen}
    after = [v for t, v in seen if t > published_at[0]]
    assert after and set(after) == {2}
    assert say(r1) == 2
    assert sse.wait_for("active", 2), sse.got
    sse.close()
    for follower in (r2, r3):
        code, body = get(follower, f"/health?voice={VOICE}&version=latest")
        assert code == 200 and json.loads(body)["version"] == 2
    assert get(r1, f"/health?voice={VOICE}&version=1")[0] == 503  # released
    assert [e.version for e in events(world["repo"], "active")][-1] == 2


def test_metrics(replicas):
    code, text = get(replicas[0], "/metrics")
    assert code == 200
    assert f'gsv_active_version{{voice="{VOICE}"}} 2.0' in text
    swaps = [line for line in text.splitlines() if line.startswith(f'gsv_swaps_total{{voice="{VOICE}"}}')]
    assert swaps and float(swaps[0].split()[-1]) >= 1
    assert f'gsv_failed_validations_total{{voice="{VOICE}"}}' in text
    assert f'gsv_voice_in_flight{{model="voice_{VOICE}",version="2"}}' in text  # re-exposed from Triton


def test_bad_publish_is_refused_and_the_old_version_keeps_serving(world, replicas, redis_url, monkeypatch, capsys):
    import export.voice_export as voice_export

    repo = world["repo"]
    # publish leaves the number to the export (which reserves it): the stand-in picks it the same way
    monkeypatch.setattr(voice_export, "export_voice",
                        lambda opts: add_version_copy(repo, 2, opts.version or layout.next_version(repo, VOICE),
                                                      broken=True))
    code = cli.main(["publish", *export_args(world["src"], repo, VOICE), "--url", replicas[0].grpc, "--redis", redis_url])
    assert code != 0
    assert "refused" in capsys.readouterr().err
    assert swap.present_versions(repo, VOICE) == [1, 2]  # the bad version left the model folder
    assert 3 in swap.quarantined_versions(repo, VOICE)
    assert any(e.version == 3 and e.reason for e in events(repo, "failed") + events(repo, "quarantined"))
    assert [say(r) for r in replicas] == [2, 2, 2]
    text = get(replicas[0], "/metrics")[1]
    assert f'gsv_failed_validations_total{{voice="{VOICE}"}} 1.0' in text


def test_rollback_serves_the_earlier_version(world, replicas, gateways, redis_url):
    repo = world["repo"]
    with ClusterClient(gateways) as cluster:
        assert cli.main(["rollback", VOICE, "--to", "1", "--repo", str(repo), "--url", replicas[0].grpc,
                         "--redis", redis_url, "--reason", "test"]) == 0
        for follower in replicas[1:]:
            wait_serving(follower, 1)
        cluster.wait_all(1)
    assert cluster.failures == [], cluster.failures
    assert {gw for gw, version in cluster.seen if version == 1} == {0, 1, 2}  # every gateway saw v1
    assert say(replicas[0]) == 1
    assert swap.present_versions(repo, VOICE) == [1] and 2 in swap.retired_versions(repo, VOICE)
    rolled = events(repo, "rolled_back")
    assert rolled and rolled[-1].version == 2 and "test" in rolled[-1].reason
    assert all(get(r, f"/health?voice={VOICE}&version=latest")[0] == 200 for r in replicas)


def test_canary_splits_requests_and_promote_moves_all(world, replicas, redis_url):
    repo = world["repo"]
    candidate = layout.next_version(repo, VOICE)
    assert candidate == 4  # numbers are never reused: 2 is retired, 3 quarantined
    add_version_copy(repo, 1, candidate)
    assert cli.main(["canary", VOICE, "--version", str(candidate), "--weight", "0.5", "--repo", str(repo),
                     "--url", replicas[0].grpc, "--redis", redis_url]) == 0
    with ThreadPoolExecutor(4) as pool:
        versions = Counter(pool.map(lambda _: say(replicas[0]), range(40)))
    assert set(versions) == {1, candidate}, versions
    deadline = time.monotonic() + 60  # replica 2 loads the candidate beside the active version
    while get(replicas[1], f"/health?voice={VOICE}&version={candidate}")[0] != 200:
        assert time.monotonic() < deadline, "replica 2 did not load the canary"
        time.sleep(0.5)
    assert {say(replicas[1]) for _ in range(8)} <= {1, candidate}
    assert get(replicas[0], f"/health?voice={VOICE}&version=latest")[0] == 200  # latest = the active (1)
    assert f'gsv_canary_weight{{voice="{VOICE}"}} 0.5' in get(replicas[0], "/metrics")[1]

    assert cli.main(["promote", VOICE, "--repo", str(repo), "--url", replicas[0].grpc, "--redis", redis_url]) == 0
    assert {say(replicas[0]) for _ in range(8)} == {candidate}
    assert not layout.routing_file(repo).exists() or VOICE not in json.loads(layout.routing_file(repo).read_text())
    assert events(repo, "promoted")[-1].version == candidate
    wait_serving(replicas[1], candidate)
    deadline = time.monotonic() + 60
    while get(replicas[1], f"/health?voice={VOICE}&version=1")[0] == 200:  # released there too
        assert time.monotonic() < deadline, "replica 2 kept version 1 after the promotion"
        time.sleep(0.5)


def test_versions_table(world, capsys):
    assert cli.main(["versions", VOICE, "--repo", str(world["repo"]), "--json"]) == 0
    rows = {r["version"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert {v: r["state"] for v, r in rows.items()} == {1: "available", 2: "retired", 3: "quarantined", 4: "active"}
    assert rows[2]["label"] == "second" and "rolled back to version 1" in rows[2]["reason"]
    assert rows[3]["reason"] and rows[4]["last_event"] in ("promoted", "released")
    assert cli.main(["versions", VOICE, "--repo", str(world["repo"])]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["VERSION", "STATE", "LABEL"] and len(table) == 5


def test_a_late_replica_serves_the_active_version(world, redis_url, tmp_path_factory):
    late = start_replica(world["repo"], redis_url, "r4", tmp_path_factory.mktemp("late"))
    try:
        code, body = get(late, f"/health?voice={VOICE}&version=latest")
        assert code == 200 and json.loads(body)["version"] == 4
        assert say(late) == 4
    finally:
        late.stop()
