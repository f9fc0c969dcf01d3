"""The tritonclient wheel's perf_analyzer against ``tts``, with the per-stage split of its composing models.

Binary, libraries, arguments and the admin key header come from ``ops.perf`` (``gsv-triton perf``),
so the bench measures with the command a user runs.
"""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

from bench.common import LOAD_TEXT, TOP_K, log


def perf_analyzer(url: str, work: Path, tokens: int, levels: str, requests_per_window: int, timeout: float,
                  admin_key: str | None = None) -> dict:
    from ops import perf

    try:
        binary = perf.find_perf_analyzer()
        req = perf.PerfRequest(url=url, voice="demo", text=LOAD_TEXT, concurrency=perf.ConcurrencyRange.parse(levels),
                               max_tokens=tokens, top_k=TOP_K, seed=7, requests_per_window=requests_per_window)
    except perf.PerfError as exc:
        return {"error": str(exc)}
    data = req.input_data()
    data_path = work / "perf_analyzer_input.json"
    data_path.write_text(json.dumps(data, ensure_ascii=False))
    csv_path = work / "perf_analyzer.csv"
    argv = perf.perf_argv(binary, req, data_path, csv_path, composing=True)
    log(f"perf_analyzer: {' '.join(argv[1:])}")
    argv += perf.admin_key_args(admin_key)  # it reads the model config and statistics (restricted APIs)
    try:
        proc = subprocess.run(argv, env=perf.library_env(work), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout:.0f} s",
                "stdout_tail": (exc.stdout or "")[-3000:] if isinstance(exc.stdout, str) else ""}
    shown = [a.replace(admin_key, "<admin-key>") if admin_key else a for a in argv[1:]]  # never in results
    out = {"argv": ["perf_analyzer", *shown], "returncode": proc.returncode, "stdout_tail": proc.stdout[-6000:],
           "stderr_tail": proc.stderr[-2000:], "input_data": data}
    if csv_path.is_file():
        rows = list(csv.DictReader(csv_path.read_text().splitlines()))
        out["rows"] = rows
        out["summary"] = [{"concurrency": int(float(r.get("Concurrency", 0))),
                           "infer_per_s": float(r.get("Inferences/Second", 0)),
                           "p50_ms": float(r.get("p50 latency", 0)) / 1000, "p95_ms": float(r.get("p95 latency", 0)) / 1000,
                           "p99_ms": float(r.get("p99 latency", 0)) / 1000} for r in rows]
    return out
