"""The tritonclient wheel's perf_analyzer against ``tts``, with the per-stage split of its composing models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import LOAD_TEXT, TOP_K, log


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
