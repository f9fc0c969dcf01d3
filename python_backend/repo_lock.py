"""One lock per model repository: ``fcntl.flock`` on ``REPO/.gsv/lock``.

Every change to the repository's shared state takes it for a moment: choosing and reserving a
version number (``layout.reserve_version``), renaming a staged version into ``voice_<NAME>/<N>``
(``export.repository.StagedVersion.publish``), rewriting ``routing.json``
(``routing.set_route``), rewriting a voice's version policy and parking versions
(``ops.swap``: retire, quarantine) and the voice model's own quarantine at load
(``validation.quarantine``). Holders re-read the state they act on after taking it and never
hold it across a Triton load or an export (minutes): only across reads, small writes and
renames.

Reentrant within a process: ``flock`` locks belong to an open file description, so a second
``open`` + ``flock`` in the same process on the same file would wait for itself. One open
descriptor per repository and process is kept while any thread holds the lock; a re-entrant
``threading.RLock`` serializes the process's threads and counts nested holds, and the
descriptor is unlocked and closed when the outermost hold ends. A forked child starts with no
holds (the parent's descriptor is not the child's lock to release).

Shared repositories: ``flock`` is honoured between hosts on NFSv4 (Linux emulates it with a
POSIX byte-range lock on the server; NFSv3 needs ``lockd``) and on CephFS/GPFS/Lustre with
``flock`` enabled. A file system that refuses ``flock`` raises ``RepoLockError`` rather than
silently running unlocked. The lock file stays empty (it is never rewritten), so taking the lock
does not change the repository's files.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from pathlib import Path

LOCK_NAME = "lock"
STATE_DIR = ".gsv"  # layout.STATE_DIR (layout imports this module)
DEFAULT_TIMEOUT = 120.0
_POLL = 0.02


class RepoLockError(OSError):
    """The repository lock could not be taken (timeout, or a file system without flock)."""


def lock_path(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / LOCK_NAME


class _Holder:
    """This process's hold on one repository's lock."""

    def __init__(self, path: Path):
        self.path = path
        self.thread_lock = threading.RLock()
        self.depth = 0  # nested holds; changed only by the thread that holds thread_lock
        self.fd: int | None = None


_holders: dict[str, _Holder] = {}
_holders_guard = threading.Lock()


def _reset_after_fork() -> None:
    global _holders, _holders_guard
    _holders = {}
    _holders_guard = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _holder(repo: Path) -> _Holder:
    path = lock_path(repo)
    key = os.path.realpath(path)
    with _holders_guard:
        holder = _holders.get(key)
        if holder is None:
            holder = _holders[key] = _Holder(path)
        return holder


def _flock(fd: int, path: Path, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EINTR):
                pass
            else:  # ENOLCK, EOPNOTSUPP...: no locking on this file system
                raise RepoLockError(exc.errno, f"cannot lock {path}: {exc.strerror}; the repository needs a "
                                               f"file system with flock (NFSv4, local disk)") from None
        if time.monotonic() >= deadline:
            raise RepoLockError(errno.ETIMEDOUT, f"repository lock {path} still held by another process after "
                                                 f"waiting; another gsv-triton command is changing the repository: "
                                                 f"retry when it is done")
        time.sleep(_POLL)


@contextlib.contextmanager
def repo_lock(repo: Path, timeout: float = DEFAULT_TIMEOUT):
    """Hold the repository's lock for the block (re-entrant in the same thread).

    Raises :class:`RepoLockError` when another process holds it for more than ``timeout`` seconds.
    """
    holder = _holder(repo)
    deadline = time.monotonic() + timeout
    if not holder.thread_lock.acquire(timeout=max(timeout, 0.0)):
        raise RepoLockError(errno.ETIMEDOUT, f"repository lock {holder.path}: another thread of this process "
                                             f"held it for {timeout:.0f} s")
    try:
        if holder.depth == 0:
            holder.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(holder.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                _flock(fd, holder.path, deadline)
            except BaseException:
                os.close(fd)
                raise
            holder.fd = fd
        holder.depth += 1
        try:
            yield
        finally:
            holder.depth -= 1
            if holder.depth == 0:
                fd, holder.fd = holder.fd, None
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)
    finally:
        holder.thread_lock.release()


def held(repo: Path) -> bool:
    """Whether the calling thread holds the repository's lock (for assertions)."""
    holder = _holder(repo)
    if not holder.thread_lock.acquire(blocking=False):
        return False
    try:
        return holder.depth > 0
    finally:
        holder.thread_lock.release()
