"""Proof under load: 8 clients (streaming and not) keep talking while 20 swaps run.

Good versions, refused candidates and rollbacks alternate. Asserted: no request fails, no
response mixes versions, every VOICE_VERSION was serving (or being swapped in) while its
request ran, a refused version never answers, and the server's memory after the run is
within 5% of its memory after the first swap. ``GSV_HEAVY=1`` runs 60 swaps with longer
requests (opt-in; the light run is part of CI).
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from ops import swap
from ops.client import _inputs, synthesize
from python_backend import layout
from tests.soak_load import stubs
from tests.triton_fixtures import require_tritonserver, start_server
from tests.voices import demo_voice, export_voice

pytestmark = pytest.mark.integration
HEAVY = os.environ.get("GSV_HEAVY") == "1"
SWAPS = 60 if HEAVY else 20
MAX_TOKENS = 40 if HEAVY else 16
TEXT = "今天天气很好。我们去公园。"
PLAN = ("good", "bad", "good", "rollback")


def _export(src: Path, repo: Path, voice: str, version: int, aux: Path) -> Path:
    return export_voice(src, repo, voice, "--version", str(version), aux=aux)


def place(candidate: Path, repo: Path, voice: str, version: int) -> Path:
    """Drop a candidate folder in as ``version`` the way a deploy would: copy aside, then rename."""
    target = layout.voice_dir(repo, voice) / str(version)
    tmp = layout.staging_root(repo) / f"copy.{os.getpid()}.{version}"
    shutil.copytree(candidate, tmp)
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["version"] = version
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    os.rename(tmp, target)
    return target


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    require_tritonserver()
    root = tmp_path_factory.mktemp("load")
    repo, scratch = root / "repo", root / "scratch"
    repo.mkdir()
    scratch.mkdir()
    sources = []
    for seed in (3, 4, 5):
        src = root / f"src{seed}"
        sources.append(demo_voice(src, seed))
    _export(sources[0], repo, "a", 1, sources[0])
    goods = [_export(src, scratch, "a", i + 1, sources[0]) for i, src in enumerate(sources)]
    bad = root / "bad"
    shutil.copytree(goods[1], bad)
    (bad / "vocoder.onnx").unlink()  # a candidate the load-time checks must refuse
    server = start_server(repo, log_dir=root)
    yield server, repo, goods, bad
    server.stop()


@dataclass
class Record:
    start: float
    end: float = 0.0
    versions: set = field(default_factory=set)
    error: str = ""
    stream: bool = False


def _stream_once(url: str, seed: int) -> tuple[set, int]:
    """One tts_stream request; the VOICE_VERSION of every chunk."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    versions, samples = set(), 0
    try:
        client.async_stream_infer("tts_stream", _inputs(grpcclient, TEXT, "a", None,
                                                         {"SEED": seed, "TOP_K": 1, "MAX_TOKENS": MAX_TOKENS}))
        while True:
            result, error = responses.get(timeout=120)
            if error is not None:
                raise RuntimeError(str(error))
            versions.add(int(result.as_numpy("VOICE_VERSION")[0]))
            samples += result.as_numpy("AUDIO").size
            if bool(result.as_numpy("IS_FINAL")[0]):
                return versions, samples
    finally:
        client.stop_stream()
        client.close()


def _client(url: str, stream: bool, stop: threading.Event, records: list, lock: threading.Lock) -> None:
    seed = 0
    while not stop.is_set():
        seed += 1
        rec = Record(start=time.monotonic(), stream=stream)
        try:
            if stream:
                rec.versions, samples = _stream_once(url, seed)
            else:
                # a bound, so a request routed to a dead stub (2.51 does not notice one) fails here
                speech = synthesize(TEXT, "a", url, timeout=120, SEED=seed, TOP_K=1, MAX_TOKENS=MAX_TOKENS)
                rec.versions, samples = {speech.voice_version}, speech.audio.size
            if samples == 0:
                rec.error = "no audio"
        except Exception as exc:  # a failed request is what this test exists to catch
            rec.error = f"{type(exc).__name__}: {exc}"
        rec.end = time.monotonic()
        with lock:
            records.append(rec)


