"""Write voice versions into a Triton model repository so it is never seen half-written.

A version number is reserved first (``layout.reserve_version``: chosen under the repository
lock, recorded with ``O_EXCL`` in ``REPO/.gsv/reserved/``), so concurrent exports and publishes
on any host get distinct numbers. The version is built in
``REPO/.gsv/staging/<model>.<host>.<pid>.<random>/`` and moved to ``REPO/voice_<NAME>/<N>/``
with one ``rename`` under the repository lock once every file is written and synced; the
reservation is dropped in the same hold (or when the export fails).

A crash, a kill or a full disk leaves at most a staging folder and a reservation. The next
export removes this host's leftovers whose process is gone; another host's are removed only
after 24 hours without a change (``STALE_OTHER_HOST_S``): its process cannot be checked from
here, and a replica sharing the repository over NFS may be exporting right now. Folders whose
name carries no host (older releases, hand-made) are treated like another host's.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

from export.errors import InputError
from python_backend import layout
from python_backend.atomic_io import fsync_dir, write_atomic
from python_backend.model_config import ModelSpec
from python_backend.repo_lock import repo_lock

STALE_OTHER_HOST_S = 24 * 3600.0


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_name(model: str) -> str:
    """``<model>.<host>.<pid>.<random>``: whose export it is, readable by any host."""
    return f"{model}.{layout.host_id()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def staging_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a staging folder name; None for names without a host (older releases)."""
    parts = name.split(".")
    if len(parts) == 4 and parts[2].isdigit():
        return parts[1], int(parts[2])
    return None


def _last_change(folder: Path) -> float:
    """Newest mtime of the folder and its direct entries (an export writes files there)."""
    newest = folder.stat().st_mtime
    try:
        for entry in os.scandir(folder):
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
            except OSError:
                pass
    except OSError:
        pass
    return newest


def clean_stale_staging(repo: Path, now: float | None = None, max_age_s: float = STALE_OTHER_HOST_S) -> list[Path]:
    """Remove staging folders of exports that are gone: this host's whose process is dead, and
    any other (another host's, or a name without a host) unchanged for ``max_age_s``."""
    now = time.time() if now is None else now
    removed = []
    root = layout.staging_root(repo)
    if not root.is_dir():
        return removed
    for folder in root.iterdir():
        owner = staging_owner(folder.name)
        try:
            age = now - _last_change(folder)
        except OSError:
            continue  # gone meanwhile
        host, pid = owner if owner else ("", 0)
        if layout.is_abandoned(host, pid, age, max_age_s):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed



class StagedVersion:
    """A version folder being written; ``publish`` moves it into the repository in one rename.

    Use as a context manager: leaving the block without ``publish`` (an error) removes the
    staging folder and leaves the repository as it was.
    """

    def __init__(self, repo: Path, voice: str, version: int | None, model_name: str | None = None):
        """``voice`` names a voice; ``model_name`` instead stages a version of a shared model.
        ``version`` None: the next free number (reserved for this export)."""
        self.repo = Path(repo)
        self.voice = voice if model_name else layout.check_voice_name(voice)
        if not self.repo.is_dir():
            raise InputError(f"{self.repo}: model repository folder does not exist; create it first (mkdir -p)")
        model = model_name or layout.voice_model(voice)
        self.published = False
        clean_stale_staging(self.repo)  # outside the lock: removing a big folder takes a while
        try:
            self.reservation = layout.reserve_version(self.repo, model, version)
        except layout.ReservationError as exc:
            raise InputError(str(exc)) from None
        self.version = self.reservation.version
        self.target = self.repo / model / str(self.version)
        try:
            root = layout.staging_root(self.repo)
            root.mkdir(parents=True, exist_ok=True)
            self.path = root / staging_name(model)
            self.path.mkdir()
        except BaseException:
            self.reservation.release()
            raise

    def __enter__(self) -> "StagedVersion":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)
            self.reservation.release()

    def publish(self, model_spec: ModelSpec) -> Path:
        """Sync, then rename the version into place (writing the model's config.pbtxt if needed),
        under the repository lock; the reservation is dropped in the same hold."""
        _fsync_tree(self.path)
        model_dir = self.target.parent
        text = model_spec.render()
        with repo_lock(self.repo):
            model_dir.mkdir(exist_ok=True)
            config = model_dir / "config.pbtxt"
            if not config.is_file() or not same_but_policy(config.read_text(encoding="utf-8"), text):
                write_atomic(config, text)  # a policy a swap command set (a canary) stays as it is
            if self.target.exists():
                raise InputError(f"{self.target} appeared while exporting; another export wrote this version")
            os.rename(self.path, self.target)
            self.published = True
            fsync_dir(model_dir)
            self.reservation.release()
        return self.target


def same_but_policy(a: str, b: str) -> bool:
    """Two config.pbtxt texts equal apart from their ``version_policy``."""
    from python_backend.manifest import config_without_policy

    return config_without_policy(a) == config_without_policy(b)


