"""bench/gpu_check.sh --cpu-dry-run: the GPU check's steps run on this CPU host (tiny voice, CPU
provider, a real tritonserver) and write the same result files; the GPU-only steps say why they
did not run, and no figure is reported for a provider that did not run."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.triton_fixtures import require_tritonserver

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    require_tritonserver()
    out, work = tmp_path_factory.mktemp("gpu_out"), tmp_path_factory.mktemp("gpu_work")
    env = {**os.environ, "OUT": str(out)}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-dry-run", "--", "--budget-s", "1200", "--work", str(work)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, work, json.loads((out / "summary.json").read_text())


def test_writes_one_folder_with_every_step(dry_run):
    out, _, summary = dry_run
    assert {p.name for p in out.iterdir()} >= {"summary.json", "summary.md", "gpu_check.log", "tritonserver.log"}
    steps = summary["steps"]
    assert list(steps) == ["env", "build", "agreement", "pipeline", "baseline", "serve", "engines"]
    assert summary["dry_run"] is True and summary["gpu"] is None and summary["tensorrt"] is None
    for name in ("env", "build", "agreement", "pipeline", "baseline", "serve"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert steps["engines"] == {"status": "skipped", "why": "--cpu-dry-run: TensorRT needs a GPU", "seconds": 0.0}
    md = (out / "summary.md").read_text()
    assert "GPU: none; tensorrt: none" in md and "| engines | skipped | --cpu-dry-run" in md
    assert "no wheel folder given; using what is installed" in (out / "gpu_check.log").read_text()


def test_cpu_figures_and_gpu_configs_skipped_with_reason(dry_run):
    steps = dry_run[2]["steps"]
    assert steps["build"]["providers"] == {"gpt_prefill": "tensorrt", "gpt_step": "cuda", "sovits": "tensorrt",
                                           "vocoder": "tensorrt"}
    cpu = steps["agreement"]["cpu"]
    assert set(cpu["ran_on"].values()) == {"CPUExecutionProvider"} and cpu["tolerance_failures"] == []
    assert cpu["step_top1_agreement"] == 1.0 and cpu["wav_snr_db"] > 40
    for step in ("agreement", "pipeline"):
        for config in ("cuda", "tensorrt"):
            assert steps[step][config] == {"status": "skipped", "why": "--cpu-dry-run"}
    assert steps["pipeline"]["cpu"]["rtf"] > 0 and steps["pipeline"]["cpu"]["step_ms_b16"] > 0
    assert steps["baseline"]["device"] == "cpu" and steps["baseline"]["rtf"] > 0


def test_served_figures_and_hot_swap(dry_run):
    serve = dry_run[2]["steps"]["serve"]
    assert serve["single_stream_rtf"] > 0 and serve["first_chunk_s"] > 0
    assert [row["concurrency"] for row in serve["sweep"]] == [1, 2]
    assert all(row["requests"] > 0 and row["errors"] == 0 and row["audio_s_per_s"] > 0 for row in serve["sweep"])
    swap = serve["swap"]
    assert "swap_error" not in swap and swap["swap_s"] > 0 and swap["errors"] == 0
    assert swap["p99_before_s"] > 0 and swap["p99_during_s"] > 0 and swap["p99_ratio"] > 0
    # the served version asked for GPU providers: the server said, per stage, that it fell back
    assert any(line.startswith("sovits: asked for tensorrt") for line in serve["ran_on"])


def test_tensorrt_profile_covers_every_dynamic_input(dry_run):
    from bench.gpu_engines import trt_profile

    vocoder = next(dry_run[1].glob("repo/voice_gpu/*/vocoder.onnx"))
    profile = trt_profile(vocoder, 16, (16, 1000, 3000))
    assert set(profile) == {"trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"}
    max_shapes = dict(item.split(":") for item in profile["trt_profile_max_shapes"].split(","))
    assert max_shapes["latent"].startswith("16x") and max_shapes["latent"].endswith("x3000")
    assert dict(item.split(":") for item in profile["trt_profile_min_shapes"].split(","))["latent"].startswith("1x")
