"""Run the real ``tritonserver`` that the nvidia-pytriton wheel ships, on a gsv-triton repository.

The wheel carries Triton 2.51 and its Python backend, nothing else. To run it outside PyTriton:

- ``--backend-directory``: a copy of the wheel's ``tritonserver/backends`` with the stub built
  for the running Python (``python_backend_stubs/<X.Y>/triton_python_backend_stub``) placed in
  ``backends/python/`` (``prepare_backend_dir``, cached once per Python and wheel version);
- ``PATH``: a folder whose ``python3`` is the running interpreter, first (the stub takes its
  Python, and so its site-packages, from the first ``python3`` on ``PATH``; it ignores PYTHONPATH);
- ``LD_LIBRARY_PATH``: the running interpreter's ``LIBDIR`` (the stub links
  ``libpython3.X.so.1.0``; it must be the same build as the venv), then the wheel's
  ``nvidia_pytriton.libs`` (the copied stub loses its relative RPATH to them);
- explicit model control, one ``--load-model NAME`` per model to load at start, and every
  endpoint bound to 127.0.0.1 unless told otherwise (Triton binds 0.0.0.0 by default).

Hidden folders (the repository's ``.gsv`` state folder) are never passed as models, and
``--load-model=*`` must not be used: Triton 2.51 does NOT skip hidden folders. With
``--model-control-mode=explicit --load-model=*`` it tries to load ``.gsv`` as a model ("failed
to load model '.gsv': at least one version must be available under the version policy") and
exits at start ("failed to load all models"). Without ``*`` it still lists ``.gsv`` in the
repository index (``{"name": ".gsv"}``, no state) but leaves it alone; load and unload only
named models. (Checked by ``tests/test_server.py::test_triton_does_not_skip_hidden_folders``.)

Shutdown: on SIGTERM Triton unloads the models, waits for in-flight requests and, on 2.51, for
open HTTP connections (keep-alive clients included) up to ``--exit-timeout-secs``. Measured:
idle, it exits 0 in about 2 s (open gRPC channels do not delay it); with one idle HTTP
keep-alive connection open it waits the whole timeout and then exits with code 1.
``TritonProcess`` passes ``--exit-timeout-secs`` (default 30) and kills the process group only
after that has passed (plus a margin).

The child gets PR_SET_PDEATHSIG=SIGTERM: if the Python process that started it dies (even by
SIGKILL), tritonserver shuts down instead of living on. Linux ties this to the starting
*thread*: start servers from a thread that outlives them (the main thread, a pytest fixture).

This module must not import torch: ``gsv-triton serve`` and the tests import it on serving hosts.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ops import admin

PIP_HINT = "pip install 'nvidia-pytriton==0.7.0'  (or: pip install -e '.[serve]')"
# 25.10: a release after NVIDIA's 2025 Triton security bulletins (unauthenticated HTTP-server and
# Python-backend CVEs, fixed from 25.07); the pip-installed 2.51 predates them (README, Security).
CONTAINER_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
# 25.10 is CUDA 13; onnxruntime-gpu 1.23 is built for CUDA 12 and brings its CUDA 12 / cuDNN 9
# runtime as wheels (the [cuda,cudnn] extra), so it does not depend on the container's CUDA.
# Never install onnxruntime and onnxruntime-gpu together.
CONTAINER_ORT = "onnxruntime-gpu[cuda,cudnn]==1.23.2"


def container_pip(project: Path) -> str:
    """What python_backend imports at serving time: the project's own runtime dependencies
    (pyproject.toml, one source of truth; no torch, no transformers), with onnxruntime-gpu
    for onnxruntime and without onnx (export only)."""
    import shlex
    import tomllib

    with open(Path(project) / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    keep = [d for d in deps if not d.replace(" ", "").lower().startswith(("onnx=", "onnx<", "onnx>", "onnxruntime"))]
    return " ".join(shlex.quote(d) for d in keep + [CONTAINER_ORT])


class ServerError(RuntimeError):
    """tritonserver is missing, cannot start, or did not become ready."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's tritonserver pieces are, for the running Python."""

    binary: Path  # pytriton/tritonserver/bin/tritonserver
    backends: Path  # pytriton/tritonserver/backends (python backend, without a stub)
    stub: Path  # pytriton/tritonserver/python_backend_stubs/<X.Y>/triton_python_backend_stub
    libs: Path  # site-packages/nvidia_pytriton.libs (libtritonserver, libcudart, ...)
    python_libdir: Path  # the running interpreter's LIBDIR (libpython3.X.so.1.0)
    python: str  # "3.11"
    version: str  # nvidia-pytriton wheel version


