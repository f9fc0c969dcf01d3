"""Execution providers per stage: the resolution for every request x host, the exporter's record of
the choice, bad names refused, the I/O-binding decode equal to the plain one, and a real
tritonserver serving a version that asks for CUDA/TensorRT on this CPU host (it falls back and
answers). Only ``providers.available`` (onnxruntime's ``get_available_providers``) is replaced."""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ops import cli
from python_backend import providers as pv
from python_backend.gpt_runner import GPTRunner
from python_backend.manifest import ManifestError, VoiceManifest
from python_backend.onnx_stage import OnnxStage, providers as onnx_stage_providers
from tests.voices import demo_voice, export_args, export_voice

CPU, CUDA, TRT = pv.CPU, pv.CUDA, pv.TRT
HOSTS = {"cpu": [CPU], "cuda": [CUDA, CPU], "trt": [TRT, CUDA, CPU], "trt_only": [TRT, CPU]}
#: (request, host) -> the provider list that must run, and whether it is a fallback
EXPECTED = {
    ("auto", "cpu"): ([CPU], False), ("auto", "cuda"): ([CUDA, CPU], False),
    ("auto", "trt"): ([CUDA, CPU], False), ("auto", "trt_only"): ([CPU], False),
    ("cpu", "cpu"): ([CPU], False), ("cpu", "cuda"): ([CPU], False),
    ("cpu", "trt"): ([CPU], False), ("cpu", "trt_only"): ([CPU], False),
    ("cuda", "cpu"): ([CPU], True), ("cuda", "cuda"): ([CUDA, CPU], False),
    ("cuda", "trt"): ([CUDA, CPU], False), ("cuda", "trt_only"): ([CPU], True),
    ("tensorrt", "cpu"): ([CPU], True), ("tensorrt", "cuda"): ([CUDA, CPU], True),
    ("tensorrt", "trt"): ([TRT, CUDA, CPU], False), ("tensorrt", "trt_only"): ([CPU], True),
    ("tensorrt_fp32", "cpu"): ([CPU], True), ("tensorrt_fp32", "cuda"): ([CUDA, CPU], True),
    ("tensorrt_fp32", "trt"): ([TRT, CUDA, CPU], False), ("tensorrt_fp32", "trt_only"): ([CPU], True),
}


# ---------------------------------------------------------------------- the pure resolution

@pytest.mark.parametrize("request_, host", list(itertools.product(pv.CHOICES, HOSTS)))
def test_resolution_for_every_request_and_host(request_, host):
    res = pv.resolve("sovits", request_, HOSTS[host], host=pv.Host("NVIDIA H200", "10.13.0"),
                     graph_hash="ab" * 32, cache_root=Path("/cache"))
    names, fell_back = EXPECTED[(request_, host)]
    assert res.names == names
    assert (res.fallback is not None) == fell_back
    if fell_back:
        assert res.fallback.startswith(f"sovits: asked for {request_}") and "\n" not in res.fallback
        assert res.fallback.endswith("running on CPU" if names == [CPU] else "running on CUDA without TensorRT")
    assert res.device == ("cpu" if names[0] == CPU else "cuda")
    assert res.io_binding == (names[0] != CPU)


