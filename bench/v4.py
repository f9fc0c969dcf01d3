"""v4 voices (CFM + 48 kHz vocoder): this project's engine against the eager torch v4 path, on CPU.

    python -m bench.v4 --size full --steps 8,32 --concurrency 1,2,4,8 --tokens 100 --out bench/results

Both sides synthesize the same sentence (``bench.common.LOAD_TEXT``, BERT features zero on both
sides, as ``bench.baseline``) with a fixed token budget (EOS masked) from the same full-size
random-weight v4 demo voice (``gsv-triton demo-voice --sovits-version v4``: base + LoRA + vocoder,
exported once and cached in ``bench/.cache/v4-<size>/``):

* eager (the way upstream runs v4): ``GPT`` prefill + step loop with the numpy sampler, then
  ``export.v4_pipeline.synthesize`` (upstream's ``using_vocoder_synthesis`` order: decode_encp,
  chunked CFM, vocoder) over the torch modules; batch 1, one request at a time, so its throughput
  is the same at every concurrency;
* engine: ``python_backend.voice_engine.VoiceEngine`` on the exported version, in this process (no
  Triton: the v4 part is what is new; the served path adds the tts BLS, measured by ``bench.run``):
  GPT in-flight batching, then CFM rows of all requests batched step by step, vocoder batched.

Reported per step count: single-stream RTF (compute seconds per audio second) of both, throughput
(audio seconds per second) at each concurrency, and where the engine's time goes (prefill, decode
steps, encoder, CFM steps, vocoder). Run on an idle machine; the load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.common import LOAD_TEXT, REF_TEXT, ROOT, TOP_K, log
from bench.processes import machine

CACHE = ROOT / "bench" / ".cache"
VOICE = "demo4"


def prepare(size: str, seed: int = 0) -> dict:
    """The demo v4 files and their export (cached)."""
    from ops import cli
    from python_backend import layout

    work = CACHE / f"v4-{size}"
    demo, repo = work / "demo", work / "repo"
    vdir = layout.voice_dir(repo, VOICE)
    if not (vdir.is_dir() and layout.version_numbers(vdir)):
        demo.mkdir(parents=True, exist_ok=True)
        repo.mkdir(parents=True, exist_ok=True)
        log(f"v4: demo voice ({size}) and export into {repo}")
        assert cli.main(["demo-voice", str(demo), "--size", size, "--seed", str(seed), "--sovits-version", "v4"]) == 0
        assert cli.main(["export", "--gpt", str(demo / "gpt.ckpt"), "--sovits", str(demo / "sovits.pth"),
                         "--sovits-base", str(demo / "s2Gv4.pth"), "--vocoder", str(demo / "vocoder.pth"),
                         "--ref-audio", str(demo / "ref.wav"), "--ref-text", REF_TEXT, "--ref-lang", "zh",
                         "--hubert", str(demo / "chinese-hubert-base"), "--bert", str(demo / "chinese-roberta-wwm-ext-large"),
                         "--voice", VOICE, "--repo", str(repo), "--no-progress"]) == 0
    return {"demo": demo, "repo": repo, "version_dir": vdir / str(layout.version_numbers(vdir)[-1])}


def _sentence():
    from python_backend.text.frontend import text_to_phones, zero_bert

    seq = text_to_phones(LOAD_TEXT)
    return np.asarray(seq.phone_ids, np.int64), zero_bert(seq).astype(np.float32)


# --------------------------------------------------------------------------- eager


class Eager:
    """Upstream's way: torch modules, batch 1, GPT then decode_encp -> chunked CFM -> vocoder."""

    def __init__(self, prep: dict):
        import torch

        from export.checkpoints import read_gpt, read_sovits_v4, read_vocoder_v4
        from export.gpt_model import GPT
        from export.v4_model import build_v4
        from export.v4_vocoder import build_vocoder
        from python_backend.audio import load_reference

        torch.set_grad_enabled(False)
        demo = prep["demo"]
        self.gpt = GPT.from_checkpoint(read_gpt(demo / "gpt.ckpt")).eval()
        sovits = read_sovits_v4(demo / "s2Gv4.pth", lora=demo / "sovits.pth")
        self.model = build_v4(sovits).eval()
        self.vocoder = build_vocoder(read_vocoder_v4(demo / "vocoder.pth", sovits)).eval()
        with np.load(prep["version_dir"] / "reference.npz") as ref:
            self.ref = {k: ref[k] for k in ("phones", "bert", "prompts", "spec")}
        self.wav32k = load_reference(demo / "ref.wav").wav32k.astype(np.float32)
        self.torch = torch

    def run(self, phones: np.ndarray, bert: np.ndarray, tokens: int, steps: int, seed: int) -> dict:
        from bench.baseline import eager_gpt_tokens
        from export import v4_pipeline
        from python_backend.v4_synthesis import chunk_noise

        torch, ref = self.torch, self.ref
        start = time.perf_counter()
        prompts = torch.from_numpy(ref["prompts"].reshape(1, -1))
        generated, _ = eager_gpt_tokens(self.gpt, torch.from_numpy(np.concatenate([ref["phones"], phones])[None]),
                                        torch.from_numpy(np.concatenate([ref["bert"], bert], axis=1)[None]), prompts,
                                        tokens, np.random.default_rng(seed), TOP_K)
        gpt_s = time.perf_counter() - start
        codes = torch.from_numpy(generated[None])
        trace = v4_pipeline.synthesize(
            self.model, self.vocoder, codes, torch.from_numpy(phones[None]), prompts,
            torch.from_numpy(ref["phones"][None]), torch.from_numpy(ref["spec"][None]),
            torch.from_numpy(self.wav32k[None]), steps,
            lambda c, n: torch.from_numpy(chunk_noise(seed, c, 100, n)[None]))
        total = time.perf_counter() - start
        audio_s = trace.wav.numel() / 48000
        return {"compute_s": total, "gpt_s": gpt_s, "sovits_s": total - gpt_s, "audio_s": audio_s}