def find_tritonserver() -> TritonInstall:
    """Locate the wheel's tritonserver; the error names what is missing and how to install it."""
    spec = importlib.util.find_spec("pytriton")  # finds the folder without importing pytriton
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"tritonserver not found: the nvidia-pytriton wheel is not installed in {sys.prefix}; run {PIP_HINT}")
    root = Path(list(spec.submodule_search_locations)[0])
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = root / "tritonserver"
    install = TritonInstall(
        binary=dist / "bin" / "tritonserver",
        backends=dist / "backends",
        stub=dist / "python_backend_stubs" / python / "triton_python_backend_stub",
        libs=root.parent / "nvidia_pytriton.libs",
        python_libdir=Path(sysconfig.get_config_var("LIBDIR") or sys.base_prefix + "/lib"),
        python=python,
        version=version,
    )
    checks = [(install.binary, "the tritonserver binary"),
              (install.backends / "python" / "libtriton_python.so", "the Python backend"),
              (install.stub, f"the Python backend stub for Python {python}"),
              (install.libs, "the bundled libraries (nvidia_pytriton.libs)")]
    for path, what in checks:
        if not path.exists():
            raise ServerError(f"{what} is missing: {path} not found (nvidia-pytriton {version}); reinstall with {PIP_HINT}")
    return install


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gsv-triton"


def prepare_backend_dir(cache_dir: Path | None = None, install: TritonInstall | None = None) -> Path:
    """The wheel's backends plus the right stub, copied once into ``cache_dir``.

    Idempotent and safe when several processes do it at once: the copy is built in a
    temporary folder and renamed into place; whoever loses the rename discards its copy.
    """
    install = install or find_tritonserver()
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / f"backends-py{install.python}-pytriton{install.version}"
    stub_dst = target / "python" / "triton_python_backend_stub"
    if stub_dst.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=cache_dir))
    try:
        staged = tmp / "backends"
        shutil.copytree(install.backends, staged, ignore=shutil.ignore_patterns("__pycache__", "triton_python_backend_stub"))
        shutil.copy2(install.stub, staged / "python" / "triton_python_backend_stub")
        os.chmod(staged / "python" / "triton_python_backend_stub", 0o755)
        try:
            os.rename(staged, target)
        except OSError:
            if not stub_dst.is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _python_bin_dir(cache_dir: Path) -> Path:
    """A folder whose ``python3`` is the running interpreter (the venv's bin when it has one)."""
    here = Path(sys.executable).parent
    candidate = here / "python3"
    if candidate.exists() and os.path.samefile(candidate, sys.executable):
        return here
    shim = Path(cache_dir) / f"python-{hashlib.sha256(sys.executable.encode()).hexdigest()[:12]}"
    link = shim / "python3"
    if not link.exists():
        shim.mkdir(parents=True, exist_ok=True)
        tmp = shim / f".python3-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(sys.executable)
        os.replace(tmp, link)
    return shim


