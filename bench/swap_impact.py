"""What a hot swap costs the clients: p99 and errors while a second version is published and activated."""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

from bench.common import log, pct
from bench.load import closed_loop, one
from bench.prepare import link_copy
from bench.processes import stub_rss


def swap_impact(repo: Path, url: str, server_pid: int, tokens: int, concurrency: int, per_client: int) -> dict:
    from ops import swap
    from python_backend import layout

    log(f"swap: steady state, {concurrency} clients")
    steady = closed_loop(url, "demo", tokens, concurrency, concurrency * max(per_client, 3), seed0=50_000)
    vdir = layout.voice_dir(repo, "demo")
    old = layout.version_numbers(vdir)[-1]
    mem_before = stub_rss(server_pid, "demo")
    new = layout.next_version(repo, "demo")
    # a second exported version folder, dropped in beside the old one (hard links; own manifest)
    staging = repo.parent / f"swap-staging-{new}"
    if staging.exists():
        shutil.rmtree(staging)
    link_copy(vdir / str(old), staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"], manifest["label"] = new, "bench-swap"
    (staging / "manifest.json").unlink()
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))

    results: list[dict] = []
    stop = threading.Event()
    seen_new = threading.Event()
    swap_info: dict = {}
    mem_peak_both: dict = {}

    def client(k):
        i = 0
        while not stop.is_set():
            r = one(url, "demo", tokens, 60_000 + 1000 * k + i)
            i += 1
            results.append(r)
            if r.get("ok") and r.get("version") == new and not seen_new.is_set():
                swap_info["first_new_response_at"] = r["end"]
                seen_new.set()

    def swapper():
        time.sleep(max(1.0, steady["p50_s"] or 1.0))  # clients are mid-request
        staging.rename(vdir / str(new))
        t0 = time.perf_counter()
        swap_info["load_model_at"] = t0

        def watch():  # memory while both versions are loaded
            while not swap_info.get("done"):
                m = stub_rss(server_pid, "demo")
                if len(m) > len(mem_peak_both):
                    mem_peak_both.clear()
                    mem_peak_both.update(m)
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            outcome = swap.activate(repo, "demo", new, url)
            swap_info["outcome"] = outcome.to_dict()
        except Exception as exc:  # noqa: BLE001 - report it
            swap_info["error"] = f"{type(exc).__name__}: {exc}"
            seen_new.set()
        swap_info["activate_returned_at"] = time.perf_counter()
        swap_info["done"] = True

    log(f"swap: {concurrency} clients while version {new} is loaded and activated")
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    sw = threading.Thread(target=swapper)
    sw.start()
    sw.join()
    seen_new.wait(timeout=900)
    time.sleep(max(1.0, steady["p50_s"] or 1.0))  # one more round on the new version
    stop.set()
    for t in threads:
        t.join(timeout=900)
    t_end = time.perf_counter()
    ok = [r for r in results if r["ok"]]
    t0, t1 = swap_info["load_model_at"], swap_info["activate_returned_at"]
    during = [r for r in ok if r["end"] >= t0 and r["start"] <= t1]  # requests overlapping the swap
    lat_all = [r["latency_s"] for r in ok]
    lat_during = [r["latency_s"] for r in during]
    mem_after = stub_rss(server_pid, "demo")
    p99_swap = pct(lat_all, 99)
    return {
        "concurrency": concurrency,
        "steady": steady,
        "swap_window": {"requests": len(results), "errors": len(results) - len(ok), "wall_s": t_end - t_start,
                        "p50_s": pct(lat_all, 50), "p95_s": pct(lat_all, 95), "p99_s": p99_swap,
                        "overlapping_requests": len(during), "p99_overlapping_s": pct(lat_during, 99),
                        "versions_served": sorted({r["version"] for r in ok})},
        "swap_p99_ratio": (p99_swap / steady["p99_s"]) if p99_swap and steady["p99_s"] else None,
        "old_version": old, "new_version": new,
        "activate_s": t1 - t0,
        "load_to_first_new_response_s": (swap_info["first_new_response_at"] - t0) if "first_new_response_at" in swap_info else None,
        "error": swap_info.get("error"),
        "stub_rss_mb_before": mem_before, "stub_rss_mb_both_loaded": mem_peak_both, "stub_rss_mb_after": mem_after,
        "memory_per_voice_mb": (mem_after.get(new) or (list(mem_before.values()) or [None])[0]),
    }