def test_tensorrt_options_fp16_and_caches_keyed_by_gpu_trt_and_graph():
    args = dict(host=pv.Host("NVIDIA H200", "10.13.0"), graph_hash="0123456789abcdef" * 4, cache_root=Path("/c"))
    fp16 = dict(pv.resolve("vocoder", "tensorrt", HOSTS["trt"], **args).providers)
    fp32 = dict(pv.resolve("vocoder", "tensorrt_fp32", HOSTS["trt"], **args).providers)
    assert fp16[TRT]["trt_fp16_enable"] == "1" and fp32[TRT]["trt_fp16_enable"] == "0"
    path = Path(fp16[TRT]["trt_engine_cache_path"])
    assert path == Path("/c/NVIDIA-H200/trt-10.13.0/0123456789abcdef")
    assert fp16[TRT]["trt_timing_cache_path"] == str(path)
    assert fp16[TRT]["trt_engine_cache_enable"] == fp16[TRT]["trt_timing_cache_enable"] == "1"
    other_gpu = pv.resolve("vocoder", "tensorrt", HOSTS["trt"], **{**args, "host": pv.Host("NVIDIA L4", "10.13.0")})
    other_graph = pv.resolve("vocoder", "tensorrt", HOSTS["trt"], **{**args, "graph_hash": "f" * 64})
    assert len({path, Path(dict(other_gpu.providers)[TRT]["trt_engine_cache_path"]),
                Path(dict(other_graph.providers)[TRT]["trt_engine_cache_path"])}) == 3
    profile = {"trt_profile_min_shapes": "x:1x1", "trt_profile_opt_shapes": "x:1x64", "trt_profile_max_shapes": "x:8x512"}
    with_profile = dict(pv.resolve("vocoder", "tensorrt", HOSTS["trt"], profile=profile, **args).providers)
    assert with_profile[TRT]["trt_profile_max_shapes"] == "x:8x512"


def test_cuda_graph_only_when_the_caller_binds_fixed_buffers():
    plain = dict(pv.resolve("gpt_step", "cuda", HOSTS["cuda"]).providers)[CUDA]
    graph = dict(pv.resolve("gpt_step", "cuda", HOSTS["cuda"], cuda_graph=True).providers)[CUDA]
    assert "enable_cuda_graph" not in plain and graph["enable_cuda_graph"] == "1"


def test_plan_parse_and_bad_names_refused():
    plan = pv.ProviderPlan.parse("gpt_step=cuda, sovits=tensorrt")
    assert plan.get("gpt_step") == "cuda" and plan.get("sovits") == "tensorrt" and plan.get("vocoder") == "auto"
    every = pv.ProviderPlan.parse("all=tensorrt,gpt_step=cuda")
    assert every.get("bert") == "tensorrt" and every.get("gpt_step") == "cuda"
    assert every.voice_part() == {"gpt_prefill": "tensorrt", "gpt_step": "cuda", "sovits": "tensorrt", "vocoder": "tensorrt"}
    assert pv.ProviderPlan.parse("") == pv.ProviderPlan()
    with pytest.raises(pv.ProviderError, match="unknown provider; choose one of auto, cpu, cuda, tensorrt"):
        pv.ProviderPlan.parse("sovits=rocm")
    with pytest.raises(pv.ProviderError, match="unknown stage 'sovit'; stages are gpt_prefill"):
        pv.ProviderPlan.parse("sovit=cuda")
    with pytest.raises(pv.ProviderError, match="write STAGE=PROVIDER"):
        pv.ProviderPlan.parse("cuda")


# ---------------------------------------------------------------------- exporter and version folder

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_voice(tmp_path_factory.mktemp("demo"), 5)


@pytest.fixture(scope="module")
def gpu_version(demo, tmp_path_factory):
    """A version exported asking for GPU providers (with the shared BERT on TensorRT)."""
    repo = tmp_path_factory.mktemp("repo")
    return export_voice(demo, repo, "gpu", "--providers", "gpt_step=cuda,gpt_prefill=tensorrt,sovits=tensorrt,"
                        "vocoder=tensorrt_fp32,bert=tensorrt", aux=demo)


