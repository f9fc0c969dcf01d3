"""Replica sync messages on Redis: signing, checking, and Redis URLs without their passwords.

A message on ``gsv:swap`` (``swap.CHANNEL``) is one JSON object ``{"voice", "version", "action",
"origin", "time"}``; with a shared secret (``--redis-secret`` / ``$GSV_REDIS_SECRET``) it also
carries ``"sig"``: the hex HMAC-SHA256 of the other fields as canonical JSON (sorted keys, no
spaces, ASCII). A receiver with a secret drops messages that are unsigned, badly signed, or
whose ``time`` is more than ``MAX_AGE`` seconds away from its clock (a replayed message).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time

SECRET_ENV = "GSV_REDIS_SECRET"
MAX_AGE = 300.0  #: seconds a signed message stays acceptable (clock skew included)
MAX_MESSAGE = 4096  #: bytes; longer messages are dropped unread
ACTIONS = ("publish", "rollback", "canary", "promote")


class BadMessage(ValueError):
    """A message that is not a valid, authentic replica announcement; ``kind`` says why."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def redact_url(url: str | None) -> str:
    """``url`` with its password replaced by ``***``: ``redis://user:pass@host`` → ``redis://user:***@host``,
    ``rediss://:pass@host`` → ``rediss://:***@host``, ``redis://pass@host`` → ``redis://***@host``, and a
    ``?password=`` query parameter (redis-py reads it too)."""
    if not url:
        return str(url)
    url = str(url)

    def userinfo(match: re.Match) -> str:
        info = match.group(2)
        return match.group(1) + (info.split(":", 1)[0] + ":***" if ":" in info else "***") + "@"

    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@", userinfo, url)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def _canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def make_message(voice: str, version, action: str, origin: str, secret: str | None = None,
                 now: float | None = None) -> str:
    fields = {"voice": voice, "version": version, "action": action, "origin": origin,
              "time": round(time.time() if now is None else now, 3)}
    if secret:
        fields["sig"] = hmac.new(secret.encode(), _canonical(fields), hashlib.sha256).hexdigest()
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def parse_message(data, secret: str | None = None, now: float | None = None, max_age: float = MAX_AGE) -> dict:
    """The checked fields of a message (``voice``, ``version``, ``action``, ``origin``); raises
    ``BadMessage`` (kind ``malformed``, ``unsigned``, ``bad_signature`` or ``stale``)."""
    from python_backend import layout

    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_MESSAGE:
        raise BadMessage("malformed", "not a message of at most %d bytes" % MAX_MESSAGE)
    try:
        msg = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BadMessage("malformed", f"not JSON ({exc})") from None
    if not isinstance(msg, dict):
        raise BadMessage("malformed", "not a JSON object")
    if secret:
        sig = msg.get("sig")
        if not isinstance(sig, str):
            raise BadMessage("unsigned", "no signature (this replica has a Redis secret)")
        fields = {k: v for k, v in msg.items() if k != "sig"}
        want = hmac.new(secret.encode(), _canonical(fields), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig.encode("utf-8", "replace"), want.encode()):
            raise BadMessage("bad_signature", "signature does not match (another secret, or forged)")
    unknown = set(msg) - {"voice", "version", "action", "origin", "time", "sig"}
    if unknown:
        raise BadMessage("malformed", f"unknown fields {sorted(unknown)}")
    voice, version, action, origin = msg.get("voice"), msg.get("version"), msg.get("action"), msg.get("origin", "")
    if not isinstance(voice, str):
        raise BadMessage("malformed", "voice is not a string")
    try:
        layout.check_voice_name(voice)
    except layout.LayoutError as exc:
        raise BadMessage("malformed", str(exc)) from None
    if version is not None and (type(version) is not int or not 0 <= version <= 10**9):
        raise BadMessage("malformed", "version is not an integer in 0..10**9")
    if action not in ACTIONS:
        raise BadMessage("malformed", f"action is not one of {ACTIONS}")
    if not isinstance(origin, str) or len(origin) > 200:
        raise BadMessage("malformed", "origin is not a string of at most 200 characters")
    stamp = msg.get("time")
    if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp)):
        raise BadMessage("malformed", "time is not a number")
    if secret:
        if stamp is None:
            raise BadMessage("unsigned", "no time in a signed message")
        age = (time.time() if now is None else now) - stamp
        if abs(age) > max_age:
            raise BadMessage("stale", f"sent {age:.0f} s from now (more than {max_age:.0f} s): a replay or a wrong clock")
    return {"voice": voice, "version": version, "action": action, "origin": origin}


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
