"""The repository lock and what it protects, with real processes: version numbers reserved by
concurrent publishers (and by two real exports of the tiny demo voice at once), routing.json
edited by several processes at once, stale staging and reservations of this host vs another
host, and the manifest's hashes of model.py and config.pbtxt checked at load (in-process here;
the refusal by a real tritonserver is a fault case of tests/test_hot_swap.py).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from export import repository
from python_backend import layout, validation
from python_backend.manifest import VoiceManifest, config_without_policy, sha256_file
from python_backend.model_config import voice_model_spec
from python_backend.repo_lock import RepoLockError, held, repo_lock
from python_backend.routing import Route, RoutingError, read_table, set_route

SPAWN = mp.get_context("spawn")


# --------------------------------------------------------------------------- child processes
# (module-level functions: spawned children import this module)

def _hold_lock(repo: str, acquired, release) -> None:
    with repo_lock(Path(repo)):
        acquired.set()
        release.wait(30)


def _try_lock(repo: str, timeout: float, out) -> None:
    try:
        with repo_lock(Path(repo), timeout=timeout):
            out.put("got")
    except RepoLockError as exc:
        out.put(f"refused: {exc}")


def _publisher(repo: str, rounds: int, worker: int, start, out) -> None:
    """Stage and publish ``rounds`` versions of voice ``a`` the way the exporter does; every
    fourth one fails mid-export (its number goes back). Reports (version, published)."""
    spec = voice_model_spec(layout.voice_model("a"))
    start.wait(60)
    got = []
    for i in range(rounds):
        try:
            with repository.StagedVersion(Path(repo), "a", None) as staged:
                (staged.path / "who.txt").write_text(f"{worker}:{i}:{staged.version}")
                if i % 4 == 3:
                    raise RuntimeError("export failed")
                staged.publish(spec)
                got.append((staged.version, True))
        except RuntimeError:
            got.append((staged.version, False))
    out.put((worker, got))


def _router(repo: str, worker: int, rounds: int, start, out) -> None:
    """Add one voice's route per round; remove every third one again. Reports what it left."""
    start.wait(60)
    kept = {}
    for r in range(rounds):
        voice = f"w{worker}_{r}"
        set_route(Path(repo), voice, Route(r + 1, r + 2, 0.25))
        if r % 3 == 0:
            set_route(Path(repo), voice, None)
        else:
            kept[voice] = (r + 1, r + 2, 0.25)
    out.put(kept)


def _run_all(target, args_list, timeout=300):
    start = SPAWN.Event()
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, start, out)) for args in args_list]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- the lock


def test_lock_is_reentrant_in_a_process_and_exclusive_between_processes(tmp_path):
    with repo_lock(tmp_path):
        with repo_lock(tmp_path):  # nested (set_route inside a swap command): no self-deadlock
            assert held(tmp_path)
        assert held(tmp_path)
        seen = []
        t = threading.Thread(target=lambda: seen.append(held(tmp_path)))  # another thread does not hold it
        t.start()
        t.join()
        assert seen == [False]
    assert not held(tmp_path)
    assert (tmp_path / ".gsv" / "lock").is_file()
    acquired, release, out = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(target=_hold_lock, args=(str(tmp_path), acquired, release))
    holder.start()
    try:
        assert acquired.wait(60)
        with pytest.raises(RepoLockError, match="still held"):
            with repo_lock(tmp_path, timeout=0.3):
                pass
        waiter = SPAWN.Process(target=_try_lock, args=(str(tmp_path), 60, out))
        waiter.start()
        time.sleep(0.5)
        assert out.empty()  # waits while the other process holds it
        release.set()
        assert out.get(timeout=60) == "got"
        waiter.join(30)
    finally:
        release.set()
        holder.join(30)
    with repo_lock(tmp_path, timeout=5):
        pass


# --------------------------------------------------------------------------- version numbers


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    """4 processes x 24 staged versions of one voice, racing the reservation from one start:
    every published number is distinct and is the folder it names; failed exports leave nothing."""
    repo = tmp_path / "repo"
    repo.mkdir()
    results = _run_all(_publisher, [(str(repo), 24, w) for w in range(4)])
    published = [v for _, got in results for v, ok in got if ok]
    assert len(published) == 4 * 18
    assert len(set(published)) == len(published), sorted(published)
    vdir = layout.voice_dir(repo, "a")
    assert sorted(published) == layout.version_numbers(vdir)
    for worker, got in results:
        for v, ok in got:
            if ok:
                assert (vdir / str(v) / "who.txt").read_text().startswith(f"{worker}:")
    assert list(layout.reserved_root(repo).glob("voice_a.[0-9]*")) == []
    assert list(layout.staging_root(repo).iterdir()) == []
    assert layout.next_version(repo, "a") == max(published) + 1


