"""The headline keys of ``latest.json`` and the targets, from the measured parts."""
from __future__ import annotations

from bench.report import ratio


def headline(res: dict, levels: list[int]) -> None:
    """Add the headline figures (single-stream RTF, throughput at concurrency 8, swap ratio), their
    ratios to the baseline and the targets' verdicts to ``res``."""
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
