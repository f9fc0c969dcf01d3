"""A real redis-server for the replica-sync tests (``test_swap``, ``test_control_security``)."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ops import server as srv


@contextlib.contextmanager
def redis_server(folder: Path, password: str | None = None):
    """redis-server on a free 127.0.0.1 port with no persistence; yields its URL (with the
    password when given). Skips the test where redis-server is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (Debian: apt-get install -y redis-server); replica tests need it")
    import redis

    port = srv.free_ports(1)[0]
    auth = ["--requirepass", password] if password else []
    log = open(folder / "redis.log", "wb")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             *auth, "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=srv._die_with_parent)
    url = f"redis://:{password}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {(folder / 'redis.log').read_text()}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
