"""Hot swap of voice versions: publish, rollback, canary, promote, versions (no torch here).

The repository records what every replica must serve, so any replica can converge from it:

- the ACTIVE version of a voice is the highest version folder in ``voice_<NAME>/`` (Triton's
  ``latest { num_versions: 1 }`` policy loads exactly that one);
- during a canary, the voice's config.pbtxt has ``specific { versions: [A, C] }`` and
  ``.gsv/routing.json`` says which share of requests goes to C (``python_backend.routing``);
- refused versions live in ``.gsv/quarantine/``, rolled-back ones in ``.gsv/retired/``, both as
  ``voice_<NAME>.<N>.<timestamp>/``; version numbers are never reused (``layout.next_version``).

Every change is: change the repository (atomic renames / rewrites), then ``load_model`` of the
voice over gRPC on one Triton (which loads the new set of versions beside the old ones and
releases the old ones after their in-flight requests), then announce ``{voice, version, action,
origin}`` on the Redis channel ``gsv:swap`` so the other replicas' control services call
``load_model`` on their own Triton.

Who writes which history event (``.gsv/history.jsonl``; each event carries the writer's host):

- ``export_voice``: ``staged``;
- the voice model, inside each Triton's load and unload (so once per replica): ``validated`` and
  ``active`` when a load succeeded, ``failed`` + ``quarantined`` when it refused a version (the
  folder moved by ``validation.quarantine``), ``released`` when Triton unloads a version;
- this module, once per fleet-wide decision, on the replica that made it (replicas that only
  follow a Redis message write nothing): ``rolled_back`` (each version a rollback retired, with
  the reason), ``canary``, ``promoted``; ``active`` only when no voice model recorded it during
  this command's load (a rollback to a version that was already loaded); ``failed`` /
  ``quarantined`` only when a refused version was still in place after its load (a failure the
  voice model did not judge the version's fault, or a crash before its ``initialize``): publish
  quarantines it too, so the repository never names a version that failed as the one to serve.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from export.errors import ExportError
from ops import admin
from python_backend import history, layout
from python_backend.model_config import voice_model_spec
from python_backend.repo_lock import repo_lock
from python_backend.routing import Route, read_table, set_route

CHANNEL = "gsv:swap"
LOAD_TIMEOUT = 900.0
ACTIONS = ("publish", "rollback", "canary", "promote")


class SwapError(ExportError):
    """A swap command cannot run (bad arguments, repository state, Triton unreachable)."""


class Refused(SwapError):
    """The version failed its load (validation): it was quarantined and the old version serves."""


class TritonUnavailable(SwapError):
    """Triton did not answer (down, unreachable, timed out): nothing was judged about the version."""


_UNANSWERED = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


def origin_id() -> str:
    return f"cli:{socket.gethostname()}:{os.getpid()}"


# ---- repository state ----

def present_versions(repo: Path, voice: str) -> list[int]:
    return layout.version_numbers(layout.voice_dir(repo, voice))


def active_version(repo: Path, voice: str) -> int | None:
    """What the voice serves by the repository: the canary's base during a canary, else the highest folder."""
    route = read_table(repo).get(voice)
    if route is not None:
        return route.active
    present = present_versions(repo, voice)
    return present[-1] if present else None


def served_versions(repo: Path, voice: str) -> list[int]:
    """Versions Triton must have loaded for the voice: [active] or [active, canary]."""
    route = read_table(repo).get(voice)
    if route is not None:
        return sorted({route.active, route.canary})
    present = present_versions(repo, voice)
    return present[-1:]


def quarantined_versions(repo: Path, voice: str) -> dict[int, list[Path]]:
    return layout.parked_versions(layout.quarantine_root(repo), voice)


def retired_versions(repo: Path, voice: str) -> dict[int, list[Path]]:
    return layout.parked_versions(layout.retired_root(repo), voice)


