"""``gsv-triton control``: the small control service beside one Triton server (one per replica).

    gsv-triton control --repo DIR --triton HOST:GRPC --triton-http HOST:HTTP --port P
                       [--triton-metrics HOST:PORT] [--redis redis://HOST:PORT/0] [--replica-id ID]

HTTP API (aiohttp):

- ``GET /health``: 200 when this service runs and Triton is live (a liveness probe), else 503.
- ``GET /health?voice=NAME&version=latest|N``: 200 only when that version of the voice is READY
  in this replica's Triton (``latest``: the active version recorded in the repository), else 503
  with ``{"voice", "version", "state", "reason", "last_event"}`` (Triton's state and reason, the
  version's last history event): a readiness probe.
- ``GET /events``: Server-Sent Events, one per history event appended by anyone (export, voice
  models, swap commands, any replica on the shared repository): ``event: <staged|validated|
  active|failed|quarantined|rolled_back|released|canary|promoted>``, ``data: <the event as JSON>``,
  ``id: <byte offset after the line>``. ``?replay=1`` (or a ``Last-Event-ID`` header) sends the
  past events first.
- ``GET /metrics``: Prometheus text. ``gsv_active_version{voice}``, ``gsv_canary_version{voice}``,
  ``gsv_canary_weight{voice}`` (from the repository), ``gsv_swaps_total{voice}`` (times the
  version recorded ``active``/``promoted`` for the voice changed, read from the shared history:
  fleet-wide, replicas recording the same version count once, the first version is not a swap,
  a canary going live counts), ``gsv_failed_validations_total{voice}``
  (distinct versions with a ``failed`` or ``quarantined`` event), ``gsv_control_loads_total{voice,
  result}`` (loads this service made), ``gsv_control_redis_connected``; and, when
  ``--triton-metrics`` is given, the ``gsv_voice_in_flight{model,version}`` gauge copied from
  this replica's Triton metrics endpoint at each scrape (Triton's own endpoint has it too).
- ``POST /publish {"voice", "version"?}``: load an already-written version (default: the newest
  folder) here, record it active and announce it to the other replicas. ``POST /rollback
  {"voice", "to"?, "reason"?}``, ``POST /canary {"voice", "version", "weight"}``, ``POST /promote
  {"voice"}``: as the CLI commands, on this replica's Triton. Answers 200 with the outcome, 422
  when the version was refused (quarantined), 409 for other refusals.

Replicas: every service subscribes to the Redis channel ``gsv:swap``; on a message from another
origin it calls ``load_model`` of that voice on its own Triton (the repository on the shared
volume already says what to load). Convergence: at start, after every (re)connection to Redis
and every ``--converge-interval`` seconds, each voice whose READY versions in Triton differ from
what the repository says (``swap.served_versions``) is loaded again; a load that failed is not
retried until the repository changes.

No torch here: the service runs on serving hosts.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

from ops import admin, swap
from python_backend import history, layout
from python_backend.routing import read_table

LOG = logging.getLogger("gsv.control")
GRACE = 120.0  # seconds a new, undecided version folder is left to its publisher


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
                 admin_key: str | None = None):
        self.repo = Path(repo)
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
        self.subscribers: set[asyncio.Queue] = set()
        self.history_offset = 0
        self.swaps: dict[str, int] = {}
        self.current: dict[str, int] = {}  # the active version per voice, as the history tells it
        self.failed: dict[str, set[int]] = {}
        self.tasks: list[asyncio.Task] = []

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

        while True:
            client = aioredis.from_url(self.redis_url)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(swap.CHANNEL)
                self.redis_connected = True
                LOG.info("[control] subscribed to %s on %s as %s", swap.CHANNEL, self.redis_url, self.replica_id)
                await self.converge("redis (re)connected")  # what was missed while away
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._on_message(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: retry, converge after reconnecting
                LOG.warning("[control] redis: %s; retrying in 1 s", exc)
            finally:
                self.redis_connected = False
                try:
                    await client.aclose()
                except Exception:  # noqa: BLE001
                    pass
            await asyncio.sleep(1.0)

    async def _on_message(self, data) -> None:
        try:
            msg = json.loads(data)
            voice = layout.check_voice_name(msg["voice"])
        except (ValueError, KeyError, TypeError) as exc:
            LOG.warning("[control] ignored malformed message %r: %s", data, exc)
            return
        if msg.get("origin") == self.replica_id:
            return
        LOG.info("[control] %s of voice %s version %s announced by %s", msg.get("action"), voice, msg.get("version"),
                 msg.get("origin"))
        asyncio.create_task(self._follow(voice, f"{msg.get('action')} by {msg.get('origin')}"))

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
            try:
                raw = json.loads(line)
                event = history.Event(**raw)
            except (ValueError, TypeError):
                continue
            self._count(event)
            out.append((self.history_offset, raw))
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
                    for queue in list(self.subscribers):
                        queue.put_nowait(item)
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

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue: asyncio.Queue = asyncio.Queue()
        start = None
        if request.headers.get("Last-Event-ID", "").isdigit():
            start = int(request.headers["Last-Event-ID"])
        elif request.query.get("replay") in ("1", "true", "yes"):
            start = 0
        self.subscribers.add(queue)
        try:
            if start is not None:
                for item in self._past(start, self.history_offset):
                    await response.write(self._sse(*item))
            await response.write(b": connected\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=15)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(self._sse(*item))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.subscribers.discard(queue)
        return response

    def _past(self, start: int, end: int) -> list[tuple[int, dict]]:
        path = history.history_path(self.repo)
        if not path.is_file() or start >= end:
            return []
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(end - start)
        out, offset = [], start
        for line in data.splitlines(keepends=True):
            offset += len(line)
            try:
                out.append((offset, json.loads(line)))
            except ValueError:
                continue
        return out

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
                yield from (active, canary, weight, swaps, failed, loads, redis_up)

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
            body = await request.json()
            voice = layout.check_voice_name(body["voice"])
        except (ValueError, KeyError, TypeError, layout.LayoutError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        repo, url, origin, key = self.repo, self.triton, self.replica_id, self.admin_key
        try:
            if action == "publish":
                version = body.get("version")
                if version is None:
                    present = swap.present_versions(repo, voice)
                    version = present[-1] if present else 0
                call = lambda: swap.activate(repo, voice, int(version), url, self.redis_url, origin, key)  # noqa: E731
            elif action == "rollback":
                to = body.get("to")
                call = lambda: swap.rollback(repo, voice, url, None if to is None else int(to), self.redis_url,  # noqa: E731
                                             origin, body.get("reason", ""), key)
            elif action == "canary":
                call = lambda: swap.canary(repo, voice, int(body["version"]), float(body["weight"]), url,  # noqa: E731
                                           self.redis_url, origin, key)
            else:
                call = lambda: swap.promote(repo, voice, url, self.redis_url, origin, key)  # noqa: E731
            async with self._lock(voice):
                outcome = await asyncio.to_thread(call)
        except swap.Refused as exc:
            return web.json_response({"error": str(exc), "refused": True}, status=422)
        except (swap.SwapError, KeyError, ValueError, OSError) as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(outcome.to_dict())

    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/events", self.events)
        app.router.add_get("/metrics", self.metrics)
        for action in swap.ACTIONS:
            app.router.add_post(f"/{action}", lambda request, a=action: self._operate(request, a))
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app) -> None:
        self._read_new()  # counters from the whole history; SSE clients get what comes next
        await self.converge("start")
        self.tasks.append(asyncio.create_task(self._history_loop()))
        self.tasks.append(asyncio.create_task(self._converge_loop()))
        if self.redis_url:
            self.tasks.append(asyncio.create_task(self._redis_loop()))

    async def _on_cleanup(self, app) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


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


def cmd_control(args) -> int:
    from aiohttp import web

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    service = ControlService(args.repo, args.triton, args.triton_http, args.triton_metrics, args.redis,
                             args.replica_id, args.converge_interval, args.admin_key)
    print(f"gsv-triton: control service for Triton {args.triton} on http://{args.host}:{args.port} "
          f"(repository {args.repo}, redis {args.redis or 'none'}, replica {service.replica_id})", flush=True)
    web.run_app(service.app(), host=args.host, port=args.port, print=None, handle_signals=True,
                shutdown_timeout=2)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gsv-triton control")
    _add_args(parser)
    return cmd_control(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
