"""The gateway's web console: ``GET /`` and what its page calls.

Plain HTML/JS/CSS from ``ops/console/`` (no build step):

- ``GET /``: the page; ``GET /console/static/<file>``: its script and style sheet.
- ``GET /console/api/voices``: ``{"voices": [{"name", "versions", "active", "canary",
  "canary_weight"}], "control": bool, "control_error"}``. ``versions``: the versions READY in
  Triton; ``active``/``canary``/``canary_weight``: the repository's routing, read from the
  control service's ``/metrics`` (``gsv_active_version``, ``gsv_canary_version``,
  ``gsv_canary_weight``) when the gateway runs with ``--control URL``, else null ("unknown").
- ``GET /console/api/events``: the control service's ``/events`` (Server-Sent Events) passed
  through (``?replay=1`` and ``Last-Event-ID`` forwarded); 404 without ``--control``.
- ``POST /console/api/tts``: multipart form ``text``, ``voice``, ``version`` (empty: the
  voice's routing), ``language``, optional ``ref_audio`` (a clip the browser uploads) with
  ``ref_text`` and ``ref_language``, optional api_v2 fields ``text_split_method``, ``top_k``,
  ``top_p``, ``temperature``, ``repetition_penalty``, ``speed_factor``, ``seed``; answers a
  streaming WAV through the api_v2 handler's path (same checks, same ``{"message"}`` errors).
  At most ``CONSOLE_MAX_BODY`` bytes.

The page plays text without a clip from ``GET /tts?...&streaming_mode=true&media_type=wav`` (the
``<audio>`` element plays it as it arrives); with a clip it POSTs here and plays the file when
the stream has ended.
"""
from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import numpy as np
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from ops.gateway_apiv2 import ApiV2Request, RequestError

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
CONSOLE_MAX_BODY = 10 << 20
#: form fields of POST /console/api/tts -> api_v2 fields
FORM_FIELDS = {"text": "text", "voice": "voice", "version": "voice_version", "language": "text_lang",
               "ref_text": "prompt_text", "ref_language": "prompt_lang",
               **{name: name for name in ("text_split_method", "top_k", "top_p", "temperature", "repetition_penalty",
                                          "speed_factor", "seed")}}
_METRIC = re.compile(r'^(gsv_active_version|gsv_canary_version|gsv_canary_weight)\{voice="([^"\\]*)"\} (\S+)$')


def parse_routing(metrics: str) -> dict[str, dict]:
    """``{voice: {"active", "canary", "canary_weight"}}`` from a control service's /metrics text."""
    out: dict[str, dict] = {}
    for line in metrics.splitlines():
        match = _METRIC.match(line.strip())
        if not match:
            continue
        name, voice, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        entry = out.setdefault(voice, {"active": None, "canary": None, "canary_weight": None})
        if name == "gsv_active_version":
            entry["active"] = int(value)
        elif name == "gsv_canary_version":
            entry["canary"] = int(value)
        else:
            entry["canary_weight"] = value
    return out


def merge_voices(ready: dict[str, list[int]], routing: dict[str, dict] | None) -> list[dict]:
    """One row per voice Triton serves or the repository routes (``routing`` None: unknown)."""
    names = sorted(set(ready) | set(routing or {}))
    rows = []
    for name in names:
        route = (routing or {}).get(name, {})
        rows.append({"name": name, "versions": ready.get(name, []), "active": route.get("active"),
                     "canary": route.get("canary"), "canary_weight": route.get("canary_weight")})
    return rows


def decode_clip(data: bytes):
    """(float32 mono, rate) of an uploaded clip; RequestError when soundfile cannot read it."""
    import soundfile as sf

    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, sf.LibsndfileError) as exc:
        raise RequestError(f"ref_audio: not a readable audio file ({str(exc)[:160]})") from None
    if not audio.size:
        raise RequestError("ref_audio: the clip has no samples")
    return np.ascontiguousarray(audio.mean(axis=1), np.float32), int(rate)


