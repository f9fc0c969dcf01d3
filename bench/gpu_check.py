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
(the tables) and the log.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("gsv.gpu_check")

#: provider configurations compared side by side (``--providers`` syntax)
CONFIGS = {"cpu": "all=cpu", "cuda": "all=cuda", "tensorrt": "all=tensorrt,gpt_step=cuda"}
SERVED = "all=tensorrt,gpt_step=cuda"  # what the exported voice asks for (falls back where absent)
TOKENS = 250  # 10 s of audio per request (EOS masked), as bench/run.py
DRY_TOKENS = 20
TEXT = "今天天气很好，我们去公园散步吧。"
#: in order of what the GPU minutes are for: the figures first, the engine experiments last
STEPS = ("env", "build", "agreement", "pipeline", "baseline", "serve", "engines")


@dataclass
class Check:
    out: Path
    work: Path
    dry_run: bool
    size: str
    deadline: float
    levels: tuple[int, ...]
    results: dict = field(default_factory=dict)
    vdir: Path | None = None  # the exported version folder (voice_gpu/1)
    second: Path | None = None  # voice_gpu/2 (another seed, same architecture), held outside the repo

    @property
    def tokens(self) -> int:
        return DRY_TOKENS if self.dry_run else TOKENS

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Skip(Exception):
    """A step that cannot run here; the message says why."""


# ---------------------------------------------------------------------- env

def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def tensorrt_version() -> str | None:
    with contextlib.suppress(Exception):
        import tensorrt

        return tensorrt.__version__
    return None


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


def has(provider: str) -> bool:
    from python_backend import providers as pv

    return provider in pv.available()


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
            second = f"version 1's graphs (the seed 4 export failed: {_one_line(exc)})"
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


# ---------------------------------------------------------------------- engines

def _profile(graph: Path, batch: int, length: tuple[int, int, int]) -> dict[str, str]:
    """TensorRT EP optimization profile from the graph's inputs: dynamic dim 0 is the batch
    (1, 1, ``batch``), other dynamic dims the length range; fixed dims as they are."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    shapes = {"min": [], "opt": [], "max": []}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = inp.type.tensor_type.shape.dim
        if not dims:
            continue  # scalars need no profile
        for which, (b, n) in {"min": (1, length[0]), "opt": (1, length[1]), "max": (batch, length[2])}.items():
            vals = [d.dim_value if d.dim_value > 0 else (b if i == 0 else n) for i, d in enumerate(dims)]
            shapes[which].append(f"{inp.name}:{'x'.join(map(str, vals))}")
    return {f"trt_profile_{k}_shapes": ",".join(v) for k, v in shapes.items()}


def _native_refit(a: Path, b: Path, batch: int, length: tuple[int, int, int]) -> dict:
    """Native TensorRT: build an FP16 refittable engine from voice A's graph, then refit it with
    voice B's weights (same architecture), against a full build."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)

    def build(path: Path):
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            raise Skip(f"TensorRT's ONNX parser refused {path.name}: {parser.get_error(0)}")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.REFIT)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            dims = list(t.shape)
            lo = [d if d > 0 else (1 if j == 0 else length[0]) for j, d in enumerate(dims)]
            mid = [d if d > 0 else (1 if j == 0 else length[1]) for j, d in enumerate(dims)]
            hi = [d if d > 0 else (batch if j == 0 else length[2]) for j, d in enumerate(dims)]
            profile.set_shape(t.name, lo, mid, hi)
        config.add_optimization_profile(profile)
        t0 = time.perf_counter()
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise Skip(f"TensorRT could not build {path.name}")
        return blob, time.perf_counter() - t0

    blob, build_s = build(a)
    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
    t0 = time.perf_counter()
    refitter = trt.Refitter(engine, logger)
    ok = trt.OnnxParserRefitter(refitter, logger).refit_from_file(str(b)) and refitter.refit_cuda_engine()
    refit_s = time.perf_counter() - t0
    return {"graph": a.name, "full_build_s": round(build_s, 2), "refit_s": round(refit_s, 3),
            "refit_ok": bool(ok), "engine_mb": round(blob.nbytes / 1e6, 1)}


