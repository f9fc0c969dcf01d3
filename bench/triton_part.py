"""Everything measured against the benchmark's own tritonserver: load, reference, perf_analyzer, swap."""
from __future__ import annotations

import os
from pathlib import Path

from bench.common import REF_TEXT, log
from bench.load import single_stream, sweep
from bench.perf_analyzer import perf_analyzer
from bench.prepare import link_copy
from bench.processes import ForeignLoad, stub_rss, tree_memory
from bench.report import fmt
from bench.swap_impact import swap_impact


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