def _park(repo: Path, voice: str, version: int, root: Path) -> Path:
    src = layout.voice_dir(repo, voice) / str(version)
    with repo_lock(repo):
        if not src.is_dir():  # re-checked under the lock: another command may have moved it
            raise SwapError(f"voice {voice} version {version} is no longer in {repo}; another command moved it")
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{layout.voice_model(voice)}.{version}.{time.strftime('%Y%m%dT%H%M%S')}.{layout.host_id()}-{os.getpid()}"
        dst, n = root / stem, 1
        while dst.exists():
            dst, n = root / f"{stem}-{n}", n + 1
        os.rename(src, dst)  # one rename: Triton sees the version present or gone, never half
    return dst


def retire(repo: Path, voice: str, version: int) -> Path:
    return _park(repo, voice, version, layout.retired_root(repo))


def quarantine(repo: Path, voice: str, version: int, reason: str) -> Path:
    """Move a refused version to ``.gsv/quarantine/`` with its reason; records failed + quarantined."""
    from python_backend import validation

    return validation.quarantine(layout.voice_dir(repo, voice) / str(version), reason)


def write_policy(repo: Path, voice: str, specific: tuple[int, ...] | None = None) -> None:
    """Rewrite the voice's config.pbtxt (atomically, only when it changes): latest{1} or specific."""
    from python_backend.atomic_io import write_atomic

    spec = voice_model_spec(layout.voice_model(voice))
    spec.specific_versions = tuple(specific) if specific else None
    path = layout.voice_dir(repo, voice) / "config.pbtxt"
    text = spec.render()
    with repo_lock(repo):
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_atomic(path, text)


def manifest_label(folder: Path) -> str:
    try:
        return str(json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("label", ""))
    except (OSError, ValueError):
        return ""


# ---- Triton and Redis ----

def _client(url: str):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url)


def _restricted(url: str, message: str) -> SwapError | None:
    if admin.is_refusal(message):
        return SwapError(f"Triton at {url} refused an admin call: the admin key is missing or wrong; pass "
                         f"--admin-key, set ${admin.ENV}, or run where REPO/.gsv/admin-key is readable ({message})")
    return None


def load_voice(url: str, voice: str, timeout: float = LOAD_TIMEOUT, key: str | None = None) -> None:
    """gRPC ``load_model`` of the voice (never HTTP: an HTTP load blocks HTTP inference on 2.51),
    with the admin key (``serve`` restricts the model-repository API)."""
    from tritonclient.utils import InferenceServerException

    client = _client(url)
    try:
        client.load_model(layout.voice_model(voice), headers=admin.headers(key), client_timeout=timeout)
    except InferenceServerException as exc:
        message = exc.message() if exc.message() else str(exc)
        refused = _restricted(url, message)
        if refused is None and any(code in str(exc.status() or "") for code in _UNANSWERED):
            raise TritonUnavailable(f"Triton at {url} did not answer the load of voice {voice}: {message}") from None
        raise (refused or SwapError(message)) from None
    finally:
        client.close()


def require_live(url: str) -> None:
    client = _client(url)
    try:
        live = bool(client.is_server_live(client_timeout=10))
    except Exception as exc:  # noqa: BLE001 - any transport failure: not reachable
        raise TritonUnavailable(f"Triton at {url} is not reachable over gRPC: {exc}") from None
    finally:
        client.close()
    if not live:
        raise TritonUnavailable(f"Triton at {url} is not live")


def model_states(url: str, voice: str | None = None, key: str | None = None) -> dict[str, dict[int, tuple[str, str]]]:
    """Triton's repository index: model -> version -> (state, reason) (a restricted API: the key)."""
    from tritonclient.utils import InferenceServerException

    client = _client(url)
    try:
        index = client.get_model_repository_index(headers=admin.headers(key), as_json=True).get("models", [])
    except InferenceServerException as exc:
        message = exc.message() if exc.message() else str(exc)
        raise (_restricted(url, message) or SwapError(f"Triton at {url}: {message}")) from None
    finally:
        client.close()
    out: dict[str, dict[int, tuple[str, str]]] = {}
    for entry in index:
        name, version = entry.get("name", ""), entry.get("version", "")
        if voice is not None and name != layout.voice_model(voice):
            continue
        if str(version).isdigit():
            out.setdefault(name, {})[int(version)] = (entry.get("state", ""), entry.get("reason", ""))
    return out


