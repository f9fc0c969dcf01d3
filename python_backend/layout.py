"""Where things live in a gsv-triton model repository; shared by the exporter and the server.

REPO/
  voice_<NAME>/config.pbtxt       one Triton model per voice; versions are folders 1, 2, ...
  voice_<NAME>/<N>/manifest.json  graphs, reference.npz, golden.npz, model.py
  gsv_bert/, gsv_ssl/             shared auxiliary models, one copy for all voices
  gsv_sv/                         shared speaker verification (v2Pro/v2ProPlus), from --sv-model
  .gsv/lock                       the repository lock (python_backend.repo_lock): held briefly around every change
  .gsv/reserved/<model>.<N>       version numbers taken by exports in progress (host, pid, time)
  .gsv/reserved/<model>.high      highest number handed out whose reservation was dropped as stale
  .gsv/staging/                   versions being written, ``<model>.<host>.<pid>.<random>`` (renamed into place when complete)
  .gsv/quarantine/                versions refused at load, with the reason
  .gsv/retired/                   versions taken out of service by a rollback
  .gsv/routing.json               canary routing (voice -> active, canary, weight)
  .gsv/history.jsonl              what happened to every version, and why
  .gsv/text/g2pw/                 the user's G2PWModel folder (polyphones), shared by all voices
  .gsv/text/upstream/             upstream's text dictionaries (from GPT_SoVITS/text)
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from python_backend.atomic_io import write_atomic
from python_backend.repo_lock import repo_lock

VOICE_PREFIX = "voice_"
BERT_MODEL = "gsv_bert"
SSL_MODEL = "gsv_ssl"
SV_MODEL = "gsv_sv"
RESERVED = {"tts", "tts_stream", BERT_MODEL, SSL_MODEL, SV_MODEL}
STATE_DIR = ".gsv"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class LayoutError(ValueError):
    """A name or folder does not fit the repository layout."""


def check_voice_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise LayoutError(
            f"voice name {name!r} is not a safe folder name: use 1-63 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


def voice_model(name: str) -> str:
    """Triton model name of a voice."""
    return VOICE_PREFIX + check_voice_name(name)


def voice_dir(repo: Path, name: str) -> Path:
    return Path(repo) / voice_model(name)


def staging_root(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / "staging"


def quarantine_root(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / "quarantine"


def retired_root(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / "retired"


def text_root(repo: Path) -> Path:
    """Text front-end resources shared by every voice of the repository."""
    return Path(repo) / STATE_DIR / "text"


def g2pw_dir(repo: Path) -> Path:
    return text_root(repo) / "g2pw"


def upstream_text_dir(repo: Path) -> Path:
    return text_root(repo) / "upstream"


def routing_file(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / "routing.json"


def version_numbers(model_dir: Path) -> list[int]:
    """Version folders present (digits only, as Triton reads them), ascending."""
    if not Path(model_dir).is_dir():
        return []
    return sorted(int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def parked_versions(root: Path, name: str) -> dict[int, list[Path]]:
    """Versions of voice ``name`` parked under ``root`` (quarantine or retired) as
    ``voice_<NAME>.<N>.<stamp>`` folders: number -> folders (a number can be parked twice)."""
    out: dict[int, list[Path]] = {}
    prefix = voice_model(name) + "."
    if Path(root).is_dir():
        for p in sorted(Path(root).iterdir()):
            head = p.name[len(prefix):].split(".")[0] if p.name.startswith(prefix) else ""
            if head.isdigit():
                out.setdefault(int(head), []).append(p)
    return out


def reserved_root(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / "reserved"


def _parked_numbers(repo: Path, model: str) -> list[int]:
    out = []
    prefix = model + "."
    for root in (quarantine_root(repo), retired_root(repo)):
        if Path(root).is_dir():
            for p in Path(root).iterdir():
                head = p.name[len(prefix):].split(".")[0] if p.name.startswith(prefix) else ""
                if head.isdigit():
                    out.append(int(head))
    return out


def _reserved_numbers(repo: Path, model: str) -> list[int]:
    root, prefix = reserved_root(repo), model + "."
    if not root.is_dir():
        return []
    return [int(p.name[len(prefix):]) for p in root.iterdir()
            if p.name.startswith(prefix) and p.name[len(prefix):].isdigit()]


def _high_water(repo: Path, model: str) -> int:
    try:
        return int((reserved_root(repo) / f"{model}.high").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def used_version_numbers(repo: Path, model: str) -> set[int]:
    """Numbers model folder ``model`` has used or handed out: present, quarantined, retired,
    reserved by an export in progress, and the high-water mark of dropped stale reservations."""
    used = set(version_numbers(Path(repo) / model)) | set(_parked_numbers(repo, model))
    used |= set(_reserved_numbers(repo, model))
    high = _high_water(repo, model)
    return used | ({high} if high else set())


def next_model_version(repo: Path, model: str) -> int:
    return max(used_version_numbers(repo, model), default=0) + 1


def next_version(repo: Path, name: str) -> int:
    """One past every version number ever used by voice ``name`` (present, quarantined,
    retired, reserved), so a number never names two different versions. A plain read: to
    take a number, use :func:`reserve_version` (under the repository lock)."""
    return next_model_version(repo, voice_model(name))


# ---- version reservations ----

#: a reservation of another host counts as abandoned after this long (an export takes minutes)
RESERVATION_MAX_AGE_S = 24 * 3600.0


def host_id() -> str:
    """This host's name as a safe name component (letters, digits, '-'): in staging folder and
    reservation names, and to tell this host's dead processes from other hosts' live ones."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_abandoned(host: str, pid: int, age_s: float, max_age_s: float = RESERVATION_MAX_AGE_S) -> bool:
    """A reservation or staging folder whose writer is gone: this host's dead process, or another
    host's after ``max_age_s`` (their processes cannot be checked from here)."""
    if host == host_id():
        return pid != os.getpid() and not pid_alive(pid)
    return age_s > max_age_s


