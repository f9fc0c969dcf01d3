"""``gsv-triton control``: the small control service beside one Triton server (one per replica).

    gsv-triton control --repo DIR --triton HOST:GRPC --triton-http HOST:HTTP --port P
                       [--triton-metrics HOST:PORT] [--redis redis://HOST:PORT/0] [--replica-id ID]
                       [--token T | $GSV_CONTROL_TOKEN] [--redis-secret S | $GSV_REDIS_SECRET]
                       [--allow-origin URL ...] [--allow-host NAME ...]

Who may ask what:

- ``GET /health`` and ``GET /metrics`` are open (probes, Prometheus).
- The ``POST`` endpoints need ``Authorization: Bearer <token>`` when a token is configured
  (``--token`` or ``$GSV_CONTROL_TOKEN``; compared in constant time; 401 with
  ``WWW-Authenticate: Bearer`` otherwise). The service refuses to start bound to a non-loopback
  address without a token. ``GET /events`` (voice names, reasons) needs the token too when one
  is configured.
- Against cross-site requests and DNS rebinding (which reach a loopback-bound service from any web
  page), with or without a token: a ``POST`` must be ``Content-Type: application/json`` (else 415);
  an ``Origin`` header, on a ``POST`` or ``/events``, must be one of ``--allow-origin`` (none by
  default, so any browser-sent cross-origin request is refused, 403); the ``Host`` header must name
  the bound address, ``localhost``, ``127.0.0.1``, ``::1`` or one of ``--allow-host`` (``*``: any),
  else 403.
- Request bodies are at most 64 KiB of JSON, checked field by field (``PublishRequest`` ...): unknown
  fields, wrong types (``true`` for a version, ``1e999``, ``NaN``) and names that are not voice names
  get 400 ``{"error": "..."}`` (one line). Unexpected failures answer 500 ``{"error": "internal
  error (see the control service log)"}``; the traceback goes to the log only. Reasons are cut to
  500 characters and stripped of control characters.

HTTP API (aiohttp):

- ``GET /health``: 200 when this service runs and Triton is live (a liveness probe), else 503.
- ``GET /health?voice=NAME&version=latest|N``: 200 only when that version of the voice is READY
  in this replica's Triton (``latest``: the active version recorded in the repository), else 503
  with ``{"voice", "version", "state", "reason", "last_event"}`` (Triton's state and reason, the
  version's last history event): a readiness probe.
- ``GET /events``: Server-Sent Events, one per history event appended by anyone (export, voice
  models, swap commands, any replica on the shared repository): ``event: <staged|validated|
  active|failed|quarantined|rolled_back|released|canary|promoted>``, ``data: <the event as JSON>``,
  ``id: <byte offset after the line>``. ``?replay=1`` sends the last ``limit`` past events first
  (default 100, at most 1000); ``?since=OFFSET`` (or a ``Last-Event-ID: OFFSET`` header)
  the events after that offset, at most ``limit``: when more remain the page ends with ``event:
  more`` (``data: {"next": OFFSET}``) and the stream closes (an ``EventSource`` reconnects with
  ``Last-Event-ID`` and gets the next page); else the stream goes live. The headers
  ``X-Replay-Next`` / ``X-Replay-More`` say the same. Each client's queue holds at most 256
  events: a client that falls further behind (or whose socket does not take a write for 10 s) gets
  ``event: dropped`` (``data: {"reason"}``) and its stream is closed; at most 64 clients at once.
- ``GET /metrics``: Prometheus text. ``gsv_active_version{voice}``, ``gsv_canary_version{voice}``,
  ``gsv_canary_weight{voice}`` (from the repository), ``gsv_swaps_total{voice}`` (times the
  version recorded ``active``/``promoted`` for the voice changed, read from the shared history:
  fleet-wide, replicas recording the same version count once, the first version is not a swap,
  a canary going live counts), ``gsv_failed_validations_total{voice}``
  (distinct versions with a ``failed`` or ``quarantined`` event), ``gsv_control_loads_total{voice,
  result}`` (loads this service made), ``gsv_control_redis_connected``,
  ``gsv_control_redis_dropped_total{reason}``, ``gsv_control_redis_coalesced_total``,
  ``gsv_control_sse_clients``, ``gsv_control_sse_dropped_total``; and, when
  ``--triton-metrics`` is given, the ``gsv_voice_in_flight{model,version}`` gauge copied from
  this replica's Triton metrics endpoint at each scrape (Triton's own endpoint has it too).
- ``POST /publish {"voice", "version"?}``: load an already-written version (default: the newest
  folder) here, record it active and announce it to the other replicas. ``POST /rollback
  {"voice", "to"?, "reason"?}``, ``POST /canary {"voice", "version", "weight"}``, ``POST /promote
  {"voice"}``: as the CLI commands, on this replica's Triton. Answers 200 with the outcome, 422
  when the version was refused (quarantined), 409 for other refusals.

Replicas: every service subscribes to the Redis channel ``gsv:swap``; on a message from another
origin it calls ``load_model`` of that voice on its own Triton (the repository on the shared
volume already says what to load). Messages are signed with HMAC-SHA256 when the replicas share
``--redis-secret`` (``ops.sync``): then unsigned, badly signed or stale (more than 5 minutes)
messages are dropped with a warning (counted in ``gsv_control_redis_dropped_total{reason}``);
without a secret, sync is unauthenticated and the service says so at start. Messages are
coalesced per voice: at most one follow runs and one waits per voice of the repository (a burst
of messages for a voice costs at most two loads); messages naming voices the repository does not
have are dropped. Redis passwords are never logged (``redact_url``, and a log filter).

Convergence: at start, after every (re)connection to Redis and every ``--converge-interval``
seconds, each voice whose READY versions in Triton differ from what the repository says
(``swap.served_versions``) is loaded again; a load that failed is not retried until the
repository changes.

No torch here: the service runs on serving hosts.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import socket
import sys
import time
import urllib.request
from pathlib import Path

from ops import admin, swap, sync
from ops.sync import redact_url
from python_backend import history, layout
from python_backend.routing import read_table

LOG = logging.getLogger("gsv.control")
GRACE = 120.0  # seconds a new, undecided version folder is left to its publisher
TOKEN_ENV = "GSV_CONTROL_TOKEN"
MAX_BODY = 64 * 1024  # bytes of a POST body
MAX_VERSION = 10**9
MAX_TEXT = 500  # characters of a reason
SSE_QUEUE = 256  # events waiting per event-stream client
SSE_CLIENTS = 64  # event-stream clients at once
SSE_WRITE_TIMEOUT = 10.0  # seconds a client's socket may refuse a write before it is dropped
REPLAY_DEFAULT, REPLAY_MAX = 100, 1000  # events per replay page
REPLAY_BYTES = 4 * 1024 * 1024  # bytes of history read for one page at most
PENDING_VOICES = 1024  # voices waiting for a follow at once (at most one entry each)
INTERNAL = "internal error (see the control service log)"


# ---- requests ----

class BadRequest(ValueError):
    """A request body that is not what the endpoint takes (answered 400 with this message)."""


def _one_line(text) -> str:
    return " ".join(str(text).split())[:1000]


def parse_body(raw: bytes) -> dict:
    """The JSON object of a POST body: UTF-8, no NaN/Infinity, no duplicate keys."""
    def pairs(items):
        out = {}
        for key, value in items:
            if key in out:
                raise BadRequest(f"field {key!r} given twice")
            out[key] = value
        return out

    def constant(name):
        raise BadRequest(f"{name} is not a JSON number")

    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=constant, object_pairs_hook=pairs)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    except BadRequest:
        raise
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not JSON ({_one_line(exc)})") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _fields(body: dict, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; this endpoint takes "
                         f"{', '.join(required + optional)}")
    missing = [name for name in required if name not in body]
    if missing:
        raise BadRequest(f"missing field(s) {', '.join(missing)}")


def _voice(value) -> str:
    if not isinstance(value, str):
        raise BadRequest("voice must be a string")
    try:
        return layout.check_voice_name(value)
    except layout.LayoutError as exc:
        raise BadRequest(_one_line(exc)) from None


def _version(name: str, value) -> int:
    if type(value) is not int or not 1 <= value <= MAX_VERSION:  # bool is an int subclass: refused too
        raise BadRequest(f"{name} must be an integer from 1 to {MAX_VERSION}")
    return value


def _weight(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise BadRequest("weight must be a number from 0 to 1")
    return float(value)


def _text(name: str, value) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if len(value) > MAX_TEXT:
        raise BadRequest(f"{name} is longer than {MAX_TEXT} characters")
    return history.clean_text(value)


@dataclasses.dataclass(frozen=True)
class PublishRequest:
    """``POST /publish {"voice", "version"?}`` (default: the newest version folder)."""
    voice: str
    version: int | None = None

    @classmethod
    def parse(cls, body: dict) -> "PublishRequest":
        _fields(body, ("voice",), ("version",))
        version = body.get("version")
        return cls(_voice(body["voice"]), None if version is None else _version("version", version))


@dataclasses.dataclass(frozen=True)
class RollbackRequest:
    """``POST /rollback {"voice", "to"?, "reason"?}``."""
    voice: str
    to: int | None = None
    reason: str = ""

    @classmethod
    def parse(cls, body: dict) -> "RollbackRequest":
        _fields(body, ("voice",), ("to", "reason"))
        to = body.get("to")
        return cls(_voice(body["voice"]), None if to is None else _version("to", to),
                   _text("reason", body.get("reason", "")))


@dataclasses.dataclass(frozen=True)
class CanaryRequest:
    """``POST /canary {"voice", "version", "weight"}``."""
    voice: str
    version: int
    weight: float

    @classmethod
    def parse(cls, body: dict) -> "CanaryRequest":
        _fields(body, ("voice", "version", "weight"))
        return cls(_voice(body["voice"]), _version("version", body["version"]), _weight(body["weight"]))


@dataclasses.dataclass(frozen=True)
class PromoteRequest:
    """``POST /promote {"voice"}``."""
    voice: str

    @classmethod
    def parse(cls, body: dict) -> "PromoteRequest":
        _fields(body, ("voice",))
        return cls(_voice(body["voice"]))


REQUESTS = {"publish": PublishRequest, "rollback": RollbackRequest, "canary": CanaryRequest, "promote": PromoteRequest}


def parse_request(action: str, raw: bytes):
    """The typed request of ``action`` from a POST body; raises ``BadRequest``."""
    return REQUESTS[action].parse(parse_body(raw))


# ---- who may ask ----

def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The host of a ``Host`` header, lower case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _origin(value: str) -> str:
    return value.strip().rstrip("/").lower()


@dataclasses.dataclass
class Access:
    """What the HTTP endpoints require (see the module docstring)."""
    token: str | None = None
    allow_origins: frozenset = frozenset()
    allow_hosts: frozenset = frozenset({"localhost", "127.0.0.1", "::1"})

    @classmethod
    def make(cls, token: str | None, origins=(), hosts=(), bind: str | None = "127.0.0.1") -> "Access":
        names = {"localhost", "127.0.0.1", "::1", *(_host_name(h) if h != "*" else "*" for h in hosts)}
        if bind:
            names.add(bind.strip().strip("[]").lower())
        return cls(token or None, frozenset(_origin(o) for o in origins), frozenset(names))

    def refusal(self, request, write: bool):
        """None when the request may go on, else the (status, message, headers) to answer."""
        host = request.headers.get("Host")
        if "*" not in self.allow_hosts and (host is None or _host_name(host) not in self.allow_hosts):
            return 403, (f"Host {host!r} is not allowed (this service answers to {', '.join(sorted(self.allow_hosts))}; "
                         f"add names with --allow-host)"), {}
        origin = request.headers.get("Origin")
        if origin is not None and _origin(origin) not in self.allow_origins:
            return 403, f"Origin {origin!r} is not allowed (add it with --allow-origin)", {}
        if self.token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # header values keep undecodable bytes as surrogates: compare the bytes themselves
            given = given.strip().encode("utf-8", "surrogateescape")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.token.encode("utf-8", "surrogateescape")):
                return 401, "a valid bearer token is required (Authorization: Bearer <token>)", \
                    {"WWW-Authenticate": 'Bearer realm="gsv-triton control"'}
        if write and request.content_type != "application/json":
            return 415, "the body must be JSON with Content-Type: application/json", {}
        return None


def _event(line: bytes) -> "history.Event | None":
    """One history line as an event (its text cleaned), None when it is not one."""
    try:
        return history.Event(**json.loads(line))
    except (ValueError, TypeError, RecursionError):
        return None


def _query_int(query, name: str, default: int, low: int, high: int | None) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not re.fullmatch(r"[0-9]{1,15}", value) or int(value) < low or (high is not None and int(value) > high):
        raise BadRequest(f"{name} must be a whole number from {low}" + (f" to {high}" if high is not None else ""))
    return int(value)


def _error(status: int, message: str, headers: dict | None = None):
    from aiohttp import web

    return web.json_response({"error": _one_line(message)}, status=status, headers=headers)


class _Subscriber:
    """One event-stream client: a bounded queue; ``dropped`` says why it was cut off."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue(SSE_QUEUE)
        self.dropped: str | None = None


