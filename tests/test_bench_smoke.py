"""SMOKE TEST of the benchmark harness (``python -m bench.run``, bench/): tiny voice, a handful of requests.

It checks that ``python -m bench.run`` runs end to end (baseline, tritonserver, concurrency
sweep, perf_analyzer, hot swap, profile) and writes its outputs with the documented keys.
It asserts nothing about speed: timings on a tiny random-weight voice mean nothing.
"""
from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("tritonclient")
pytest.importorskip("matplotlib")

from ops.server import ServerError, find_tritonserver  # noqa: E402

try:
    find_tritonserver()
except ServerError as exc:  # pragma: no cover - depends on the host
    pytest.skip(f"no tritonserver: {exc}", allow_module_level=True)

pytestmark = pytest.mark.integration  # a smoke test: it runs a real tritonserver, checks outputs, never timings


def test_bench_smoke_end_to_end(tmp_path, monkeypatch):
    from bench import run

    monkeypatch.delenv("GSV_BENCH_IGNORE_EOS", raising=False)
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{run.README_START}\nold figures\n{run.README_END}\n\n## After\n")
    code = run.main(["--size", "tiny", "--out", str(out), "--cache", str(run.HERE / ".cache" / "tiny"),
                     "--tokens", "20", "--concurrency", "1,2", "--per-client", "1", "--int8-concurrency", "1",
                     "--pa-concurrency", "1:2:1", "--pa-requests", "2", "--swap-concurrency", "2",
                     "--genie-site", str(tmp_path / "no-genie"), "--readme", str(readme)])
    assert code == 0
    text = readme.read_text()  # the section between the markers is regenerated, the rest kept
    assert "old figures" not in text and "## Performance" in text and text.endswith("## After\n")
    assert (out / "README_perf.md").read_text().strip() in text
    res = json.loads((out / "latest.json").read_text())
    for key in ("single_stream_rtf", "baseline_single_stream_rtf", "throughput_c8", "baseline_throughput_c8",
                "swap_p99_ratio", "machine", "baseline", "triton", "swap", "perf_analyzer", "profile", "targets",
                "peers", "first_audio_ratio"):
        assert key in res, key
    assert set(res["machine"]) >= {"cores", "cpu_model", "gpu"} and res["machine"]["gpu"] == "none"
    assert [c["concurrency"] for c in res["triton"]["fp32"]["concurrency"]] == [1, 2]
    assert all(c["errors"] == 0 for c in res["triton"]["fp32"]["concurrency"])
    assert res["swap"]["error"] is None and res["swap"]["swap_window"]["errors"] == 0
    assert res["swap"]["new_version"] in res["swap"]["swap_window"]["versions_served"]
    assert res["perf_analyzer"].get("returncode") == 0, res["perf_analyzer"].get("stderr_tail") or res["perf_analyzer"]
    assert res["perf_analyzer"]["summary"]
    assert any("BENCHMARK MODE" in line for line in res["server_log_voice_lines"])
    # a peer that cannot run is recorded with the reason and the fix, never with figures
    (genie,) = res["peers"]
    assert genie["name"] == "genie-tts" and "single_stream_rtf" not in genie
    assert "pip install --target" in genie["error"] and "genie-tts==2.0.2" in genie["error"]
    assert "genie-tts" in (out / "latest.md").read_text() and "not measured" in (out / "latest.md").read_text()
    assert res["first_audio_ratio"] > 0  # first streamed chunk over the whole request of the same text
    for name in ("latest.md", "README_perf.md", "latency_vs_concurrency.png", "throughput_vs_concurrency.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    shutil.rmtree(out)


def test_genie_runtime_files_are_made_locally(tmp_path):
    """Genie's GENIE_DATA_DIR from local files: the repository's HuBERT graph under Genie's input name
    (same output as ours), upstream's opencpop table and polyphonic dictionary, a stand-in SV graph."""
    import os
    import pickle
    from pathlib import Path

    import numpy as np
    import onnxruntime as ort

    from bench import peer_genie, run

    upstream = Path(os.environ.get("GSV_UPSTREAM_TEXT", ""))
    repo = run.HERE / ".cache" / "tiny" / "repo"
    if not (upstream / "opencpop-strict.txt").is_file() or not (repo / "gsv_ssl").is_dir():
        pytest.skip("needs $GSV_UPSTREAM_TEXT and the tiny bench cache (made by the smoke test above)")
    data = peer_genie.write_data_dir(tmp_path / "genie-data", repo, upstream)
    hubert = ort.InferenceSession(str(data / "chinese-hubert-base" / "chinese-hubert-base.onnx"))
    ours = ort.InferenceSession(str(sorted((repo / "gsv_ssl").glob("*/ssl.onnx"))[-1]))
    wav = np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32) * 0.1
    assert [i.name for i in hubert.get_inputs()] == ["input_values"]
    np.testing.assert_array_equal(hubert.run(None, {"input_values": wav})[0], ours.run(None, {"wav16k": wav})[0])
    poly = pickle.loads((data / "G2P" / "ChineseG2P" / "polyphonic.pickle").read_bytes())
    assert len(poly) > 100 and all(isinstance(v, list) for v in poly.values())
    assert (data / "G2P" / "ChineseG2P" / "opencpop-strict.txt").stat().st_size > 0
    ort.InferenceSession(str(data / "speaker_encoder.onnx"))
