"""Canary routing without Triton: which version of a voice serves one request.

``REPO/.gsv/routing.json`` holds, per voice with a canary, ``{"active": A, "canary": C,
"weight": W}``: a share W (0..1) of the voice's new requests goes to version C, the rest to A.
``gsv-triton canary`` writes it through :func:`set_route`, under the repository lock (and makes
Triton keep both versions loaded with a ``specific`` version policy); ``promote`` and ``rollback`` remove the entry. Voices without an
entry are sent to version -1 (Triton's current version, the highest one loaded).

The ``tts``/``tts_stream`` BLS find the file through the ``GSV_REPO`` environment variable
(``gsv-triton serve`` sets it to the user's repository: the BLS lives in a different
repository than the voices) and read it through ``RoutingTable``, which re-reads the file only
when its mtime or size changes. The choice is made once per request, so every stage and every
chunk of a request runs on one version.
"""
from __future__ import annotations

import json
import os
import random
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from python_backend.layout import routing_file
from python_backend.repo_lock import repo_lock

ENV_REPO = "GSV_REPO"
CURRENT = -1  # Triton's "the policy's current version"


class RoutingError(ValueError):
    """routing.json or one of its entries is malformed."""


@dataclass(frozen=True)
class Route:
    active: int
    canary: int
    weight: float  # share of requests for ``canary``, 0..1

    def validate(self) -> "Route":
        if not (isinstance(self.active, int) and self.active > 0):
            raise RoutingError(f"active {self.active!r}: a positive version number")
        if not (isinstance(self.canary, int) and self.canary > 0):
            raise RoutingError(f"canary {self.canary!r}: a positive version number")
        if not 0.0 <= float(self.weight) <= 1.0:
            raise RoutingError(f"weight {self.weight!r} out of range [0, 1]")
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "Route":
        try:
            return cls(int(data["active"]), int(data["canary"]), float(data["weight"])).validate()
        except (KeyError, TypeError, ValueError) as exc:
            raise RoutingError(f"bad routing entry {data!r}: {exc}") from None

    def to_dict(self) -> dict:
        return {"active": self.active, "canary": self.canary, "weight": self.weight}

    def choose(self, draw: float) -> tuple[int, int]:
        """(chosen, other) for a uniform draw in [0, 1)."""
        if draw < self.weight:
            return self.canary, self.active
        return self.active, self.canary


def read_table(repo: Path) -> dict[str, Route]:
    """Every voice's route; {} when there is no file. Malformed entries raise RoutingError."""
    path = routing_file(repo)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise RoutingError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RoutingError(f"{path}: expected an object voice -> route")
    return {voice: Route.from_dict(entry) for voice, entry in data.items()}


def write_table(repo: Path, table: dict[str, Route]) -> None:
    """Replace routing.json in one rename (readers see the old or the new table, never half).
    A whole-table write: callers changing entries use :func:`set_route` (under the lock)."""
    path = routing_file(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    text = json.dumps({v: r.to_dict() for v, r in sorted(table.items())}, indent=1) + "\n"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def set_route(repo: Path, voice: str, route: Route | None) -> None:
    """Set (or with None remove) one voice's entry: read-modify-write under the repository lock,
    so concurrent commands on other voices (or other hosts) never lose each other's entries; the
    file is replaced in one rename, so readers never see half a table."""
    if route is not None:
        route.validate()
    with repo_lock(repo):
        table = read_table(repo)
        if route is None:
            if voice not in table:
                return
            table.pop(voice)
        else:
            table[voice] = route
        write_table(repo, table)


class RoutingTable:
    """routing.json of one repository, cached by (mtime, size); safe to share between threads.

    A file that cannot be read or parsed routes nothing (every request goes to version -1)
    and is logged once per change by the caller through ``error``.
    """

    def __init__(self, repo: Path | str | None, rng: random.Random | None = None):
        self.repo = Path(repo) if repo else None
        self.rng = rng or random.Random()
        self.lock = threading.Lock()
        self.stamp = None
        self.table: dict[str, Route] = {}
        self.error = ""
        self._unreported = False

    @classmethod
    def from_env(cls) -> "RoutingTable":
        return cls(os.environ.get(ENV_REPO) or None)

    def _refresh(self) -> None:
        if self.repo is None:
            return
        path = routing_file(self.repo)
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self.stamp:
            return
        try:
            self.table, self.error = (read_table(self.repo) if stamp else {}), ""
        except (RoutingError, OSError) as exc:
            self.table, self.error = {}, str(exc)
            self._unreported = True
        self.stamp = stamp

    def pop_error(self) -> str:
        """The last read error, once (so a broken file is logged once per change, not per request)."""
        with self.lock:
            if not self._unreported:
                return ""
            self._unreported = False
            return self.error

    def route(self, voice: str) -> Route | None:
        with self.lock:
            self._refresh()
            return self.table.get(voice)

    def choose(self, voice: str) -> tuple[int, int | None]:
        """(version to ask for, fallback version or None); (-1, None) without a canary."""
        route = self.route(voice)
        if route is None:
            return CURRENT, None
        with self.lock:
            draw = self.rng.random()
        return route.choose(draw)
