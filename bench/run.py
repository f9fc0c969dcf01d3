"""Benchmarks: the Triton pipeline vs the eager PyTorch baseline, perf_analyzer, hot-swap impact.

One command makes everything (JSON, markdown table, PNG plots, README performance section)::

    python -m bench.run --size full --out bench/results

Both pipelines generate a FIXED number of tokens per sentence (``--tokens``, 250 = 10 s of
audio): random-weight GPTs emit EOS at arbitrary points, so EOS must not decide the work. The
bench starts its own tritonserver with ``GSV_BENCH_IGNORE_EOS=1`` (the voice model then runs
every sentence to its budget) and sends ``MAX_TOKENS``, ``TOP_K=15``, ``SEED``. The baseline
masks EOS at every step and stops at the same budget.

Demo voices and exports are cached under ``bench/.cache/<size>/`` (git-ignored); each run
serves a hard-linked copy of the cached repository, so the swap's extra version never
leaks into the next run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REF_TEXT = "你好，欢迎使用语音合成服务。"
# one sentence each (the server splits at 。！？.!?): MAX_TOKENS is per sentence
TEXTS = {
    "zh_short": "今天天气很好。",
    "zh_medium": "今天天气很好，我们一起去公园散步吧，顺便买点水果回家。",
    "zh_long": "在这个阳光明媚的早晨，我们沿着河边慢慢地走着，一边聊天一边欣赏两岸美丽的风景和远处的青山。",
    "en_short": "Hello there, nice day.",
    "en_medium": "The weather is lovely today, so let us walk to the park together.",
    "en_long": "On this bright morning we walked slowly along the quiet river and talked about everything.",
}
LOAD_TEXT = TEXTS["zh_medium"]  # the text of the concurrency, swap and perf_analyzer requests
TOP_K = 15


# ----------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else None


def _own_cpu_ticks() -> int:
    """CPU ticks used by this process and every descendant (live ones directly; finished ones
    through their parents' cutime/cstime once reaped): the work this benchmark caused."""
    total = 0
    for pid in process_tree(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
    return sum(cpu[:8]) - idle, sum(cpu[:8])


class ForeignLoad:
    """Share of the machine's CPU used by processes outside this benchmark during a part.

    Load averages cannot tell the benchmark's own server from other work; this can: machine
    busy ticks minus the ticks of this process tree, over the part's wall time.
    """

    def __init__(self):
        self.start = (_busy_ticks(), _own_cpu_ticks())

    def share(self) -> float:
        (busy0, total0), own0 = self.start
        (busy1, total1), own1 = _busy_ticks(), _own_cpu_ticks()
        span = max(1, total1 - total0)
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / span


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "gpu": "none", "memory_gib": mem_gib,
            "os": platform.platform(), "python": platform.python_version()}


def cli(argv: list[str]) -> None:
    from ops import cli as export_cli

    code = export_cli.main(argv)
    if code != 0:
        raise SystemExit(f"gsv-triton {' '.join(argv[:2])} failed with exit code {code}")


# ----------------------------------------------------------------------------- preparation
def prepare(cache: Path, size: str, int8: bool) -> dict:
    """Demo voice + exported repository (voice ``demo`` fp32, optionally ``demo8`` int8-decode), cached."""
    from python_backend import layout

    demo, repo = cache / "demo", cache / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    if not (demo / "gpt.ckpt").is_file():
        log(f"building the {size} demo voice in {demo}")
        cli(["demo-voice", str(demo), "--size", size])
    common = ["--gpt", str(demo / "gpt.ckpt"), "--sovits", str(demo / "sovits.pth"), "--ref-audio",
              str(demo / "ref.wav"), "--ref-text", REF_TEXT, "--ref-lang", "zh", "--repo", str(repo), "--no-progress"]
    for voice in ("demo", "demo8"):
        _drop_stale(repo, voice)
    if not layout.version_numbers(layout.voice_dir(repo, "demo")):
        log("exporting voice demo (fp32)")
        cli(["export", *common, "--voice", "demo", "--hubert", str(demo / "chinese-hubert-base"),
             "--bert", str(demo / "chinese-roberta-wwm-ext-large"), "--g2pw", str(demo / "G2PWModel")])
    voices, int8_error = {"fp32": "demo"}, None
    failed = cache / "int8-export-failed.txt"  # an export that failed is not retried on every run
    if int8 and failed.is_file():
        int8_error = failed.read_text()
    elif int8:
        if not layout.version_numbers(layout.voice_dir(repo, "demo8")):
            log("exporting voice demo8 (--int8-decode)")
            try:
                cli(["export", *common, "--voice", "demo8", "--int8-decode"])
            except SystemExit as exc:
                int8_error = f"{exc} (see the export's message above: the int8 graphs failed validation)"
                failed.write_text(int8_error)
                log(f"int8-decode voice unavailable: {int8_error}; measuring fp32 only")
        if int8_error is None:
            voices["int8"] = "demo8"
    return {"demo": demo, "repo": repo, "voices": voices, "int8_error": int8_error}


def _drop_stale(repo: Path, voice: str) -> None:
    """Remove a cached export whose decode-step graph this code can no longer serve (older format)."""
    import onnx

    from python_backend import layout
    from python_backend.gpt_runner import GPTGraphError, check_step_format

    vdir = layout.voice_dir(repo, voice)
    for v in layout.version_numbers(vdir):
        step = vdir / str(v) / "gpt_step.onnx"
        meta = {p.key: p.value for p in onnx.load(str(step), load_external_data=False).metadata_props} \
            if step.is_file() else {}
        try:
            check_step_format(meta, str(step))
        except GPTGraphError as exc:
            log(f"cached export {vdir.name}/{v} is stale ({exc}); re-exporting")
            shutil.rmtree(vdir)
            return


def link_copy(src: Path, dst: Path) -> None:
    """Hard-linked copy of a repository (graph files are never written in place); .gsv is a real copy."""
    if dst.exists():
        shutil.rmtree(dst)

    def copy(s, d):
        if "/.gsv/" in s or s.endswith(("manifest.json", "config.pbtxt")):
            return shutil.copy2(s, d)
        try:
            return os.link(s, d)
        except OSError:
            return shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy, symlinks=True)


