"""Helpers shared by the gateway's integration tests (``test_gateway``, ``test_console``):
the gateway as a subprocess, the control service as a subprocess, and small HTTP calls."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ops.server import free_ports

ROOT = Path(__file__).resolve().parents[1]


def demo_repo(root: Path, voices=("alpha", "beta")) -> Path:
    """``root/repo`` with one tiny random-weight demo voice per name (seeds 3, 4, ...); each demo's
    source folder (checkpoints, ``ref.wav``) stays at ``root/<name>``."""
    from tests.voices import demo_voice, export_voice

    repo = root / "repo"
    repo.mkdir()
    for seed, voice in enumerate(voices, start=3):
        src = root / voice
        export_voice(demo_voice(src, seed), repo, voice, aux=src)
    return repo


def reference_folder(root: Path) -> Path:
    """``root/refs`` for ``--ref-root``: ``archive_jingyuan_1.wav`` (alpha's clip), ``notes.txt``
    (not audio) and ``escape.wav`` (a symlink leading out to ``root/outside.wav``)."""
    refs = root / "refs"
    refs.mkdir()
    shutil.copy(root / "alpha" / "ref.wav", refs / "archive_jingyuan_1.wav")
    (refs / "notes.txt").write_text("not audio")
    (root / "outside.wav").write_bytes((root / "alpha" / "ref.wav").read_bytes())
    os.symlink(root / "outside.wav", refs / "escape.wav")
    return refs


def _wait_up(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(url + "/health", timeout=10)[0] == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


class Gateway:
    """``gsv-triton gateway`` on a free port, default voice ``alpha``, ``--max-tokens 20`` (the
    random demo GPTs babble otherwise); ``extra``: more arguments."""

    def __init__(self, triton: str, ref_root: Path, log: Path, *extra: str, admin_key: str | None = None):
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "ops.cli", "gateway", "--triton", triton, "--port", str(self.port),
               "--default-voice", "alpha", "--ref-root", str(ref_root), "--max-tokens", "20", *extra]
        if admin_key:
            cmd += ["--admin-key", admin_key]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        _wait_up(self.url, self.proc, log, "gateway")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Control(Gateway):
    """``gsv-triton control`` (no Redis unless ``extra`` says so) on a free port, beside the
    tritonserver ``triton``; ``extra``: more arguments; ``env``: more environment variables (the
    token, ``$GSV_CONTROL_TOKEN``, is best passed this way)."""

    def __init__(self, repo: Path, triton, log: Path, *extra: str, env: dict | None = None):
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "ops.control", "--repo", str(repo), "--triton", triton.grpc_url,
               "--triton-http", triton.http_url, "--port", str(self.port), *extra]
        environ = {k: v for k, v in os.environ.items() if k not in ("GSV_CONTROL_TOKEN", "GSV_REDIS_SECRET")}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     env={**environ, **(env or {})})
        _wait_up(self.url, self.proc, log, "control service")


def get(url: str, timeout: float = 300, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post(url: str, body, timeout: float = 300, raw: bytes | None = None, content_type: str = "application/json",
         headers: dict | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type, **(headers or {})},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
