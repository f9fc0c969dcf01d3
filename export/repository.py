"""Write voice versions into a Triton model repository so it is never seen half-written.

A version is built in ``REPO/.gsv/staging/<voice>.<pid>.<random>/`` and moved to
``REPO/voice_<NAME>/<N>/`` with one ``rename`` once every file is written and synced.
A crash, a kill or a full disk leaves at most a staging folder, which the next export
removes; the repository's versions are untouched either way.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from export.errors import InputError
from python_backend import layout
from python_backend.model_config import ModelSpec


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(repo: Path) -> list[Path]:
    """Remove staging folders left by exports whose process is gone."""
    removed = []
    root = layout.staging_root(repo)
    if not root.is_dir():
        return removed
    for folder in root.iterdir():
        parts = folder.name.split(".")
        pid = int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else -1
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class StagedVersion:
    """A version folder being written; ``publish`` moves it into the repository in one rename.

    Use as a context manager: leaving the block without ``publish`` (an error) removes the
    staging folder and leaves the repository as it was.
    """

    def __init__(self, repo: Path, voice: str, version: int | None, model_name: str | None = None):
        """``voice`` names a voice; ``model_name`` instead stages a version of a shared model."""
        self.repo = Path(repo)
        self.voice = voice if model_name else layout.check_voice_name(voice)
        if not self.repo.is_dir():
            raise InputError(f"{self.repo}: model repository folder does not exist; create it first (mkdir -p)")
        model_dir = self.repo / model_name if model_name else layout.voice_dir(self.repo, voice)
        if version is None:
            version = layout.next_version(self.repo, voice) if not model_name else max(layout.version_numbers(model_dir), default=0) + 1
        self.version = version
        if self.version < 1:
            raise InputError(f"--version {self.version}: versions are positive integers")
        self.target = model_dir / str(self.version)
        if self.target.exists():
            raise InputError(f"{self.target} already exists; versions are immutable, pick another --version")
        clean_stale_staging(self.repo)
        root = layout.staging_root(self.repo)
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{voice}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        self.published = False

    def __enter__(self) -> "StagedVersion":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)

    def publish(self, model_spec: ModelSpec) -> Path:
        """Sync, then rename the version into place (writing the model's config.pbtxt if needed)."""
        _fsync_tree(self.path)
        model_dir = self.target.parent
        model_dir.mkdir(exist_ok=True)
        config = model_dir / "config.pbtxt"
        text = model_spec.render()
        if not config.is_file() or config.read_text(encoding="utf-8") != text:
            write_atomic(config, text)
        if self.target.exists():
            raise InputError(f"{self.target} appeared while exporting; another export wrote this version")
        os.rename(self.path, self.target)
        self.published = True
        return self.target