def _rss_kib(pgid: int) -> int:
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


def _settled_rss(pgid: int) -> int:
    """RSS once released versions' stub processes have exited (readings stop changing)."""
    last, same = -1, 0
    for _ in range(60):
        now = _rss_kib(pgid)
        same = same + 1 if abs(now - last) < 1024 else 0
        if same >= 3:
            return now
        last = now
        time.sleep(0.5)
    return last


def _front_stubs(server_pid: int) -> set[tuple[int, str]]:
    """(pid, model) of the live tts and tts_stream stubs (a dead one is a zombie or gone)."""
    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    return {(s.pid, s.model) for s in stubs(server_pid) if s.model in ("tts", "tts_stream") and alive(s.pid)}


def test_twenty_swaps_under_load(setup):
    server, repo, goods, bad = setup
    url = server.grpc_url
    # allowed[v] = list of (from, to) monotonic intervals during which v may answer
    allowed: dict[int, list[list[float]]] = {1: [[0.0, float("inf")]]}
    current, refused, memory_after_first = 1, set(), None
    stop, lock, records = threading.Event(), threading.Lock(), []
    front = _front_stubs(server.pid)
    assert sum(model == "tts" for _, model in front) >= 2, front  # several tts instances serve together
    clients = [threading.Thread(target=_client, args=(url, i % 2 == 0, stop, records, lock), daemon=True)
               for i in range(8)]
    for t in clients:
        t.start()
    time.sleep(1.0)
    try:
        for i in range(SWAPS):
            kind = PLAN[i % len(PLAN)]
            began = time.monotonic()
            if kind == "rollback":
                outcome = swap.rollback(repo, "a", url)
                new = outcome.version
            else:
                version = layout.next_version(repo, "a")
                place(goods[i % len(goods)] if kind == "good" else bad, repo, "a", version)
                if kind == "bad":
                    with pytest.raises(swap.Refused):
                        swap.activate(repo, "a", version, url)
                    refused.add(version)
                    assert not (layout.voice_dir(repo, "a") / str(version)).exists()
                    continue
                new = swap.activate(repo, "a", version, url).version
            done = time.monotonic()
            allowed.setdefault(new, []).append([began, float("inf")])
            for interval in allowed[current]:
                if interval[1] == float("inf"):
                    interval[1] = done  # the old version may still answer requests routed before this
            current = new
            if memory_after_first is None:
                memory_after_first = _settled_rss(server.pid)
            time.sleep(0.3)
    finally:
        stop.set()
        for t in clients:
            t.join(180)
    assert _front_stubs(server.pid) == front, "a tts/tts_stream stub died or restarted during the swaps"
    failed = [r for r in records if r.error]
    assert not failed, f"{len(failed)} of {len(records)} requests failed, e.g. {failed[0].error}"
    assert len(records) >= 8 * 5
    mixed = [r for r in records if len(r.versions) != 1]
    assert not mixed, f"{len(mixed)} responses mixed versions: {[sorted(r.versions) for r in mixed[:3]]}"
    for r in records:
        (v,) = r.versions
        assert v not in refused, f"refused version {v} answered a request"
        assert any(a <= r.end and r.start <= b for a, b in allowed.get(v, [])), \
            f"version {v} answered a request running {r.start:.2f}-{r.end:.2f}; it served only {allowed.get(v)}"
    assert len({v for r in records for v in r.versions}) >= 3, "the swaps did not reach the clients"
    assert any(r.stream for r in records) and any(not r.stream for r in records)
    memory_end = _settled_rss(server.pid)
    assert memory_end <= memory_after_first * 1.05, (
        f"server memory grew from {memory_after_first} KiB after the first swap to {memory_end} KiB")
    assert synthesize(TEXT, "a", url, TOP_K=1, MAX_TOKENS=MAX_TOKENS).voice_version == current
