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
import sys
import time
from pathlib import Path

from bench.baseline import measure as run_baseline
from bench.common import HERE, LOAD_TEXT, REF_TEXT, ROOT, TEXTS, TOP_K, log
from bench.headline import headline
from bench.plots import plots
from bench.prepare import prepare
from bench.processes import ForeignLoad, machine
from bench.report import README_END, README_START, update_readme, write_reports
from bench.stage_profile import profile
from bench.triton_part import triton_part

__all__ = ["HERE", "README_END", "README_START", "REF_TEXT", "main", "machine", "prepare"]


def get_args(argv=None) -> argparse.Namespace:
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
    p.add_argument("--peers", default="genie", help="comma list of CPU peers to measure beside the baseline and "
                   "Triton (genie: Genie-TTS, installed with pip install --target bench/.cache/genie-site genie-tts==2.0.2)")
    p.add_argument("--genie-site", type=Path, help="the folder genie-tts was pip-installed into with --target "
                   "(default bench/.cache/genie-site)")
    p.add_argument("--reuse", type=Path, help="an earlier latest.json: take its parts instead of measuring them again")
    p.add_argument("--redo", default="", help="with --reuse: comma list of parts to measure again: baseline,peers,triton,profile")
    p.add_argument("--skip", default="", help="comma list of parts to skip: baseline,peers,perf_analyzer,swap,profile,frontend,reference")
    p.add_argument("--readme", help="README whose performance section to rewrite (default: the "
                   "project README when --out is bench/results; pass --readme '' for none)")
    args = p.parse_args(argv)
    if args.readme is None:
        args.readme = ROOT / "README.md" if args.out.resolve() == HERE / "results" else None
    else:
        args.readme = Path(args.readme) if args.readme else None
    return args


def measure_parts(args, res: dict, prep: dict, reused: dict, redo: set, skip: set, levels: list[int], out: Path,
                  cache: Path) -> None:
    """Each part in turn (baseline, Triton, profile, text front end), or its figures from ``--reuse``."""
    if reused:
        res["reused_from"] = {"file": str(args.reuse), "generated_at": reused.get("generated_at"),
                              "parts": sorted({"baseline", "peers", "triton", "profile"} - redo)}
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
    if reused and "peers" not in redo and "peers" in reused:
        res["peers"] = reused["peers"]
    elif "peers" not in skip:
        res["peers"] = measure_peers(args, prep, out, levels)
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


def measure_peers(args, prep: dict, out: Path, levels: list[int]) -> list[dict]:
    """Each CPU peer on the same voice and token budget, in its own process; a peer that cannot run
    here is recorded with the reason, never with figures."""
    from bench import peer_genie

    peers = []
    for name in filter(None, args.peers.split(",")):
        if name != "genie":
            raise SystemExit(f"--peers {name!r}: unknown peer; known: genie")
        before, foreign = list(os.getloadavg()), ForeignLoad()
        log("peer: Genie-TTS (its own ONNX graphs converted from the same .ckpt/.pth), one request at a time")
        texts = {k: v for k, v in TEXTS.items() if k.startswith("zh")}  # see bench/peer_genie.py: no English
        work = (args.cache or HERE / ".cache" / args.size).resolve() / "peers"
        work.mkdir(parents=True, exist_ok=True)
        peer = peer_genie.measure(prep, work, args.tokens, texts, LOAD_TEXT, REF_TEXT, levels, args.repeats,
                                  site=args.genie_site)
        peer["loadavg_before_after"] = [before, list(os.getloadavg())]
        peer["foreign_cpu_share"] = foreign.share()
        log(f"  {peer['name']}: " + (f"RTF {peer['single_stream_rtf']:.3f}" if "error" not in peer
                                      else f"not measured: {peer['error']}"))
        peers.append(peer)
    return peers


def git_commit() -> str | None:
    """The checkout's short commit (with ``+changes`` when the tree differs), for the report's version column."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+changes" if dirty else "")) or None


def main(argv=None) -> int:
    args = get_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    levels = [int(c) for c in args.concurrency.split(",")]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or HERE / ".cache" / args.size).resolve()
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    res: dict = {"machine": machine(), "commit": git_commit(), "size": args.size, "tokens": args.tokens,
                 "command": command.strip(),
                 "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "texts": TEXTS, "top_k": TOP_K}
    t_all = time.perf_counter()
    loadavg_start = list(os.getloadavg())
    prep = prepare(cache, args.size, args.int8)
    res["int8_error"] = prep["int8_error"]
    reused = json.loads(args.reuse.read_text()) if args.reuse else {}
    redo = set(filter(None, args.redo.split(",")))
    measure_parts(args, res, prep, reused, redo, skip, levels, out, cache)
    headline(res, levels)
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
