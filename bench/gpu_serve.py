"""The GPU check's served figures: a real tritonserver on the exported repository; single-stream
RTF, first-chunk latency, a closed-loop concurrency sweep and a hot swap under load."""
from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.gpu_common import TEXT, Check, Skip, one_line


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _load(url: str, concurrency: int, seconds: float, tokens: int, stop: threading.Event | None = None) -> dict:
    """Closed loop: ``concurrency`` clients call ``tts`` back to back for ``seconds``."""
    from ops.client import synthesize

    lat, audio, errors, marks = [], [0.0], [0], []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(i: int) -> None:
        while time.monotonic() < end and not (stop and stop.is_set()):
            t0 = time.monotonic()
            try:
                speech = synthesize(TEXT, "gpu", url, MAX_TOKENS=tokens, SEED=i, TOP_K=5)
                with lock:
                    lat.append(time.monotonic() - t0)
                    marks.append((t0, time.monotonic() - t0))
                    audio[0] += speech.audio.size / speech.sample_rate
            except Exception:
                with lock:
                    errors[0] += 1

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.monotonic() - t0
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors[0],
            "audio_s_per_s": round(audio[0] / wall, 3), "p50_s": round(_percentile(lat, 50), 3),
            "p99_s": round(_percentile(lat, 99), 3), "_marks": marks}


def step_serve(c: Check) -> dict:
    from ops.client import stream, synthesize
    from ops.server import ServerError, TritonProcess, find_tritonserver, free_ports
    from ops.swap import activate

    try:
        find_tritonserver()
    except ServerError as exc:
        raise Skip(one_line(exc)) from None
    os.environ["GSV_BENCH_IGNORE_EOS"] = "1"  # every request runs to MAX_TOKENS: equal work
    repo = c.vdir.parents[1]
    http, grpc, metrics = free_ports(3)
    server = TritonProcess(repo, http, grpc, metrics, models=["tts", "tts_stream", "gsv_bert", "voice_gpu"],
                           log_path=c.out / "tritonserver.log")
    server.start()
    out: dict = {}
    try:
        server.wait_ready(max(60.0, min(300.0, c.left() - 60)))
        url = server.grpc_url
        synthesize(TEXT, "gpu", url, MAX_TOKENS=c.tokens, SEED=0)  # warm-up
        rtfs = []
        for seed in range(3):
            t0 = time.monotonic()
            speech = synthesize(TEXT, "gpu", url, MAX_TOKENS=c.tokens, SEED=seed, TOP_K=5)
            rtfs.append((time.monotonic() - t0) / (speech.audio.size / speech.sample_rate))
        out["single_stream_rtf"] = round(statistics.median(rtfs), 4)
        firsts = []
        for seed in range(3):
            t0, first = time.monotonic(), []
            stream(TEXT, "gpu", url, MAX_TOKENS=c.tokens, SEED=seed, on_chunk=lambda *_: first or first.append(time.monotonic()))
            firsts.append(first[0] - t0)
        out["first_chunk_s"] = round(statistics.median(firsts), 4)
        per = 2.0 if c.dry_run else 12.0
        out["sweep"] = []
        for level in c.levels:
            if c.left() < per + 60:
                out["sweep"].append({"concurrency": level, "status": "skipped", "why": "time budget"})
                continue
            row = _load(url, level, per, c.tokens)
            row.pop("_marks")
            out["sweep"].append(row)
        out["swap"] = _swap(c, repo, url, server, activate)
        out["ran_on"] = _served_providers(c.out / "tritonserver.log")
    finally:
        server.stop()
    return out


def _swap(c: Check, repo: Path, url: str, server, activate) -> dict:
    """p99 of 8 clients while version 2 (held outside the repository) is moved in and activated,
    against the same clients before it."""
    level, seconds = (2, 4.0) if c.dry_run else (8, 30.0)
    result: dict = {}

    def do_swap() -> None:
        time.sleep(seconds / 3)
        t0 = time.monotonic()
        os.replace(c.second, repo / "voice_gpu" / "2")
        try:
            activate(repo, "gpu", 2, url, admin_key=server.admin_key)
            result.update(swap_start=t0, swap_s=round(time.monotonic() - t0, 2))
        except Exception as exc:
            result.update(swap_start=t0, swap_error=one_line(exc))

    swapper = threading.Thread(target=do_swap)
    swapper.start()
    row = _load(url, level, seconds, c.tokens)
    swapper.join()
    marks = row.pop("_marks")
    start = result.get("swap_start", float("inf"))
    before = [lat for t0, lat in marks if t0 + lat < start]
    during = [lat for t0, lat in marks if t0 + lat >= start]
    p99_before, p99_during = _percentile(before, 99), _percentile(during, 99)
    return {**{k: v for k, v in result.items() if k != "swap_start"}, "concurrency": level, "errors": row["errors"],
            "p99_before_s": round(p99_before, 3), "p99_during_s": round(p99_during, 3),
            "p99_ratio": round(p99_during / p99_before, 3) if before and during else None}


def _served_providers(log_path: Path) -> list[str]:
    """The server's own fallback lines (none: every stage ran on what its version asked for)."""
    with contextlib.suppress(OSError):
        return [line.split("[providers] ", 1)[1].strip() for line in log_path.read_text(errors="replace").splitlines()
                if "[providers] " in line]
    return []

