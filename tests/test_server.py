"""The real tritonserver (nvidia-pytriton wheel) serving the shared gsv_bert and gsv_ssl models.

One tiny demo repository is exported per module; the server loads only gsv_bert and gsv_ssl.
Checked over real tritonclient gRPC and HTTP: numerics against onnxruntime run directly, bad
requests answered with one-line INVALID_ARGUMENT / 400 errors while the server stays healthy,
127.0.0.1-only binding, prompt shutdown on SIGTERM, and ``gsv-triton serve`` stopping on SIGINT.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ops import server as srv
from tests.triton_fixtures import free_ports, require_tritonserver, start_server, wait_model_ready

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402
from tests.voices import demo_voice, export_voice

SHARED = ["gsv_bert", "gsv_ssl"]
VOCAB = 21128


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    require_tritonserver()
    out, repo = tmp_path_factory.mktemp("demo"), tmp_path_factory.mktemp("repo")
    export_voice(demo_voice(out, 3), repo, "demo", aux=out)
    assert (repo / ".gsv").is_dir()  # the state folder the server must never treat as a model
    return repo


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    proc = start_server(repo, models=SHARED, log_dir=tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _infer(client, module, model: str, name: str, array: np.ndarray, dtype: str, output: str) -> np.ndarray:
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor]).as_numpy(output)


def _error(client, module, model: str, name: str, array: np.ndarray, dtype: str) -> InferenceServerException:
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [tensor])
    return info.value


def _ids(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([[101], rng.integers(200, VOCAB, n - 2), [102]]).astype(np.int64)


# ---- without a server ----

def test_server_command_env_and_hidden_folders(tmp_path):
    require_tritonserver()
    for name in ("gsv_ssl", "voice_a", ".gsv", ".hidden_model"):
        (tmp_path / "repo" / name).mkdir(parents=True)
        (tmp_path / "repo" / name / "config.pbtxt").write_text("")
    (tmp_path / "repo" / "notes").mkdir()  # no config.pbtxt: not a model
    argv, env = srv.server_command(tmp_path / "repo", 1, 2, 3, cache_dir=tmp_path / "cache")
    # the user's visible models, then the project's own (tts, tts_stream) from the second repository
    assert [a for a in argv if a.startswith("--load-model")] == [
        "--load-model=gsv_ssl", "--load-model=voice_a", "--load-model=tts", "--load-model=tts_stream"]
    assert f"--model-repository={srv.static_repository()}" in argv
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--model-control-mode=explicit", "--http-port=1", "--grpc-port=2", "--metrics-port=3"):
        assert flag in argv
    python3 = Path(env["PATH"].split(os.pathsep)[0]) / "python3"
    assert os.path.samefile(python3, sys.executable)
    import sysconfig

    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == sysconfig.get_config_var("LIBDIR")
    backends = Path(next(a for a in argv if a.startswith("--backend-directory=")).split("=", 1)[1])
    assert os.access(backends / "python" / "triton_python_backend_stub", os.X_OK)
    with pytest.raises(srv.ServerError, match="not a model name"):
        srv.server_command(tmp_path / "repo", load_models=[".gsv"], cache_dir=tmp_path / "cache")


def test_tts_instances_render_a_static_repository_with_that_count(tmp_path):
    """--tts-instances N serves the project's models from a copy whose tts config has N instances
    (the same model.py files); the checked-in count serves the source folder itself."""
    require_tritonserver()
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from python_backend.model_config import TTS_INSTANCES

    (tmp_path / "repo").mkdir()
    cache = tmp_path / "cache"
    argv, _ = srv.server_command(tmp_path / "repo", cache_dir=cache, tts_instances=TTS_INSTANCES)
    assert f"--model-repository={srv.static_repository()}" in argv
    argv, _ = srv.server_command(tmp_path / "repo", cache_dir=cache, tts_instances=2)
    static = Path(next(a for a in argv if a.startswith("--model-repository=") and str(cache) in a).split("=", 1)[1])
    config = text_format.Parse((static / "tts" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.instance_group[0].count == 2
    source = srv.static_repository()
    for model in ("tts", "tts_stream"):
        assert (static / model / "1" / "model.py").read_bytes() == (source / model / "1" / "model.py").read_bytes()
    assert (static / "tts_stream" / "config.pbtxt").read_text() == (source / "tts_stream" / "config.pbtxt").read_text()
    assert srv.static_repository(2, cache) == static  # reused, not rebuilt
    for bad in (0, 65):
        with pytest.raises(srv.ServerError, match="--tts-instances: tts instances must be within 1-64"):
            srv.server_command(tmp_path / "repo", cache_dir=cache, tts_instances=bad)


def test_prepare_backend_dir_concurrent(tmp_path):
    require_tritonserver()
    results, errors = [], []

    def work():
        try:
            results.append(srv.prepare_backend_dir(tmp_path))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert (results[0] / "python" / "libtriton_python.so").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]  # no temporary folders left
    assert srv.prepare_backend_dir(tmp_path) == results[0]


def test_missing_wheel_message(monkeypatch):
    monkeypatch.setattr(srv.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(srv.ServerError, match=r"nvidia-pytriton.*pip install"):
        srv.find_tritonserver()


def test_official_container_command(tmp_path):
    for name in ("gsv_bert", ".gsv"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text("")
    line = srv.official_container_command(tmp_path)
    assert "-p 127.0.0.1:8000:8000" in line and srv.CONTAINER_IMAGE in line and f"-v {tmp_path.resolve()}:/models" in line
    assert "--load-model=gsv_bert" in line and ".gsv" not in line and "onnxruntime-gpu" in line and "torch" not in line
    assert "--http-restricted-api=model-repository," in line and "--grpc-restricted-protocol=model-repository," in line
    major, minor = (int(x) for x in srv.CONTAINER_IMAGE.rsplit(":", 1)[1].split("-")[0].split("."))
    assert (major, minor) >= (25, 7), "the container release must carry the 2025 Triton security fixes (25.07+)"


def test_container_command_quotes_every_word(tmp_path):
    """A repository path with spaces, quotes and shell syntax stays one word: bash parses the line
    back into exactly the argv we meant, and nothing in it runs."""
    import shlex

    repo = tmp_path / "my voices $(touch PWNED) `id` 'x' \"x\"; rm -rf ~"
    (repo / "gsv_bert").mkdir(parents=True)
    (repo / "gsv_bert" / "config.pbtxt").write_text("")
    line = srv.official_container_command(repo)
    argv = shlex.split(line)
    assert argv[:2] == ["docker", "run"] and f"{repo.resolve()}:/models" in argv
    inner = argv[argv.index("-c") + 1]
    # the inner script: the key is expanded by the container's shell, nothing else is
    words = shlex.split(inner.split("exec tritonserver ", 1)[1].replace('"${GSV_ADMIN_KEY:?set GSV_ADMIN_KEY}"', "KEY"))
    assert "--load-model=gsv_bert" in words and all(w.endswith("gsv-admin-key=KEY") for w in words if "restricted" in w)
    echo = subprocess.run(["bash", "-c", f"printf '%s\\n' {line}"], cwd=tmp_path, capture_output=True, text=True)
    assert echo.returncode == 0 and not (tmp_path / "PWNED").exists()
    assert echo.stdout.splitlines() == argv
    with pytest.raises(srv.ServerError, match="not a model name"):
        srv.official_container_command(repo, models=["x/../../etc"])


def test_admin_key_file_is_private_and_reused(tmp_path, monkeypatch):
    from ops import admin

    monkeypatch.delenv(admin.ENV, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    key = admin.ensure(repo)
    assert admin.key_file(repo).stat().st_mode & 0o777 == 0o600
    assert admin.ensure(repo) == key == admin.read(repo) and len(key) >= 32
    assert admin.ensure(repo, "x" * 20) == "x" * 20  # an explicit key wins (and is not written)
    monkeypatch.setenv(admin.ENV, "y" * 20)
    assert admin.read(repo) == "y" * 20
    with pytest.raises(admin.AdminKeyError, match="16-256 characters"):
        admin.ensure(repo, "short;rm")
    argv, _ = srv.server_command(repo, load_models=[], cache_dir=tmp_path / "cache", admin_key="k" * 20)
    restricted = [a for a in argv if "restricted" in a]
    apis = "model-repository,model-config,shared-memory,logging,trace,statistics"
    assert restricted == [f"--http-restricted-api={apis}:gsv-admin-key={'k' * 20}",
                          f"--grpc-restricted-protocol={apis}:gsv-admin-key={'k' * 20}"]


# ---- against the real server ----

@pytest.mark.integration
def test_server_ready(server, grpc, http):
    assert grpc.is_server_live() and grpc.is_server_ready() and http.is_server_ready()
    for name in SHARED:
        assert grpc.is_model_ready(name) and http.is_model_ready(name)
    wait_model_ready(server.http_url, "gsv_bert", "1", timeout=5)
    assert not http.is_model_ready("voice_demo")  # present in the repository, not asked for
    index = {m["name"]: m.get("state") for m in srv.loaded_models(server.http_url, server.admin_key)}
    assert index["gsv_bert"] == "READY" and index["gsv_ssl"] == "READY"


@pytest.mark.integration
def test_bert_matches_onnxruntime(repo, grpc, http):
    session = _session(repo / "gsv_bert" / "1" / "bert.onnx")
    for n, seed in ((2, 0), (9, 1), (37, 2)):
        ids = _ids(n, seed)
        want = session.run(["hidden"], {"input_ids": ids[None]})[0][0]
        for client, module in ((grpc, grpcclient), (http, httpclient)):
            got = _infer(client, module, "gsv_bert", "INPUT_IDS", ids, "INT64", "HIDDEN")
            assert got.shape == (n, 1024) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.integration
def test_ssl_matches_onnxruntime(repo, grpc, http):
    session = _session(repo / "gsv_ssl" / "1" / "ssl.onnx")
    rng = np.random.default_rng(5)
    for samples in (400, 16000, 40321):
        wav = (rng.standard_normal(samples) * 0.1).astype(np.float32)
        want = session.run(["ssl"], {"wav16k": wav[None]})[0][0]
        for client, module in ((grpc, grpcclient), (http, httpclient)):
            got = _infer(client, module, "gsv_ssl", "WAV16K", wav, "FP32", "SSL")
            assert got.shape == (768, (samples - 400) // 320 + 1) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


BAD_REQUESTS = [
    # model, input, array, dtype, text the one-line message must contain
    ("gsv_bert", "INPUT_IDS", np.array([101, VOCAB, 102], np.int64), "INT64", f"INPUT_IDS[1] = {VOCAB} is outside the vocabulary"),
    ("gsv_bert", "INPUT_IDS", np.array([101, -5, 102], np.int64), "INT64", "outside the vocabulary"),
    ("gsv_bert", "INPUT_IDS", np.zeros(0, np.int64), "INT64", "1 to 512 allowed"),
    ("gsv_bert", "INPUT_IDS", np.full(513, 200, np.int64), "INT64", "513 ids"),
    ("gsv_bert", "INPUT_IDS", np.array([101, 102], np.int32), "INT32", "data-type is 'INT32', but model 'gsv_bert' expects 'INT64'"),
    ("gsv_ssl", "WAV16K", np.zeros(399, np.float32), "FP32", "399 samples"),
    ("gsv_ssl", "WAV16K", np.array([0.0] * 500 + [np.nan], np.float32), "FP32", "NaN"),
    ("gsv_ssl", "WAV16K", np.zeros(800, np.float64), "FP64", "expects 'FP32'"),
    ("gsv_ssl", "WAV16K", np.zeros((2, 800), np.float32), "FP32", "shape"),
]


@pytest.mark.integration
@pytest.mark.parametrize("model,name,array,dtype,text", BAD_REQUESTS, ids=[f"{m}-{t[:20]}" for m, _, _, _, t in BAD_REQUESTS])
def test_bad_request_gets_one_line_invalid_argument(grpc, http, model, name, array, dtype, text):
    err = _error(grpc, grpcclient, model, name, array, dtype)
    assert err.status() == "StatusCode.INVALID_ARGUMENT", (err.status(), err.message())
    assert text in err.message() and "\n" not in err.message().strip() and "Traceback" not in err.message()
    err = _error(http, httpclient, model, name, array, dtype)
    assert err.status() == "400", (err.status(), err.message())
    assert text in err.message() and "\n" not in err.message().strip()
    # the server and the model stay healthy for the next request
    assert grpc.is_server_ready() and grpc.is_model_ready(model)
    ok = _infer(grpc, grpcclient, "gsv_bert", "INPUT_IDS", _ids(5), "INT64", "HIDDEN")
    assert ok.shape == (5, 1024)


@pytest.mark.integration
def test_binds_loopback_only(server):
    ports = {server.http_port, server.grpc_port, server.metrics_port}
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port, 16) in ports:  # 0A: LISTEN
                listening.setdefault(int(port, 16), set()).add(addr)
    assert set(listening) == ports, listening
    # 127.0.0.1, ::1, ::ffff:127.0.0.1 (gRPC listens on an IPv4-mapped IPv6 socket)
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    assert all(addrs <= loopback for addrs in listening.values()), listening
    address = _non_loopback_address()
    if address:
        for port in ports:
            with socket.socket() as sock:
                sock.settimeout(2)
                assert sock.connect_ex((address, port)) != 0, f"port {port} reachable on {address}"


_RESTRICTED_HTTP = [  # (method, path, body): one call per restricted API group
    ("POST", "/v2/repository/index", b"{}"),
    ("POST", "/v2/repository/models/gsv_bert/load", b"{}"),
    ("POST", "/v2/repository/models/gsv_bert/unload", b"{}"),
    ("GET", "/v2/models/gsv_bert/config", None),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("GET", "/v2/logging", None),
    ("GET", "/v2/trace/setting", None),
    ("GET", "/v2/models/gsv_bert/stats", None),
]


def _http_status(server, method: str, path: str, body: bytes | None, headers: dict | None = None) -> int:
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.integration
def test_model_load_with_code_override_needs_the_admin_key(server, grpc, tmp_path):
    """The reproduction: a client loads a model with a ``file:1/model.py`` override whose
    ``initialize`` writes a file. Without the key Triton refuses it on gRPC and HTTP and nothing
    runs; the shared models keep serving."""
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('pwned')\nclass TritonPythonModel:\n    def execute(self, r):\n        return []\n"
    config = '{"name": "evil", "backend": "python", "max_batch_size": 0}'
    with pytest.raises(InferenceServerException) as err:
        grpc.load_model("evil", config=config, files={"file:1/model.py": code.encode()})
    assert "restricted" in str(err.value).lower() or "permission" in str(err.value).lower(), err.value
    import base64, json as _json  # noqa: E401

    body = _json.dumps({"parameters": {"config": config,
                                       "file:1/model.py": base64.b64encode(code.encode()).decode()}}).encode()
    assert _http_status(server, "POST", "/v2/repository/models/evil/load", body) in (401, 403)
    wrong = {"gsv-admin-key": "not-the-key-0123456789"}
    assert _http_status(server, "POST", "/v2/repository/models/evil/load", body, wrong) in (401, 403)
    with pytest.raises(InferenceServerException):
        grpc.load_model("evil", headers=wrong, config=config, files={"file:1/model.py": code.encode()})
    time.sleep(1)
    assert not marker.exists()
    assert grpc.is_model_ready("gsv_bert") and not grpc.is_model_ready("evil")


@pytest.mark.integration
def test_every_admin_api_needs_the_key_and_inference_stays_open(server, grpc, http):
    for method, path, body in _RESTRICTED_HTTP:
        if path.endswith(("/load", "/unload")):
            assert _http_status(server, method, path, body) in (401, 403), path
            continue  # with the key these would reload or drop a serving model
        assert _http_status(server, method, path, body) in (401, 403), path
        assert _http_status(server, method, path, body, server.admin_headers) == 200, path
    for call in (lambda **kw: grpc.get_model_repository_index(**kw), lambda **kw: grpc.get_model_config("gsv_bert", **kw),
                 lambda **kw: grpc.get_inference_statistics("gsv_bert", **kw),
                 lambda **kw: grpc.get_system_shared_memory_status(**kw), lambda **kw: grpc.get_log_settings(**kw),
                 lambda **kw: grpc.get_trace_settings(**kw)):
        with pytest.raises(InferenceServerException):
            call()
        call(headers=server.admin_headers)
    # open: health, metadata, inference, metrics
    assert grpc.is_server_live() and http.is_server_ready() and grpc.is_model_ready("gsv_bert")
    assert grpc.get_model_metadata("gsv_bert").name == "gsv_bert"
    assert _infer(grpc, grpcclient, "gsv_bert", "INPUT_IDS", _ids(5), "INT64", "HIDDEN").shape == (5, 1024)
    assert _infer(http, httpclient, "gsv_bert", "INPUT_IDS", _ids(5), "INT64", "HIDDEN").shape == (5, 1024)
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        assert resp.status == 200


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.254.254.254", 1))  # no packet is sent; picks the outgoing interface
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.integration
def test_default_skips_hidden_folders_and_sigterm_stops_promptly(repo, tmp_path):
    """Default model list (every visible model) with a `.gsv` folder present; SIGTERM after use."""
    small = tmp_path / "repo"
    small.mkdir()
    shutil.copytree(repo / "gsv_ssl", small / "gsv_ssl")
    shutil.copytree(repo / ".gsv", small / ".gsv")
    (small / ".gsv" / "staging" / "voice_x" / "1").mkdir(parents=True)
    proc = start_server(small, models=None, log_dir=tmp_path)
    try:
        assert proc.models == ["gsv_ssl", "tts", "tts_stream"]
        index = {m["name"]: m.get("state") for m in srv.loaded_models(proc.http_url, proc.admin_key)}
        assert index.get("gsv_ssl") == "READY" and index.get(".gsv") is None
        client = grpcclient.InferenceServerClient(proc.grpc_url)
        hclient = httpclient.InferenceServerClient(proc.http_url)
        wav = np.zeros(16000, np.float32)
        assert _infer(client, grpcclient, "gsv_ssl", "WAV16K", wav, "FP32", "SSL").shape == (768, 49)
        assert _infer(hclient, httpclient, "gsv_ssl", "WAV16K", wav, "FP32", "SSL").shape == (768, 49)
        client.close()
        hclient.close()
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.process.wait(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        proc.stop(5)
    assert code == 0, proc.log_tail()
    assert elapsed < 8, f"shutdown took {elapsed:.1f} s"
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no Python stub left behind
    assert "successfully unloaded 'gsv_ssl'" in proc.log_path.read_text()


@pytest.mark.integration
def test_open_http_connection_bounds_shutdown_by_exit_timeout(repo, tmp_path):
    """Triton 2.51 waits for idle HTTP keep-alive connections until --exit-timeout-secs (then exits 1);
    stop() must not kill it before that, and the wait is bounded by the timeout we pass."""
    small = tmp_path / "repo"
    small.mkdir()
    shutil.copytree(repo / "gsv_ssl", small / "gsv_ssl")
    proc = start_server(small, models=["gsv_ssl"], log_dir=tmp_path, exit_timeout=3)
    client = httpclient.InferenceServerClient(proc.http_url)
    try:
        assert client.is_server_ready()  # leaves a keep-alive connection open
        start = time.monotonic()
        code = proc.stop()
        elapsed = time.monotonic() - start
    finally:
        client.close()
        proc.stop(5)
    assert code in (0, 1) and 2.5 < elapsed < 10, (code, elapsed)
    assert "Timeout 1: Found 1 HTTP service connections" in proc.log_path.read_text()


@pytest.mark.integration
def test_triton_does_not_skip_hidden_folders(repo, tmp_path):
    """Documents why server_command never passes --load-model=*: Triton 2.51 tries to load '.gsv'."""
    small = tmp_path / "repo"
    small.mkdir()
    shutil.copytree(repo / ".gsv", small / ".gsv")
    http_port, grpc_port, metrics_port = free_ports(3)
    proc = srv.TritonProcess(small, http_port, grpc_port, metrics_port, models=[], extra_args=["--load-model=*"],
                             log_path=tmp_path / "triton.log")
    proc.start()
    try:
        with pytest.raises(srv.ServerError, match="exited"):
            proc.wait_ready(60)
    finally:
        proc.stop(5)
    assert "failed to load model '.gsv'" in proc.log_path.read_text()


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Lines of the process's output up to the one containing ``marker`` (read by a thread, so
    a line already buffered is never missed)."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    seen: list[str] = []

    def pump():
        for line in iter(proc.stdout.readline, ""):
            lines.put(line)
            if marker in line:
                return

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} from the serve command; got: {''.join(seen)}")


@pytest.mark.integration
def test_serve_command_starts_and_stops_on_sigint(repo, tmp_path):
    http_port, grpc_port, metrics_port = free_ports(3)
    cmd = [sys.executable, "-m", "ops.server", "--repo", str(repo), "--models", "gsv_ssl",
           "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
           "--log-file", str(tmp_path / "triton.log")]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_model_ready(f"127.0.0.1:{http_port}", "gsv_ssl", timeout=180)
        head = _read_until(proc, "gsv-triton: ready", timeout=120)  # the CLI itself saw it ready
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            assert resp.status == 200
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        out = head + out
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"HTTP http://127.0.0.1:{http_port}" in out and f"gRPC 127.0.0.1:{grpc_port}" in out
    assert "tritonserver stopped (exit 0)" in out
    assert elapsed < 15, f"shutdown took {elapsed:.1f} s"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/live", timeout=2)
