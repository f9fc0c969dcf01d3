"""Helpers for integration tests against a real tritonserver (the nvidia-pytriton wheel's).

Import them from tests (not a conftest): ``start_server(repo, models=[...])`` picks free ports,
starts the server, waits until ready and returns the ``TritonProcess`` (stop it, or use it as a
context manager). ``wait_model_ready(url, name)`` polls one model over HTTP.
"""
from __future__ import annotations

import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ops.server import ServerError, TritonProcess, find_tritonserver, free_ports  # noqa: F401 (re-exported)


def require_tritonserver() -> None:
    """Skip (with the reason) where the nvidia-pytriton wheel is not installed."""
    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(str(exc))


def start_server(repo: Path, models: list[str] | str | None = None, timeout: float = 180, log_dir: Path | None = None,
                 exit_timeout: int = 10, attempts: int = 3) -> TritonProcess:
    """A ready tritonserver on ``repo`` with free ports; ``models`` None loads every model.

    Retries with new ports when another process took one between the pick and the bind.
    """
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="triton-test-"))
    last = None
    for attempt in range(attempts):
        http, grpc, metrics = free_ports(3)
        server = TritonProcess(repo, http, grpc, metrics, models="*" if models is None else models,
                               log_path=log_dir / f"tritonserver-{attempt}.log", exit_timeout=exit_timeout)
        server.start()
        try:
            server.wait_ready(timeout)
            return server
        except ServerError as exc:
            server.stop(5)
            last = exc
            if "already in use" not in server.log_tail(200).lower():
                raise
    raise last


class AdminClient:
    """A gRPC client that sends the server's admin key with the restricted calls (load, unload,
    repository index, config); everything else goes through unchanged."""

    def __init__(self, server: TritonProcess):
        import tritonclient.grpc as grpcclient

        self._client = grpcclient.InferenceServerClient(server.grpc_url)
        self._headers = server.admin_headers

    def load_model(self, name: str, **kw):
        return self._client.load_model(name, headers=self._headers, **kw)

    def unload_model(self, name: str, **kw):
        return self._client.unload_model(name, headers=self._headers, **kw)

    def get_model_repository_index(self, **kw):
        return self._client.get_model_repository_index(headers=self._headers, **kw)

    def get_model_config(self, name: str, **kw):
        return self._client.get_model_config(name, headers=self._headers, **kw)

    def __getattr__(self, name):
        return getattr(self._client, name)


def metric(server: TritonProcess, name: str, **labels) -> float:
    """The sum of a metric's samples on the server's metrics port whose labels include ``labels``."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def wait_until(predicate, timeout: float = 60, every: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def wait_model_ready(url: str, name: str, version: str = "", timeout: float = 120) -> None:
    """Poll ``/v2/models/NAME[/versions/V]/ready`` on the HTTP endpoint ``host:port``."""
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{url}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"model {name} not ready on {url} after {timeout:.0f} s")
        time.sleep(0.25)