# --------------------------------------------------------------------------- engine


def _engine_batch(engine, phones, bert, tokens: int, steps: int, concurrency: int, seed: int) -> dict:
    from python_backend.voice_engine import SynthesisRequest

    before = dict(engine.seconds)
    start = time.perf_counter()
    handles, audio = [], [0] * concurrency
    for i in range(concurrency):
        def emit(chunk, i=i):
            audio[i] += chunk.audio.size
        req = SynthesisRequest(phones=phones, bert=bert, top_k=TOP_K, seed=seed + i, max_tokens=tokens,
                               sample_steps=steps)
        handles.append(engine.submit(req, emit))
    done = []
    for h in handles:
        h.wait()
        done.append(time.perf_counter() - start)
    wall = time.perf_counter() - start
    audio_s = sum(audio) / engine.sample_rate
    spent = {k: engine.seconds[k] - before.get(k, 0.0) for k in engine.seconds}
    return {"wall_s": wall, "audio_s": audio_s, "throughput": audio_s / wall, "latency_s": done,
            "seconds": spent, "finish": [h.finish_reason for h in handles]}


def measure(size: str, steps_list: list[int], concurrency: list[int], tokens: int, skip_eager: bool = False,
            per_steps: dict[int, list[int]] | None = None, on_row=None) -> dict:
    """``per_steps``: concurrency levels for a step count (default ``concurrency``); ``on_row(result)``
    after each step count, so a long run keeps what it measured."""
    from python_backend.voice_engine import VoiceEngine

    prep = prepare(size)
    phones, bert = _sentence()
    load_before = os.getloadavg()
    out = {"size": size, "tokens": tokens, "text": LOAD_TEXT, "machine": machine(), "steps": {}}
    levels = {s: (per_steps or {}).get(s, concurrency) for s in steps_list}
    engine = VoiceEngine(prep["version_dir"], max_batch=max(max(v) for v in levels.values()), ignore_eos=True)
    eager = None if skip_eager else Eager(prep)
    try:
        _engine_batch(engine, phones, bert, min(tokens, 20), 1, 1, 0)  # warm-up, not counted
        for steps in steps_list:
            row: dict = {"engine": {}, "eager": None}
            concurrency = levels[steps]
            for c in concurrency:
                log(f"v4 engine: {steps} steps, concurrency {c}")
                row["engine"][str(c)] = _engine_batch(engine, phones, bert, tokens, steps, c, 100)
            single = row["engine"][str(concurrency[0])]
            row["engine_single_stream_rtf"] = single["wall_s"] / single["audio_s"]
            if eager is not None:
                log(f"v4 eager: {steps} steps")
                r = eager.run(phones, bert, tokens, steps, 100)
                row["eager"] = {**r, "rtf": r["compute_s"] / r["audio_s"], "throughput": r["audio_s"] / r["compute_s"]}
                row["rtf_ratio"] = row["engine_single_stream_rtf"] / row["eager"]["rtf"]
            top = row["engine"][str(concurrency[-1])]
            row["engine_profile_s_per_audio_s"] = {k: v / top["audio_s"] for k, v in top["seconds"].items()}
            out["steps"][str(steps)] = row
            out["load_average"] = {"before": load_before, "after": os.getloadavg()}
            if on_row is not None:
                on_row(out)
    finally:
        engine.close(60)
    out["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return out


def report(res: dict) -> str:
    lines = [f"# v4 on CPU ({res['size']} demo voice, {res['tokens']} tokens = {res['tokens'] / 25:.1f} s per request)",
             "", f"Machine: {res['machine']}. Load average before/after: {res['load_average']}.", "",
             "| steps | eager RTF | engine RTF (c=1) | engine/eager | engine throughput by concurrency (audio s/s) "
             "| eager throughput (any concurrency) |", "|---|---|---|---|---|---|"]
    for steps, row in res["steps"].items():
        eager = row["eager"]
        cells = [steps, f"{eager['rtf']:.2f}" if eager else "-", f"{row['engine_single_stream_rtf']:.2f}",
                 f"{row.get('rtf_ratio', float('nan')):.2f}",
                 ", ".join(f"c={c}: {r['throughput']:.3f}" for c, r in row["engine"].items()),
                 f"{eager['throughput']:.3f}" if eager else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Where the engine's time goes at the highest concurrency (seconds of each stage per audio second; "
              "stages overlap across threads):", ""]
    for steps, row in res["steps"].items():
        prof = ", ".join(f"{k} {v:.3f}" for k, v in sorted(row["engine_profile_s_per_audio_s"].items()))
        lines.append(f"- {steps} steps: {prof}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.v4", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--steps", default="8,32", help="CFM steps to measure, comma-separated")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--concurrency-for", action="append", default=[], metavar="STEPS=C1,C2",
                   help="other concurrency levels for one step count, e.g. 32=1,2 (repeatable)")
    p.add_argument("--tokens", type=int, default=100, help="tokens per request (25 per audio second)")
    p.add_argument("--skip-eager", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    per_steps = {int(k): [int(c) for c in v.split(",")] for k, v in (item.split("=", 1) for item in args.concurrency_for)}
    args.out.mkdir(parents=True, exist_ok=True)

    def save(res: dict) -> None:
        (args.out / "v4.json").write_text(json.dumps(res, indent=1))
        (args.out / "v4.md").write_text(report(res))

    res = measure(args.size, [int(s) for s in args.steps.split(",")], [int(c) for c in args.concurrency.split(",")],
                  args.tokens, args.skip_eager, per_steps, on_row=save)
    save(res)
    print(report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