# ----------------------------------------------------------------------------- baseline
def run_baseline(prep: dict, out: Path, tokens: int, repeats: int) -> dict:
    from python_backend import layout

    vdir = layout.voice_dir(prep["repo"], "demo")
    version_dir = vdir / str(layout.version_numbers(vdir)[-1])
    spec = {"gpt": str(prep["demo"] / "gpt.ckpt"), "sovits": str(prep["demo"] / "sovits.pth"),
            "version_dir": str(version_dir), "texts": list(TEXTS.values()), "tokens": tokens, "top_k": TOP_K,
            "repeats": repeats}
    spec_path, res_path = out / "baseline_spec.json", out / "baseline_raw.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    log("baseline: eager torch, batch 1, one request at a time")
    subprocess.run([sys.executable, "-m", "bench.baseline", str(spec_path), str(res_path)], cwd=ROOT, check=True)
    raw = json.loads(res_path.read_text())
    spec_path.unlink()
    res_path.unlink()
    rows = raw["rows"]
    compute, audio = sum(r["compute_s"] for r in rows), sum(r["audio_s"] for r in rows)
    per_text = {}
    for name, text in TEXTS.items():
        rs = [r for r in rows if r["text"] == text]
        per_text[name] = {"rtf": statistics.median(r["rtf"] for r in rs), "audio_s": rs[0]["audio_s"],
                          "tokens": rs[0]["tokens"], "latency_s": statistics.median(r["compute_s"] for r in rs)}
    load = [r for r in rows if r["text"] == LOAD_TEXT]
    service = statistics.median(r["compute_s"] for r in load)
    load_audio = load[0]["audio_s"]
    return {
        "single_stream_rtf": compute / audio,
        "gpt_tokens_per_s": sum(r["tokens"] for r in rows) / sum(r["gpt_s"] for r in rows),
        "gpt_step_ms_b1": 1000 * sum(r["gpt_s"] - r["prefill_s"] for r in rows) / sum(r["tokens"] - 1 for r in rows),
        "sovits_vocoder_rtf": sum(r["sovits_s"] for r in rows) / audio,
        "sovits_vocoder_ms_per_10s": 1000 * 10 * sum(r["sovits_s"] for r in rows) / audio,
        "first_chunk_s": service,  # upstream v2 inference returns the whole utterance: first audio = latency
        "throughput": load_audio / service,  # one request at a time: the same at every concurrency
        "service_s": service,
        "peak_rss_mb": raw["peak_rss_mb"],
        "torch": raw["torch"], "torch_threads": raw["torch_threads"],
        "per_text": per_text,
        "note": "serial server: throughput is the same at every concurrency; latency at concurrency c "
                "is c x the single-request time (closed loop, FIFO)",
    }


# ----------------------------------------------------------------------------- triton side
def process_tree(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(p.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def proc_status(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stub_rss(server_pid: int, voice: str) -> dict[int, float]:
    """RSS (MiB) of each loaded version's stub process of ``voice_<voice>``."""
    out = {}
    for pid in process_tree(server_pid):
        line = cmdline(pid)
        if "triton_python_backend_stub" in line and f"voice_{voice}/" in line and "model.py" in line:
            try:
                version = int(line.split(f"voice_{voice}/", 1)[1].split("/", 1)[0])
            except ValueError:
                continue
            rss = proc_status(pid, "VmRSS")
            if rss is not None:
                out[version] = rss
    return out


def tree_memory(server_pid: int) -> dict:
    pids = process_tree(server_pid)
    return {"rss_mb": sum(proc_status(p, "VmRSS") or 0 for p in pids),
            "peak_mb_sum_of_hwm": sum(proc_status(p, "VmHWM") or 0 for p in pids), "processes": len(pids)}


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


# ----------------------------------------------------------------------------- hot swap
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


# ----------------------------------------------------------------------------- perf_analyzer
def perf_analyzer_env(work: Path) -> tuple[Path | None, dict]:
    import tritonclient

    site = Path(tritonclient.__file__).resolve().parent.parent
    candidates = [Path(tritonclient.__file__).resolve().parent / "bin" / "perf_analyzer",
                  Path(sys.executable).parent / "perf_analyzer", Path(sys.prefix) / "bin" / "perf_analyzer"]
    binary = next((c for c in candidates if c.is_file()), None)
    libdir = work / "pa-libs"
    libdir.mkdir(parents=True, exist_ok=True)
    cudart = sorted((site / "nvidia_pytriton.libs").glob("libcudart-*.so.12*"))
    link = libdir / "libcudart.so.12"
    if cudart and not link.exists():
        link.symlink_to(cudart[0])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libdir), env.get("LD_LIBRARY_PATH", "")]))
    return binary, env


