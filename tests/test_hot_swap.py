"""Hot swap of a voice version on a real tritonserver: the plain Triton flow (drop a version
folder in, ``load_model`` over gRPC), validation inside the load, quarantine of bad versions,
``kill -9`` mid-load; plus unit tests of the audio checks.

One module repository (tiny random-weight voices) and one server for the swap and fault tests;
versions to publish are exported into a stash beside the repository and moved in with one
rename, as ``gsv-triton export`` does.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from python_backend import history, layout, validation
from python_backend.manifest import MANIFEST_FILE, sha256_file
from tests.triton_fixtures import AdminClient, require_tritonserver, start_server
from tests.voices import demo_voice, export_voice

TEXT = "今天天气很好。"
FIXED = {"TOP_K": 1, "SEED": 7, "MAX_TOKENS": 20}
SR = 32000


# --------------------------------------------------------------------------- unit: check_audio


def _noise(seconds=1.0, rms=0.07, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * rms).astype(np.float32)


def test_check_audio_accepts_noise_like_and_voiced_audio():
    assert validation.check_audio(_noise(1.28), SR, 32) == []
    t = np.arange(SR * 2) / SR
    voiced = 0.3 * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12)) * (0.5 - 0.5 * np.cos(2 * np.pi * 3 * t))
    assert validation.check_audio(voiced, SR, 50) == []


@pytest.mark.parametrize("make,needle", [
    (lambda w: np.zeros_like(w), "silent"),
    (lambda w: w * 1e-4, "silent"),
    (lambda w: np.sign(np.sin(np.arange(w.size) * 2 * np.pi * 200 / SR)).astype(np.float32), "clipped"),
    (lambda w: np.where(np.arange(w.size) == 700, np.nan, w), "non-finite"),
    (lambda w: np.where(np.arange(w.size) == 9000, np.inf, w), "non-finite"),
    (lambda w: w[:-1280], "does not fit"),
])
def test_check_audio_refuses(make, needle):
    problems = validation.check_audio(make(_noise(1.28)), SR, 32)
    assert any(needle in p for p in problems), problems


def test_check_audio_finds_a_single_pop_and_a_step():
    wav = _noise(1.28)
    spike = wav.copy()
    spike[5000] = 0.9 if wav[4999] < 0 else -0.9  # one sample out of place: two jumps of ~0.9
    assert any("pops" in p for p in validation.check_audio(spike, SR, 32))
    step = wav.copy() * 0.2
    step[20000:] += 0.5  # DC step (a splice): one jump of 0.5 in audio whose jumps are ~0.02
    assert any("pops" in p for p in validation.check_audio(step, SR, 32))


def test_check_audio_duration_bounds():
    wav = _noise(10 * 1280 / SR)
    assert any("implausible duration" in p for p in validation.check_audio(wav, SR, 10))  # < 11: EOS is masked
    wav = _noise(40 * 1280 / SR)
    assert any("implausible duration" in p for p in validation.check_audio(wav, SR, 40, max_tokens=30))
    assert validation.check_audio(wav, SR, 40, max_tokens=40) == []
    slow = _noise((int(2 * 40 / 0.8) + 1) * 640 / SR)
    assert validation.check_audio(slow, SR, 40, speed=0.8) == []


# --------------------------------------------------------------------------- repository


def _export(src: Path, repo: Path, voice: str, *extra: str, shared: bool = False) -> None:
    export_voice(src, repo, voice, *extra, aux=src if shared else None)


def _stash(repo: Path, voice: str, version: int, to: Path) -> Path:
    """Move an exported version out of the repository (published later by rename)."""
    src = layout.voice_dir(repo, voice) / str(version)
    os.rename(src, to)
    if voice != "a":
        shutil.rmtree(layout.voice_dir(repo, voice))
    return to


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """repo with voice_a v1 (tiny, seed 3); stash: a good v2 (seed 4), a version exported from a
    checkpoint whose vocoder is silent, and one whose GPT has 3 layers instead of 2."""
    require_tritonserver()
    import torch

    from export import demo

    root = tmp_path_factory.mktemp("swap")
    repo, stash = root / "repo", root / "stash"
    repo.mkdir()
    stash.mkdir()
    a, b = root / "a", root / "b"
    demo_voice(a, 3)
    demo_voice(b, 4)
    _export(a, repo, "a", shared=True)
    _export(b, repo, "a", "--version", "2")
    _stash(repo, "a", 2, stash / "good")
    # silent vocoder: the same demo sovits with dec.conv_post zeroed (torch agrees: the golden is silent too)
    silent = root / "silent"
    shutil.copytree(a, silent, ignore=shutil.ignore_patterns("chinese-*"))
    cfg = demo.s2_config("v2", "tiny")
    state = demo.random_state(demo.s2_layout(cfg["model"]), 3 + 1)
    state["dec.conv_post.weight"].zero_()
    demo._save_s2({"weight": state, "config": cfg, "info": "silent vocoder"}, silent / "sovits.pth", demo.S2_HEADERS["v2"])
    # today's export refuses it (tests/test_export.py); build the version as an exporter without
    # that check would, to prove the load refuses it on its own
    from export import voice_export

    real_check = voice_export.check_audio
    voice_export.check_audio = lambda *a, **k: []
    try:
        _export(silent, repo, "silent")
    finally:
        voice_export.check_audio = real_check
    _stash(repo, "silent", 1, stash / "silent")
    # another architecture: a 3-layer GPT
    arch = root / "arch"
    shutil.copytree(a, arch, ignore=shutil.ignore_patterns("chinese-*"))
    gcfg = demo.s1_config("tiny")
    gcfg["model"]["n_layer"] = 3
    torch.save({"weight": demo.random_state(demo.s1_layout(gcfg["model"]), 9), "config": gcfg, "info": "3 layers"},
               arch / "gpt.ckpt")
    _export(arch, repo, "arch")
    _stash(repo, "arch", 1, stash / "arch")
    return repo, stash, root


@pytest.fixture(scope="module")
def server(built):
    repo, _, root = built
    proc = start_server(repo, models=["voice_a", "gsv_bert", "tts"], log_dir=root)
    yield proc
    proc.stop()


def _client(server):
    return AdminClient(server)  # load_model and the repository index need the admin key


def _say(server, text=TEXT, **params):
    from ops.client import synthesize

    return synthesize(text, "a", server.grpc_url, **{**FIXED, **params})


def _publish(repo: Path, folder: Path, version: int) -> Path:
    """Copy a version folder in as voice_a/<version>: staged, then one rename."""
    staging = layout.staging_root(repo) / f"test-{version}"
    shutil.copytree(folder, staging)
    try:
        manifest = json.loads((staging / MANIFEST_FILE).read_text())
        manifest["version"], manifest["voice"] = version, "a"
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest))
    except ValueError:
        pass  # a damaged manifest travels as it is
    target = layout.voice_dir(repo, "a") / str(version)
    os.rename(staging, target)
    return target


def _serving_version(server) -> int:
    return _say(server).voice_version


class Traffic:
    """Client threads requesting voice_a in a loop; every outcome recorded with its times."""

    def __init__(self, server, threads=4, **params):
        self.server, self.params, self.stop = server, params, threading.Event()
        self.results: list[tuple[float, float, int | None, str | None]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self.stop.is_set():
            t0 = time.time()
            try:
                version, error = _say(self.server, **self.params).voice_version, None
            except Exception as exc:  # noqa: BLE001 - counted as a failed request
                version, error = None, str(exc)
            with self.lock:
                self.results.append((t0, time.time(), version, error))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(120)

    @property
    def failures(self):
        return [r for r in self.results if r[3] is not None]


def _events(repo, version, kind):
    return [e for e in history.read(repo, "a") if e.version == version and e.event == kind]


def _index_state(server, version: int) -> tuple[str, str]:
    for m in _client(server).get_model_repository_index(as_json=True).get("models", []):
        if m["name"] == "voice_a" and m.get("version") == str(version):
            return m.get("state", ""), m.get("reason", "")
    return "", ""


# --------------------------------------------------------------------------- plain flow


def test_plain_flow_swaps_without_losing_a_request(built, server):
    repo, stash, _ = built
    assert _serving_version(server) == 1
    long_text = "今天天气很好。我们一起去公园散步。然后回家吃饭。明天还要上班。" * 6
    long_result = {}

    def long_request():
        t0 = time.time()
        long_result.update(start=t0, speech=_say(server, long_text, MAX_TOKENS=60), end=time.time())

    _publish(repo, stash / "good", 2)
    with Traffic(server) as traffic:
        time.sleep(1.0)
        slow = threading.Thread(target=long_request)
        slow.start()
        time.sleep(0.3)
        t_load = time.time()
        _client(server).load_model("voice_a")
        t_loaded = time.time()
        time.sleep(1.5)
    slow.join(120)
    assert traffic.failures == []
    before = [r for r in traffic.results if r[1] < t_load]
    after = [r for r in traffic.results if r[0] > t_loaded]
    assert before and all(r[2] == 1 for r in before)
    assert after and all(r[2] == 2 for r in after)
    assert long_result["speech"].voice_version == 1  # started on v1, so finished on v1 (one version per request)
    assert long_result["start"] < t_load
    # v1 is released only after its requests finished (released is recorded after the drain)
    deadline = time.time() + 30
    while not _events(repo, 1, "released") and time.time() < deadline:
        time.sleep(0.2)
    released = _events(repo, 1, "released")
    assert released, "version 1 was never released"
    last_v1_end = max(r[1] for r in traffic.results + [(0, long_result["end"], 1, None)] if r[2] == 1)
    assert released[0].time >= last_v1_end - 0.5
    deadline = time.time() + 30
    while _index_state(server, 1)[0] != "UNAVAILABLE" and time.time() < deadline:
        time.sleep(0.1)  # "released" is recorded in finalize, just before Triton marks the version unloaded
    state, reason = _index_state(server, 1)
    assert state == "UNAVAILABLE" and "unloaded" in reason.lower(), (state, reason)
    assert _index_state(server, 2)[0] == "READY"
    assert _events(repo, 2, "validated") and _events(repo, 2, "active")
    print(f"swap: load {t_loaded - t_load:.2f} s, {len(traffic.results)} requests, long request "
          f"{long_result['end'] - long_result['start']:.2f} s (ended {long_result['end'] - t_loaded:+.2f} s after the load)")


# --------------------------------------------------------------------------- faults


def _set_initializer(path: Path, pick, fill) -> str:
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if pick(i))
    arr = numpy_helper.to_array(init).copy()
    arr[...] = fill
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))
    return init.name


def _rehash(folder: Path) -> None:
    """Rewrite the manifest's graph hashes: the damage then looks like what an export wrote."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for entry in manifest["graphs"].values():
        p = folder / entry["file"]
        entry["sha256"], entry["bytes"] = sha256_file(p), p.stat().st_size
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _float_init(name_part):
    return lambda i: name_part in i.name and i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2