def ready_versions(url: str, voice: str, key: str | None = None) -> list[int]:
    states = model_states(url, voice, key).get(layout.voice_model(voice), {})
    return sorted(v for v, (state, _) in states.items() if state == "READY")


def is_ready(url: str, voice: str, version: int) -> bool:
    client = _client(url)
    try:
        return bool(client.is_model_ready(layout.voice_model(voice), str(version)))
    except Exception:  # noqa: BLE001 - unreachable or unknown: not ready
        return False
    finally:
        client.close()


_SECRET: "contextvars.ContextVar[str | None]" = contextvars.ContextVar("gsv_redis_secret", default=None)


def use_redis_secret(secret: str | None):
    """Sign this context's announcements with ``secret`` (the CLI's ``--redis-secret``; the control
    service sets it around each operation it runs); returns the ``ContextVar`` token."""
    return _SECRET.set(secret or None)


def announce(redis_url: str | None, voice: str, version: int, action: str, origin: str,
             secret: str | None = None) -> bool:
    """Tell the other replicas to load the voice; False (with a warning) when Redis is unreachable:
    they converge from the repository at their next start or periodic check. Signed (HMAC-SHA256,
    ``ops.sync``) with ``secret``, else with the one ``use_redis_secret`` set, if any."""
    if not redis_url:
        return False
    import redis

    from ops import sync

    message = sync.make_message(voice, version, action, origin, secret or _SECRET.get())
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.publish(CHANNEL, message)
        finally:
            client.close()
        return True
    except redis.RedisError as exc:
        print(f"gsv-triton: warning: could not announce on {sync.redact_url(redis_url)} ({exc}); other replicas "
              f"converge from the repository at their next check", file=sys.stderr)
        return False


# ---- operations ----

@dataclass
class Outcome:
    voice: str
    version: int
    action: str
    detail: str = ""
    announced: bool = False
    retired: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"voice": self.voice, "version": self.version, "action": self.action, "detail": self.detail,
                "announced": self.announced, "retired": self.retired}


def _recorded(repo: Path, voice: str, version: int, events: tuple[str, ...], since: float,
              with_reason: bool = False) -> bool:
    """Whether someone (the voice model, on this load) already recorded one of ``events``."""
    return any(e.version == version and e.event in events and e.time >= since - 1 and (e.reason or not with_reason)
               for e in history.read(repo, voice))


def _refused(repo: Path, voice: str, version: int, reason: str, since: float) -> Refused:
    """Record a refused load (without repeating what the voice model recorded) and park the folder."""
    folder = layout.voice_dir(repo, voice) / str(version)
    if folder.is_dir():
        # The voice model quarantines versions at fault; one still in place failed for another
        # reason (host fault, a crash before initialize). It is the highest folder, so any replica
        # would load it next: take it out too, so the repository keeps saying the old version.
        quarantine(repo, voice, version, reason)
    elif not _recorded(repo, voice, version, ("failed", "quarantined"), since, with_reason=True):
        history.append(repo, history.Event(voice, version, "failed", reason=reason))
    return Refused(f"voice {voice} version {version} was refused and quarantined; the previous version keeps "
                   f"serving. Reason: {reason}")


def _record_active(repo: Path, voice: str, version: int, since: float, reason: str = "") -> None:
    """``active`` once per decision: the voice model records it when this load loaded the version."""
    if reason or not _recorded(repo, voice, version, ("active",), since):
        history.append(repo, history.Event(voice, version, "active", reason=reason,
                                           label=manifest_label(layout.voice_dir(repo, voice) / str(version))))


