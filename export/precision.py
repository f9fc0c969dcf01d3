"""Precision options for a version's graphs, each measured against the torch float32 outputs.

``fp16`` converts the GPT and SoVITS/vocoder graphs to float16 weights and activations (inputs
and outputs stay float32, so the server code does not change); it targets GPUs, and on a CPU
onnxruntime often runs it slower, which the manifest then shows. ``int8_decode`` applies
onnxruntime's dynamic int8 quantization to the GPT decode-step graph, the part of a CPU
request that is bound by memory bandwidth; with both, the decode step is int8 over float32
activations (dynamic quantization cannot take float16 ones) and the rest float16. The speaker and prompt graphs run once per voice
and stay float32. ``vocoder_int8`` quantizes the vocoder's convolutions (static, calibrated on the voice's
own latents; ``export.vocoder_int8``) and keeps it only when its wav stays above an SNR against the fp32
vocoder, which the manifest then also demands of the golden wav at load.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from export import vocoder_int8 as vocoder_int8_mod
from export.errors import InputError
from python_backend import golden as golden_mod
from python_backend.gpt_runner import GPTRunner
from python_backend.onnx_stage import OnnxStage

PRECISIONS = ("fp32", "fp16")
FP16_STAGES = ("gpt_prefill", "gpt_step", "sovits", "vocoder")
STEP_TIMING_CACHE = 200
STEP_TIMING_REPEATS = 20


CALIBRATION_SEEDS = (0, 1, 2, 3)
SCORED_SEEDS = (10, 11, 12, 13)


def tolerances(precision: str, int8_decode: bool, vocoder_min_snr_db: float | None = None) -> dict[str, float]:
    """The golden check a version must pass at load; ``vocoder_min_snr_db``: its vocoder is int8 and
    its wav must keep that SNR (the threshold it was exported with) instead of fp32's."""
    tol = dict(golden_mod.TOLERANCES[precision])
    if int8_decode:
        tol.update({"logits_atol": float("inf"), "top1_min": min(tol["top1_min"], golden_mod.INT8_DECODE["top1_min"])})
    if vocoder_min_snr_db is not None:
        tol.update({"wav_atol": float("inf"), "wav_snr_min_db": min(tol["wav_snr_min_db"], float(vocoder_min_snr_db))})
    return tol


def _vocoder_ms(vocoder: OnnxStage, feed: vocoder_int8_mod.VocoderFeed, repeats: int = 3) -> float:
    vocoder_int8_mod.wav(vocoder, feed)
    start = time.perf_counter()
    for _ in range(repeats):
        vocoder_int8_mod.wav(vocoder, feed)
    return (time.perf_counter() - start) / repeats * 1000


def quantize_vocoder(folder: Path, sample: golden_mod.GoldenSample, min_snr_db: float) -> dict:
    """Replace ``folder/vocoder.onnx`` by its int8 form when its wav keeps ``min_snr_db`` against fp32.

    Calibrated on the golden utterance's latents at some noise seeds and scored on others and on the
    reversed utterance (latents the calibration never saw); the worst latent counts. Raises
    InputError (one line) below the threshold and leaves the fp32 graph in place.
    """
    path, fp32_path = folder / "vocoder.onnx", folder / "vocoder.fp32.tmp.onnx"
    sovits = OnnxStage(folder / "sovits.onnx")
    codes, phones = sample.codes.reshape(1, -1), sample.target_phones.reshape(1, -1)
    calibration = vocoder_int8_mod.latents(sovits, codes, phones, sample.ge, CALIBRATION_SEEDS)
    scored = vocoder_int8_mod.latents(sovits, codes, phones, sample.ge, SCORED_SEEDS[:2]) + \
        vocoder_int8_mod.latents(sovits, codes[:, ::-1], phones, sample.ge, SCORED_SEEDS[2:])
    recipe = vocoder_int8_mod.Int8Recipe()
    path.replace(fp32_path)
    try:
        vocoder_int8_mod.quantize(fp32_path, path, calibration, recipe)
        fp32, int8 = OnnxStage(fp32_path), OnnxStage(path)
        snrs = vocoder_int8_mod.snrs(fp32, int8, scored)
        vocoder_int8_mod.check(snrs, min_snr_db)
        report = {"recipe": recipe.name, "threshold_db": float(min_snr_db), "snr_db": snrs, "min_snr_db": min(snrs),
                  "vocoder_ms_fp32": round(_vocoder_ms(fp32, scored[0]), 3),
                  "vocoder_ms_int8": round(_vocoder_ms(int8, scored[0]), 3),
                  **golden_mod.measure_wav(golden_mod.synthesize(sovits, int8, sample.codes, sample.target_phones,
                                                                 sample.ge), sample)}
    except BaseException:
        path.unlink(missing_ok=True)
        fp32_path.replace(path)
        raise
    fp32_path.unlink()
    return report