def text_frontend_files(repo: Path) -> dict:
    """What the repository gives the text front end (the ``tts`` models load it at start)."""
    g2pw = (layout.g2pw_dir(repo) / "g2pW.onnx").is_file()
    upstream = layout.upstream_text_dir(repo).is_dir()
    out = {"g2pw": g2pw, "upstream_dictionaries": upstream}
    if not g2pw:
        out["warning"] = "G2PW is off: Chinese polyphones follow pypinyin; export once with --g2pw DIR"
    return out


class ControlService:
    def __init__(self, repo: Path, triton: str, triton_http: str | None = None, triton_metrics: str | None = None,
                 redis_url: str | None = None, replica_id: str | None = None, converge_interval: float = 30.0,
                 admin_key: str | None = None, *, token: str | None = None, redis_secret: str | None = None,
                 access: Access | None = None):
        self.repo = Path(repo)
        self.access = access or Access.make(token)
        self.redis_secret = redis_secret or None
        self.admin_key = admin.read(self.repo, admin_key)  # Triton's, for load/unload and the repository index
        self.triton = triton
        self.triton_http = triton_http
        self.triton_metrics = triton_metrics
        self.redis_url = redis_url
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.converge_interval = converge_interval
        self.redis_connected = False
        self.loads: dict[tuple[str, str], int] = {}
        self.failed_targets: dict[str, tuple] = {}  # voice -> repository stamp of a load that failed
        self.voice_locks: dict[str, asyncio.Lock] = {}
        self.subscribers: set[_Subscriber] = set()
        self.sse_dropped = 0
        self.following: dict[str, asyncio.Task] = {}  # voice -> its running follow
        self.pending: dict[str, str] = {}  # voice -> why, for one more follow after the running one
        self.coalesced = 0
        self.redis_dropped: dict[str, int] = {}
        self._drop_logged: dict[str, float] = {}
        self.history_offset = 0
        self.swaps: dict[str, int] = {}
        self.current: dict[str, int] = {}  # the active version per voice, as the history tells it
        self.failed: dict[str, set[int]] = {}
        self.tasks: list[asyncio.Task] = []
        self.closing = False

    # ---- Triton ----

    def _lock(self, voice: str) -> asyncio.Lock:
        return self.voice_locks.setdefault(voice, asyncio.Lock())

    async def load(self, voice: str, why: str) -> bool:
        async with self._lock(voice):
            try:
                await asyncio.to_thread(swap.load_voice, self.triton, voice, swap.LOAD_TIMEOUT, self.admin_key)
            except swap.SwapError as exc:
                LOG.warning("[control] load of voice %s (%s) failed: %s", voice, why, exc)
                self.loads[(voice, "failed")] = self.loads.get((voice, "failed"), 0) + 1
                return False
            LOG.info("[control] loaded voice %s (%s): ready versions %s", voice, why,
                     await asyncio.to_thread(swap.ready_versions, self.triton, voice, self.admin_key))
            self.loads[(voice, "ok")] = self.loads.get((voice, "ok"), 0) + 1
            return True

    def _stamp(self, voice: str) -> tuple:
        folder = layout.voice_dir(self.repo, voice)
        config = folder / "config.pbtxt"
        return (tuple(swap.present_versions(self.repo, voice)), config.stat().st_mtime_ns if config.is_file() else 0,
                json.dumps(read_table(self.repo).get(voice).to_dict()) if read_table(self.repo).get(voice) else "")

    async def converge(self, why: str = "converge") -> list[str]:
        """Load every voice whose READY versions differ from what the repository says."""
        loaded = []
        try:
            states = await asyncio.to_thread(swap.model_states, self.triton, None, self.admin_key)
        except Exception as exc:  # noqa: BLE001 - Triton down: try again next time
            LOG.warning("[control] cannot read Triton's repository index: %s", exc)
            return loaded
        for voice in layout.voices(self.repo):
            try:
                want = swap.served_versions(self.repo, voice)
                stamp = self._stamp(voice)
            except (OSError, ValueError) as exc:
                LOG.warning("[control] voice %s: cannot read its state: %s", voice, exc)
                continue
            if not want:
                continue
            ready = sorted(v for v, (s, _) in states.get(layout.voice_model(voice), {}).items() if s == "READY")
            if ready == want or self.failed_targets.get(voice) == stamp:
                continue
            if ready and not self._decided(voice, want):
                continue  # a version still being published elsewhere: its publisher loads it first
            if await self.load(voice, f"{why}: ready {ready}, repository says {want}"):
                self.failed_targets.pop(voice, None)
                loaded.append(voice)
            else:
                self.failed_targets[voice] = stamp
        return loaded

    def _decided(self, voice: str, want: list[int]) -> bool:
        """Whether the versions the repository names were decided (published, promoted, rolled back
        to, put under canary: some replica recorded it) or have sat there longer than ``GRACE``
        seconds. A version folder that just appeared is being published by someone else, whose
        own load (and validation, and quarantine if refused) must come first: loading it here at
        the same time would run a refused version's load twice, or reload a fresh instance."""
        decided = {e.version for e in history.read(self.repo, voice)
                   if e.event in ("active", "promoted", "canary", "rolled_back")}
        for version in want:
            folder = layout.voice_dir(self.repo, voice) / str(version)
            try:
                young = time.time() - folder.stat().st_ctime < GRACE  # ctime: when it was renamed in
            except OSError:
                young = False
            if version not in decided and young:
                return False
        return True

    async def _converge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.converge_interval)
            await self.converge("periodic check")

    def triton_live(self) -> bool:
        client = swap._client(self.triton)
        try:
            return bool(client.is_server_live(client_timeout=3))
        except Exception:  # noqa: BLE001
            return False
        finally:
            client.close()

    # ---- Redis ----

    async def _redis_loop(self) -> None:
        import redis.asyncio as aioredis

        where = redact_url(self.redis_url)
        while True:
            client = aioredis.from_url(self.redis_url)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(swap.CHANNEL)
                self.redis_connected = True
                LOG.info("[control] subscribed to %s on %s as %s (%s)", swap.CHANNEL, where, self.replica_id,
                         "messages signed" if self.redis_secret else "UNAUTHENTICATED: no --redis-secret")
                await self.converge("redis (re)connected")  # what was missed while away
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._on_message(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: retry, converge after reconnecting
                LOG.warning("[control] redis at %s: %s; retrying in 1 s", where, _one_line(exc))
            finally:
                self.redis_connected = False
                try:
                    await client.aclose()
                except Exception:  # noqa: BLE001
                    pass
            await asyncio.sleep(1.0)

    def _drop_message(self, kind: str, data, detail) -> None:
        """Count a dropped message; warn at most once per 10 s per kind (a flood does not flood the log)."""
        self.redis_dropped[kind] = self.redis_dropped.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._drop_logged.get(kind, -1e9) >= 10.0:
            self._drop_logged[kind] = now
            shown = data[:120] if isinstance(data, (bytes, str)) else type(data).__name__
            LOG.warning("[control] dropped a Redis message (%s: %s; %d dropped for this reason so far): %r",
                        kind, _one_line(detail), self.redis_dropped[kind], shown)

    def _on_message(self, data) -> None:
        """Check one message and queue a follow of its voice (never more than one waiting per voice)."""
        try:
            msg = sync.parse_message(data, self.redis_secret)
        except sync.BadMessage as exc:
            self._drop_message(exc.kind, data, exc)
            return
        if msg["origin"] == self.replica_id:
            return
        voice = msg["voice"]
        if not layout.voice_dir(self.repo, voice).is_dir():
            self._drop_message("unknown_voice", data, f"voice {voice} is not in the repository")
            return
        why = f"{msg['action']} of version {msg['version']} by {history.clean_text(msg['origin'], 200)}"
        if voice in self.pending:
            self.coalesced += 1
            self.pending[voice] = why
            return
        if voice in self.following:
            if len(self.pending) >= PENDING_VOICES:
                self._drop_message("overload", data, f"{len(self.pending)} voices already wait for a follow")
                return
            self.pending[voice] = why  # runs once the running follow is done
            return
        LOG.info("[control] %s of voice %s version %s announced by %s", msg["action"], voice, msg["version"],
                 history.clean_text(msg["origin"], 200))
        self._start_follow(voice, why)

    def _start_follow(self, voice: str, why: str) -> None:
        task = asyncio.create_task(self._follow_guarded(voice, why))
        self.following[voice] = task

    async def _follow_guarded(self, voice: str, why: str) -> None:
        try:
            await self._follow(voice, why)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one follow failing must not stop the others
            LOG.exception("[control] following voice %s (%s) failed", voice, why)
        finally:
            self.following.pop(voice, None)
            later = self.pending.pop(voice, None)
            if later is not None and not self.closing:
                self._start_follow(voice, later + " (and messages coalesced with it)")

    async def _follow(self, voice: str, why: str) -> None:
        """Load the voice unless this Triton already has exactly what the repository says (a
        load_model of an unchanged model is not free: Triton may re-instantiate it)."""
        try:
            want = swap.served_versions(self.repo, voice)
            ready = await asyncio.to_thread(swap.ready_versions, self.triton, voice, self.admin_key)
        except Exception as exc:  # noqa: BLE001 - cannot tell: load
            LOG.warning("[control] voice %s: cannot compare versions (%s); loading", voice, exc)
            want, ready = [1], []
        if want and ready == want:
            LOG.info("[control] voice %s already serves %s (%s)", voice, want, why)
            return
        async with self._lock(voice):
            if await asyncio.to_thread(swap.ready_versions, self.triton, voice, self.admin_key) == want:
                return
        await self.load(voice, why)

    # ---- history ----

    def _count(self, event: history.Event) -> None:
        # a swap = the voice's active version changed; several replicas recording the same
        # version active (each voice model does at its load) count once
        if event.event in ("active", "promoted") and self.current.get(event.voice) != event.version:
            if event.voice in self.current:
                self.swaps[event.voice] = self.swaps.get(event.voice, 0) + 1
            self.current[event.voice] = event.version
        if event.event in ("failed", "quarantined"):
            self.failed.setdefault(event.voice, set()).add(event.version)

    def _read_new(self) -> list[tuple[int, dict]]:
        path = history.history_path(self.repo)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.history_offset:  # replaced or truncated: start over
            self.history_offset, self.swaps, self.failed, self.current = 0, {}, {}, {}
        if size == self.history_offset:
            return []
        with open(path, "rb") as handle:
            handle.seek(self.history_offset)
            data = handle.read(size - self.history_offset)
        out = []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next round
        for line in data[:end].splitlines(keepends=True):
            self.history_offset += len(line)
            event = _event(line)
            if event is None:
                continue
            self._count(event)
            out.append((self.history_offset, dataclasses.asdict(event)))
        return out

    async def _history_loop(self) -> None:
        first = True
        while True:
            try:
                new = self._read_new()
            except OSError as exc:
                LOG.warning("[control] cannot read the history: %s", exc)
                new = []
            if not first:
                for item in new:
                    for client in list(self.subscribers):
                        if client.dropped is None:
                            try:
                                client.queue.put_nowait(item)
                            except asyncio.QueueFull:  # the handler sees it at its next step
                                client.dropped = f"more than {SSE_QUEUE} events behind"
            first = False
            await asyncio.sleep(0.2)

    # ---- HTTP ----

    async def health(self, request):
        from aiohttp import web

        live = await asyncio.to_thread(self.triton_live)
        voice = request.query.get("voice")
        if not voice:
            body = {"status": "ok" if live else "triton not live", "triton": self.triton, "replica": self.replica_id,
                    "redis": None if not self.redis_url else self.redis_connected,
                    "text_frontend": text_frontend_files(self.repo)}
            return web.json_response(body, status=200 if live else 503)
        asked = request.query.get("version", "latest")
        try:
            layout.check_voice_name(voice)
            version = swap.active_version(self.repo, voice) if asked == "latest" else int(asked)
        except (layout.LayoutError, ValueError) as exc:
            return web.json_response({"voice": voice, "version": asked, "state": "BAD_REQUEST", "reason": str(exc)},
                                     status=400)
        if version is None:
            return web.json_response({"voice": voice, "version": asked, "state": "NOT_FOUND",
                                      "reason": f"voice {voice} has no version in the repository"}, status=503)
        ready = live and await asyncio.to_thread(swap.is_ready, self.triton, voice, version)
        body = {"voice": voice, "version": version, "state": "READY" if ready else "NOT_READY", "reason": ""}
        if not ready:
            if live:
                try:
                    states = await asyncio.to_thread(swap.model_states, self.triton, voice, self.admin_key)
                    state, reason = states.get(layout.voice_model(voice), {}).get(version, ("UNAVAILABLE", ""))
                    body["state"], body["reason"] = state or "UNAVAILABLE", reason
                except Exception as exc:  # noqa: BLE001
                    body["reason"] = f"Triton index unreadable: {exc}"
            else:
                body["state"], body["reason"] = "TRITON_NOT_LIVE", f"Triton at {self.triton} is not live"
            mine = [e for e in history.read(self.repo, voice) if e.version == version]
            if mine:
                last = mine[-1]
                body["last_event"] = {"event": last.event, "reason": last.reason, "time": last.time, "host": last.host}
                body["reason"] = body["reason"] or next((e.reason for e in reversed(mine) if e.reason), "")
        return web.json_response(body, status=200 if ready else 503)

    async def events(self, request):
        from aiohttp import web

        if len(self.subscribers) >= SSE_CLIENTS:
            return _error(503, f"too many event-stream clients ({SSE_CLIENTS}); try again later",
                          {"Retry-After": "5"})
        query = request.query
        try:
            limit = _query_int(query, "limit", REPLAY_DEFAULT, 1, None)
        except BadRequest as exc:
            return _error(400, str(exc))
        limit = min(limit, REPLAY_MAX)
        start, tail = None, False
        last = request.headers.get("Last-Event-ID", "")
        try:
            if re.fullmatch(r"[0-9]{1,15}", last):
                start = int(last)
            elif "since" in query:
                start = _query_int(query, "since", 0, 0, 10**15)
            elif query.get("replay") in ("1", "true", "yes"):
                tail = True
        except BadRequest as exc:
            return _error(400, str(exc))
        client, response = _Subscriber(), web.StreamResponse(status=204)
        self.subscribers.add(client)  # first: what is appended after `end` comes through the queue
        try:
            end = self.history_offset
            items, after, more = [], end, False
            try:
                if tail:
                    items = await asyncio.to_thread(self._tail, end, limit)
                elif start is not None and start < end:
                    items, after = await asyncio.to_thread(self._forward, start, end, limit)
                    more = after < end
            except OSError as exc:
                LOG.warning("[control] cannot read the history for a replay: %s", exc)
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                "X-Replay-Next": str(after), "X-Replay-More": "1" if more else "0"})
            await response.prepare(request)
            for item in items:
                if not await self._write(response, client, self._sse(*item)):
                    return await self._dropped(request, response, client)
            if more:  # the client asks again from `after` (an EventSource does, with Last-Event-ID)
                await self._write(response, client, b"retry: 1000\nevent: more\ndata: "
                                  + json.dumps({"next": after}).encode() + b"\n\n")
                response.force_close()
                return response
            if not await self._write(response, client, b": connected\n\n"):
                return await self._dropped(request, response, client)
            while client.dropped is None:
                try:
                    item = await asyncio.wait_for(client.queue.get(), timeout=15)
                except asyncio.TimeoutError:
                    data = b": keep-alive\n\n"
                else:
                    data = self._sse(*item)
                if client.dropped is not None or not await self._write(response, client, data):
                    break
            return await self._dropped(request, response, client)
        except ConnectionResetError:  # the client went away
            return response
        finally:
            self.subscribers.discard(client)

    @staticmethod
    async def _write(response, client: _Subscriber, data: bytes) -> bool:
        """Write within ``SSE_WRITE_TIMEOUT``; False (and the client marked dropped) when the
        client's socket did not take it: it is not reading."""
        try:
            await asyncio.wait_for(response.write(data), SSE_WRITE_TIMEOUT)
            return True
        except asyncio.TimeoutError:
            client.dropped = client.dropped or f"not reading (a write waited {SSE_WRITE_TIMEOUT:.0f} s)"
            return False

    async def _dropped(self, request, response, client: _Subscriber):
        """Tell a client it was dropped (when its socket still takes it) and close its stream."""
        self.sse_dropped += 1
        LOG.warning("[control] dropped an event-stream client (%s): %s", request.remote, client.dropped)
        final = b"event: dropped\ndata: " + json.dumps({"reason": client.dropped}).encode() + b"\n\n"
        response.force_close()
        try:
            await asyncio.wait_for(response.write(final), 1.0)
        except (asyncio.TimeoutError, ConnectionError):
            if request.transport is not None:
                request.transport.abort()  # unsent bytes are dropped with the client
        return response

    def _tail(self, end: int, limit: int) -> list[tuple[int, dict]]:
        """The last ``limit`` events before byte ``end`` (a line boundary), reading backwards."""
        path = history.history_path(self.repo)
        data, pos, lines = b"", end, 0
        with open(path, "rb") as handle:
            while pos > 0 and lines <= limit and end - pos < REPLAY_BYTES:
                step = min(64 * 1024, pos)
                pos -= step
                handle.seek(pos)
                chunk = handle.read(step)
                lines += chunk.count(b"\n")
                data = chunk + data
        if pos > 0:  # a partial first line
            cut = data.find(b"\n") + 1
            pos, data = pos + cut, data[cut:]
        kept = data.splitlines(keepends=True)[-limit:]
        offset = end - sum(len(line) for line in kept)
        out = []
        for line in kept:
            offset += len(line)
            event = _event(line)
            if event is not None:
                out.append((offset, dataclasses.asdict(event)))
        return out

    def _forward(self, start: int, end: int, limit: int) -> tuple[list[tuple[int, dict]], int]:
        """At most ``limit`` events from byte ``start`` (moved to the next line start when inside
        a line) up to ``end``; and the offset after the last one read."""
        path = history.history_path(self.repo)
        out, pos = [], start
        with open(path, "rb") as handle:
            if start > 0:
                handle.seek(start - 1)
                if handle.read(1) != b"\n":
                    pos += len(handle.readline(REPLAY_BYTES))
            handle.seek(pos)
            read = 0
            while pos < end and len(out) < limit and read < REPLAY_BYTES:
                line = handle.readline(min(end - pos, REPLAY_BYTES))
                if not line.endswith(b"\n"):
                    break
                pos += len(line)
                read += len(line)
                event = _event(line)
                if event is not None:
                    out.append((pos, dataclasses.asdict(event)))
        return out, min(pos, end)

    @staticmethod
    def _sse(offset: int, event: dict) -> bytes:
        return f"id: {offset}\nevent: {event.get('event', 'message')}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()

    def _metrics_text(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        service = self

        class Collector:
            def collect(self):
                active = GaugeMetricFamily("gsv_active_version", "active version of each voice (from the repository)",
                                           labels=["voice"])
                canary = GaugeMetricFamily("gsv_canary_version", "candidate version of a voice under canary",
                                           labels=["voice"])
                weight = GaugeMetricFamily("gsv_canary_weight", "share of a voice's requests sent to its canary",
                                           labels=["voice"])
                table = read_table(service.repo)
                for voice in layout.voices(service.repo):
                    version = swap.active_version(service.repo, voice)
                    if version is not None:
                        active.add_metric([voice], version)
                    if voice in table:
                        canary.add_metric([voice], table[voice].canary)
                        weight.add_metric([voice], table[voice].weight)
                swaps = CounterMetricFamily("gsv_swaps", "times the active version of each voice changed (all replicas)",
                                            labels=["voice"])
                known = set(layout.voices(service.repo)) | set(service.swaps) | set(service.failed)
                failed = CounterMetricFamily("gsv_failed_validations", "versions of each voice refused at load",
                                             labels=["voice"])
                for voice in sorted(known):
                    swaps.add_metric([voice], service.swaps.get(voice, 0))
                    failed.add_metric([voice], len(service.failed.get(voice, ())))
                loads = CounterMetricFamily("gsv_control_loads", "load_model calls made by this control service",
                                            labels=["voice", "result"])
                for (voice, result), n in sorted(service.loads.items()):
                    loads.add_metric([voice, result], n)
                redis_up = GaugeMetricFamily("gsv_control_redis_connected", "1 while subscribed to Redis")
                redis_up.add_metric([], 1 if service.redis_connected else 0)
                dropped = CounterMetricFamily("gsv_control_redis_dropped", "Redis messages dropped (unsigned, "
                                              "bad signature, stale, malformed, unknown voice, overload)",
                                              labels=["reason"])
                for reason, n in sorted(service.redis_dropped.items()):
                    dropped.add_metric([reason], n)
                coalesced = CounterMetricFamily("gsv_control_redis_coalesced", "Redis messages merged into a follow "
                                                "already waiting for the same voice")
                coalesced.add_metric([], service.coalesced)
                clients = GaugeMetricFamily("gsv_control_sse_clients", "event-stream clients connected")
                clients.add_metric([], len(service.subscribers))
                sse_dropped = CounterMetricFamily("gsv_control_sse_dropped", "event-stream clients dropped (too slow)")
                sse_dropped.add_metric([], service.sse_dropped)
                yield from (active, canary, weight, swaps, failed, loads, redis_up, dropped, coalesced, clients,
                            sse_dropped)

        registry = CollectorRegistry()
        registry.register(Collector())
        return generate_latest(registry)

    def _triton_in_flight(self) -> bytes:
        if not self.triton_metrics:
            return b""
        try:
            with urllib.request.urlopen(f"http://{self.triton_metrics}/metrics", timeout=3) as resp:
                text = resp.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"# Triton metrics unavailable: {exc}\n".encode()
        keep = [line for line in text.splitlines()
                if line.startswith("gsv_voice_in_flight") or line.startswith("# HELP gsv_voice_in_flight")
                or line.startswith("# TYPE gsv_voice_in_flight")]
        return ("\n".join(keep) + "\n").encode() if keep else b""

    async def metrics(self, request):
        from aiohttp import web

        body = await asyncio.to_thread(lambda: self._metrics_text() + self._triton_in_flight())
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _operate(self, request, action: str):
        from aiohttp import web

        try:
            req = parse_request(action, await request.read())
        except BadRequest as exc:
            return _error(400, f"bad request: {exc}")
        repo, url, origin, key = self.repo, self.triton, self.replica_id, self.admin_key
        voice = req.voice
        if action == "publish":
            def call():
                version = req.version
                if version is None:
                    present = swap.present_versions(repo, voice)
                    version = present[-1] if present else 0
                return swap.activate(repo, voice, version, url, self.redis_url, origin, key)
        elif action == "rollback":
            def call():
                return swap.rollback(repo, voice, url, req.to, self.redis_url, origin, req.reason, key)
        elif action == "canary":
            def call():
                return swap.canary(repo, voice, req.version, req.weight, url, self.redis_url, origin, key)
        else:
            def call():
                return swap.promote(repo, voice, url, self.redis_url, origin, key)

        def signed():
            swap.use_redis_secret(self.redis_secret)  # this thread's copy of the context only
            return call()

        try:
            async with self._lock(voice):
                outcome = await asyncio.to_thread(signed)
        except swap.Refused as exc:
            return web.json_response({"error": _one_line(exc), "refused": True}, status=422)
        except (swap.SwapError, ValueError, OSError) as exc:
            return _error(409, str(exc))
        return web.json_response(outcome.to_dict())

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors, self._guard])
        app.router.add_get("/health", self.health)
        app.router.add_get("/events", self.events)
        app.router.add_get("/metrics", self.metrics)
        for action in swap.ACTIONS:
            app.router.add_post(f"/{action}", lambda request, a=action: self._operate(request, a))
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    @property
    def _errors(self):
        from aiohttp import web

        @web.middleware
        async def errors(request, handler):
            """No traceback in any answer: unexpected failures are logged and answered with one line;
            aiohttp's own refusals (404, 405, 413) are answered as JSON too."""
            try:
                return await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                text = (exc.text or exc.reason or "").strip()
                text = re.sub(r"^\d{3}: ", "", text) or exc.reason
                headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
                return _error(exc.status, text, headers)
            except (asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception:  # noqa: BLE001 - the traceback goes to the log, never to the client
                LOG.exception("[control] %s %s failed", request.method, request.path)
                return _error(500, INTERNAL)
        return errors

    @property
    def _guard(self):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            """Token, Host, Origin and Content-Type checks on the POST endpoints and /events."""
            write = request.method not in ("GET", "HEAD", "OPTIONS")
            if write or request.path == "/events":
                refusal = self.access.refusal(request, write)
                if refusal is not None:
                    status, message, headers = refusal
                    LOG.warning("[control] refused %s %s from %s: %s", request.method, request.path, request.remote,
                                message)
                    return _error(status, message, headers)
            return await handler(request)
        return guard

    async def _on_startup(self, app) -> None:
        self._read_new()  # counters from the whole history; SSE clients get what comes next
        await self.converge("start")
        self.tasks.append(asyncio.create_task(self._history_loop()))
        self.tasks.append(asyncio.create_task(self._converge_loop()))
        if self.redis_url:
            if not self.redis_secret:
                LOG.warning("[control] replica sync through Redis is UNAUTHENTICATED: anyone who can publish on %s "
                            "can make this replica load voices; give every replica and swap command the same "
                            "--redis-secret (or $%s)", redact_url(self.redis_url), sync.SECRET_ENV)
            self.tasks.append(asyncio.create_task(self._redis_loop()))

    async def _on_cleanup(self, app) -> None:
        self.closing = True
        tasks = self.tasks + list(self.following.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---- CLI ----

def add_control_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("control", help="the control service beside one Triton: health, events, metrics, replica sync")
    _add_args(p)
    return p


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", type=Path, required=True, help="the model repository (shared by all replicas)")
    p.add_argument("--triton", required=True, help="this replica's Triton gRPC address HOST:PORT")
    p.add_argument("--triton-http", help="this replica's Triton HTTP address HOST:PORT (informational)")
    p.add_argument("--triton-metrics", help="this replica's Triton metrics address HOST:PORT: re-expose gsv_voice_in_flight")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8003)
    p.add_argument("--redis", default=os.environ.get("GSV_REDIS"), help="Redis URL (default: $GSV_REDIS); none: no replica sync")
    p.add_argument("--replica-id", help="this replica's name in Redis messages (default: host:pid)")
    p.add_argument("--converge-interval", type=float, default=30.0, help="seconds between repository checks")
    p.add_argument("--admin-key", default=None,
                   help="this replica's Triton admin key (default: $GSV_ADMIN_KEY, else REPO/.gsv/admin-key)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                   help=f"bearer token the POST endpoints and /events require (default: ${TOKEN_ENV}; prefer the "
                        "environment: arguments are visible to other users); required to bind a non-loopback address")
    p.add_argument("--redis-secret", default=os.environ.get(sync.SECRET_ENV) or None,
                   help=f"shared secret signing and checking Redis sync messages, the same on every replica and "
                        f"swap command (default: ${sync.SECRET_ENV}); without it sync is unauthenticated")
    p.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="a browser Origin (scheme://host[:port]) allowed to POST and read /events; repeatable "
                        "(default: none: requests carrying an Origin header are refused)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host header name accepted besides the bound address, localhost, 127.0.0.1 and ::1; "
                        "repeatable; '*': any (only sensible with a token)")


class _Redact(logging.Filter):
    """Keeps secrets (the Redis password, the token, the Redis secret) out of every log line."""

    def __init__(self, secrets):
        super().__init__()
        self.secrets = [x for x in secrets if x and len(x) >= 3]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = message
        for secret in self.secrets:
            clean = clean.replace(secret, "***")
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _redis_password(url: str | None) -> str | None:
    from urllib.parse import unquote, urlsplit

    if not url:
        return None
    try:
        parts = urlsplit(url)
        return unquote(parts.password) if parts.password else None
    except ValueError:
        return None


def cmd_control(args) -> int:
    from aiohttp import web

    if not args.token and not is_loopback(args.host):
        print(f"gsv-triton: refusing to serve the control service on {args.host} (not a loopback address) without a "
              f"token: set ${TOKEN_ENV} (or --token), or bind 127.0.0.1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    redact = _Redact([_redis_password(args.redis), args.token, args.redis_secret])
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    if args.token and len(args.token) < 16:
        LOG.warning("[control] the token is shorter than 16 characters: easy to guess")
    access = Access.make(args.token, args.allow_origin, args.allow_host, args.host)
    service = ControlService(args.repo, args.triton, args.triton_http, args.triton_metrics, args.redis,
                             args.replica_id, args.converge_interval, args.admin_key, token=args.token,
                             redis_secret=args.redis_secret, access=access)
    print(f"gsv-triton: control service for Triton {args.triton} on http://{args.host}:{args.port} "
          f"(repository {args.repo}, redis {redact_url(args.redis) if args.redis else 'none'}"
          f"{' (signed)' if args.redis and args.redis_secret else ''}, replica {service.replica_id}, "
          f"{'token required' if args.token else 'no token: loopback only'})", flush=True)
    web.run_app(service.app(), host=args.host, port=args.port, print=None, handle_signals=True,
                shutdown_timeout=2)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gsv-triton control")
    _add_args(parser)
    return cmd_control(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