async def read_form(request: web.Request, limit: int = CONSOLE_MAX_BODY) -> tuple[dict[str, str], bytes | None]:
    """The multipart form's text fields and the ``ref_audio`` file (None when none was chosen);
    RequestError for other bodies, unknown fields, or more than ``limit`` bytes in all."""
    too_big = RequestError(f"the body is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    if not request.content_type.startswith("multipart/form-data"):
        raise RequestError("the body must be multipart/form-data")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise RequestError(f"the body is not a multipart form ({str(exc)[:120]})") from None
    fields: dict[str, str] = {}
    clip, total = None, 0
    while True:
        try:
            part = await reader.next()
        except ValueError as exc:
            raise RequestError(f"the body is not a multipart form ({str(exc)[:120]})") from None
        if part is None:
            break
        name = part.name or ""
        if name != "ref_audio" and name not in FORM_FIELDS:
            raise RequestError(f"unknown field(s): {name}")
        data = bytearray()
        while chunk := await part.read_chunk(1 << 16):
            total += len(chunk)
            if total > limit:
                raise too_big
            data.extend(chunk)
        if name == "ref_audio":
            clip = bytes(data) if data else None   # a file input left empty sends an empty part
        else:
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"{name}: not UTF-8 text") from None
    return fields, clip


class Console:
    def __init__(self, gateway):
        self.gateway = gateway
        self.control = (gateway.config.control or "").rstrip("/") or None
        self.session: ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/console/api/voices", self.voices)
        app.router.add_get("/console/api/events", self.events)
        app.router.add_post("/console/api/tts", self.tts)
        app.router.add_static("/console/static/", CONSOLE_DIR, append_version=False)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)

    async def _start(self, app) -> None:
        if self.control:
            self.session = ClientSession(timeout=ClientTimeout(total=None, sock_connect=5))

    async def _stop(self, app) -> None:
        if self.session is not None:
            await self.session.close()

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    # ---- voices and events ----------------------------------------------------------------

    async def routing(self) -> dict[str, dict]:
        async with self.session.get(self.control + "/metrics", timeout=ClientTimeout(total=5)) as resp:
            if resp.status != 200:
                raise ClientError(f"/metrics answered {resp.status}")
            return parse_routing(await resp.text())

    async def voices(self, request: web.Request) -> web.Response:
        from ops.gateway import message

        try:
            ready = await self.gateway.synth.voices()
        except Exception as exc:   # Triton unreachable
            return message(503, f"Triton is not reachable: {str(exc).splitlines()[0][:200]}")
        routing, problem = None, None
        if self.control:
            try:
                routing = await self.routing()
            except (ClientError, asyncio.TimeoutError, OSError) as exc:
                problem = f"the control service at {self.control} is not reachable ({type(exc).__name__})"
        return web.json_response({"voices": merge_voices(ready, routing), "control": bool(self.control),
                                  "control_error": problem})

    async def events(self, request: web.Request) -> web.StreamResponse:
        from ops.gateway import message

        if not self.control:
            return message(404, "this gateway has no control service (start it with --control URL)")
        headers, params = {}, {}
        if self.gateway.config.control_token:
            headers["Authorization"] = f"Bearer {self.gateway.config.control_token}"
        if request.headers.get("Last-Event-ID", "").isdigit():
            headers["Last-Event-ID"] = request.headers["Last-Event-ID"]
        elif request.query.get("replay") in ("1", "true", "yes"):
            params["replay"] = "1"
        try:
            upstream = await self.session.get(self.control + "/events", params=params, headers=headers)
        except (ClientError, asyncio.TimeoutError, OSError) as exc:
            return message(502, f"the control service at {self.control} is not reachable ({type(exc).__name__})")
        try:
            if upstream.status != 200:
                return message(502, f"the control service's /events answered {upstream.status}")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
            await resp.prepare(request)
            try:
                async for data in upstream.content.iter_any():
                    await resp.write(data)
            except ConnectionResetError:
                pass   # the browser went away
            except (ClientError, asyncio.TimeoutError, OSError):
                pass   # the control service went away: the browser reconnects with Last-Event-ID
            return resp
        finally:
            upstream.release()

    # ---- synthesis with an uploaded clip ---------------------------------------------------

    async def tts(self, request: web.Request) -> web.StreamResponse:
        from ops.client import Reference

        async def run(state):
            fields, clip = await read_form(request)
            data = {FORM_FIELDS[k]: v for k, v in fields.items() if v != "" or k == "text"}
            prompt_text = data.pop("prompt_text", "")
            if clip is None and prompt_text:
                raise RequestError("ref_text needs ref_audio")
            req = ApiV2Request._build({**data, "streaming_mode": "true", "media_type": "wav"}, from_query=True)
            job = state["job"] = await self.gateway._apiv2_job(req)
            if clip is not None:
                audio, rate = await asyncio.to_thread(decode_clip, clip)
                job.reference = Reference(audio=audio, sample_rate=rate, text=prompt_text or None,
                                          language=req.prompt_lang or req.text_lang)
            return await self.gateway._respond_apiv2(request, req, job)

        return await self.gateway.guarded("console", run)