class ReservationError(LayoutError):
    """A version number cannot be taken (present, parked, or reserved by a live export)."""


@dataclass
class Reservation:
    """Version ``version`` of model folder ``model`` taken for one export: ``path`` is the
    ``O_EXCL``-created file that keeps every other publisher off the number."""

    repo: Path
    model: str
    version: int
    path: Path

    def release(self) -> None:
        """Give the number back (export failed) or drop the record (the version is in place).
        Callers renaming the version in hold the repository lock around both."""
        with repo_lock(self.repo):
            try:
                info = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return
            if info.get("host") == host_id() and info.get("pid") == os.getpid():  # still ours
                self.path.unlink(missing_ok=True)


def _read_reservation(path: Path) -> tuple[str, int, float]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return str(info["host"]), int(info["pid"]), float(info["time"])
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: judge by the file's age alone
        try:
            return "", 0, path.stat().st_mtime
        except OSError:
            return "", 0, 0.0


def drop_stale_reservations(repo: Path, model: str, now: float | None = None) -> list[int]:
    """Remove reservations of ``model`` whose exporter is gone (caller holds the lock). Numbers of
    another host's reservations go to the high-water mark: that exporter may yet rename its
    version in, so its number is never handed out again."""
    now = time.time() if now is None else now
    dropped, high = [], _high_water(repo, model)
    root, prefix = reserved_root(repo), model + "."
    for number in sorted(_reserved_numbers(repo, model)):
        path = root / f"{prefix}{number}"
        host, pid, when = _read_reservation(path)
        if not is_abandoned(host, pid, now - when):
            continue
        if host != host_id() and number > high:
            high = number
            write_atomic(root / f"{model}.high", f"{high}\n")
        path.unlink(missing_ok=True)
        dropped.append(number)
    return dropped



def reserve_version(repo: Path, model: str, version: int | None = None) -> Reservation:
    """Take a version number of model folder ``model`` (``voice_<NAME>``, ``gsv_bert``...) for an
    export: ``None`` picks one past every number used, present or reserved; a given number must
    be unused. Atomic between processes and hosts: chosen under the repository lock and recorded
    with ``O_CREAT | O_EXCL``, so a concurrent publisher gets the next number."""
    repo = Path(repo)
    with repo_lock(repo):
        drop_stale_reservations(repo, model)
        root = reserved_root(repo)
        root.mkdir(parents=True, exist_ok=True)
        if version is not None:
            if version < 1:
                raise ReservationError(f"version {version}: versions are positive integers")
            if (repo / model / str(version)).exists():
                raise ReservationError(f"{model} version {version} already exists; versions are immutable, "
                                       f"pick another --version")
            if version in _parked_numbers(repo, model):
                raise ReservationError(f"{model} version {version} was used before (quarantined or retired); "
                                       f"version numbers are never reused, pick another --version")
        number = version or next_model_version(repo, model)
        body = json.dumps({"host": host_id(), "pid": os.getpid(), "time": time.time()})
        while True:
            path = root / f"{model}.{number}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if version is not None:
                    host, pid, _ = _read_reservation(path)
                    raise ReservationError(f"{model} version {version} is being exported by process {pid} on "
                                           f"{host or 'an unknown host'}; pick another --version") from None
                number += 1  # a writer outside the lock (an older tool): the next number
                continue
            try:
                os.write(fd, body.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            return Reservation(repo, model, number, path)


def voices(repo: Path) -> list[str]:
    repo = Path(repo)
    if not repo.is_dir():
        return []
    return sorted(p.name[len(VOICE_PREFIX):] for p in repo.iterdir() if p.is_dir() and p.name.startswith(VOICE_PREFIX))
