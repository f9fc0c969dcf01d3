"""Export a torch module to ONNX the same way for every stage.

One path for all stages so every graph gets the same guarantees: opset 17, named inputs
and outputs, a named dynamic axis for every length, metadata written as a contract, the
checker run, and onnxruntime's offline graph optimization applied with its effect timed.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

OPSET = 17


@dataclass
class GraphSpec:
    """What to export: names bind by name at run time, never by position."""

    name: str
    module: torch.nn.Module
    args: tuple
    input_names: Sequence[str]
    output_names: Sequence[str]
    dynamic_axes: dict[str, dict[int, str]]
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass
class GraphReport:
    """What export measured for one graph; stored in the voice manifest."""

    file: str
    bytes: int
    optimization: dict


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, object]) -> None:
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = value if isinstance(value, str) else json.dumps(value)


def _feeds(spec: GraphSpec) -> dict[str, np.ndarray]:
    return {n: a.detach().cpu().numpy() for n, a in zip(spec.input_names, spec.args)}


def _time_session(path: Path, feeds: dict, level: ort.GraphOptimizationLevel, repeats: int) -> float:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    start = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, feeds)
    return (time.perf_counter() - start) / repeats


def optimize_graph(path: Path, feeds: dict[str, np.ndarray], repeats: int = 5) -> dict:
    """Apply onnxruntime's basic (provider-independent) optimizations offline and time the effect.

    Extended/layout optimizations are provider-specific and are left to the session at load.
    """
    raw_s = _time_session(path, feeds, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, repeats)
    original = path.read_bytes()
    tmp = path.with_suffix(".opt.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp)
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(str(tmp))
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    _set_metadata(model, meta)
    onnx.save(model, str(path))
    tmp.unlink(missing_ok=True)
    opt_s = _time_session(path, feeds, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, repeats)
    kept = opt_s <= raw_s * 1.1
    if not kept:  # measured slower: keep the graph as exported (the session still optimizes at load)
        path.write_bytes(original)
    return {
        "level": "ORT_ENABLE_BASIC offline + ORT_ENABLE_ALL at load",
        "offline_kept": kept,
        "unoptimized_ms": round(raw_s * 1000, 3),
        "optimized_ms": round(opt_s * 1000, 3),
        "speedup": round(raw_s / opt_s, 3) if opt_s > 0 else None,
    }


def export_graph(spec: GraphSpec, out_dir: Path, optimize: bool = True) -> GraphReport:
    """Export, stamp metadata, check, optimize; returns what was measured."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.onnx"
    spec.module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module,
            spec.args,
            str(path),
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes=spec.dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    _set_metadata(model, {"stage": spec.name, **spec.metadata})
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    report = optimize_graph(path, _feeds(spec)) if optimize else {"level": "none"}
    onnx.checker.check_model(str(path))
    return GraphReport(file=path.name, bytes=os.path.getsize(path), optimization=report)


def torch_vs_onnx(spec: GraphSpec, path: Path, run: Callable[..., Sequence[torch.Tensor]] | None = None) -> float:
    """Largest absolute difference between the torch module and its ONNX graph on ``spec.args``."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(list(spec.output_names), _feeds(spec))
    with torch.no_grad():
        ref = (run or spec.module)(*spec.args)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    return max(float(np.max(np.abs(g - r.numpy()))) if g.size else 0.0 for g, r in zip(got, ref))
