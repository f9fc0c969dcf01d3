"""Load generation through tritonclient gRPC: single stream, streaming first chunk, closed loop.

A closed loop (each client sends its next request when the last returns) measures what a
fixed number of users get: throughput and the latency percentiles at that concurrency.
"""
from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.common import LOAD_TEXT, TEXTS, TOP_K, log, pct
from bench.processes import tree_memory


def one(url: str, voice: str, tokens: int, seed: int, text: str = LOAD_TEXT) -> dict:
    from ops.client import ClientError, synthesize

    start = time.perf_counter()
    try:
        sp = synthesize(text, voice, url, MAX_TOKENS=tokens, TOP_K=TOP_K, SEED=seed)
    except ClientError as exc:
        return {"ok": False, "error": str(exc)[:200], "start": start, "end": time.perf_counter(),
                "latency_s": time.perf_counter() - start}
    end = time.perf_counter()
    return {"ok": True, "start": start, "end": end, "latency_s": end - start, "audio_s": sp.audio.size / sp.sample_rate,
            "version": sp.voice_version, "finish": sp.finish_reason}


def single_stream(url: str, voice: str, tokens: int, repeats: int) -> dict:
    from ops.client import stream

    one(url, voice, tokens, 0)  # warm-up
    per_text, lat, aud = {}, 0.0, 0.0
    for name, text in TEXTS.items():
        rs = [one(url, voice, tokens, 100 + r, text) for r in range(repeats)]
        bad = [r for r in rs if not r["ok"]]
        if bad:
            raise RuntimeError(f"single-stream request failed: {bad[0]['error']}")
        per_text[name] = {"rtf": statistics.median(r["latency_s"] / r["audio_s"] for r in rs),
                          "audio_s": rs[0]["audio_s"], "latency_s": statistics.median(r["latency_s"] for r in rs),
                          "finish": rs[0]["finish"]}
        lat += sum(r["latency_s"] for r in rs)
        aud += sum(r["audio_s"] for r in rs)
    firsts = []
    for r in range(repeats):
        sp = stream(LOAD_TEXT, voice, url, MAX_TOKENS=tokens, TOP_K=TOP_K, SEED=200 + r)
        firsts.append(sp.first_chunk_s)
    return {"single_stream_rtf": lat / aud, "per_text": per_text, "first_chunk_s": statistics.median(firsts)}


def closed_loop(url: str, voice: str, tokens: int, concurrency: int, total: int, seed0: int = 0) -> dict:
    """``concurrency`` clients, each sending its next request when the last one returns, ``total`` in all."""
    lock = threading.Lock()
    counter = iter(range(total))
    results: list[dict] = []

    def client(_):
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            results.append(one(url, voice, tokens, seed0 + i))

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    lat = [r["latency_s"] for r in ok]
    audio = sum(r["audio_s"] for r in ok)
    return {"concurrency": concurrency, "requests": len(results), "errors": len(results) - len(ok),
            "wall_s": wall, "audio_s": audio, "throughput": audio / wall if wall else None,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "p99_s": pct(lat, 99), "mean_s": float(np.mean(lat)) if lat else None}


def sweep(url: str, voice: str, tokens: int, levels: list[int], per_client: int, mem_pid: int) -> list[dict]:
    rows = []
    for c in levels:
        log(f"  concurrency {c}: {c * per_client} requests")
        row = closed_loop(url, voice, tokens, c, c * per_client, seed0=1000 * c)
        row["server_memory"] = tree_memory(mem_pid)
        log(f"    {row['throughput']:.2f} audio-s/s, p50 {row['p50_s']:.2f} s, p99 {row['p99_s']:.2f} s, "
            f"errors {row['errors']}")
        rows.append(row)
    return rows
