"""Cheaper v2 vocoder options on CPU, each measured for speed and for fidelity against the fp32 graph.

``python -m bench.vocoder_options --size full|tiny --out DIR`` exports the SoVITS + vocoder graphs of
two demo voices (two seeds; cached in ``bench/.cache/vocoder-options``), makes latents from several
texts, and measures each option: onnxruntime session settings, int8 static quantization of the
convolutions (export/vocoder_int8.py, calibrated on other texts than those scored) and OpenVINO's
runtime where it is importable (``pip install --target bench/.cache/openvino-site openvino``;
nothing installs at run time). The host may be shared: options are timed interleaved, one run each
per round, and only compared within the run; the load average is recorded with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from export import vocoder_int8 as int8
from python_backend.golden import snr_db
from python_backend.onnx_stage import OnnxStage, session_options

CACHE = Path(__file__).resolve().parent / ".cache"
OPENVINO_SITE = CACHE / "openvino-site"
SEEDS = (0, 1)
#: Scored texts (fidelity) and calibration texts (int8 only); calibration never sees a scored text.
TEXTS = [("en", "The quick brown fox jumps over the lazy dog near the quiet river bank."),
         ("en", "Please call Stella and ask her to bring these things with her from the store."),
         ("zh", "今天天气很好，我们一起去公园散步吧。")]
CALIBRATION_TEXTS = [("en", "A rainbow is a division of white light into many beautiful colors."),
                     ("zh", "语音合成系统把文字变成自然流畅的声音。")]


@dataclass
class Option:
    """One way to run the vocoder: a callable latent, ge -> wav, and what it is."""
    name: str
    kind: str  # session | int8 | openvino
    run: Callable[[np.ndarray, np.ndarray], np.ndarray]
    detail: dict = field(default_factory=dict)
    b1: list[float] = field(default_factory=list)
    b4: list[float] = field(default_factory=list)
    snr_db: list[float] = field(default_factory=list)
    max_abs: float = 0.0


def log(msg: str) -> None:
    print(f"[vocoder_options {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def voice_graphs(size: str, seed: int) -> Path:
    """SoVITS + vocoder graphs of a demo voice of this seed, exported once (as the export does)."""
    folder = CACHE / "vocoder-options" / size / f"seed{seed}"
    if (folder / "vocoder.onnx").is_file() and (folder / "sovits.onnx").is_file():
        return folder
    from export import demo
    from export.onnx_io import export_graph
    from export.sovits_model import load_sovits
    from export.sovits_stages import sovits_graph_specs

    folder.mkdir(parents=True, exist_ok=True)
    log(f"exporting the {size} demo voice seed {seed} (sovits + vocoder) into {folder}")
    pth = demo.write_sovits(folder / "sovits.pth", "v2", size, seed)
    _, model = load_sovits(pth)
    for spec in sovits_graph_specs(model, ("sovits", "vocoder")):
        export_graph(spec, folder)
    return folder


def phones_of(lang: str, text: str) -> np.ndarray:
    from python_backend.text.cleaner import clean_segment
    from python_backend.text.symbols import symbol_to_id

    ids = symbol_to_id()
    return np.array([ids[p] for p in clean_segment(text, lang).phones], np.int64)


def feeds_for(folder: Path, texts, seconds: float, seed: int) -> list[int8.VocoderFeed]:
    """Latents of each text (random semantic codes of ``seconds``, seeded) at two noise seeds."""
    sovits = OnnxStage(folder / "sovits.onnx")
    ge = (np.random.default_rng(seed + 100).standard_normal((1, int(sovits.metadata.get("gin_channels", 512)), 1))
          * 0.5).astype(np.float32)
    out = []
    for i, (lang, text) in enumerate(texts):
        codes = np.random.default_rng([seed, i]).integers(0, 1024, (1, int(seconds * 25)))
        out += int8.latents(sovits, codes, phones_of(lang, text), ge, seeds=(seed * 10 + i, seed * 10 + i + 5))
    return out


def ort_session(path: Path, **settings) -> ort.InferenceSession:
    opts = session_options()
    level = settings.get("level")
    if level:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if "intra" in settings:
        opts.intra_op_num_threads = settings["intra"]
    if "inter" in settings:
        opts.inter_op_num_threads = settings["inter"]
    if "spinning" in settings:
        opts.add_session_config_entry("session.intra_op.allow_spinning", settings["spinning"])
    if settings.get("parallel"):
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_runner(sess: ort.InferenceSession):
    return lambda latent, ge: sess.run(["wav"], {"latent": latent, "ge": ge})[0]


def openvino_runner(path: Path):
    """OpenVINO runtime on the ONNX graph (CPU plugin, dynamic batch/frames); None with the reason."""
    if OPENVINO_SITE.is_dir() and str(OPENVINO_SITE) not in sys.path:
        sys.path.append(str(OPENVINO_SITE))
    try:
        import openvino as ov
    except ImportError as exc:
        return None, f"openvino not importable ({exc}); pip install --target {OPENVINO_SITE} openvino"
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(latent, ge):
        return request.infer({"latent": latent, "ge": ge})[compiled.outputs[0]].copy()
    return run, ov.__version__


def build_options(folder: Path, calib: list[int8.VocoderFeed], work: Path, reuse: bool = False) -> list[Option]:
    src = folder / "vocoder.onnx"
    sessions = [("fp32 served (ORT_ENABLE_ALL, default threads, spinning)", {}),
                ("fp32 ORT_ENABLE_EXTENDED", {"level": "ORT_ENABLE_EXTENDED"}),
                ("fp32 ORT_ENABLE_BASIC", {"level": "ORT_ENABLE_BASIC"}),
                ("fp32 intra 2 threads, no spinning", {"intra": 2, "spinning": "0"}),
                ("fp32 intra 1 thread", {"intra": 1}),
                ("fp32 parallel execution, inter 2", {"parallel": True, "inter": 2})]
    options = [Option(name, "session", ort_runner(ort_session(src, **s)), {"settings": s}) for name, s in sessions]
    recipes = [int8.Int8Recipe(), int8.Int8Recipe(exclude=()), int8.Int8Recipe(per_channel=False),
               int8.Int8Recipe(fmt="QOperator"), int8.Int8Recipe(method="Percentile")]
    for i, recipe in enumerate(recipes):
        dst = work / f"vocoder_int8_{i}.onnx"
        log(f"quantizing: {recipe.name}")
        t0 = time.perf_counter()
        try:
            if not (reuse and dst.is_file()):
                int8.quantize(src, dst, calib, recipe)
        except Exception as exc:  # a recipe onnxruntime cannot apply is recorded, not fatal
            log(f"{recipe.name} failed: {str(exc).splitlines()[0][:200]}")
            continue
        detail = {"recipe": recipe.__dict__ | {"exclude": list(recipe.exclude)}, "file": dst.name,
                  "bytes": dst.stat().st_size, "quantize_s": round(time.perf_counter() - t0, 1)}
        options.append(Option(recipe.name, "int8", ort_runner(ort_session(dst)), detail))
    for label, path in (("openvino fp32", src), ("openvino on int8 QDQ per-channel", work / "vocoder_int8_0.onnx")):
        if not path.is_file():
            continue
        try:
            run, version = openvino_runner(path)
        except Exception as exc:
            run, version = None, f"openvino failed: {str(exc).splitlines()[0][:200]}"
        if run is None:
            options.append(Option(label, "openvino", None, {"unavailable": version}))
        else:
            options.append(Option(f"{label} runtime {version.split('-')[0]}", "openvino", run, {"version": version}))
    return options


def fidelity(options: list[Option], ref: Option, feeds: list[int8.VocoderFeed]) -> None:
    """SNR of each option's wav against the fp32 served session, per latent (voice SEEDS[0]'s graph;
    the other voice is scored by :func:`per_voice_int8`, where the kept recipe is re-quantized)."""
    refs = [ref.run(f.latent, f.ge)[0, : f.samples] for f in feeds]
    for opt in options:
        if opt.run is None:
            continue
        for f, r in zip(feeds, refs):
            w = opt.run(f.latent, f.ge)[0, : f.samples]
            opt.snr_db.append(round(snr_db(r, w), 2))
            opt.max_abs = max(opt.max_abs, float(np.max(np.abs(w - r))))


def per_voice_int8(graphs: dict[int, Path], calib: dict[int, list], feeds: dict[int, list], work: Path) -> dict:
    """The kept recipe (default) quantized per voice on its own calibration latents; SNR per voice."""
    out = {}
    for seed, folder in graphs.items():
        dst = work / f"vocoder_int8_seed{seed}.onnx"
        int8.quantize(folder / "vocoder.onnx", dst, calib[seed])
        out[seed] = int8.snrs(OnnxStage(folder / "vocoder.onnx"), OnnxStage(dst), feeds[seed])
    return out


def timing(options: list[Option], feed_b1: dict, feed_b4: dict, rounds: int, deadline: float) -> int:
    """Interleaved: each round times every option once at batch 1 and batch 4, in a rotated order."""
    live = [o for o in options if o.run is not None]
    done = 0
    for r in range(rounds):
        if time.monotonic() > deadline:
            break
        order = live[r % len(live):] + live[: r % len(live)]
        for opt in order:
            for feed, store in ((feed_b1, opt.b1), (feed_b4, opt.b4)):
                t0 = time.perf_counter()
                opt.run(feed["latent"], feed["ge"])
                store.append(time.perf_counter() - t0)
        done += 1
        log(f"round {r + 1}/{rounds}, load {os.getloadavg()[0]:.1f}")
    return done


def summarize(opt: Option, audio_s: float) -> dict:
    per10 = lambda xs, rows: {"median": round(statistics.median(xs) / (rows * audio_s) * 10, 3),
                              "min": round(min(xs) / (rows * audio_s) * 10, 3)} if xs else None
    return {"name": opt.name, "kind": opt.kind, **opt.detail,
            "s_per_10s_audio_b1": per10(opt.b1, 1), "s_per_10s_audio_b4": per10(opt.b4, 4),
            "snr_db": {"min": min(opt.snr_db), "median": round(statistics.median(opt.snr_db), 2),
                       "n": len(opt.snr_db)} if opt.snr_db else None,
            "max_abs_diff": round(opt.max_abs, 6) if opt.snr_db else None,
            "identical": bool(opt.snr_db) and opt.max_abs == 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vocoder_options", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--out", type=Path, required=True, help="folder for vocoder_options.json and the int8 graphs")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (each option once per round)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio per timed row (batch 4 = 4 such rows)")
    p.add_argument("--score-seconds", type=float, default=3.0, help="audio per scored/calibration latent")
    p.add_argument("--budget-s", type=float, default=1800.0, help="start no timing round after this long")
    p.add_argument("--timing-only", action="store_true",
                   help="reuse the int8 graphs in --out and the fidelity figures of its vocoder_options.json; time only")
    args = p.parse_args(argv)
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    graphs = {seed: voice_graphs(args.size, seed) for seed in SEEDS}
    feeds = {seed: feeds_for(graphs[seed], TEXTS, args.score_seconds, seed) for seed in SEEDS}
    calib = {seed: feeds_for(graphs[seed], CALIBRATION_TEXTS, args.score_seconds, seed + 50) for seed in SEEDS}
    options = build_options(graphs[SEEDS[0]], calib[SEEDS[0]], args.out, reuse=args.timing_only)
    previous = json.loads((args.out / "vocoder_options.json").read_text()) if args.timing_only else {}
    if args.timing_only:
        start = time.monotonic()
        voices = {int(k[4:]): v for k, v in previous["int8_default_recipe_snr_db_per_voice"].items()}
    else:
        log("fidelity")
        fidelity(options, options[0], feeds[SEEDS[0]])
        log("int8 (default recipe) per voice")
        voices = per_voice_int8(graphs, calib, feeds, args.out)
    timed = feeds_for(graphs[SEEDS[0]], TEXTS[:1], args.seconds, 7)[0]
    feed_b1 = {"latent": timed.latent, "ge": timed.ge}
    feed_b4 = {"latent": np.repeat(timed.latent, 4, 0), "ge": np.repeat(timed.ge, 4, 0)}
    log(f"timing {len(options)} options interleaved, up to {args.rounds} rounds")
    rounds = timing(options, feed_b1, feed_b4, args.rounds, start + args.budget_s)
    audio_s = timed.samples / int(OnnxStage(graphs[SEEDS[0]] / "vocoder.onnx").metadata.get("sample_rate", 32000))
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "size": args.size,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "onnxruntime": ort.__version__},
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "timed_audio_s_per_row": round(audio_s, 3), "rounds": rounds,
        "scored": {"voices": list(SEEDS), "texts": [t for _, t in TEXTS], "noise_seeds_per_text": 2,
                   "audio_s_per_latent": args.score_seconds, "calibration_texts": [t for _, t in CALIBRATION_TEXTS]},
        "int8_threshold_db": int8.SNR_MIN_DB,
        "int8_default_recipe_snr_db_per_voice": {f"seed{k}": v for k, v in voices.items()},
        "options": [summarize(o, audio_s) for o in options],
    }
    if args.timing_only:  # the fidelity figures come from the earlier run on the same graphs
        earlier = {o["name"]: o for o in previous["options"]}
        for o in result["options"]:
            for key in ("snr_db", "max_abs_diff", "identical"):
                o[key] = earlier.get(o["name"], {}).get(key)
        result["fidelity_from"] = previous["when"]
    (args.out / "vocoder_options.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    for o in result["options"]:
        b1, b4, snr = o["s_per_10s_audio_b1"], o["s_per_10s_audio_b4"], o["snr_db"]
        print(f"{o['name'][:60]:60s} b1 {b1 and b1['median']} (min {b1 and b1['min']})  "
              f"b4 {b4 and b4['median']} (min {b4 and b4['min']})  SNR min {snr and snr['min']}  "
              f"{o.get('unavailable', '')}")
    print(f"int8 default recipe per voice: {voices}; load {result['load_average']}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