def activate(repo: Path, voice: str, version: int, url: str, redis_url: str | None = None,
             origin: str | None = None, admin_key: str | None = None) -> Outcome:
    """Load an already-written version (the highest present) on ``url`` and announce it."""
    repo = Path(repo)
    key = admin.read(repo, admin_key)
    origin = origin or origin_id()
    with repo_lock(repo):  # checks and the policy write in one hold; never held across the load
        present = present_versions(repo, voice)
        if version not in present:
            raise SwapError(f"voice {voice} has no version {version} in {repo} (present: {present or 'none'})")
        if version != present[-1]:
            raise SwapError(f"voice {voice} version {version} is not the newest present ({present[-1]} is); "
                            f"roll back the newer versions first")
        if voice in read_table(repo):
            raise SwapError(f"voice {voice} has a canary running; promote it or roll it back first")
        write_policy(repo, voice)
    since = time.time()
    try:
        load_voice(url, voice, key=key)
    except TritonUnavailable as exc:
        raise SwapError(f"{exc}; voice {voice} version {version} stays in the repository unjudged: retry with "
                        f"POST /publish on a control service (replicas also load it at their next check)") from None
    except SwapError as exc:
        raise _refused(repo, voice, version, str(exc), since) from None
    if not is_ready(url, voice, version):
        raise SwapError(f"voice {voice} version {version} loaded but is not ready on {url}")
    _record_active(repo, voice, version, since)
    return Outcome(voice, version, "publish", announced=announce(redis_url, voice, version, "publish", origin))


def publish(opts, url: str, redis_url: str | None = None, origin: str | None = None,
            admin_key: str | None = None) -> Outcome:
    """Export (``ExportOptions``), load, validate (inside the load) and promote, in one step."""
    from export.voice_export import export_voice  # torch: only for the export step

    layout.check_voice_name(opts.voice)
    require_live(url)  # before minutes of export
    if opts.voice in read_table(opts.repo):
        raise SwapError(f"voice {opts.voice} has a canary running; promote it or roll it back before publishing")
    # the version number is reserved by the export itself (layout.reserve_version, under the
    # repository lock), so two publishes at once get two numbers; activate re-checks the state
    with _background_priority():
        target = export_voice(opts)
    return activate(opts.repo, opts.voice, int(target.name), url, redis_url, origin, admin_key)


@contextlib.contextmanager
def _background_priority(threads: int = 1):
    """Export beside a serving Triton without starving it: lowest CPU priority, one torch thread.

    With torch on every core, Triton's Python stubs missed their health checks on a 2-core
    machine and were restarted mid-request ("Stub process is not healthy").
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, 19)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)  # lowering the value back needs privileges
        except PermissionError:
            pass


def rollback(repo: Path, voice: str, url: str, to: int | None = None, redis_url: str | None = None,
             origin: str | None = None, reason: str = "", admin_key: str | None = None) -> Outcome:
    """Retire every version newer than ``to`` (default: the one before the active one; during a
    canary: the canary), load, announce. In-flight requests finish on the retired version."""
    repo = Path(repo)
    key = admin.read(repo, admin_key)
    origin = origin or origin_id()
    with repo_lock(repo):  # decide and pin in one hold; the load and the drain run without it
        present = present_versions(repo, voice)
        route = read_table(repo).get(voice)
        if to is None:
            if route is not None:
                to = route.active
            elif len(present) >= 2:
                to = present[-2]
            else:
                raise SwapError(f"voice {voice} has no earlier version to roll back to (present: {present or 'none'})")
        if to not in present:
            raise SwapError(f"voice {voice} has no version {to} in {repo} (present: {present or 'none'})")
        newer = [v for v in present if v > to]
        if not newer:
            raise SwapError(f"voice {voice} version {to} is already the newest version")
        if route is not None and to in (route.active, route.canary):
            set_route(repo, voice, Route(to, to, 0.0))  # pin new requests on a loaded version while we swap
        why = f"rolled back to version {to}" + (f": {reason}" if reason else "")
        # Pin `to` first and let Triton release the newer versions while their folders are still in
        # place (their in-flight requests finish there); only then move the folders out and restore
        # the `latest` policy. Moving a serving version's folder before its unload was followed by a
        # hung response send in tritonserver 2.51 under load.
        write_policy(repo, voice, specific=(to,))
    since = time.time()
    try:
        load_voice(url, voice, key=key)
    finally:
        set_route(repo, voice, None)
    _wait_released(url, voice, newer, key=key)
    with repo_lock(repo):  # park and restore the policy in one hold: no replica sees half of it
        for version in reversed(newer):
            if (layout.voice_dir(repo, voice) / str(version)).is_dir():
                retire(repo, voice, version)
                history.append(repo, history.Event(voice, version, "rolled_back", reason=why))
        write_policy(repo, voice)
    _record_active(repo, voice, to, since)
    out = Outcome(voice, to, "rollback", detail=why, retired=newer)
    out.announced = announce(redis_url, voice, to, "rollback", origin)
    return out


def _wait_released(url: str, voice: str, versions: list[int], timeout: float = LOAD_TIMEOUT,
                   key: str | None = None) -> None:
    """Wait until Triton has released ``versions`` (their in-flight requests are done)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = model_states(url, voice, key).get(layout.voice_model(voice), {})
        if all(states.get(v, ("UNAVAILABLE", ""))[0] == "UNAVAILABLE" for v in versions):
            return
        time.sleep(0.2)
    raise SwapError(f"voice {voice}: versions {versions} were not released within {timeout:.0f} s")


