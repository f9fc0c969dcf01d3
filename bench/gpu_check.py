"""The GPU check's steps (``bench/gpu_check.sh`` runs this after installing): the demo voice on
GPU providers, FP16 agreement with torch float32, TensorRT engines (profiles, build vs cache hit,
native refit vs full build), single-stream RTF per provider in-process, the eager torch baseline
on the same device, and the served figures through a real tritonserver (single-stream RTF,
first-chunk latency, throughput at concurrency 1-64, a hot swap under load).

Every step that cannot run records why (``status``/``why``) and the next one runs; nothing is
ever reported for a provider that did not run (each figure names the provider onnxruntime
actually used). ``--cpu-dry-run`` runs the same steps on the tiny demo voice with the CPU
provider, so the script is tested in CI; the GPU steps then say they were skipped and why.

Everything goes to one folder: ``summary.json`` (every step's figures), ``summary.md``
(the tables) and the log. The TensorRT experiments are in ``gpu_engines``, the served figures in
``gpu_serve``, what the steps share in ``gpu_common``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import time
import traceback
from pathlib import Path

import numpy as np

from bench.gpu_common import CONFIGS, SERVED, Check, Skip, gpu_name, has, one_line, tensorrt_version
from bench.gpu_engines import step_engines
from bench.gpu_serve import step_serve

log = logging.getLogger("gsv.gpu_check")

#: in order of what the GPU minutes are for: the figures first, the engine experiments last
STEPS = ("env", "build", "agreement", "pipeline", "baseline", "serve", "engines")


def step_env(c: Check) -> dict:
    import onnxruntime as ort

    from python_backend import providers as pv

    info = {"gpu": gpu_name(), "tensorrt": tensorrt_version(), "onnxruntime": ort.__version__,
            "onnxruntime_providers": pv.available(), "dry_run": c.dry_run, "size": c.size,
            "cpu_count": os.cpu_count()}
    with contextlib.suppress(Exception):
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info



# ---------------------------------------------------------------------- build

def step_build(c: Check) -> dict:
    from ops import cli
    from python_backend import layout

    repo = c.work / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    demos = {}
    for seed in (3,) if c.dry_run else (3, 4):
        demos[seed] = c.work / f"demo{seed}"
        if not (demos[seed] / "gpt.ckpt").is_file():
            assert cli.main(["demo-voice", str(demos[seed]), "--size", c.size, "--seed", str(seed)]) == 0
    built = time.perf_counter() - t0

    def export(seed: int, version: int) -> Path:
        src = demos[seed]
        args = ["export", "--gpt", str(src / "gpt.ckpt"), "--sovits", str(src / "sovits.pth"),
                "--ref-audio", str(src / "ref.wav"), "--ref-text", (demos[3] / "ref.txt").read_text().strip(),
                "--ref-lang", "zh", "--voice", "gpu", "--repo", str(repo), "--version", str(version),
                "--providers", SERVED, "--no-progress"]
        if version == 1:
            args += ["--hubert", str(src / "chinese-hubert-base"), "--bert", str(src / "chinese-roberta-wwm-ext-large"),
                     "--g2pw", str(src / "G2PWModel")]
        assert cli.main(args) == 0, f"export of seed {seed} failed"
        return layout.voice_dir(repo, "gpu") / str(version)

    t1 = time.perf_counter()
    c.vdir = export(3, 1)
    first = time.perf_counter() - t1
    # the same architecture with other weights: the refit source and the hot swap's new version, held
    # outside the repository until the swap so the server starts on version 1
    c.second = c.work / "held" / "2"
    c.second.parent.mkdir(exist_ok=True)
    second = "version 1's graphs (--cpu-dry-run: no second export)"
    if not c.dry_run:
        try:
            os.replace(export(4, 2), c.second)
            second = "seed 4 export"
        except Exception as exc:  # the swap can still run on a copy; refit then refits the same weights
            second = f"version 1's graphs (the seed 4 export failed: {one_line(exc)})"
    if not c.second.exists():
        _copy_as_version(c.vdir, c.second, 2)
    manifest = json.loads((c.vdir / "manifest.json").read_text())
    return {"demo_voices_s": round(built, 1), "export_s": round(first, 1), "second_version": second,
            "providers": manifest["providers"],
            "graph_mb": {k: round(g["bytes"] / 1e6, 1) for k, g in manifest["graphs"].items()}}


def _copy_as_version(src: Path, dst: Path, version: int) -> None:
    """Version ``version`` with ``src``'s files (the manifest is not among the hashed files)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.update(version=version, label=f"v{version}")
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))


# ---------------------------------------------------------------------- agreement, pipeline