def test_reservation_blocks_its_number_and_never_reuses_parked_ones(tmp_path):
    first = layout.reserve_version(tmp_path, "voice_a")
    second = layout.reserve_version(tmp_path, "voice_a")
    assert (first.version, second.version) == (1, 2)
    info = json.loads(first.path.read_text())
    assert info["host"] == layout.host_id() and info["pid"] == os.getpid()
    with pytest.raises(layout.ReservationError, match="being exported by process"):
        layout.reserve_version(tmp_path, "voice_a", 2)
    (layout.voice_dir(tmp_path, "a") / "5").mkdir(parents=True)
    with pytest.raises(layout.ReservationError, match="already exists"):
        layout.reserve_version(tmp_path, "voice_a", 5)
    layout.quarantine_root(tmp_path).mkdir(parents=True)
    (layout.quarantine_root(tmp_path) / "voice_a.7.20261125T000000Z").mkdir()
    with pytest.raises(layout.ReservationError, match="never reused"):
        layout.reserve_version(tmp_path, "voice_a", 7)
    assert layout.reserve_version(tmp_path, "voice_a").version == 8
    first.release()
    second.release()
    assert not first.path.exists() and not second.path.exists()


def test_stale_reservations_do_not_block_and_numbers_are_not_reused(tmp_path):
    root = layout.reserved_root(tmp_path)
    root.mkdir(parents=True)
    now = time.time()

    def put(number, host, pid, when):
        (root / f"voice_a.{number}").write_text(json.dumps({"host": host, "pid": pid, "time": when}))

    put(1, layout.host_id(), _dead_pid(), now)  # this host, exporter dead: dropped, its number free again
    put(2, "other-host", 4242, now - 60)  # another host, recent: may be exporting right now
    put(3, "other-host", 4243, now - 2 * layout.RESERVATION_MAX_AGE_S)  # another host, abandoned long ago
    taken = layout.reserve_version(tmp_path, "voice_a")
    assert taken.version == 4  # 3 dropped, but kept as the high-water mark: never handed out again
    assert not (root / "voice_a.1").exists() and not (root / "voice_a.3").exists()
    assert (root / "voice_a.2").exists()
    assert (root / "voice_a.high").read_text().strip() == "3"
    with pytest.raises(layout.ReservationError, match="other-host"):
        layout.reserve_version(tmp_path, "voice_a", 2)
    assert layout.reserve_version(tmp_path, "voice_a", 1).version == 1


# --------------------------------------------------------------------------- routing.json


def test_concurrent_routing_edits_lose_nothing(tmp_path):
    """4 processes x 45 read-modify-writes of routing.json (adds and removes), while this process
    reads it continuously: the final table is exactly every process's kept entries, and no read
    ever saw a partial file."""
    repo = tmp_path
    set_route(repo, "base", Route(1, 2, 0.5))
    stop, bad, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            try:
                read_table(repo)
                reads[0] += 1
            except RoutingError as exc:  # pragma: no cover - the failure this test looks for
                bad.append(str(exc))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        results = _run_all(_router, [(str(repo), w, 45) for w in range(4)])
    finally:
        stop.set()
        t.join(10)
    assert bad == [] and reads[0] > 0
    expected = {"base": (1, 2, 0.5)}
    for kept in results:
        expected.update(kept)
    got = {v: (r.active, r.canary, r.weight) for v, r in read_table(repo).items()}
    assert got == expected
    assert not [p for p in (repo / ".gsv").iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- staging


def test_stale_staging_of_this_host_is_cleaned_another_hosts_is_left(tmp_path):
    root = layout.staging_root(tmp_path)
    root.mkdir(parents=True)
    me, dead = layout.host_id(), _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "mine_dead": f"voice_a.{me}.{dead}.0000aaaa",
            "mine_alive": f"voice_a.{me}.{sleeper.pid}.0000bbbb",
            "mine_self": f"voice_a.{me}.{os.getpid()}.0000cccc",
            "other_fresh": f"voice_a.other-host.{dead}.0000dddd",
            "other_old": f"voice_a.other-host.{dead}.0000eeee",
            "legacy_fresh": f"voice_a.{dead}.0000ffff",
            "legacy_old": f"voice_a.{dead}.00001111",
        }
        for key, name in names.items():
            (root / name).mkdir()
            (root / name / "gpt_step.onnx").write_bytes(b"x")
        old = time.time() - repository.STALE_OTHER_HOST_S - 3600
        for key in ("other_old", "legacy_old"):
            for p in (root / names[key] / "gpt_step.onnx", root / names[key]):
                os.utime(p, (old, old))
        removed = {p.name for p in repository.clean_stale_staging(tmp_path)}
        assert removed == {names["mine_dead"], names["other_old"], names["legacy_old"]}
        left = {p.name for p in root.iterdir()}
        assert left == {names[k] for k in ("mine_alive", "mine_self", "other_fresh", "legacy_fresh")}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_staging_folders_are_named_with_host_and_pid(tmp_path):
    staged = repository.StagedVersion(tmp_path, "a", None)
    try:
        assert repository.staging_owner(staged.path.name) == (layout.host_id(), os.getpid())
        assert staged.path.name.startswith("voice_a.")
    finally:
        staged.__exit__(None, None, None)
    assert not staged.path.exists() and not staged.reservation.path.exists()