def corrupt_bytes(v: Path, stash: Path) -> None:
    path = v / "sovits.onnx"
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    start = len(data) // 3
    data[start:start + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    data[:64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def nan_weights(v: Path, stash: Path) -> None:
    _set_initializer(v / "gpt_step.onnx", lambda i: i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2, np.nan)
    _rehash(v)


def nan_vocoder(v: Path, stash: Path) -> None:
    _set_initializer(v / "vocoder.onnx", _float_init(""), np.nan)
    _rehash(v)


def zero_vocoder(v: Path, stash: Path) -> None:
    """conv_post zeroed in the graph only: the golden (good weights) disagrees."""
    model = onnx.load(str(v / "vocoder.onnx"))
    floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 3
              and i.dims[0] == 1]
    assert floats, "no [1, C, K] conv_post weight in the vocoder graph"
    _set_initializer(v / "vocoder.onnx", lambda i: i.name == floats[-1].name, 0.0)
    _rehash(v)


def silent_export(v: Path, stash: Path) -> None:
    shutil.rmtree(v)
    shutil.copytree(stash / "silent", v)


def wrong_architecture(v: Path, stash: Path) -> None:
    for name in ("gpt_prefill.onnx", "gpt_step.onnx"):
        shutil.copy(stash / "arch" / name, v / name)
    _rehash(v)


def missing_vocoder(v: Path, stash: Path) -> None:
    (v / "vocoder.onnx").unlink()


def bad_manifest(v: Path, stash: Path) -> None:
    (v / MANIFEST_FILE).write_text("{ not json")


def edited_model_py(v: Path, stash: Path) -> None:
    """model.py changed after the export (it still loads our model, so our check runs)."""
    with (v / "model.py").open("a") as f:
        f.write("import os  # edited after the export\n")


FAULTS = [
    (corrupt_bytes, "sovits.onnx differs from the manifest"),
    (nan_weights, "golden"),
    (nan_vocoder, "non-finite"),
    (zero_vocoder, "golden"),
    (silent_export, "silent"),
    (wrong_architecture, "gpt_layers 2 in the manifest, 3 in the graphs"),
    (missing_vocoder, "vocoder.onnx"),
    (bad_manifest, "manifest.json"),
    (edited_model_py, "model.py differs from the manifest"),
]
_next_version = iter(range(10, 100))


@pytest.mark.parametrize("damage,needle", FAULTS, ids=[f.__name__ for f, _ in FAULTS])
def test_bad_version_is_refused_quarantined_and_old_keeps_serving(built, server, damage, needle):
    from tritonclient.utils import InferenceServerException

    repo, stash, root = built
    current = _serving_version(server)
    version = next(_next_version)
    work = root / f"bad-{version}"
    shutil.copytree(layout.voice_dir(repo, "a") / str(current), work)
    damage(work, stash)
    _publish(repo, work, version)
    with Traffic(server, threads=2) as traffic:
        time.sleep(0.3)
        with pytest.raises(InferenceServerException) as info:
            _client(server).load_model("voice_a")
        time.sleep(0.3)
    message = str(info.value)
    assert needle in message, message
    assert traffic.failures == [] and traffic.results
    assert all(r[2] == current for r in traffic.results)
    assert _serving_version(server) == current
    assert not (layout.voice_dir(repo, "a") / str(version)).exists()
    quarantined = sorted(layout.quarantine_root(repo).glob(f"voice_a.{version}.*"))
    assert len(quarantined) == 1
    assert needle in (quarantined[0] / validation.REASON_FILE).read_text()
    failed = _events(repo, version, "failed")
    assert failed and needle in failed[-1].reason
    assert _events(repo, version, "quarantined")
    assert not _events(repo, version, "active")
    # the next load finds only good versions: nothing changes, nothing fails
    _client(server).load_model("voice_a")
    assert _serving_version(server) == current


# --------------------------------------------------------------------------- kill -9


def _consistent(repo: Path) -> None:
    vdir = layout.voice_dir(repo, "a")
    for n in layout.version_numbers(vdir):
        files = {p.name for p in (vdir / str(n)).iterdir()}
        assert {"manifest.json", "golden.npz", "reference.npz", "vocoder.onnx", "sovits.onnx", "gpt_step.onnx",
                "gpt_prefill.onnx", "model.py"} <= files, (n, files)
        assert not [f for f in files if f.endswith(".tmp")]
    staging = layout.staging_root(repo)
    assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())