def canary(repo: Path, voice: str, version: int, weight: float, url: str, redis_url: str | None = None,
           origin: str | None = None, admin_key: str | None = None) -> Outcome:
    """Serve ``weight`` of the voice's requests from ``version`` (the newest folder), the rest from
    the version below it; both stay loaded (``specific`` policy) until promote or rollback."""
    repo = Path(repo)
    key = admin.read(repo, admin_key)
    origin = origin or origin_id()
    if not 0.0 <= weight <= 1.0:
        raise SwapError(f"--weight {weight} out of range [0, 1]")
    with repo_lock(repo):  # checks, routing and policy in one hold; never held across the load
        present = present_versions(repo, voice)
        if version not in present or version != present[-1]:
            raise SwapError(f"voice {voice}: the canary must be the newest version present (present: {present or 'none'})")
        current = read_table(repo).get(voice)
        share_only = current is not None and current.canary == version
        if share_only:  # only the share changes
            set_route(repo, voice, Route(current.active, version, weight))
            history.append(repo, history.Event(voice, version, "canary", reason=f"weight {weight} beside {current.active}"))
        else:
            older = [v for v in present if v < version]
            if not older:
                raise SwapError(f"voice {voice} has no version before {version} to run a canary beside")
            active = older[-1]
            set_route(repo, voice, Route(active, version, weight))  # written first: C gets traffic only once ready
            write_policy(repo, voice, (active, version))
    if share_only:
        return Outcome(voice, version, "canary", detail=f"weight {weight}",
                       announced=announce(redis_url, voice, version, "canary", origin))
    since = time.time()
    try:
        load_voice(url, voice, key=key)
    except SwapError as exc:
        with repo_lock(repo):
            set_route(repo, voice, None)
            if isinstance(exc, TritonUnavailable):
                write_policy(repo, voice)
                raise
        refusal = _refused(repo, voice, version, str(exc), since)
        write_policy(repo, voice)
        try:
            load_voice(url, voice, key=key)  # back to latest{1} on the active version
        except SwapError:
            pass
        raise refusal from None
    history.append(repo, history.Event(voice, version, "canary", reason=f"weight {weight} beside {active}",
                                       label=manifest_label(layout.voice_dir(repo, voice) / str(version))))
    return Outcome(voice, version, "canary", detail=f"weight {weight} beside {active}",
                   announced=announce(redis_url, voice, version, "canary", origin))