def repository_models(repo: Path) -> list[str]:
    """Models Triton would find: visible folders with a config.pbtxt (never '.gsv' or other hidden ones)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ServerError(f"model repository {repo} not found")
    return sorted(p.name for p in repo.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "config.pbtxt").is_file())


# Python backend settings for a busy CPU host: a stub that the OS does not schedule for a while
# (a 2-core machine exporting beside the server) must not be declared unhealthy and restarted
# mid-request, and a larger shared-memory region saves growing it under concurrent requests.
PYTHON_BACKEND_CONFIG = (
    "--backend-config=python,stub-timeout-seconds=120",
    "--backend-config=python,shm-default-byte-size=16777216",
    "--backend-config=python,shm-growth-byte-size=16777216",
)


@contextlib.contextmanager
def stop_signals():
    """SIGINT/SIGTERM set the yielded Event instead of interrupting; the previous handlers come back on exit."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def free_ports(count: int = 3) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def static_repository(tts_instances: int | None = None, cache_dir: Path | None = None) -> Path:
    """The project's own models (``tts``, ``tts_stream``), served beside the user's repository.

    ``tts_instances`` other than the checked-in count: a copy under ``cache_dir`` whose ``tts``
    config has that many instances (each a stub process with its own text front end)."""
    from python_backend.model_config import TTS_INSTANCES, tts_model_spec

    folder = Path(__file__).resolve().parent.parent / "model_repository"
    if not (folder / "tts" / "config.pbtxt").is_file():
        raise ServerError(f"{folder}: the tts models are missing; install gsv-triton from its source folder (pip install -e .)")
    if tts_instances is None or tts_instances == TTS_INSTANCES:
        return folder
    try:
        config = tts_model_spec(tts_instances).render()
    except ValueError as exc:
        raise ServerError(f"--tts-instances: {exc}") from None
    out = Path(cache_dir or default_cache_dir()) / f"model_repository-tts{tts_instances}"
    if out.is_dir() and (out / "tts" / "config.pbtxt").read_text() == config \
            and all((out / m / "1" / "model.py").read_bytes() == (folder / m / "1" / "model.py").read_bytes()
                    for m in ("tts", "tts_stream")):
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp / "tts" / "config.pbtxt").write_text(config)
    shutil.rmtree(out, ignore_errors=True)
    try:
        os.rename(tmp, out)
    except OSError:  # another server made it meanwhile: the same content
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def server_command(repo: Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                   host: str = "127.0.0.1", load_models: list[str] | str = "*", extra_args=(),
                   cache_dir: Path | None = None, install: TritonInstall | None = None,
                   admin_key: str | None = None, tts_instances: int | None = None) -> tuple[list[str], dict]:
    """argv and environment that start tritonserver on ``repo`` (``tts_instances``: see
    ``static_repository``).

    ``load_models``: "*" loads every visible model of the repository (one ``--load-model``
    each); a list loads those; an empty list starts with nothing loaded. The admin APIs are
    always behind ``admin_key`` (``ops.admin.ensure``: given, ``$GSV_ADMIN_KEY``, or
    ``REPO/.gsv/admin-key``, made when missing).
    """
    install = install or find_tritonserver()
    cache_dir = Path(cache_dir or default_cache_dir())
    repo = Path(repo).resolve()
    if not repo.is_dir():
        raise ServerError(f"model repository {repo} not found")
    static = static_repository(tts_instances, cache_dir)
    if load_models == "*":
        clash = set(repository_models(repo)) & set(repository_models(static))
        if clash:
            raise ServerError(f"{repo} has models named like gsv-triton's own: {sorted(clash)}; rename them")
        names = repository_models(repo) + repository_models(static)
    else:
        names = list(load_models)
    for name in names:
        if not name or name.startswith(".") or "/" in name or name == "*":
            raise ServerError(f"not a model name: {name!r}")
    argv = [str(install.binary),
            f"--model-repository={repo}",
            f"--model-repository={static}",
            "--model-control-mode=explicit",
            f"--backend-directory={prepare_backend_dir(cache_dir, install)}",
            f"--http-address={host}", f"--http-port={http_port}",
            f"--grpc-address={host}", f"--grpc-port={grpc_port}",
            f"--metrics-address={host}", f"--metrics-port={metrics_port}",
            *[f"--load-model={n}" for n in names],
            *PYTHON_BACKEND_CONFIG,
            *admin.triton_args(admin.ensure(repo, admin_key)),
            *[str(a) for a in extra_args]]
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(_python_bin_dir(cache_dir)), env.get("PATH", "")]).rstrip(os.pathsep)
    libs = [str(install.python_libdir), str(install.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    env.pop("PYTHONHOME", None)  # would override the venv the stub finds through PATH
    env["GSV_REPO"] = str(repo)  # the tts BLS reads the voices' canary routing (.gsv/routing.json) there
    return argv, env


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so a killed test or CLI leaves no server."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _url_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class TritonProcess:
    """One tritonserver process: start, wait until ready, stop cleanly (kill as a fallback)."""

    def __init__(self, repo: Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 host: str = "127.0.0.1", models: list[str] | str = "*", extra_args=(),
                 log_path: Path | str | None = None, cache_dir: Path | None = None, exit_timeout: int = 30,
                 admin_key: str | None = None, tts_instances: int | None = None):
        self.repo = Path(repo)
        if not self.repo.is_dir():
            raise ServerError(f"model repository {self.repo} not found")
        self.admin_key = admin.ensure(self.repo, admin_key)
        self.exit_timeout = exit_timeout
        extra_args = [*extra_args]
        if not any(str(a).startswith("--exit-timeout-secs") for a in extra_args):
            extra_args.append(f"--exit-timeout-secs={exit_timeout}")
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.argv, self.env = server_command(repo, http_port, grpc_port, metrics_port, host, models, extra_args, cache_dir,
                                            admin_key=self.admin_key, tts_instances=tts_instances)
        self.models = [a.split("=", 1)[1] for a in self.argv if a.startswith("--load-model=")]
        # log_path "-": inherit this process's stdout/stderr; None: a temporary file.
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(handle)
        self.log_path = None if log_path == "-" else Path(log_path)
        self.process: subprocess.Popen | None = None

    # where to reach it
    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers/metadata for the restricted APIs (load, unload, repository index, config, ...)."""
        return admin.headers(self.admin_key)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> "TritonProcess":
        if self.process is not None:
            raise ServerError("tritonserver already started")
        out = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT if out else None, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        finally:
            if out is not None:
                out.close()
        return self

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def is_ready(self) -> bool:
        return _url_ok(f"http://{self.http_url}/v2/health/ready")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float = 180.0, stop: threading.Event | None = None) -> None:
        """Poll ``/v2/health/ready`` until it answers 200; raise if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                raise ServerError(f"tritonserver exited with code {code} before it was ready"
                                  + (f"; log {self.log_path}:\n{self.log_tail()}" if self.log_path else ""))
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                raise ServerError(f"tritonserver not ready after {timeout:.0f} s"
                                  + (f"; log {self.log_path}:\n{self.log_tail()}" if self.log_path else ""))
            if stop is not None and stop.wait(0.25):
                raise KeyboardInterrupt
            if stop is None:
                time.sleep(0.25)

    def send_signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (Triton unloads its models and lets in-flight requests finish), then SIGKILL
        of the whole process group (server and Python stubs) after ``timeout`` seconds
        (default: Triton's own exit timeout plus 15 s)."""
        if self.process is None:
            return None
        if timeout is None:
            timeout = self.exit_timeout + 15
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()
        return self.process.returncode

    def kill(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()

    def _reap_group(self) -> None:
        """Stubs left behind by a killed server are in its process group: end them too."""
        try:
            os.killpg(self.process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.5)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def serve_until_signal(self, stop_timeout: float | None = None) -> int:
        """Block until SIGINT/SIGTERM (forwarded to tritonserver as a clean stop) or until it exits."""
        with stop_signals() as got:
            while not got.wait(0.5):
                code = self.poll()
                if code is not None:
                    return code or 1
        code = self.stop(stop_timeout)
        return 0 if code in (0, -signal.SIGTERM) else code

    def __enter__(self) -> "TritonProcess":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def loaded_models(http_url: str, admin_key: str | None = None) -> list[dict]:
    """The repository index (name, version, state) over HTTP (a restricted API: needs the key)."""
    req = urllib.request.Request(f"http://{http_url}/v2/repository/index", data=b"{}", method="POST",
                                 headers=admin.headers(admin_key) or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def container_triton_args(names: list[str], admin_key_ref: str = "${GSV_ADMIN_KEY:?set GSV_ADMIN_KEY}") -> list[str]:
    """tritonserver's options inside a container: the same model control, backend settings and
    admin restriction as ``gsv-triton serve``; the key comes from the container's environment
    (``admin_key_ref`` is expanded by the container's shell, never written into the command)."""
    apis = ",".join(admin.RESTRICTED)
    return ["--model-repository=/models", "--model-repository=/opt/gsv-triton-src/model_repository",
            "--model-control-mode=explicit", *PYTHON_BACKEND_CONFIG, *[f"--load-model={n}" for n in names],
            f"--http-restricted-api={apis}:{admin.HEADER}={admin_key_ref}",
            f"--grpc-restricted-protocol={apis}:{admin.HEADER}={admin_key_ref}"]


def official_container_command(repo: Path, project: Path | None = None, models: list[str] | str = "*") -> str:
    """The equivalent ``docker run`` line for the official Triton container (GPU host), every
    word quoted (``shlex``), so folder and model names cannot inject shell syntax.

    The container has Triton and the Python backend but none of our Python packages: the
    project must be pip-installed inside it, without its torch extra, together with what
    ``python_backend`` imports (``container_pip``: the runtime dependencies of pyproject.toml,
    the text front end's included, with onnxruntime-gpu and its CUDA 12 runtime wheels).
    Japanese also needs pyopenjtalk and Debian's open-jtalk-mecab-naist-jdic (not added here).
    The admin key is passed from the calling shell's ``$GSV_ADMIN_KEY`` (``-e GSV_ADMIN_KEY``).
    """
    import shlex

    repo = Path(repo).resolve()
    project = Path(project or Path(__file__).resolve().parent.parent).resolve()
    names = repository_models(repo) + repository_models(project / "model_repository") if models == "*" else list(models)
    for name in names:
        if not name or name.startswith(".") or "/" in name:
            raise ServerError(f"not a model name: {name!r}")
    # tritonserver's words are quoted for the inner shell, except the key reference, which that
    # shell must expand (inside double quotes: no word splitting, no globbing).
    triton = []
    for word in container_triton_args(names):
        if "${GSV_ADMIN_KEY" in word:
            head, _, _ = word.partition("${")
            triton.append(shlex.quote(head) + '"${GSV_ADMIN_KEY:?set GSV_ADMIN_KEY}"')
        else:
            triton.append(shlex.quote(word))
    inner = (f"cp -r /opt/gsv-triton-src /tmp/gsv-triton && pip install --no-cache-dir {container_pip(project)} && "
             f"pip install --no-cache-dir --no-deps /tmp/gsv-triton && exec tritonserver {' '.join(triton)}")
    # Inside the container Triton must listen on 0.0.0.0 for the port mapping; publish the ports
    # on the host's loopback only, like `gsv-triton serve` (drop "127.0.0.1:" to expose them).
    outer = ["docker", "run", "--rm", "--gpus", "all", "--shm-size=1g", "-e", "GSV_REPO=/models", "-e", admin.ENV,
             "-p", "127.0.0.1:8000:8000", "-p", "127.0.0.1:8001:8001", "-p", "127.0.0.1:8002:8002",
             "-v", f"{repo}:/models", "-v", f"{project}:/opt/gsv-triton-src:ro", CONTAINER_IMAGE, "bash", "-c", inner]
    return shlex.join(outer)


# ---- gsv-triton serve ----

def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="run tritonserver (from the nvidia-pytriton wheel) on a repository")
    _add_serve_args(p)
    return p


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", type=Path, required=True, help="Triton model repository folder")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--models", default="*", help="comma-separated models to load (default: every model in --repo)")
    p.add_argument("--log-file", default="-", help="tritonserver log file (default: this terminal)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the models to load")
    p.add_argument("--exit-timeout", type=int, default=30,
                   help="seconds Triton waits at shutdown for in-flight requests and open connections")
    p.add_argument("--admin-key", default=None,
                   help="key for Triton's admin APIs (load/unload, repository index, config, shared memory, logging, "
                        "trace, statistics), sent as the gsv-admin-key header; default: $GSV_ADMIN_KEY, else "
                        "REPO/.gsv/admin-key (a random one is written there, mode 0600)")
    p.add_argument("--tts-instances", type=int, default=None, metavar="N",
                   help="non-streaming requests served together by tts, one stub process each "
                        "(default 4; each holds its own text front end: about 0.8 GiB with full-size models)")
    p.add_argument("--print-docker", action="store_true", help="print the equivalent official-container command and exit")
    limits = p.add_argument_group("work limits (python_backend.limits; passed to the models as environment variables)")
    limits.add_argument("--max-sentences", type=int, help="sentences per request (default 100)")
    limits.add_argument("--max-sentence-phones", type=int, help="phones per sentence (default 400)")
    limits.add_argument("--max-audio-s", type=float, help="seconds of audio per request (default 600)")
    limits.add_argument("--max-queued-sentences", type=int, help="sentences in progress per voice version (default 512)")
    limits.add_argument("--max-in-flight", type=int, help="requests in progress per tts model (default 256)")
    p.add_argument("triton_args", nargs="*", help="extra tritonserver options, after --")


def limits_env(args) -> dict[str, str]:
    """The ``--max-*`` options as the environment variables the models read (``Limits.from_env``)."""
    from python_backend.limits import Limits

    out = {}
    for name, var in Limits.ENV.items():
        value = getattr(args, name, None)
        if value is not None:
            if not value > 0:
                raise ServerError(f"--{name.replace('_', '-')} must be positive, got {value}")
            out[var] = str(value)
    Limits.from_env(out)  # the models must accept what we pass
    return out


def cmd_serve(args) -> int:
    models = "*" if args.models.strip() == "*" else [m.strip() for m in args.models.split(",") if m.strip()]
    if args.print_docker:
        print(official_container_command(args.repo, models=models))
        return 0
    try:
        os.environ.update(limits_env(args))  # TritonProcess gives the server this process's environment
        server = TritonProcess(args.repo, args.http_port, args.grpc_port, args.metrics_port, args.host, models,
                               args.triton_args, log_path=args.log_file, exit_timeout=args.exit_timeout,
                               admin_key=args.admin_key, tts_instances=args.tts_instances)
    except (ServerError, admin.AdminKeyError) as exc:
        print(f"gsv-triton: error: {exc}", file=sys.stderr)
        return 2
    with stop_signals() as stop:
        return _start_and_serve(server, args, stop)


def _start_and_serve(server: "TritonProcess", args, stop: threading.Event) -> int:
    try:
        server.start()
        print(f"gsv-triton: starting tritonserver (pid {server.pid}) on {args.repo}, models: "
              f"{', '.join(server.models) or '(none)'}", flush=True)
        server.wait_ready(args.ready_timeout, stop=stop)
    except KeyboardInterrupt:
        server.stop()
        print("gsv-triton: interrupted before ready; stopped", file=sys.stderr)
        return 130
    except ServerError as exc:
        server.stop()
        print(f"gsv-triton: error: {exc}", file=sys.stderr)
        return 2
    print(f"gsv-triton: ready  HTTP http://{server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}",
          flush=True)
    print(f"gsv-triton: admin APIs (load/unload, repository index, config, ...) need the {admin.HEADER} header: "
          f"the key is in {admin.key_file(args.repo)} unless --admin-key/${admin.ENV} gave it", flush=True)
    code = server.serve_until_signal()
    note = "" if code == 0 else (" — it waited --exit-timeout for in-flight requests or open client "
                                 "connections, or failed; see its log")
    print(f"gsv-triton: tritonserver stopped (exit {code}){note}", flush=True)
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gsv-triton serve", description="run tritonserver on a gsv-triton repository")
    _add_serve_args(parser)
    return cmd_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