def _kill_mid_load(server, repo: Path, version: int) -> None:
    """load_model in a thread; SIGKILL the whole server process group once the version is loading."""
    errors = []

    def load():
        try:
            _client(server).load_model("voice_a")
        except Exception as exc:  # noqa: BLE001 - the server dies under it
            errors.append(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    deadline = time.time() + 10
    while time.time() < deadline and _index_state(server, version)[0] != "LOADING":
        time.sleep(0.02)
    server.kill()
    t.join(30)


def test_kill_9_mid_load_then_restart(built, server):
    """A complete, valid version killed mid-load serves after restart (it is the latest version
    folder, whole because it arrived by rename, and passes validation again). A bad version
    killed mid-load is refused and quarantined by the restart's load; the voice then serves
    its previous version after one more ``load_model`` (Triton's latest-1 policy tries only
    the newest folder at start)."""
    repo, stash, root = built
    current = _serving_version(server)
    good = _publish(repo, stash / "good", 50)
    assert good.is_dir()
    _kill_mid_load(server, repo, 50)
    assert not _events(repo, 50, "active")
    _consistent(repo)
    restarted = start_server(repo, models=["voice_a", "gsv_bert", "tts"], log_dir=root / "restart")
    try:
        assert _serving_version(restarted) == 50
        # now a bad version, killed mid-load
        work = root / "bad-60"
        shutil.copytree(good, work)
        nan_vocoder(work, stash)
        _publish(repo, work, 60)
        _kill_mid_load(restarted, repo, 60)
    finally:
        restarted.stop()
    _consistent(repo)
    third = start_server(repo, models=[], log_dir=root / "third")
    try:
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="non-finite"):
            _client(third).load_model("voice_a")
        assert not (layout.voice_dir(repo, "a") / "60").exists()
        _client(third).load_model("voice_a")  # the bad folder is gone: the previous version loads
        _client(third).load_model("gsv_bert")
        _client(third).load_model("tts")
        assert _serving_version(third) == 50
    finally:
        third.stop()
    _consistent(repo)
    assert current in (1, 2)