# --------------------------------------------------------------------------- real exports, hashes


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory):
    """The tiny demo voice exported once (with the shared models), then twice at the same time
    by two real export processes into the same repository."""
    from tests.voices import demo_voice, export_args, export_voice

    root = tmp_path_factory.mktemp("locks")
    src = demo_voice(root / "demo", 3)
    repo = root / "repo"
    repo.mkdir()
    export_voice(src, repo, "demo", aux=src)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "ops.cli", "export", *export_args(src, repo, "demo")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              cwd=Path(__file__).resolve().parent.parent) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return repo


def test_two_concurrent_exports_get_distinct_versions(demo_repo):
    vdir = layout.voice_dir(demo_repo, "demo")
    assert layout.version_numbers(vdir) == [1, 2, 3]
    assert [VoiceManifest.read(vdir / str(n)).version for n in (1, 2, 3)] == [1, 2, 3]
    assert list(layout.staging_root(demo_repo).iterdir()) == []
    assert list(layout.reserved_root(demo_repo).glob("voice_demo.[0-9]*")) == []
    for n in (1, 2, 3):
        validation.preflight(vdir / str(n))


def _copy_version(repo: Path, number: int, to: int) -> Path:
    vdir = layout.voice_dir(repo, "demo")
    target = vdir / str(to)
    shutil.copytree(vdir / str(number), target)
    return target


def test_manifest_hashes_model_py_and_the_exported_config(demo_repo):
    folder = layout.voice_dir(demo_repo, "demo") / "1"
    manifest = VoiceManifest.read(folder)
    assert set(manifest.files) == {"model.py", "reference.npz", "golden.npz"}
    assert manifest.files["model.py"]["sha256"] == sha256_file(folder / "model.py")
    import hashlib

    config = (folder.parent / "config.pbtxt").read_text()
    assert manifest.config["sha256_without_policy"] == hashlib.sha256(config_without_policy(config).encode()).hexdigest()


def test_tampered_model_py_is_refused_at_load_as_the_versions_fault(demo_repo):
    folder = _copy_version(demo_repo, 1, 40)
    try:
        with (folder / "model.py").open("a") as f:
            f.write("import os  # an edit after the export\n")
        with pytest.raises(validation.ValidationError) as info:
            validation.preflight(folder)
        reason = str(info.value)
        assert "model.py differs from the manifest" in reason and "\n" not in reason
        assert validation.is_version_fault(info.value)  # quarantined like any refused version
        target = validation.quarantine(folder, reason)
        assert "model.py" in (target / validation.REASON_FILE).read_text()
        assert not folder.exists()
        assert layout.next_version(demo_repo, "demo") == 41  # a quarantined number is never reused
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_config_edits_are_refused_but_a_policy_change_is_not(demo_repo):
    folder = layout.voice_dir(demo_repo, "demo") / "1"
    config = folder.parent / "config.pbtxt"
    original = config.read_text()
    try:
        spec = voice_model_spec("voice_demo")
        spec.specific_versions = (1, 3)  # what a canary writes
        config.write_text(spec.render())
        validation.preflight(folder)
        config.write_text(original.replace("count: 1", "count: 4"))
        with pytest.raises(validation.ConfigMismatch, match="config.pbtxt differs .*count: 4") as info:
            validation.preflight(folder)
        assert "\n" not in str(info.value)
        assert not validation.is_version_fault(info.value)  # the config is every version's: nothing quarantined
    finally:
        config.write_text(original)
    validation.preflight(folder)


def test_publish_keeps_a_canary_policy_when_another_version_arrives(demo_repo, tmp_path):
    """An export renamed in during a canary must not reset the voice's version policy."""
    config = layout.voice_dir(demo_repo, "demo") / "config.pbtxt"
    original = config.read_text()
    spec = voice_model_spec("voice_demo")
    spec.specific_versions = (2, 3)
    config.write_text(spec.render())
    try:
        with repository.StagedVersion(demo_repo, "demo", None) as staged:
            (staged.path / "x").write_text("x")
            target = staged.publish(voice_model_spec("voice_demo"))
        assert "specific" in config.read_text()
        shutil.rmtree(target)
    finally:
        config.write_text(original)


# ---- text resources installed by concurrent exports ----

def _install_text_many(repo: str, source: str, rounds: int, errors) -> None:
    from export.text_resources import install_upstream_text

    for _ in range(rounds):
        try:
            install_upstream_text(Path(repo), Path(source))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.put(repr(exc))
            return


def test_concurrent_text_installs_take_turns(tmp_path):
    """Exports given --upstream-text (or --g2pw) at once each swap the repository's copy in:
    under the lock they take turns (without it one renamed the folder away under the other)."""
    from python_backend.text import resources

    source = tmp_path / "text"
    rel = next(iter(resources.FILES.values()))
    (source / rel).parent.mkdir(parents=True, exist_ok=True)
    (source / rel).write_text("x\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    errors = SPAWN.Queue()
    procs = [SPAWN.Process(target=_install_text_many, args=(str(repo), str(source), 30, errors)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    assert (layout.upstream_text_dir(repo) / rel).read_text() == "x\n"
    leftovers = [p.name for p in layout.upstream_text_dir(repo).parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
