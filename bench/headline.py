"""The headline keys of ``latest.json`` and the targets (issue 14's), from the measured parts."""
from __future__ import annotations

from bench.common import LOAD_TEXT, TEXTS
from bench.report import ratio

LOAD_NAME = next(k for k, v in TEXTS.items() if v == LOAD_TEXT)


def same_texts_rtf(per_text: dict | None, names) -> float | None:
    """RTF over the texts ``names`` only (sum of latencies / sum of audio), to set a pipeline beside a
    peer that was measured on fewer texts."""
    rows = [(per_text or {}).get(n) for n in names]
    if not rows or any(r is None for r in rows):
        return None
    return sum(r["latency_s"] for r in rows) / sum(r["audio_s"] for r in rows)


def _verdict(ok: bool | None, shown: str) -> str:
    return "n/a" if ok is None else f"{'met' if ok else 'MISSED'} ({shown})"


def peer_figures(res: dict) -> None:
    """Each measured peer gets this project's and the baseline's RTF on its texts, and their ratio."""
    tri, base = res["triton"]["fp32"], res.get("baseline") or {}
    for peer in res.get("peers") or []:
        if "error" in peer:
            continue
        ours = same_texts_rtf(tri.get("per_text"), peer["texts"])
        peer["same_texts_rtf"] = {"triton_fp32": ours, "baseline": same_texts_rtf(base.get("per_text"), peer["texts"])}
        peer["triton_rtf_over_peer_rtf"] = ratio(ours, peer["single_stream_rtf"])


def headline(res: dict, levels: list[int]) -> None:
    """Add the headline figures (single-stream RTF, throughput at concurrency 8, first-audio ratio, swap
    ratio), their ratios to the baseline and the peers, and the targets' verdicts to ``res``."""
    tri, base = res["triton"]["fp32"], res["baseline"] or {}

    top = max(levels)
    c8 = 8 if 8 in levels else top
    res["single_stream_rtf"] = tri["single_stream_rtf"]
    res["baseline_single_stream_rtf"] = base.get("single_stream_rtf")
    res["throughput_c8"] = at_level(tri, c8, "throughput")
    res["throughput_c8_concurrency"] = c8
    res["baseline_throughput_c8"] = base.get("throughput")
    if "int8" in res["triton"]:
        res["single_stream_rtf_int8"] = res["triton"]["int8"]["single_stream_rtf"]
        res["throughput_c8_int8"] = at_level(res["triton"]["int8"], c8, "throughput")
    res["swap_p99_ratio"] = (res.get("swap") or {}).get("swap_p99_ratio")
    whole = (tri.get("per_text") or {}).get(LOAD_NAME, {}).get("latency_s")
    res["first_audio_ratio"] = ratio(tri.get("first_chunk_s"), whole)  # first streamed chunk / the whole request
    res.setdefault("peers", [])
    peer_figures(res)
    res["ratios"] = {"single_stream_rtf": ratio(res["single_stream_rtf"], res["baseline_single_stream_rtf"]),
                     "throughput_c8": ratio(res["throughput_c8"], res["baseline_throughput_c8"])}
    res["targets"] = targets(res, tri, base, c8)


def targets(res: dict, tri: dict, base: dict, c8: int) -> dict:
    thr, rtf = res["ratios"]["throughput_c8"], res["ratios"]["single_stream_rtf"]
    p50, p99 = at_level(tri, c8, "p50_s"), at_level(tri, c8, "p99_s")
    fair = ratio(p99, p50)
    out = {
        "single-stream RTF <= 0.5": _verdict(res["single_stream_rtf"] <= 0.5, f"{res['single_stream_rtf']:.3f}"),
        "throughput at c8 >= 3.5x baseline, p99 <= 3x p50": _verdict(
            None if thr is None or fair is None else thr >= 3.5 and fair <= 3,
            f"{fmt_x(thr)}, p99/p50 {fmt_x(fair)}"),
        "single-stream RTF <= 0.30x the eager baseline's": _verdict(None if rtf is None else rtf <= 0.30, fmt_x(rtf)),
        "first streamed audio <= 0.08x a whole 10 s utterance": _verdict(
            None if res["first_audio_ratio"] is None else res["first_audio_ratio"] <= 0.08, fmt_x(res["first_audio_ratio"])),
        "swap adds < 50% to p99": _verdict(None if res["swap_p99_ratio"] is None else res["swap_p99_ratio"] < 1.5,
                                           fmt_x(res["swap_p99_ratio"], "")),
    }
    measured = [p for p in res["peers"] if p.get("triton_rtf_over_peer_rtf") is not None]
    if measured:
        best = min(measured, key=lambda p: p["single_stream_rtf"])
        r = best["triton_rtf_over_peer_rtf"]
        out["single-stream RTF <= 0.6x the best CPU peer's (same texts)"] = _verdict(
            r <= 0.6, f"{r:.2f}x {best['name']} {best['version']}")
    else:
        why = "; ".join(f"{p['name']}: {p['error']}" for p in res["peers"]) or "no peer measured (--skip peers)"
        out["single-stream RTF <= 0.6x the best CPU peer's (same texts)"] = f"n/a ({why[:300]})"
    best_base = min((x["rtf"] for x in (base.get("per_text") or {}).values() if x.get("audio_s", 0) >= 9.9),
                    default=None)
    if best_base and res["throughput_c8"]:
        r = res["throughput_c8"] * best_base
        out["throughput at c8 vs the least-contended baseline 10 s request (1 / its RTF)"] = (
            _verdict(r >= 3.5, f"{r:.2f}x; baseline RTF {best_base:.2f}"))
    return out


def at_level(data: dict, c: int, key: str):
    return next((x[key] for x in data["concurrency"] if x["concurrency"] == c), None)


def fmt_x(x, unit: str = "x") -> str:
    return "—" if x is None else f"{x:.2f}{unit}"