def _step_ms(runner: GPTRunner) -> float:
    """Milliseconds per decode step at batch 1 with a 200-entry cache."""
    shape = (runner.n_layer, 1, STEP_TIMING_CACHE, runner.d_model)
    cache = runner.start_cache(np.zeros(shape, np.float32), np.zeros(shape, np.float32))
    token, pos = np.array([[1]]), np.array([STEP_TIMING_CACHE])
    runner.step(token, pos, cache)
    start = time.perf_counter()
    for _ in range(STEP_TIMING_REPEATS):
        runner.step(token, pos, cache)
    return (time.perf_counter() - start) / STEP_TIMING_REPEATS * 1000


def _sovits_ms(sovits: OnnxStage, vocoder: OnnxStage, sample: golden_mod.GoldenSample) -> float:
    golden_mod.synthesize(sovits, vocoder, sample.codes, sample.target_phones, sample.ge)
    start = time.perf_counter()
    golden_mod.synthesize(sovits, vocoder, sample.codes, sample.target_phones, sample.ge)
    return (time.perf_counter() - start) * 1000


def measure_folder(folder: Path, sample: golden_mod.GoldenSample) -> dict[str, float]:
    runner = GPTRunner(folder / "gpt_prefill.onnx", folder / "gpt_step.onnx")
    sovits, vocoder = OnnxStage(folder / "sovits.onnx"), OnnxStage(folder / "vocoder.onnx")
    metrics = golden_mod.measure(runner, sovits, vocoder, sample)
    metrics["step_ms_cache200"] = round(_step_ms(runner), 3)
    metrics["sovits_vocoder_ms"] = round(_sovits_ms(sovits, vocoder, sample), 3)
    return metrics


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its producers (the fp16 converter appends input casts last)."""
    produced_by_node = {out for node in graph.node for out in node.output}
    ready: set[str] = set()
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(not name or name not in produced_by_node or name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle; cannot order its nodes")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _to_fp16(path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    _topological_sort(converted.graph)
    del converted.metadata_props[:]
    for key, value in sorted({**meta, "precision": "fp16"}.items()):
        converted.metadata_props.add(key=key, value=value)
    onnx.save(converted, str(path))
    onnx.checker.check_model(str(path))


def _to_int8(path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    model = onnx.load(str(tmp))
    del model.metadata_props[:]
    for key, value in sorted({**meta, "quantization": "int8 dynamic (MatMul/Gemm weights)"}.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    tmp.unlink()


def apply(folder: Path, precision: str, int8_decode: bool, sample: golden_mod.GoldenSample,
          fp32_metrics: dict[str, float], vocoder_min_snr_db: float | None = None) -> dict[str, dict]:
    """Convert the graphs in ``folder`` as asked; returns the measured quality per option.

    ``vocoder_min_snr_db``: quantize the vocoder to int8 with this wav SNR floor against fp32.
    Raises when a converted version fails its own tolerances: such a version would be
    refused at load anyway, so it is not written.
    """
    quality: dict[str, dict] = {}
    if vocoder_min_snr_db is not None:
        if precision != "fp32":
            raise InputError(f"--vocoder-int8 quantizes the fp32 vocoder; drop --precision {precision} or --vocoder-int8")
        quality["vocoder_int8"] = quantize_vocoder(folder, sample, vocoder_min_snr_db)
        problems = golden_mod.failures({**fp32_metrics, **{k: quality["vocoder_int8"][k] for k in
                                        ("wav_max_abs", "wav_snr_db", "wav_length_match")}},
                                       tolerances(precision, False, vocoder_min_snr_db))
        if problems:
            raise InputError(f"int8 vocoder fails the golden check: {'; '.join(problems)}; export without --vocoder-int8")
    if precision == "fp32" and not int8_decode:
        return quality
    quality["fp32_timing"] = {k: v for k, v in measure_folder(folder, sample).items() if k.endswith("_ms") or "_ms_" in k}
    if precision == "fp16":
        for stage in FP16_STAGES:
            if not (int8_decode and stage == "gpt_step"):  # int8 quantization needs float32 activations
                _to_fp16(folder / f"{stage}.onnx")
        quality["fp16"] = measure_folder(folder, sample)
    if int8_decode:
        _to_int8(folder / "gpt_step.onnx")
        quality["int8_decode"] = measure_folder(folder, sample)
    final = quality["int8_decode" if int8_decode else precision]
    problems = golden_mod.failures(final, tolerances(precision, int8_decode, vocoder_min_snr_db))
    if problems:
        raise InputError(f"{precision}{' + int8 decode' if int8_decode else ''} graphs fail validation: {'; '.join(problems)}")
    return quality
