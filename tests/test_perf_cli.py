"""``gsv-triton perf`` against a real tritonserver serving one tiny demo voice.

Each run is kept short (a few 10-token requests per measurement window): the test checks that
perf_analyzer ran against ``tts`` / ``tts_stream`` with the written input data and printed its
table, that ``--print-command`` prints a command that runs on its own, and that bad input stops
before perf_analyzer with a one-line error.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest

from ops import cli
from ops.perf import ConcurrencyRange, PerfError
from tests.triton_fixtures import free_ports, metric, require_tritonserver, start_server

pytestmark = pytest.mark.integration
SHORT = ["--max-tokens", "10", "--requests-per-window", "2", "--max-trials", "3", "--seed", "3"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(server, work)``: tritonserver on a repository with the tiny demo voice ``alpha``."""
    from tests.gateway_fixtures import demo_repo

    pytest.importorskip("tritonclient")
    require_tritonserver()
    root = tmp_path_factory.mktemp("perf")
    server = start_server(demo_repo(root, voices=("alpha",)), log_dir=root, timeout=600)
    yield server, root / "work"
    server.stop()


def perf(capfd, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["perf", *argv])
    out, err = capfd.readouterr()
    return code, out, err


def successes(server, model: str) -> float:
    return metric(server, "nv_inference_request_success", model=model)


def test_perf_runs_perf_analyzer_on_tts_and_prints_its_table(served, capfd, tmp_path):
    server, work = served
    before = successes(server, "tts")
    table = tmp_path / "pa.csv"
    code, out, err = perf(capfd, "--url", server.grpc_url, "--voice", "alpha", "--concurrency-range", "1:2",
                          "--admin-key", server.admin_key, "--work-dir", str(work), "--csv", str(table), *SHORT)
    assert code == 0, err
    assert "Concurrency: 1," in out and "Concurrency: 2," in out, out  # perf_analyzer's own summary lines
    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert [int(float(r["Concurrency"])) for r in rows] == [1, 2]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    assert successes(server, "tts") - before >= 2 * 3 * 2  # two levels x three windows x two requests
    data = json.loads((work / "input-tts-alpha.json").read_text(encoding="utf-8"))
    assert data["data"][0]["VOICE"] == ["alpha"] and data["data"][0]["MAX_TOKENS"] == [10]
    assert server.admin_key not in out + err


def test_perf_streaming_measures_tts_stream(served, capfd):
    server, work = served
    before = successes(server, "tts_stream")
    code, out, err = perf(capfd, "--url", server.grpc_url, "--voice", "alpha", "--concurrency-range", "1",
                          "--streaming", "--admin-key", server.admin_key, "--work-dir", str(work), *SHORT)
    assert code == 0, err
    assert "Concurrency: 1," in out, out
    assert successes(server, "tts_stream") - before >= 3 * 2


def test_print_command_is_a_plain_perf_analyzer_command_that_runs(served, capfd):
    """The printed line runs in a shell with only $GSV_ADMIN_KEY set (the key itself is not in it)."""
    server, work = served
    code, out, err = perf(capfd, "--url", server.grpc_url, "--voice", "alpha", "--concurrency-range", "1:1",
                          "--admin-key", server.admin_key, "--work-dir", str(work), "--print-command", *SHORT)
    assert code == 0, err
    command = out.strip()
    assert len(command.splitlines()) == 1 and "perf_analyzer -m tts " in command
    assert server.admin_key not in command and "$GSV_ADMIN_KEY" in command
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"} | {"GSV_ADMIN_KEY": server.admin_key}
    proc = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Concurrency: 1," in proc.stdout


def test_without_the_admin_key_perf_says_which_option_gives_it(served, capfd, monkeypatch):
    server, work = served
    monkeypatch.delenv("GSV_ADMIN_KEY", raising=False)
    code, _, err = perf(capfd, "--url", server.grpc_url, "--voice", "alpha", "--concurrency-range", "1",
                        "--work-dir", str(work), *SHORT)
    assert code == 2
    line = err.strip()
    assert len(line.splitlines()) == 1 and "--admin-key" in line and "GSV_ADMIN_KEY" in line, err


def test_unknown_voice_is_one_line_before_perf_analyzer_runs(served, capfd):
    server, work = served
    code, out, err = perf(capfd, "--url", server.grpc_url, "--voice", "nosuch", "--admin-key", server.admin_key,
                          "--work-dir", str(work), *SHORT)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "voice 'nosuch' is not served" in err and "voice_nosuch" in err, err


def test_unreachable_server_is_one_line(capfd, tmp_path):
    (port,) = free_ports(1)
    code, out, err = perf(capfd, "--url", f"127.0.0.1:{port}", "--voice", "alpha", "--work-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"no Triton server answers gRPC at 127.0.0.1:{port}" in err and "--url" in err, err


@pytest.mark.parametrize("bad", ["0:2", "4:2", "a:b", "1:2:0", "1-4", ""])
def test_bad_concurrency_range_is_refused(bad, capfd):
    with pytest.raises(PerfError, match="--concurrency-range"):
        ConcurrencyRange.parse(bad)
    code, out, err = perf(capfd, "--voice", "alpha", "--concurrency-range", bad)
    assert code == 2 and out == "" and "expected START:END[:STEP]" in err and err.count("\n") == 1


def test_concurrency_range_forms():
    assert str(ConcurrencyRange.parse("2")) == "2:2:1"
    assert str(ConcurrencyRange.parse("1:16:3")) == "1:16:3"