def step_engines(c: Check) -> dict:
    """TensorRT EP with explicit profiles: first session (engine build) vs second (engine cache hit)
    per graph; then native refit vs full build for the vocoder."""
    if c.dry_run:
        raise Skip("--cpu-dry-run: TensorRT needs a GPU")
    if not (has("TensorrtExecutionProvider") and has("CUDAExecutionProvider")):
        raise Skip("TensorrtExecutionProvider not in this onnxruntime (install onnxruntime-gpu and tensorrt wheels)")
    import onnxruntime as ort

    from python_backend import providers as pv

    out = {}
    ranges = {"gpt_prefill.onnx": (16, (8, 128, 512)), "sovits.onnx": (16, (8, 500, 1500)),
              "vocoder.onnx": (16, (16, 1000, 3000))}
    cache_root = c.work / "trt-cache"
    for name, (batch, length) in ranges.items():
        if c.left() < 120:
            out[name] = {"status": "skipped", "why": "time budget"}
            continue
        graph = c.vdir / name
        try:
            profile = _profile(graph, batch, length)
            res = pv.resolve(name, "tensorrt", pv.available(), host=pv.host(), graph_hash=pv._graph_hash(graph),
                             cache_root=cache_root, profile=profile)
            names, opts = res.ort_args()
            Path(opts[0]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                sess = ort.InferenceSession(str(graph), providers=names, provider_options=opts)
                times.append(time.perf_counter() - t0)
            out[name] = {"ran_on": sess.get_providers()[0], "build_s": round(times[0], 2),
                         "cached_load_s": round(times[1], 2), "profile": profile,
                         "cache": opts[0]["trt_engine_cache_path"]}
        except Exception as exc:  # one graph's failure must not hide the others
            out[name] = {"status": "failed", "why": _one_line(exc)}
    if tensorrt_version() and c.left() > 90:
        try:
            out["refit"] = _native_refit(c.vdir / "vocoder.onnx", c.second / "vocoder.onnx", 16, (16, 1000, 3000))
        except Exception as exc:
            out["refit"] = {"status": "failed", "why": _one_line(exc)}
    else:
        out["refit"] = {"status": "skipped", "why": "no tensorrt python module" if not tensorrt_version() else "time budget"}
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

    def once(tokens: int) -> tuple[float, float]:
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
            return time.perf_counter() - t0, float(wav.numel()) / 32000

    once(3)
    total, audio = once(c.tokens)
    return {"device": device, "torch": torch.__version__, "rtf": round(total / (c.tokens * 0.04), 4),
            "audio_s": round(audio, 2)}


# ---------------------------------------------------------------------- served figures

def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _load(url: str, concurrency: int, seconds: float, tokens: int, stop: threading.Event | None = None) -> dict:
    """Closed loop: ``concurrency`` clients call ``tts`` back to back for ``seconds``."""
    from ops.client import synthesize

    lat, audio, errors, marks = [], [0.0], [0], []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(i: int) -> None:
        while time.monotonic() < end and not (stop and stop.is_set()):
            t0 = time.monotonic()
            try:
                speech = synthesize(TEXT, "gpu", url, MAX_TOKENS=tokens, SEED=i, TOP_K=5)
                with lock:
                    lat.append(time.monotonic() - t0)
                    marks.append((t0, time.monotonic() - t0))
                    audio[0] += speech.audio.size / speech.sample_rate
            except Exception:
                with lock:
                    errors[0] += 1

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.monotonic() - t0
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors[0],
            "audio_s_per_s": round(audio[0] / wall, 3), "p50_s": round(_percentile(lat, 50), 3),
            "p99_s": round(_percentile(lat, 99), 3), "_marks": marks}


