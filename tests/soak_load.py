"""Load for the soak test and the concurrency measurement: clients calling a real tritonserver,
and what the server's processes look like (from /proc: the stubs are tritonserver's children).

``python -m tests.soak_load --concurrency 1,8`` measures audio-seconds per second of non-streaming
``tts`` requests on a tiny demo voice (bench/results/concurrency_design.md records the figures).
"""
from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ops.client import ClientError, stream, synthesize

TEXTS = ("今天天气很好。", "我们去公园散步吧！", "今天天气很好。我们去公园散步吧！")


@dataclass
class Stub:
    """One Python-backend stub process: which model it serves and how much memory it holds."""

    pid: int
    model: str
    rss_mb: float


@dataclass
class Tally:
    """What a load run produced, across all its clients."""

    ok: int = 0
    streamed: int = 0
    audio_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, audio_s: float, streamed: bool) -> None:
        with self.lock:
            self.ok += 1
            self.streamed += int(streamed)
            self.audio_s += audio_s
            self.latencies.append(seconds)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


# ---- processes ----------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out.setdefault(int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(p.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def process_tree(root: int) -> list[int]:
    children, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stubs(server_pid: int) -> list[Stub]:
    """The stub processes under tritonserver (the model is the folder its model.py lies in)."""
    out = []
    for pid in process_tree(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"triton_python_backend_stub") or len(argv) < 2:
            continue
        model = Path(argv[1].decode(errors="replace")).parent.parent.name
        out.append(Stub(pid, model, rss_mb(pid)))
    return sorted(out, key=lambda s: (s.model, s.pid))


def tree_rss_mb(server_pid: int) -> float:
    return sum(rss_mb(p) for p in process_tree(server_pid))


# ---- clients ------------------------------------------------------------------------------
def one_request(url: str, voice: str, streamed: bool, rng: random.Random, tally: Tally, max_tokens: int,
                texts: tuple[str, ...] = TEXTS, timeout: float = 300) -> None:
    text = rng.choice(texts)
    started = time.monotonic()
    try:
        call = stream if streamed else synthesize
        speech = call(text, voice, url, timeout=timeout, MAX_TOKENS=max_tokens, SEED=rng.randrange(1 << 30))
    except (ClientError, OSError) as exc:
        tally.fail(f"{'tts_stream' if streamed else 'tts'} {voice}: {exc}")
        return
    if speech.audio.size == 0 or speech.sample_rate <= 0:
        tally.fail(f"{'tts_stream' if streamed else 'tts'} {voice}: empty audio")
        return
    tally.add(time.monotonic() - started, speech.audio.size / speech.sample_rate, streamed)


def run_clients(url: str, voices: list[str], clients: int, until: float | None = None, per_client: int | None = None,
                stream_share: float = 0.5, max_tokens: int = 40, seed: int = 0, texts: tuple[str, ...] = TEXTS) -> Tally:
    """``clients`` threads, each sending one request after another (``per_client`` of them, or
    until ``until`` on the monotonic clock); client i streams when i is below ``stream_share``
    of the clients, and its voice is ``voices[i % len(voices)]``."""
    tally = Tally()

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        streamed = i < round(clients * stream_share)
        n = 0
        while (per_client is None or n < per_client) and (until is None or time.monotonic() < until):
            one_request(url, voices[i % len(voices)], streamed, rng, tally, max_tokens, texts)
            n += 1

    threads = [threading.Thread(target=client, args=(i,), name=f"soak-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def measure(url: str, voices: list[str], concurrency: int, requests: int, max_tokens: int) -> dict:
    """Audio-seconds per wall-second of non-streaming ``tts`` with ``concurrency`` clients."""
    started = time.monotonic()
    tally = run_clients(url, voices, concurrency, per_client=max(1, requests // concurrency), stream_share=0.0,
                        max_tokens=max_tokens, seed=concurrency, texts=TEXTS[:1])
    wall = time.monotonic() - started
    lat = sorted(tally.latencies)
    return {"concurrency": concurrency, "requests": tally.ok, "failures": len(tally.failures), "wall_s": wall,
            "audio_s": tally.audio_s, "audio_s_per_s": tally.audio_s / wall,
            "p50_s": lat[len(lat) // 2] if lat else None, "max_s": lat[-1] if lat else None}


def main(argv=None) -> int:
    import os

    from tests.triton_fixtures import start_server
    from tests.voices import demo_voice, export_voice

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, default=100, help="tokens per sentence (every sentence runs to it)")
    p.add_argument("--repeat", type=int, default=2, help="rounds over the levels (interleaved: the load of a shared machine drifts)")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="gsv-concurrency-"))
    repo = root / "repo"
    repo.mkdir()
    src = root / "src"
    export_voice(demo_voice(src, 3), repo, "alpha", aux=src)
    os.environ["GSV_BENCH_IGNORE_EOS"] = "1"  # every sentence runs to MAX_TOKENS: equal work per request
    server = start_server(repo, log_dir=root, timeout=900)
    try:
        measure(server.grpc_url, ["alpha"], 2, 2, args.max_tokens)  # warm-up
        for _ in range(args.repeat):
            for c in (int(x) for x in args.concurrency.split(",")):
                r = measure(server.grpc_url, ["alpha"], c, args.requests, args.max_tokens)
                print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
        print("stubs:", ", ".join(f"{s.model}:{s.rss_mb:.0f}MiB" for s in stubs(server.pid)),
              f"tree {tree_rss_mb(server.pid):.0f} MiB")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
