"""The version history of a repository: one JSON line per event, appended, never rewritten.

``REPO/.gsv/history.jsonl`` is shared by everything that changes versions (export, the voice
model at load and unload, publish, rollback, canary, the control services of all replicas),
so ``gsv-triton versions VOICE`` can tell what happened to each version and why. Lines are
written with one ``write`` on an ``O_APPEND`` descriptor, which keeps concurrent writers
(several replicas on one shared repository) from interleaving within a line.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from python_backend.layout import STATE_DIR

HISTORY_FILE = "history.jsonl"
EVENTS = ("staged", "validated", "active", "failed", "quarantined", "rolled_back", "released", "canary", "promoted")


@dataclass
class Event:
    voice: str
    version: int
    event: str  #: one of EVENTS
    reason: str = ""  #: why (failures, rollbacks)
    label: str = ""
    time: float = field(default_factory=time.time)
    host: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def __post_init__(self):
        if self.event not in EVENTS:
            raise ValueError(f"unknown history event {self.event!r}; one of {EVENTS}")


def history_path(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / HISTORY_FILE


def append(repo: Path, event: Event) -> None:
    path = history_path(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(asdict(event), ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read(repo: Path, voice: str | None = None) -> list[Event]:
    path = history_path(repo)
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
            event = Event(**data)
        except (ValueError, TypeError):
            continue  # a torn last line after a crash: skip it, keep the rest
        if voice is None or event.voice == voice:
            events.append(event)
    return events