def test_export_writes_the_choice_and_stages_read_it(gpu_version, monkeypatch):
    manifest = VoiceManifest.read(gpu_version)
    assert manifest.providers == {"gpt_step": "cuda", "gpt_prefill": "tensorrt", "sovits": "tensorrt",
                                  "vocoder": "tensorrt_fp32"}
    repo = gpu_version.parents[1]
    bert_dirs = sorted((repo / "gsv_bert").glob("*/bert.onnx"))
    assert json.loads((bert_dirs[-1].parent / pv.PLAN_FILE).read_text()) == {"bert": "tensorrt"}
    assert not list((repo / "gsv_ssl").glob(f"*/{pv.PLAN_FILE}"))  # not named: keeps auto
    assert pv.read_plan(bert_dirs[-1].parent).get("bert") == "tensorrt"
    assert pv.read_plan(gpu_version).get("gpt_step") == "cuda"
    # how the stages resolve on a GPU host (the seam says CUDA + TensorRT are there)
    monkeypatch.setattr(pv, "available", lambda: HOSTS["trt"])
    monkeypatch.setattr(pv, "host", lambda: pv.Host("NVIDIA H200", "10.13.0"))
    sovits = pv.resolve_graph(gpu_version / "sovits.onnx")
    assert sovits.names == [TRT, CUDA, CPU]
    cache = Path(dict(sovits.providers)[TRT]["trt_engine_cache_path"])
    assert cache.parents[2] == repo.resolve() / ".gsv" / "trt-cache"
    assert cache.name == manifest.graphs["sovits"].sha256[:16]
    assert pv.resolve_graph(gpu_version / "speaker.onnx").requested == "tensorrt"  # reference graphs follow sovits
    assert pv.resolve_graph(gpu_version / "gpt_step.onnx").names == [CUDA, CPU]
    assert pv.resolve_graph(bert_dirs[-1]).names == [TRT, CUDA, CPU]


def test_old_version_without_choice_is_auto(gpu_version, tmp_path, monkeypatch):
    data = json.loads((gpu_version / "manifest.json").read_text())
    data.pop("providers")
    manifest = VoiceManifest.from_dict(data)
    assert manifest.providers == {}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert pv.read_plan(tmp_path) == pv.ProviderPlan()
    monkeypatch.setattr(pv, "available", lambda: HOSTS["cuda"])
    assert pv.resolve_graph(tmp_path / "sovits.onnx").names == [CUDA, CPU]
    with pytest.raises(ManifestError, match="manifest providers: .*unknown provider"):
        VoiceManifest.from_dict({**data, "providers": {"sovits": "gpu"}})
    with pytest.raises(ManifestError, match=r"manifest providers name \['bert'\]"):
        VoiceManifest.from_dict({**data, "providers": {"bert": "cuda"}})