def promote(repo: Path, voice: str, url: str, redis_url: str | None = None, origin: str | None = None,
            admin_key: str | None = None) -> Outcome:
    """Make the canary the only version: routing entry removed, policy back to latest{1}, load."""
    repo = Path(repo)
    key = admin.read(repo, admin_key)
    origin = origin or origin_id()
    with repo_lock(repo):  # never held across the load
        route = read_table(repo).get(voice)
        if route is None:
            raise SwapError(f"voice {voice} has no canary to promote")
        set_route(repo, voice, Route(route.active, route.canary, 1.0))  # all new requests to the canary
        write_policy(repo, voice)
    try:
        load_voice(url, voice, key=key)
    finally:
        set_route(repo, voice, None)
    history.append(repo, history.Event(voice, route.canary, "promoted", reason=f"replaces {route.active}",
                                       label=manifest_label(layout.voice_dir(repo, voice) / str(route.canary))))
    return Outcome(voice, route.canary, "promote", detail=f"replaces {route.active}",
                   announced=announce(redis_url, voice, route.canary, "promote", origin))


# ---- versions table ----

@dataclass
class VersionRow:
    version: int
    state: str  # active, canary, staged, available, retired, quarantined
    label: str = ""
    staged_at: float | None = None
    last_event: str = ""
    last_at: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def version_rows(repo: Path, voice: str) -> list[VersionRow]:
    repo = Path(repo)
    events = history.read(repo, voice)
    present = present_versions(repo, voice)
    route = read_table(repo).get(voice)
    states: dict[int, str] = {}
    for v in retired_versions(repo, voice):
        states[v] = "retired"
    for v in quarantined_versions(repo, voice):
        states[v] = "quarantined"
    for v in present:
        states[v] = "available"
    if route is not None:
        states[route.active], states[route.canary] = "active", "canary"
    elif present:
        states[present[-1]] = "active"
        top_events = {e.event for e in events if e.version == present[-1]}
        if top_events and top_events <= {"staged"}:  # exported, never loaded or published
            states[present[-1]] = "staged"
            if len(present) > 1:
                states[present[-2]] = "active"
    rows = []
    for v in sorted(set(states) | {e.version for e in events}):
        mine = [e for e in events if e.version == v]
        row = VersionRow(v, states.get(v, "gone"))
        folder = layout.voice_dir(repo, voice) / str(v)
        row.label = manifest_label(folder) if folder.is_dir() else ""
        row.label = row.label or next((e.label for e in reversed(mine) if e.label), "")
        staged = [e.time for e in mine if e.event == "staged"]
        row.staged_at = staged[0] if staged else None
        if mine:
            row.last_event, row.last_at = mine[-1].event, mine[-1].time
        # why it is in its state: the last decision or failure (validation metrics are not reasons)
        row.reason = next((e.reason for e in reversed(mine) if e.reason and e.event != "validated"), "")
        rows.append(row)
    return rows


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


_VISIBLE = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\x1b": "\\e"}


def _visible(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1, bidirectional overrides, line and
    paragraph separators) shown as an escape (``\\e``, ``\\x07``, ``\\u202e``): a table printed
    to a terminal cannot carry escape sequences."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F or ch in "\u200e\u200f\u2028\u2029" or 0x202A <= code <= 0x202E \
                or 0x2066 <= code <= 0x2069:
            out.append(_VISIBLE.get(ch) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"))
        else:
            out.append(ch)
    return "".join(out)


def _json_line(data: dict) -> str:
    """``json.dumps(..., ensure_ascii=False)`` escapes C0 controls only; DEL, C1 and bidirectional
    overrides are escaped here too (as ``\\uXXXX``, still valid JSON)."""
    text = json.dumps(data, ensure_ascii=False)
    return "".join(f"\\u{ord(ch):04x}" if _visible(ch) != ch else ch for ch in text)


def format_rows(rows: list[VersionRow]) -> str:
    head = ("VERSION", "STATE", "LABEL", "STAGED", "LAST EVENT", "AT", "REASON")
    body = [tuple(_visible(c) for c in (str(r.version), r.state, r.label or "-", _when(r.staged_at),
                                        r.last_event or "-", _when(r.last_at), r.reason or "-")) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] for line in [head, *body]]
    return "\n".join(lines)