def _open(c: Check, config: str):
    from python_backend.gpt_runner import GPTRunner
    from python_backend.onnx_stage import OnnxStage
    from python_backend.providers import ProviderPlan

    plan = ProviderPlan.parse(CONFIGS[config])
    runner = GPTRunner(c.vdir / "gpt_prefill.onnx", c.vdir / "gpt_step.onnx", plan)
    sovits = OnnxStage(c.vdir / "sovits.onnx", provider_list=plan)
    vocoder = OnnxStage(c.vdir / "vocoder.onnx", provider_list=plan)
    ran = {"gpt_prefill": runner.prefill_sess.get_providers()[0], "gpt_step": runner.step_sess.get_providers()[0],
           "sovits": sovits.session.get_providers()[0], "vocoder": vocoder.session.get_providers()[0]}
    return runner, sovits, vocoder, ran


def _configs(c: Check) -> dict[str, str | None]:
    """config -> None (runs here) or why not."""
    why = {"cpu": None, "cuda": None if has("CUDAExecutionProvider") else "CUDAExecutionProvider not in this onnxruntime",
           "tensorrt": None if has("TensorrtExecutionProvider") and has("CUDAExecutionProvider")
           else "TensorrtExecutionProvider not in this onnxruntime"}
    if c.dry_run:
        why.update({k: "--cpu-dry-run" for k in ("cuda", "tensorrt")})
    return why


def step_agreement(c: Check) -> dict:
    """golden.measure per provider: top-1 logit agreement and wav SNR against torch float32 (the
    export's golden sample), judged with the load-time tolerance of that precision."""
    from python_backend import golden

    sample = golden.GoldenSample.load(c.vdir)
    out = {}
    for config, why in _configs(c).items():
        if why:
            out[config] = {"status": "skipped", "why": why}
            continue
        runner, sovits, vocoder, ran = _open(c, config)
        metrics = golden.measure(runner, sovits, vocoder, sample)
        precision = "fp16" if config == "tensorrt" else "fp32"
        out[config] = {"ran_on": ran, "io_binding": runner.io_binding, "precision": precision, **metrics,
                       "tolerance_failures": golden.failures(metrics, golden.TOLERANCES[precision])}
    return out


def _decode(runner, sample, tokens: int, batch: int = 1) -> tuple[np.ndarray, float, float]:
    """``tokens`` greedy steps with EOS ignored (equal work); (tokens, prefill s, mean step s)."""
    rep = lambda a: np.repeat(a, batch, 0)  # noqa: E731
    t0 = time.perf_counter()
    logits, k, v = runner.prefill(rep(sample.phones), rep(sample.bert), rep(sample.prompts))
    prefill = time.perf_counter() - t0
    cache = runner.start_cache(k, v)
    n = sample.prompts.shape[1]
    out = []
    t1 = time.perf_counter()
    for i in range(tokens):
        logits[:, runner.eos] = -np.inf
        tok = logits.argmax(-1)
        out.append(tok[0])
        logits = runner.step(tok.reshape(-1, 1), np.full(batch, n + i), cache)
    return np.array(out, np.int64), prefill, (time.perf_counter() - t1) / max(tokens, 1)


def step_pipeline(c: Check) -> dict:
    """In-process single stream per provider (no server): GPT prefill + decode + SoVITS + vocoder."""
    from python_backend import golden

    sample = golden.GoldenSample.load(c.vdir)
    audio_s = c.tokens * 0.04
    out = {}
    for config, why in _configs(c).items():
        if why:
            out[config] = {"status": "skipped", "why": why}
            continue
        runner, sovits, vocoder, ran = _open(c, config)
        _decode(runner, sample, 3)  # warm-up (TensorRT builds or loads its engines here)
        golden.synthesize(sovits, vocoder, sample.codes, sample.target_phones, sample.ge)
        t0 = time.perf_counter()
        tokens, prefill, step = _decode(runner, sample, c.tokens)
        t1 = time.perf_counter()
        wav = golden.synthesize(sovits, vocoder, tokens[None], sample.target_phones, sample.ge)
        t2 = time.perf_counter()
        _, _, step16 = _decode(runner, sample, min(c.tokens, 50), batch=16)
        out[config] = {"ran_on": ran, "io_binding": runner.io_binding, "rtf": round((t2 - t0) / audio_s, 4),
                       "prefill_ms": round(prefill * 1e3, 2), "step_ms_b1": round(step * 1e3, 3),
                       "step_ms_b16": round(step16 * 1e3, 3), "sovits_vocoder_ms": round((t2 - t1) * 1e3, 1),
                       "audio_s": round(wav.size / 32000, 2)}
    return out


# ---------------------------------------------------------------------- eager torch baseline