def perf_analyzer(url: str, work: Path, tokens: int, levels: str, requests_per_window: int, timeout: float,
                  admin_key: str | None = None) -> dict:
    binary, env = perf_analyzer_env(work)
    if binary is None:
        return {"error": "perf_analyzer binary not found in the tritonclient wheel"}
    data = {"data": [{"TEXT": [LOAD_TEXT], "VOICE": ["demo"], "MAX_TOKENS": [tokens], "TOP_K": [TOP_K],
                      "SEED": [7]}]}
    data_path = work / "perf_analyzer_input.json"
    data_path.write_text(json.dumps(data, ensure_ascii=False))
    csv_path = work / "perf_analyzer.csv"
    argv = [str(binary), "-m", "tts", "-u", url, "-i", "grpc", "--input-data", str(data_path),
            "--concurrency-range", levels, "--measurement-mode", "count_windows",
            "--measurement-request-count", str(requests_per_window), "--max-trials", "3",
            "--stability-percentage", "999", "--bls-composing-models=gsv_bert,voice_demo",
            "-f", str(csv_path), "--verbose-csv"]
    log(f"perf_analyzer: {' '.join(argv[1:])}")
    if admin_key:  # it reads the model config and statistics (restricted APIs); -H also reaches gRPC metadata
        from ops import admin

        argv += ["-H", f"{admin.GRPC_HEADER}:{admin_key}"]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout:.0f} s",
                "stdout_tail": (exc.stdout or "")[-3000:] if isinstance(exc.stdout, str) else ""}
    shown = [a.replace(admin_key, "<admin-key>") if admin_key else a for a in argv[1:]]  # never in results
    out = {"argv": ["perf_analyzer", *shown], "returncode": proc.returncode, "stdout_tail": proc.stdout[-6000:],
           "stderr_tail": proc.stderr[-2000:], "input_data": data}
    if csv_path.is_file():
        import csv

        lines = csv_path.read_text().splitlines()
        rows = list(csv.DictReader(lines))
        out["rows"] = rows
        out["summary"] = [{"concurrency": int(float(r.get("Concurrency", 0))),
                           "infer_per_s": float(r.get("Inferences/Second", 0)),
                           "p50_ms": float(r.get("p50 latency", 0)) / 1000, "p95_ms": float(r.get("p95 latency", 0)) / 1000,
                           "p99_ms": float(r.get("p99 latency", 0)) / 1000} for r in rows]
    return out


# ----------------------------------------------------------------------------- profile
def profile(repo: Path, voice: str, tokens: int, batches=(1, 8), steps: int = 40) -> dict:
    """Where the time goes, in-process on the exported graphs (the server is stopped)."""
    from python_backend import layout
    from python_backend.voice_engine import VoiceEngine

    vdir = layout.voice_dir(repo, voice)
    engine = VoiceEngine(vdir / str(layout.version_numbers(vdir)[-1]))
    try:
        from python_backend.text.frontend import text_to_phones, zero_bert

        seq = text_to_phones(LOAD_TEXT)
        phones = np.concatenate([engine.ref_phones, seq.phone_ids])[None]
        bert = np.concatenate([engine.ref_bert, zero_bert(seq)], axis=1)[None]
        t = time.perf_counter()
        logits, k, v = engine.gpt.prefill(phones, bert, engine.prompts)
        prefill_ms = 1000 * (time.perf_counter() - t)
        out = {"voice": voice, "prefill_ms": prefill_ms}
        n_prompt = engine.prompts.shape[1]
        for b in batches:
            cache = engine.gpt.start_cache(np.repeat(k, b, axis=1), np.repeat(v, b, axis=1))
            tok = np.full((b, 1), 5, np.int64)
            times = []
            for i in range(steps):
                t = time.perf_counter()
                engine.gpt.step(tok, np.full(b, n_prompt + i), cache)
                times.append(time.perf_counter() - t)
            ms = 1000 * statistics.median(times[2:])
            out[f"gpt_step_ms_b{b}"] = ms
            out[f"gpt_tokens_per_s_b{b}"] = 1000 * b / ms
        from python_backend.voice_engine import latent_frames

        codes = np.random.default_rng(0).integers(0, 1024, (1, tokens)).astype(np.int64)
        ph = np.asarray(seq.phone_ids, np.int64)[None]
        frames = latent_frames(tokens, 1.0)
        times_s, times_v = [], []
        for _ in range(2):
            t = time.perf_counter()
            lat = engine.sovits.run(codes=codes, code_lengths=np.array([tokens], np.int64), phones=ph,
                                    phone_lengths=np.array([ph.shape[1]], np.int64), ge=engine.ge,
                                    noise=np.zeros((1, engine.channels, frames), np.float32),
                                    speed=np.array([1.0], np.float32))
            t2 = time.perf_counter()
            wav = engine.vocoder.run(latent=lat["latent"], ge=engine.ge)["wav"]
            times_s.append(t2 - t)
            times_v.append(time.perf_counter() - t2)
        audio_s = wav.shape[-1] / engine.manifest.sample_rate
        out["sovits_ms_per_10s"] = 1000 * min(times_s) * 10 / audio_s
        out["vocoder_ms_per_10s"] = 1000 * min(times_v) * 10 / audio_s
        out["sovits_vocoder_ms_per_10s"] = out["sovits_ms_per_10s"] + out["vocoder_ms_per_10s"]
        out["sovits_vocoder_rtf"] = out["sovits_vocoder_ms_per_10s"] / 10_000
        out["gpt_tokens_per_s"] = out["gpt_tokens_per_s_b1"]
        return out
    finally:
        engine.close(timeout=5)