# ---- CLI ----

def _repo_arg(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("GSV_REPO")
    p.add_argument("--repo", type=Path, default=Path(default) if default else None, required=default is None,
                   help="Triton model repository folder (default: $GSV_REPO)")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the Triton server's gRPC address HOST:PORT")
    p.add_argument("--redis", default=os.environ.get("GSV_REDIS"),
                   help="Redis URL (redis://HOST:PORT/0) to tell the other replicas (default: $GSV_REDIS)")
    p.add_argument("--admin-key", default=None,
                   help="Triton's admin key (default: $GSV_ADMIN_KEY, else REPO/.gsv/admin-key, which serve writes)")
    p.add_argument("--redis-secret", default=os.environ.get("GSV_REDIS_SECRET"),
                   help="shared secret signing the Redis announcement (HMAC-SHA256), as the control services' "
                        "--redis-secret (default: $GSV_REDIS_SECRET)")


def add_swap_parsers(sub, add_export_args) -> None:
    pub = sub.add_parser("publish", help="export a voice version, load and validate it on Triton, make it active")
    add_export_args(pub)
    _target_args(pub)

    rb = sub.add_parser("rollback", help="take out the newest version(s) of a voice and serve an earlier one")
    rb.add_argument("voice")
    rb.add_argument("--to", type=int, help="version to serve (default: the one before the active; during a canary: the active)")
    rb.add_argument("--reason", default="", help="recorded in the history")
    _repo_arg(rb)
    _target_args(rb)

    ca = sub.add_parser("canary", help="send a share of a voice's requests to its newest version")
    ca.add_argument("voice")
    ca.add_argument("--version", type=int, required=True, help="the candidate (the newest version folder)")
    ca.add_argument("--weight", type=float, required=True, help="share of requests for the candidate, 0..1")
    _repo_arg(ca)
    _target_args(ca)

    pr = sub.add_parser("promote", help="make a voice's canary its only version")
    pr.add_argument("voice")
    _repo_arg(pr)
    _target_args(pr)

    ve = sub.add_parser("versions", help="a voice's versions with labels, states, reasons and times")
    ve.add_argument("voice")
    _repo_arg(ve)
    ve.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def _report(out: Outcome) -> int:
    note = "announced to the other replicas" if out.announced else "not announced (no --redis)"
    print(f"gsv-triton: {out.action}: voice {out.voice} version {out.version}"
          f"{' (' + out.detail + ')' if out.detail else ''}; {note}")
    return 0


def _refusal(exc: Refused) -> int:
    print(f"gsv-triton: refused: {exc}", file=sys.stderr)
    return 1


def cmd_publish(args) -> int:
    use_redis_secret(args.redis_secret)
    from export.voice_export import ExportOptions

    opts = ExportOptions.from_args(args)
    try:
        return _report(publish(opts, args.url, args.redis, admin_key=args.admin_key))
    except Refused as exc:
        return _refusal(exc)


def cmd_rollback(args) -> int:
    use_redis_secret(args.redis_secret)
    return _report(rollback(args.repo, args.voice, args.url, args.to, args.redis, reason=args.reason,
                            admin_key=args.admin_key))


def cmd_canary(args) -> int:
    use_redis_secret(args.redis_secret)
    try:
        return _report(canary(args.repo, args.voice, args.version, args.weight, args.url, args.redis,
                              admin_key=args.admin_key))
    except Refused as exc:
        return _refusal(exc)


def cmd_promote(args) -> int:
    use_redis_secret(args.redis_secret)
    return _report(promote(args.repo, args.voice, args.url, args.redis, admin_key=args.admin_key))


def cmd_versions(args) -> int:
    rows = version_rows(args.repo, args.voice)
    if not rows:
        print(f"gsv-triton: voice {args.voice} has no versions in {args.repo}", file=sys.stderr)
        return 2
    if args.json:
        for row in rows:
            print(_json_line(row.to_dict()))
    else:
        print(format_rows(rows))
    return 0
