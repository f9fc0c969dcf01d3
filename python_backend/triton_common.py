"""Small pieces every Triton adapter of this project uses (import only inside Triton's stub)."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import triton_python_backend_utils as pb_utils

from python_backend.reference import ReferenceCache


def version_dir(args: dict) -> Path:
    """The loaded version's folder: Triton passes the model folder and the version number."""
    return Path(args["model_repository"]) / str(args["model_version"])


def ensure_logging() -> None:
    """Log lines from the stub reach Triton's log (its stdout) with our stage prefixes."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")


def error_response(message: str, code) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


# Calls that message Triton from a stub (send, BLS exec, is_cancelled, is_model_ready, custom
# metrics) are serialized: on 2.51, unlocked metric updates from two stub threads segfaulted
# tritonserver, and BLS results in the many-threaded tts stub came back corrupted under load.
# Waiting for BLS responses (iterating) is not a call to Triton and stays outside the lock.
STUB_IPC = threading.RLock()


# A BLS request parameter: the voice model then sends an empty non-final response about every
# voice_engine.TICK_S while the request runs, so a caller blocked on the next response (``tts``,
# one thread per stub) looks at its own client's cancellation that often.
HEARTBEAT_PARAMETER = "gsv_heartbeat"


def send(sender, response=None, flags: int = 0) -> None:
    with STUB_IPC:
        if response is None:
            sender.send(flags=flags)
        else:
            sender.send(response, flags=flags)


def is_cancelled(request) -> bool:
    with STUB_IPC:
        return request.is_cancelled()


def model_ready(name: str, version: int | None = None) -> bool:
    with STUB_IPC:
        if version is None:
            return pb_utils.is_model_ready(model_name=name)
        return pb_utils.is_model_ready(model_name=name, model_version=str(version))


def bls_exec(request, decoupled: bool = False):
    with STUB_IPC:
        return request.exec(decoupled=decoupled)


def cache_from_env() -> ReferenceCache:
    """Reference cache sized by GSV_REF_CACHE_ENTRIES / GSV_REF_CACHE_MB (defaults 64, 256)."""
    entries = int(os.environ.get("GSV_REF_CACHE_ENTRIES", "64"))
    megabytes = int(os.environ.get("GSV_REF_CACHE_MB", "256"))
    return ReferenceCache(max_entries=entries, max_bytes=megabytes << 20)


class CacheMetrics:
    """``gsv_reference_cache_total{model, event}``: hits, misses and evictions of a reference cache."""

    def __init__(self, model: str):
        self.family = pb_utils.MetricFamily(
            name="gsv_reference_cache_total", description="per-request reference cache events (hit, miss, eviction)",
            kind=pb_utils.MetricFamily.COUNTER)
        self.metrics = {e: self.family.Metric(labels={"model": model, "event": e}) for e in ("hit", "miss", "eviction")}

    def count(self, event: str, n: int = 1) -> None:
        if n:
            with STUB_IPC:
                self.metrics[event].increment(n)