# ----------------------------------------------------------------------------- report
def ratio(a, b):
    return (a / b) if (a is not None and b) else None


def fmt(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


FOREIGN_LIMIT = 0.05  # other processes may use up to 5% of the machine before a part counts as contended


def _contended(res: dict) -> str:
    """A warning when processes outside the benchmark used more than FOREIGN_LIMIT of the CPU during a part."""
    parts = {"baseline": (res.get("baseline") or {}).get("foreign_cpu_share"),
             "Triton": res.get("triton_foreign_cpu_share")}
    hot = {k: v for k, v in parts.items() if v is not None and v > FOREIGN_LIMIT}
    if not hot:
        return ""
    base = (res.get("baseline") or {}).get("per_text") or {}
    best = min((x["rtf"] for x in base.values() if x.get("audio_s", 0) >= 9.9), default=None)
    return ("other work used the machine during " + ", ".join(f"{k} ({100 * v:.0f}% of its CPU)"
            for k, v in hot.items()) + "; figures measured under that load are slower than on an idle machine and "
            "ratios between parts measured at different times are unreliable."
            + (f" The least-contended baseline 10 s request ran at RTF {best:.2f}." if best else ""))


def _share(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _la(pair) -> str:
    return "—" if not pair else f"{pair[0][0]:.1f}→{pair[1][0]:.1f}"


def write_reports(res: dict, out: Path) -> None:
    base, tri = res["baseline"], res["triton"]["fp32"]
    m = res["machine"]
    mach = f"{m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB RAM, no GPU"
    lines = [f"# gsv-triton benchmark ({res['size']} voice, {res['tokens']} tokens = "
             f"{res['tokens'] * 0.04:.0f} s of audio per sentence)", "",
             f"Machine: {mach}. Generated {res['generated_at']} by `{res['command']}`.", "",
             f"CPU used by processes outside the benchmark during each part: baseline "
             f"{_share(base.get('foreign_cpu_share'))}, Triton {_share(res.get('triton_foreign_cpu_share'))}"
             f" (1-min load average, the benchmark's own work included: baseline "
             f"{_la(base.get('loadavg_before_after'))}, Triton {_la(res.get('triton_loadavg_before_after'))})"
             + (f"; parts {', '.join(res['reused_from']['parts'])} reused from the run of "
                f"{res['reused_from']['generated_at']}" if res.get("reused_from") else "") + ".", "",
             "| metric | baseline (eager torch, batch 1) | Triton fp32 | Triton / baseline |"
             + (" Triton int8-decode | int8 / baseline |" if "int8" in res["triton"] else ""),
             "| --- | --- | --- | --- |" + (" --- | --- |" if "int8" in res["triton"] else "")]
    i8 = res["triton"].get("int8")
    prof = res.get("profile", {})

    def row(name, b, t, t8=None, digits=2, inverse=False):
        r = ratio(t, b)
        cells = f"| {name} | {fmt(b, digits)} | {fmt(t, digits)} | {fmt(r)}× |"
        if i8 is not None:
            cells += f" {fmt(t8, digits)} | {fmt(ratio(t8, b))}× |"
        lines.append(cells)

    row("single-stream RTF (compute s / audio s, lower is better)", base["single_stream_rtf"],
        tri["single_stream_rtf"], i8 and i8.get("single_stream_rtf"), 3)
    row("GPT tokens/s at batch 1", base["gpt_tokens_per_s"], prof.get("fp32", {}).get("gpt_tokens_per_s"),
        prof.get("int8", {}).get("gpt_tokens_per_s"), 1)
    row("SoVITS + vocoder RTF", base["sovits_vocoder_rtf"], prof.get("fp32", {}).get("sovits_vocoder_rtf"),
        prof.get("int8", {}).get("sovits_vocoder_rtf"), 3)
    row("first audio (s; streaming for Triton)", base["first_chunk_s"], tri.get("first_chunk_s"),
        i8 and i8.get("first_chunk_s"))
    for c in tri["concurrency"]:
        cc = c["concurrency"]
        c8 = next((x for x in (i8 or {}).get("concurrency", []) if x["concurrency"] == cc), None)
        row(f"throughput at concurrency {cc} (audio s / wall s)", base["throughput"], c["throughput"],
            c8 and c8["throughput"])
        for q in ("p50", "p95", "p99"):
            row(f"{q} latency at concurrency {cc} (s)", base["service_s"] * cc, c[f"{q}_s"], c8 and c8[f"{q}_s"])
    row("peak memory (MiB; Triton: sum of process peaks)", base["peak_rss_mb"], tri.get("peak_memory_mb"),
        None, 0)
    lines += ["", "Baseline latency at concurrency c is c × its single-request time (one request at a time, "
              "FIFO); its throughput is the same at every concurrency.", ""]
    sw = res.get("swap") or {}
    if sw:
        lines += ["## Hot swap", "",
                  f"- concurrency {sw['concurrency']}: steady p99 {fmt(sw['steady']['p99_s'])} s "
                  f"({sw['steady']['requests']} requests, {sw['steady']['errors']} errors); during the swap p99 "
                  f"{fmt(sw['swap_window']['p99_s'])} s ({sw['swap_window']['requests']} requests, "
                  f"{sw['swap_window']['errors']} errors) → ratio {fmt(sw['swap_p99_ratio'])}",
                  f"- load_model (activate) took {fmt(sw['activate_s'])} s; first response from version "
                  f"{sw['new_version']} {fmt(sw['load_to_first_new_response_s'])} s after load_model (the load, "
                  "then one whole non-streaming request of 10 s audio sent after the switch, at this load)",
                  f"- memory per loaded voice (stub RSS): {fmt(sw['memory_per_voice_mb'], 0)} MiB; both versions "
                  f"loaded: {json.dumps(sw['stub_rss_mb_both_loaded'])}", ""]
    pa = res.get("perf_analyzer") or {}
    if pa.get("summary"):
        lines += ["## perf_analyzer (gRPC, `tts`, composing models gsv_bert, voice_demo)", "",
                  "| concurrency | infer/s | p50 ms | p95 ms | p99 ms |", "| --- | --- | --- | --- | --- |"]
        for s in pa["summary"]:
            lines.append(f"| {s['concurrency']} | {s['infer_per_s']:.3f} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | "
                         f"{s['p99_ms']:.0f} |")
        lines.append("")
    elif pa:
        lines += ["## perf_analyzer", "", f"did not produce results: {pa.get('error') or pa.get('stderr_tail', '')[-300:]}", ""]
    if prof:
        lines += ["## Profile (exported graphs, in-process, server stopped)", "", "| | " + " | ".join(prof) + " |",
                  "| --- |" + " --- |" * len(prof)]
        keys = [k for k in next(iter(prof.values())) if k != "voice"]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(fmt(p.get(k), 3) for p in prof.values()) + " |")
        lines.append("")
    t = res["targets"]
    busy = _contended(res)
    if busy:
        lines += ["## Caveat: shared machine", "", busy, ""]
    lines += ["## Targets", ""] + [f"- {k}: {v}" for k, v in t.items()] + [""]
    (out / "latest.md").write_text("\n".join(lines))

    readme = ["## Performance", "",
              f"Measured on {mach} with `{res['command']}` (full-size v2 random-weight demo voice, every sentence "
              f"generates {res['tokens']} tokens = {res['tokens'] * 0.04:.0f} s of audio; EOS ignored in both "
              "pipelines so they do the same work). Baseline: this project's torch modules run eagerly like upstream "
              "GPT-SoVITS inference (batch 1, one request at a time, float32).", "",
              "| | baseline | Triton (fp32) | ratio |", "| --- | --- | --- | --- |",
              f"| single-stream RTF | {fmt(base['single_stream_rtf'], 3)} | {fmt(tri['single_stream_rtf'], 3)} | "
              f"{fmt(ratio(tri['single_stream_rtf'], base['single_stream_rtf']))}× |",
              f"| throughput at concurrency 8 (audio s / s) | {fmt(base['throughput'])} | {fmt(res['throughput_c8'])} | "
              f"{fmt(ratio(res['throughput_c8'], base['throughput']))}× |",
              f"| first audio (s) | {fmt(base['first_chunk_s'])} | {fmt(tri.get('first_chunk_s'))} (streaming) | "
              f"{fmt(ratio(tri.get('first_chunk_s'), base['first_chunk_s']))}× |",
              f"| p99 during a hot swap / steady p99 | | {fmt(res.get('swap_p99_ratio'))} | |", ""]
    busy = _contended(res)
    if busy:
        readme += [f"Caveat: {busy}", ""]
    if i8:
        readme += [f"With `--int8-decode`: single-stream RTF {fmt(i8['single_stream_rtf'], 3)}, throughput at "
                   f"concurrency 8 {fmt(res.get('throughput_c8_int8'))} audio s / s.", ""]
    fp = prof.get("fp32") or {}
    if fp:
        readme += [f"Where the time goes (exported graphs in-process, same machine): GPT prefill "
                   f"{fmt(fp.get('prefill_ms'), 0)} ms; decode step {fmt(fp.get('gpt_step_ms_b1'), 1)} ms at batch 1, "
                   f"{fmt(fp.get('gpt_step_ms_b8'), 1)} ms at batch 8 ({fmt(fp.get('gpt_tokens_per_s_b8'), 0)} tokens/s); "
                   f"per 10 s of audio SoVITS {fmt(fp.get('sovits_ms_per_10s'), 0)} ms and vocoder "
                   f"{fmt(fp.get('vocoder_ms_per_10s'), 0)} ms.", ""]
    rf = res.get("reference") or {}
    if rf:
        readme += [f"A reference clip sent with the request ({rf['tokens']}-token requests): "
                   f"{fmt(rf['no_reference_s'])} s without one, {fmt(rf['new_reference_s'])} s with a new clip "
                   f"(+{fmt(rf['new_reference_overhead_s'])} s: SSL, BERT, prompt tokens, ge), "
                   f"{fmt(rf['cached_reference_s'])} s with a cached one.", ""]
    fe = res.get("frontend") or {}
    if fe:
        cells = [f"{mode} {v['ms_per_100_chars']:.1f} ms" for mode, v in fe.items()
                 if isinstance(v, dict) and "ms_per_100_chars" in v]
        readme += [f"Text front end (upstream's path, G2PW {'on' if fe.get('g2pw') else 'off'}), per 100-character "
                   f"sentence: {', '.join(cells)}.", ""]
    readme += ["Targets (2-core CI-class machine, full-size voice, 10 s requests):", ""]
    readme += [f"- {k}: {v}" for k, v in res["targets"].items()] + [""]
    readme += ["Plots: `bench/results/latency_vs_concurrency.png`, `bench/results/throughput_vs_concurrency.png`; "
               "all figures: `bench/results/latest.md`, `bench/results/latest.json`. Each optimization's measured "
               "effect, what was tried and not kept, and where the time goes under load: "
               "`bench/results/optimizations.md`.", ""]
    (out / "README_perf.md").write_text("\n".join(readme))


README_START, README_END = "<!-- perf:start (written by python -m bench.run) -->", "<!-- perf:end -->"


def update_readme(readme: Path, section: str) -> None:
    """Replace the README's performance section (between the perf markers) with ``section``;
    without markers, append it with them."""
    text = readme.read_text()
    block = f"{README_START}\n{section.rstrip()}\n{README_END}"
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        text = head + block + rest.split(README_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)


def plots(res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = res["baseline"]
    files = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, data in res["triton"].items():
        cs = [c["concurrency"] for c in data["concurrency"]]
        for q, style in (("p50", "-o"), ("p99", "--^")):
            ax.plot(cs, [c[f"{q}_s"] for c in data["concurrency"]], style, label=f"Triton {label} {q}")
    cs = [c["concurrency"] for c in res["triton"]["fp32"]["concurrency"]]
    ax.plot(cs, [base["service_s"] * c for c in cs], ":s", label="baseline (serial) p50≈p99")
    files.append(_save_plot(plt, fig, ax, out / "latency_vs_concurrency.png", "request latency (s)",
                            f"Latency vs concurrency ({res['tokens'] * 0.04:.0f} s audio/request)"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, data in res["triton"].items():
        ax.plot([c["concurrency"] for c in data["concurrency"]], [c["throughput"] for c in data["concurrency"]],
                "-o", label=f"Triton {label}")
    ax.plot(cs, [base["throughput"]] * len(cs), ":s", label="baseline (eager torch, serial)")
    files.append(_save_plot(plt, fig, ax, out / "throughput_vs_concurrency.png", "audio seconds per wall second",
                            "Throughput vs concurrency"))
    return files


def _save_plot(plt, fig, ax, path: Path, ylabel: str, title: str) -> str:
    """The axes both plots share (concurrency on a log-2 x axis), written as PNG; returns the file name."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ----------------------------------------------------------------------------- main
def triton_part(args, res: dict, prep: dict, levels: list[int], skip: set, cache: Path) -> None:
    """Everything measured against a running tritonserver (its own, with GSV_BENCH_IGNORE_EOS=1)."""
    before, foreign = list(os.getloadavg()), ForeignLoad()
    from ops.server import TritonProcess, free_ports

    run_repo = cache / "run-repo"
    link_copy(prep["repo"], run_repo)
    os.environ["GSV_BENCH_IGNORE_EOS"] = "1"  # TritonProcess copies os.environ into the server's env
    http, grpc, metrics = free_ports(3)
    server_log = cache / "tritonserver.log"
    if server_log.exists():
        server_log.unlink()
    res["triton"] = {}
    with TritonProcess(run_repo, http, grpc, metrics, log_path=server_log, exit_timeout=10) as server:
        server.wait_ready(900)
        url = server.grpc_url
        log(f"tritonserver ready on {url} (log {server_log})")
        res["triton_idle_memory"] = tree_memory(server.pid)
        res["stub_rss_mb_idle"] = {v: stub_rss(server.pid, v) for v in prep["voices"].values()}
        for label, voice in prep["voices"].items():
            log(f"Triton {label} (voice {voice}): single stream")
            ss = single_stream(url, voice, args.tokens, args.repeats)
            log(f"  RTF {ss['single_stream_rtf']:.3f}, first chunk {ss['first_chunk_s']:.2f} s")
            lv = levels if label == "fp32" else [int(c) for c in args.int8_concurrency.split(",")]
            ss["concurrency"] = sweep(url, voice, args.tokens, lv, args.per_client, server.pid)
            ss["peak_memory_mb"] = tree_memory(server.pid)["peak_mb_sum_of_hwm"]
            res["triton"][label] = ss
        if "reference" not in skip:
            from bench import reference as reference_bench

            log("a reference clip per request: new vs cached")
            res["reference"] = reference_bench.measure(url, prep["voices"]["fp32"], prep["demo"], REF_TEXT)
            log(f"  overhead new {res['reference']['new_reference_overhead_s']:.2f} s, "
                f"cached {res['reference']['cached_reference_overhead_s']:.2f} s")
        if "perf_analyzer" not in skip:
            res["perf_analyzer"] = perf_analyzer(url, cache, args.tokens, args.pa_concurrency, args.pa_requests, 1200,
                                                 server.admin_key)
        if "swap" not in skip:
            res["swap"] = swap_impact(run_repo, url, server.pid, args.tokens, args.swap_concurrency, args.per_client)
            log(f"swap p99 ratio {fmt(res['swap']['swap_p99_ratio'])}, errors {res['swap']['swap_window']['errors']}")
        res["triton_final_memory"] = tree_memory(server.pid)
        res["server_log_voice_lines"] = [ln for ln in server_log.read_text(errors="replace").splitlines()
                                         if "BENCHMARK MODE" in ln][:4]
    res["triton_loadavg_before_after"] = [before, list(os.getloadavg())]
    res["triton_foreign_cpu_share"] = foreign.share()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--cache", type=Path, help="demo voice + export cache (default bench/.cache/<size>)")
    p.add_argument("--tokens", type=int, default=250, help="tokens per sentence (250 = 10 s)")
    p.add_argument("--concurrency", default="1,2,4,8,16")
    p.add_argument("--per-client", type=int, default=3, help="requests per client at each concurrency level")
    p.add_argument("--repeats", type=int, default=1, help="single-stream repeats per text (both pipelines)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                   help="also export and measure an --int8-decode voice (demo8)")
    p.add_argument("--int8-concurrency", default="1,8")
    p.add_argument("--swap-concurrency", type=int, default=4)
    p.add_argument("--pa-concurrency", default="1:4:3", help="perf_analyzer --concurrency-range")
    p.add_argument("--pa-requests", type=int, default=3, help="perf_analyzer requests per measurement window")
    p.add_argument("--reuse", type=Path, help="an earlier latest.json: take its parts instead of measuring them again")
    p.add_argument("--redo", default="", help="with --reuse: comma list of parts to measure again: baseline,triton,profile")
    p.add_argument("--skip", default="", help="comma list of parts to skip: baseline,perf_analyzer,swap,profile,frontend,reference")
    p.add_argument("--readme", help="README whose performance section to rewrite (default: the "
                   "project README when --out is bench/results; pass --readme '' for none)")
    args = p.parse_args(argv)
    if args.readme is None:
        args.readme = ROOT / "README.md" if args.out.resolve() == HERE / "results" else None
    else:
        args.readme = Path(args.readme) if args.readme else None
    skip = set(filter(None, args.skip.split(",")))
    levels = [int(c) for c in args.concurrency.split(",")]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or HERE / ".cache" / args.size).resolve()
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    res: dict = {"machine": machine(), "size": args.size, "tokens": args.tokens, "command": command.strip(),
                 "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "texts": TEXTS, "top_k": TOP_K}
    t_all = time.perf_counter()
    loadavg_start = list(os.getloadavg())
    prep = prepare(cache, args.size, args.int8)
    res["int8_error"] = prep["int8_error"]
    reused = json.loads(args.reuse.read_text()) if args.reuse else {}
    redo = set(filter(None, args.redo.split(",")))
    if reused:
        res["reused_from"] = {"file": str(args.reuse), "generated_at": reused.get("generated_at"),
                              "parts": sorted({"baseline", "triton", "profile"} - redo)}
    if reused and "baseline" not in redo:
        res["baseline"] = reused["baseline"]
    elif "baseline" not in skip:
        before, foreign = list(os.getloadavg()), ForeignLoad()
        res["baseline"] = run_baseline(prep, out, args.tokens, args.repeats)
        res["baseline"]["loadavg_before_after"] = [before, list(os.getloadavg())]
        res["baseline"]["foreign_cpu_share"] = foreign.share()
    else:
        res["baseline"] = None
    if res["baseline"]:
        log(f"baseline RTF {res['baseline']['single_stream_rtf']:.3f}, GPT {res['baseline']['gpt_tokens_per_s']:.1f} tok/s")
    if reused and "triton" not in redo:
        for key in ("triton", "triton_idle_memory", "stub_rss_mb_idle", "perf_analyzer", "swap", "triton_final_memory",
                    "server_log_voice_lines", "triton_loadavg_before_after", "triton_foreign_cpu_share"):
            if key in reused:
                res[key] = reused[key]
    else:
        triton_part(args, res, prep, levels, skip, cache)
    if reused and "profile" not in redo and "profile" in reused:
        res["profile"] = reused["profile"]
    elif "profile" not in skip:
        log("profile: exported graphs in-process")
        res["profile"] = {label: profile(prep["repo"], voice, args.tokens) for label, voice in prep["voices"].items()}
    if "frontend" not in skip:
        log("text front end: ms per 100-character sentence")
        from bench import frontend as frontend_bench
        from python_backend.text.frontend import configure_from_repo

        configure_from_repo(prep["repo"])
        res["frontend"] = frontend_bench.measure()

    # headline keys
    tri, base = res["triton"]["fp32"], res["baseline"] or {}

    def at(data, c):
        return next((x["throughput"] for x in data["concurrency"] if x["concurrency"] == c), None)

    top = max(levels)
    c8 = 8 if 8 in levels else top
    res["single_stream_rtf"] = tri["single_stream_rtf"]
    res["baseline_single_stream_rtf"] = base.get("single_stream_rtf")
    res["throughput_c8"] = at(tri, c8)
    res["throughput_c8_concurrency"] = c8
    res["baseline_throughput_c8"] = base.get("throughput")
    if "int8" in res["triton"]:
        res["single_stream_rtf_int8"] = res["triton"]["int8"]["single_stream_rtf"]
        res["throughput_c8_int8"] = at(res["triton"]["int8"], c8)
    res["swap_p99_ratio"] = (res.get("swap") or {}).get("swap_p99_ratio")
    res["ratios"] = {"single_stream_rtf": ratio(res["single_stream_rtf"], res["baseline_single_stream_rtf"]),
                     "throughput_c8": ratio(res["throughput_c8"], res["baseline_throughput_c8"])}
    res["targets"] = {
        "single-stream RTF <= 0.5": f"{'met' if res['single_stream_rtf'] <= 0.5 else 'MISSED'} "
                                    f"({res['single_stream_rtf']:.3f})",
        "throughput at c8 >= 3x baseline": ("n/a" if res["ratios"]["throughput_c8"] is None else
                                            f"{'met' if res['ratios']['throughput_c8'] >= 3 else 'MISSED'} "
                                            f"({res['ratios']['throughput_c8']:.2f}x)"),
        "swap adds < 50% to p99": ("n/a" if res["swap_p99_ratio"] is None else
                                   f"{'met' if res['swap_p99_ratio'] < 1.5 else 'MISSED'} ({res['swap_p99_ratio']:.2f})"),
    }
    best = min((x["rtf"] for x in (base.get("per_text") or {}).values() if x.get("audio_s", 0) >= 9.9), default=None)
    if best and res["throughput_c8"]:
        r = res["throughput_c8"] * best
        res["targets"]["throughput at c8 vs the least-contended baseline 10 s request (1 / its RTF)"] = (
            f"{'met' if r >= 3 else 'MISSED'} ({r:.2f}x; baseline RTF {best:.2f})")
    if reused:  # the canonical command; latest.json's reused_from says which parts came from which run
        res["command"] = f"python -m bench.run --size {args.size} --out {args.out}"
        res["regenerated_by"] = command.strip()
    res["bench_wall_s"] = time.perf_counter() - t_all
    # other work on the machine competes for the same cores: record how busy it was
    res["machine"]["loadavg_start"], res["machine"]["loadavg_end"] = loadavg_start, list(os.getloadavg())
    res["plots"] = plots(res, out) if res["baseline"] else []
    (out / "latest.json").write_text(json.dumps(res, ensure_ascii=False, indent=1, default=str))
    if res["baseline"]:
        write_reports(res, out)
        if args.readme:
            update_readme(args.readme, (out / "README_perf.md").read_text())
            log(f"performance section of {args.readme} updated")
    log(f"done in {res['bench_wall_s']:.0f} s: {out / 'latest.json'}")
    for k, v in res["targets"].items():
        log(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
