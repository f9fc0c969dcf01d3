"""The GPU check's TensorRT step: engines with optimization profiles through onnxruntime's
TensorRT EP (first session builds, second hits the engine cache) and native TensorRT refit of an
engine with another voice's weights against a full build."""
from __future__ import annotations

import time
from pathlib import Path

from bench.gpu_common import Check, Skip, has, one_line, tensorrt_version


def trt_profile(graph: Path, batch: int, length: tuple[int, int, int]) -> dict[str, str]:
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
            profile = trt_profile(graph, batch, length)
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
            out[name] = {"status": "failed", "why": one_line(exc)}
    if tensorrt_version() and c.left() > 90:
        try:
            out["refit"] = _native_refit(c.vdir / "vocoder.onnx", c.second / "vocoder.onnx", 16, (16, 1000, 3000))
        except Exception as exc:
            out["refit"] = {"status": "failed", "why": one_line(exc)}
    else:
        out["refit"] = {"status": "skipped", "why": "no tensorrt python module" if not tensorrt_version() else "time budget"}
    return out

