"""The version history of a repository: one JSON line per event, appended, never rewritten.

``REPO/.gsv/history.jsonl`` is shared by everything that changes versions (export, the voice
model at load and unload, publish, rollback, canary, the control services of all replicas),
so ``gsv-triton versions VOICE`` can tell what happened to each version and why. Lines are
written with one ``write`` on an ``O_APPEND`` descriptor, which keeps concurrent writers
(several replicas on one shared repository) from interleaving within a line.

Free text in an event (``reason``, ``label``, ``host``) is stripped of control characters when the
event is made, and again when it is read back (a line written by an older or foreign writer):
C0/C1 controls and DEL, which would drive a terminal showing ``gsv-triton versions`` (escape
sequences), and the bidirectional overrides that make text read differently than it is stored.
Tabs and line breaks become spaces.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from python_backend.layout import STATE_DIR

HISTORY_FILE = "history.jsonl"
_SPACES = re.compile(r"[\t\n\r\v\f\x1c-\x1f\x85\u2028\u2029]")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_text(value, limit: int | None = None) -> str:
    """``value`` as one line without control characters (line breaks and tabs become spaces),
    cut to ``limit`` characters when given."""
    text = _CONTROLS.sub("", _SPACES.sub(" ", str(value)))
    return text[:limit] if limit is not None else text


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
        self.reason, self.label, self.host = clean_text(self.reason), clean_text(self.label), clean_text(self.host)
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