def step_baseline(c: Check) -> dict:
    """This project's torch modules, eager, float32, batch 1, on the GPU when torch sees one."""
    import torch

    from export.checkpoints import read_gpt, read_sovits
    from export.gpt_model import GPT
    from export.sovits_model import build_sovits
    from python_backend import golden

    device = "cuda" if torch.cuda.is_available() and not c.dry_run else "cpu"
    src = c.work / "demo3"
    gpt = GPT.from_checkpoint(read_gpt(src / "gpt.ckpt")).eval().to(device)
    sovits = build_sovits(read_sovits(src / "sovits.pth")).eval().to(device)
    sample = golden.GoldenSample.load(c.vdir)
    ref = np.load(c.vdir / "reference.npz")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def once(tokens: int) -> tuple[float, float, float]:
        with torch.no_grad():
            t0 = time.perf_counter()
            logits, k, v = gpt.prefill(t(sample.phones), t(sample.bert), t(sample.prompts))
            n, out = sample.prompts.shape[1], []
            for i in range(tokens):
                logits[:, gpt.cfg.eos] = -float("inf")
                tok = logits.argmax(-1).reshape(1, 1)
                out.append(tok)
                mask = torch.ones(1, k.shape[2] + 1, device=device)
                logits, k, v = gpt.step(tok, torch.tensor([n + i], device=device), k, v, mask)
            sync()
            t1 = time.perf_counter()
            wav = sovits.decode(torch.cat(out, 1), t(ref["phones"][None]), t(ref["spec"][None]))
            sync()
            t2 = time.perf_counter()
            return t2 - t0, t2 - t1, float(wav.numel()) / 32000

    once(3)
    total, sovits_s, audio = once(c.tokens)
    return {"device": device, "torch": torch.__version__, "rtf": round(total / (c.tokens * 0.04), 4),
            "sovits_ms": round(sovits_s * 1e3, 1), "audio_s": round(audio, 2)}


# ---------------------------------------------------------------------- report


def write_report(c: Check) -> None:
    summary = {"steps": c.results, "gpu": c.results.get("env", {}).get("gpu"),
               "tensorrt": c.results.get("env", {}).get("tensorrt"), "dry_run": c.dry_run}
    (c.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    lines = [f"# GPU check ({'CPU dry run' if c.dry_run else 'GPU'})", "",
             f"GPU: {summary['gpu'] or 'none'}; tensorrt: {summary['tensorrt'] or 'none'}; "
             f"onnxruntime {c.results.get('env', {}).get('onnxruntime')}", "", "| step | status | figures |", "| --- | --- | --- |"]
    for step in STEPS:
        r = c.results.get(step, {})
        status = r.get("status", "ok") if isinstance(r, dict) else "ok"
        body = r.get("why") if status != "ok" else json.dumps({k: v for k, v in r.items() if k != "status"}, default=str)
        lines.append(f"| {step} | {status} | {str(body)[:1500]} |")
    (c.out / "summary.md").write_text("\n".join(lines) + "\n")


def run(c: Check) -> dict:
    steps = {"env": step_env, "build": step_build, "agreement": step_agreement, "pipeline": step_pipeline,
             "baseline": step_baseline, "serve": step_serve, "engines": step_engines}
    for name in STEPS:
        fn = steps[name]
        if name != "env" and c.vdir is None and name != "build":
            c.results[name] = {"status": "skipped", "why": "no exported voice (the build step failed)"}
        elif c.left() < 30 and name != "env":
            c.results[name] = {"status": "skipped", "why": "time budget spent"}
        else:
            t0 = time.monotonic()
            try:
                c.results[name] = {"status": "ok", **fn(c)}
            except Skip as exc:
                c.results[name] = {"status": "skipped", "why": str(exc)}
            except Exception as exc:  # every step that cannot run says why and the next one runs
                log.error("[gpu_check] %s failed:\n%s", name, traceback.format_exc())
                c.results[name] = {"status": "failed", "why": one_line(exc)}
            c.results[name]["seconds"] = round(time.monotonic() - t0, 1)
        print(f"[gpu_check] {name}: {c.results[name]['status']} {c.results[name].get('why', '')}", flush=True)
        write_report(c)
    return c.results


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench/results/gpu"))
    p.add_argument("--work", type=Path, help="scratch folder (demo voices, repository); default OUT/../gpu-work")
    p.add_argument("--cpu-dry-run", action="store_true", help="the same steps on the CPU provider and the tiny voice")
    p.add_argument("--size", choices=["tiny", "full"], help="demo voice size (default: full, tiny with --cpu-dry-run)")
    p.add_argument("--budget-s", type=float, default=480, help="stop starting steps after this many seconds")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"gsv-gpu-check-{os.getpid()}"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    c = Check(out=args.out, work=work, dry_run=args.cpu_dry_run, size=args.size or ("tiny" if args.cpu_dry_run else "full"),
              deadline=time.monotonic() + args.budget_s,
              levels=(1, 2) if args.cpu_dry_run else (1, 2, 4, 8, 16, 32, 64))
    try:
        run(c)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu_check] wrote {c.out / 'summary.json'} and {c.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
