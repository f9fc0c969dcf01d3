"""Soak: 16 clients (half streaming through ``tts_stream``, half whole utterances through
``tts``), two voices, one request after another for a few minutes on a real tritonserver.

Asserted: no request fails, no stub process restarts (the same stub pids after the run as after
the warm-up, none added, no crash or restart line in Triton's log, tritonserver still running)
and memory stays flat: the RSS of tritonserver and its stubs at the end is at most
``RSS_GROWTH`` (10 %) plus ``RSS_SLACK_MB`` (150 MiB) above what it was after the warm-up, which
runs the same load first so every stub has reached its working size.

``GSV_SOAK_SECONDS`` sets the measured part (default 150 s; 1800 for the long opt-in run:
``GSV_SOAK_SECONDS=1800 python -m pytest -q tests/test_soak.py``).
"""
from __future__ import annotations

import os
import time

import pytest

from tests.soak_load import run_clients, stubs, tree_rss_mb
from tests.triton_fixtures import require_tritonserver, start_server
from tests.voices import demo_voice, export_voice

pytestmark = pytest.mark.integration
VOICES = ["alpha", "beta"]
CLIENTS = 16
WARMUP_S = 30.0
SOAK_S = float(os.environ.get("GSV_SOAK_SECONDS", "150"))
RSS_GROWTH = 0.10
RSS_SLACK_MB = 150.0
# what Triton 2.51 logs when a stub dies or is restarted
CRASH_LINES = ("Non-graceful termination", "is not healthy", "Stub process", "Segmentation fault", "Signal (11)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_tritonserver()
    root = tmp_path_factory.mktemp("soak")
    repo = root / "repo"
    repo.mkdir()
    for seed, voice in enumerate(VOICES, start=3):
        src = root / voice
        export_voice(demo_voice(src, seed), repo, voice, aux=src)
    proc = start_server(repo, log_dir=root, timeout=600)
    yield proc
    proc.stop()


def _crash_lines(server) -> list[str]:
    return [line for line in server.log_tail(100000).splitlines() if any(k in line for k in CRASH_LINES)]


def test_soak_mixed_clients_no_failure_no_restart_flat_memory(server):
    warm = run_clients(server.grpc_url, VOICES, CLIENTS, until=time.monotonic() + WARMUP_S, seed=1)
    assert not warm.failures, warm.failures[:5]
    before = {(s.pid, s.model) for s in stubs(server.pid)}
    assert sum(model == "tts" for _, model in before) >= 2, before  # tts serves concurrently: several instances
    rss_before = tree_rss_mb(server.pid)
    samples = []
    started = time.monotonic()
    tally = None

    import threading

    done = threading.Event()

    def sample() -> None:
        while not done.wait(10):
            samples.append(round(tree_rss_mb(server.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        tally = run_clients(server.grpc_url, VOICES, CLIENTS, until=started + SOAK_S, seed=2)
    finally:
        done.set()
        sampler.join(15)
    elapsed = time.monotonic() - started
    rss_after = tree_rss_mb(server.pid)
    after = {(s.pid, s.model) for s in stubs(server.pid)}
    print(f"soak {elapsed:.0f} s: {tally.ok} requests ({tally.streamed} streamed), {tally.audio_s:.0f} audio-s, "
          f"{len(tally.failures)} failures; RSS {rss_before:.0f} -> {rss_after:.0f} MiB (samples {samples}); "
          f"{len(after)} stubs")
    assert not tally.failures, f"{len(tally.failures)} failures, first: {tally.failures[:5]}"
    assert tally.streamed > 0 and tally.ok - tally.streamed > 0, "both kinds of request must have been served"
    assert server.process.poll() is None, "tritonserver exited during the soak"
    assert after == before, f"stub processes changed (restarted or added): {sorted(before ^ after)}"
    assert not _crash_lines(server), _crash_lines(server)[:5]
    bound = rss_before * (1 + RSS_GROWTH) + RSS_SLACK_MB
    assert rss_after <= bound, f"memory grew from {rss_before:.0f} to {rss_after:.0f} MiB (bound {bound:.0f}); samples {samples}"