def test_export_refuses_bad_provider_names(demo, tmp_path, capsys):
    code = cli.main(["export", *export_args(demo, tmp_path, "bad", "--providers", "sovits=gpu", aux=demo)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "sovits=gpu: unknown provider; choose one of auto, cpu, cuda, tensorrt, tensorrt_fp32" in err[0]
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_gpu_choice_falls_back_to_cpu_here_with_one_line(gpu_version, caplog):
    with caplog.at_level(logging.WARNING, logger="python_backend.providers"):
        stage = OnnxStage(gpu_version / "sovits.onnx", provider_list=onnx_stage_providers())
    assert stage.session.get_providers() == [CPU]
    assert stage.resolution.requested == "tensorrt" and stage.resolution.fallback
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"[providers] sovits: asked for tensorrt but this onnxruntime offers "
                     f"{', '.join(pv.available())}; running on CPU"]
    explicit = OnnxStage(gpu_version / "sovits.onnx", provider_list=[CPU])
    assert explicit.resolution.requested == "explicit"


# ---------------------------------------------------------------------- I/O binding, device-resident KV cache

def _decode(runner: GPTRunner, phones, bert, prompts, steps: int, batch: int, join_at: int):
    """Greedy decode of ``batch`` rows for ``steps`` steps, a second prefill joining at ``join_at``
    and the first row leaving halfway (merge/select/regrowth all happen on the way)."""
    from python_backend.kv_cache import KVCache

    logits, k, v = runner.prefill(np.repeat(phones, batch, 0), np.repeat(bert, batch, 0), np.repeat(prompts, batch, 0))
    cache = runner.start_cache(k, v)
    cache.spare = 4  # regrow often
    positions = np.full(batch, prompts.shape[1])
    tokens_out = []
    for step in range(steps):
        tokens = logits.argmax(-1)
        tokens_out.append(tokens.copy())
        if step == join_at:
            l2, k2, v2 = runner.prefill(phones, bert, prompts[:, :-3])
            cache = KVCache.merge([cache, runner.start_cache(k2, v2)])
            tokens = np.append(tokens, l2.argmax(-1))
            positions = np.append(positions, prompts.shape[1] - 3)
        if step == steps // 2:
            keep = list(range(1, cache.batch))
            cache.select(keep)
            tokens, positions = tokens[keep], positions[keep]
        logits = runner.step(tokens.reshape(-1, 1), positions, cache)
        positions = positions + 1
    return tokens_out, logits, cache


def test_io_binding_decode_gives_the_same_tokens(gpu_version):
    ref = np.load(gpu_version / "reference.npz")
    phones = ref["phones"].astype(np.int64).reshape(1, -1)
    bert = ref["bert"].astype(np.float32)[None]
    prompts = ref["prompts"].astype(np.int64).reshape(1, -1)
    paths = (gpu_version / "gpt_prefill.onnx", gpu_version / "gpt_step.onnx")
    plain = GPTRunner(*paths, io_binding=False)
    bound = GPTRunner(*paths, onnx_stage_providers(), io_binding=True)
    assert not plain.io_binding and bound.io_binding and bound.device == "cpu"
    want, want_logits, want_cache = _decode(plain, phones, bert, prompts, 24, 2, 5)
    got, got_logits, got_cache = _decode(bound, phones, bert, prompts, 24, 2, 5)
    assert got_cache.device == "cpu"  # the bound run kept its cache in OrtValues
    assert [t.tolist() for t in got] == [t.tolist() for t in want]
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-5)
    np.testing.assert_allclose(got_cache.k, want_cache.k, atol=1e-5)  # read back from the device buffers
    np.testing.assert_array_equal(got_cache.mask, want_cache.mask)
    # sampling with a seed (the server's path): same tokens
    args = dict(top_k=5, seed=7, max_new_tokens=40)
    np.testing.assert_array_equal(bound.generate(phones, bert, prompts, **args),
                                  plain.generate(phones, bert, prompts, **args))


# ---------------------------------------------------------------------- a real tritonserver on this CPU host

@pytest.mark.integration
def test_server_serves_a_gpu_version_on_cpu_and_says_so(gpu_version, demo, tmp_path):
    """The version asks for CUDA/TensorRT; this host has neither: it loads, answers, logs why, and
    sounds exactly like the same checkpoints exported without a choice."""
    from ops.client import synthesize
    from tests.triton_fixtures import require_tritonserver, start_server

    require_tritonserver()
    repo = gpu_version.parents[1]
    export_voice(demo, repo, "plain")
    server = start_server(repo, ["tts", "gsv_bert", "voice_gpu", "voice_plain"], timeout=600, log_dir=tmp_path)
    try:
        fixed = {"TOP_K": 1, "SEED": 7, "MAX_TOKENS": 30}
        gpu = synthesize("今天天气很好。", "gpu", server.grpc_url, **fixed)
        plain = synthesize("今天天气很好。", "plain", server.grpc_url, **fixed)
        log = server.log_tail(2000)
    finally:
        server.stop()
    assert gpu.audio.size > 0 and np.all(np.isfinite(gpu.audio)) and np.abs(gpu.audio).max() > 1e-4
    np.testing.assert_allclose(gpu.audio, plain.audio, atol=1e-5)
    for stage, asked in (("gpt_step", "cuda"), ("sovits", "tensorrt"), ("vocoder", "tensorrt_fp32"), ("bert", "tensorrt")):
        assert f"[providers] {stage}: asked for {asked} but this onnxruntime offers" in log, stage