def step_serve(c: Check) -> dict:
    from ops.client import stream, synthesize
    from ops.server import ServerError, TritonProcess, find_tritonserver, free_ports
    from ops.swap import activate

    try:
        find_tritonserver()
    except ServerError as exc:
        raise Skip(_one_line(exc)) from None
    os.environ["GSV_BENCH_IGNORE_EOS"] = "1"  # every request runs to MAX_TOKENS: equal work
    repo = c.vdir.parents[1]
    http, grpc, metrics = free_ports(3)
    server = TritonProcess(repo, http, grpc, metrics, models=["tts", "tts_stream", "gsv_bert", "voice_gpu"],
                           log_path=c.out / "tritonserver.log")
    server.start()
    out: dict = {}
    try:
        server.wait_ready(max(60.0, min(300.0, c.left() - 60)))
        url = server.grpc_url
        synthesize(TEXT, "gpu", url, MAX_TOKENS=c.tokens, SEED=0)  # warm-up
        rtfs = []
        for seed in range(3):
            t0 = time.monotonic()
            speech = synthesize(TEXT, "gpu", url, MAX_TOKENS=c.tokens, SEED=seed, TOP_K=5)
            rtfs.append((time.monotonic() - t0) / (speech.audio.size / speech.sample_rate))
        out["single_stream_rtf"] = round(statistics.median(rtfs), 4)
        firsts = []
        for seed in range(3):
            t0, first = time.monotonic(), []
            stream(TEXT, "gpu", url, MAX_TOKENS=c.tokens, SEED=seed, on_chunk=lambda *_: first or first.append(time.monotonic()))
            firsts.append(first[0] - t0)
        out["first_chunk_s"] = round(statistics.median(firsts), 4)
        per = 2.0 if c.dry_run else 12.0
        out["sweep"] = []
        for level in c.levels:
            if c.left() < per + 60:
                out["sweep"].append({"concurrency": level, "status": "skipped", "why": "time budget"})
                continue
            row = _load(url, level, per, c.tokens)
            row.pop("_marks")
            out["sweep"].append(row)
        out["swap"] = _swap(c, repo, url, server, activate)
        out["ran_on"] = _served_providers(c.out / "tritonserver.log")
    finally:
        server.stop()
    return out


def _swap(c: Check, repo: Path, url: str, server, activate) -> dict:
    """p99 of 8 clients while version 2 (held outside the repository) is moved in and activated,
    against the same clients before it."""
    level, seconds = (2, 4.0) if c.dry_run else (8, 30.0)
    result: dict = {}

    def do_swap() -> None:
        time.sleep(seconds / 3)
        t0 = time.monotonic()
        os.replace(c.second, repo / "voice_gpu" / "2")
        try:
            activate(repo, "gpu", 2, url, admin_key=server.admin_key)
            result.update(swap_start=t0, swap_s=round(time.monotonic() - t0, 2))
        except Exception as exc:
            result.update(swap_start=t0, swap_error=_one_line(exc))

    swapper = threading.Thread(target=do_swap)
    swapper.start()
    row = _load(url, level, seconds, c.tokens)
    swapper.join()
    marks = row.pop("_marks")
    start = result.get("swap_start", float("inf"))
    before = [lat for t0, lat in marks if t0 + lat < start]
    during = [lat for t0, lat in marks if t0 + lat >= start]
    p99_before, p99_during = _percentile(before, 99), _percentile(during, 99)
    return {**{k: v for k, v in result.items() if k != "swap_start"}, "concurrency": level, "errors": row["errors"],
            "p99_before_s": round(p99_before, 3), "p99_during_s": round(p99_during, 3),
            "p99_ratio": round(p99_during / p99_before, 3) if before and during else None}


def _served_providers(log_path: Path) -> list[str]:
    """The server's own fallback lines (none: every stage ran on what its version asked for)."""
    with contextlib.suppress(OSError):
        return [line.split("[providers] ", 1)[1].strip() for line in log_path.read_text(errors="replace").splitlines()
                if "[providers] " in line]
    return []


# ---------------------------------------------------------------------- report

def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


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
                c.results[name] = {"status": "failed", "why": _one_line(exc)}
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
