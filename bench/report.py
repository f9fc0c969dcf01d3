"""The markdown reports (``latest.md``, ``README_perf.md``) and the README's performance section."""
from __future__ import annotations

import json
from pathlib import Path


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


def peer_table(res: dict) -> list[str]:
    """Markdown: the eager baseline, this project through Triton and each CPU peer, side by side (same
    voice, token budget and run); single-stream RTF on the texts the peers were measured on."""
    peers = res.get("peers") or []
    if not peers:
        return []
    base, tri = res.get("baseline") or {}, res["triton"]["fp32"]
    levels = [c["concurrency"] for c in tri["concurrency"]]
    texts = next((p["texts"] for p in peers if "texts" in p), None)
    label = f"single-stream RTF ({', '.join(texts)})" if texts else "single-stream RTF"
    lines = ["## Peers (same voice, same token budget, same run)", "",
             f"| pipeline | version | {label} | first audio (s) | "
             + " | ".join(f"audio s/s at c={c}" for c in levels) + " |",
             "| --- | --- | --- | --- |" + " --- |" * len(levels)]
    measured = next((p for p in peers if "same_texts_rtf" in p), {})
    same = measured.get("same_texts_rtf") or {}
    if base:
        lines.append(f"| upstream-style eager baseline (one at a time) | torch {base.get('torch', '')} | "
                     f"{fmt(same.get('baseline', base.get('single_stream_rtf')), 3)} | {fmt(base.get('first_chunk_s'))} | "
                     + " | ".join(fmt(base.get("throughput")) for _ in levels) + " |")
    lines.append(f"| gsv-triton through Triton (fp32) | {res.get('commit') or 'this checkout'} | "
                 f"{fmt(same.get('triton_fp32', tri.get('single_stream_rtf')), 3)} | {fmt(tri.get('first_chunk_s'))} "
                 "(streaming) | " + " | ".join(fmt(c["throughput"]) for c in tri["concurrency"]) + " |")
    for p in peers:
        if "error" in p:
            lines.append(f"| {p['name']} | {p.get('version') or '—'} | not measured: {p['error']} |"
                         + " |" * (1 + len(levels)))
            continue
        lines.append(f"| {p['name']}{' (one at a time)' if p.get('serial') else ''} | {p['version']} | "
                     f"{fmt(p['single_stream_rtf'], 3)} | {fmt(p.get('first_audio_s'))} | "
                     + " | ".join(fmt(p["throughput"].get(str(c))) for c in levels) + " |")
    lines += ["", "A pipeline that serves one request at a time makes the same audio seconds per second at every "
              "concurrency. Genie-TTS runs its own ONNX graphs converted from the same .ckpt/.pth "
              "(`bench/peer_genie.py` says how, and what it is not given).", ""]
    return lines


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
    lines += peer_table(res)
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
    if res.get("first_audio_ratio") is not None:
        readme += [f"The first streamed chunk arrives after {fmt(res['first_audio_ratio'])}× the time of the whole "
                   "non-streaming request for the same text (`first_audio_ratio`).", ""]
    readme += peer_table(res)
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
