"""``gsv-triton gateway``: upstream's api_v2 and OpenAI's speech API in front of Triton.

An aiohttp app that turns HTTP requests into ``tts``/``tts_stream`` calls over gRPC
(``tritonclient.grpc.aio``) and encodes the audio. It keeps no state between requests, so
any number of replicas can run behind a load balancer:

- ``GET|POST /tts``: upstream api_v2 (``ops.gateway_apiv2``); errors ``{"message": ...}``
- ``POST /v1/audio/speech``, ``GET /v1/models``: OpenAI's API (``ops.gateway_openai``)
- ``GET /health``: 200 while Triton is ready, else 503
- ``GET /``: a web console (``ops.gateway_console``): voices, versions, canaries, live events
  (with ``--control URL``), and a form that speaks a text, optionally with an uploaded clip
- ``/set_gpt_weights``, ``/set_sovits_weights``, ``/set_refer_audio``, ``/control``: 400 saying
  how voices are published here

At most ``--max-in-flight`` synthesis requests run at once per gateway; more get 503 with
``Retry-After``. A client that goes away cancels its Triton stream.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import numpy as np
from aiohttp import web

from ops import audio_encode
from ops.gateway_apiv2 import ApiV2Request, RequestError, resolve_reference

LOG = logging.getLogger("gsv.gateway")
MAX_BODY = 1 << 20
TTS_TEXT_LIMIT = 2000    # python_backend.tts_request.MAX_TEXT_CHARS
PAUSE_S = 0.3            # tts's pause between sentences, also put between the tts requests of one reply
PUBLISH_HINT = ("voices are not switched through this API here: each voice is a Triton model whose versions are "
                "published with `gsv-triton publish` (or the control service's POST /publish); pick one per request "
                "with the `voice` and `voice_version` fields")


@dataclass
class Chunk:
    audio: np.ndarray          #: float32 mono
    sentence_end: bool = False  #: the last chunk of a sentence (tts says why it ended)


@dataclass
class Job:
    """One synthesis: lines of text for one voice (one version: the first tts reply pins the rest)."""

    voice: str
    lines: list[str]
    language: str = "auto"
    params: dict = field(default_factory=dict)
    version: int | None = None
    reference: object = None    #: ops.client.Reference or None
    stream: bool = True
    sample_rate: int = 0
    samples: int = 0

    def requests(self) -> list[str]:
        """The lines packed into tts requests of at most TTS_TEXT_LIMIT characters."""
        return pack_lines(self.lines, TTS_TEXT_LIMIT)


def pack_lines(lines: list[str], limit: int) -> list[str]:
    """Join lines with "\\n" into texts of at most ``limit`` characters (a longer line is cut at a
    space or a mark inside the limit, else hard)."""
    pieces: list[str] = []
    for line in lines:
        while len(line) > limit:
            window = line[:limit]
            cut = max(window.rfind(ch) for ch in " ，,。.!！?？；;、")
            cut = cut + 1 if cut > 0 else limit
            pieces.append(line[:cut])
            line = line[cut:]
        if line.strip():
            pieces.append(line)
    texts, current, size = [], [], 0
    for piece in pieces:
        if current and size + 1 + len(piece) > limit:
            texts.append("\n".join(current))
            current, size = [], 0
        size += len(piece) + (1 if current else 0)
        current.append(piece)
    if current:
        texts.append("\n".join(current))
    return texts


class TritonError(RuntimeError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _status_of(exc) -> int:
    code = (exc.status() or "") if hasattr(exc, "status") else ""
    text = str(exc.message() if hasattr(exc, "message") else exc)
    if "NOT_FOUND" in code or "not loaded" in text or "has no version" in text or "not a safe folder name" in text:
        return 404
    if "UNAVAILABLE" in code:
        return 503
    if "INTERNAL" in code or text.startswith("synthesis failed"):
        return 500
    return 400


class Synthesizer:
    """tts/tts_stream over one gRPC connection (shared by all requests of the process)."""

    def __init__(self, url: str, timeout: float = 600.0, admin_key: str | None = None):
        import tritonclient.grpc.aio as grpcaio

        self.client = grpcaio.InferenceServerClient(url)
        self.timeout = timeout
        self.admin_key = admin_key  # only for the repository index (voice listing); never loads

    async def close(self) -> None:
        await self.client.close()

    async def ready(self) -> bool:
        try:
            return await self.client.is_server_ready(client_timeout=5)
        except Exception:  # unreachable: not ready
            return False

    async def check_voice(self, voice: str, version: int | None) -> None:
        from python_backend.layout import LayoutError, check_voice_name

        try:
            check_voice_name(voice)
        except LayoutError:
            raise RequestError(f"voice {voice!r} is not a voice name", 404) from None
        model = f"voice_{voice}"
        try:
            ok = await self.client.is_model_ready(model, "" if version is None else str(version), client_timeout=10)
        except Exception as exc:
            raise TritonError(f"Triton is not reachable: {str(exc).splitlines()[0][:200]}", 503) from None
        if not ok:
            what = f"voice {voice!r}" + (f" version {version}" if version is not None else "")
            raise RequestError(f"{what} is not loaded", 404)

    async def voices(self) -> dict[str, list[int]]:
        """Ready versions per voice, from Triton's repository index (a restricted API: the admin key)."""
        from tritonclient.utils import InferenceServerException

        from ops import admin

        try:
            index = await self.client.get_model_repository_index(headers=admin.headers(self.admin_key), as_json=True,
                                                                 client_timeout=10)
        except InferenceServerException as exc:
            if admin.is_refusal(str(exc.message())):
                raise TritonError("listing voices needs Triton's admin key: start the gateway with --admin-key "
                                  "or $GSV_ADMIN_KEY", 503) from None
            raise TritonError(f"Triton: {str(exc.message()).splitlines()[0][:200]}", _status_of(exc)) from None
        out: dict[str, list[int]] = {}
        for model in index.get("models", []):
            name = model.get("name", "")
            if name.startswith("voice_") and model.get("state") == "READY" and model.get("version"):
                out.setdefault(name.removeprefix("voice_"), []).append(int(model["version"]))
        return {k: sorted(v) for k, v in sorted(out.items())}

    def _inputs(self, job: Job, text: str) -> list:
        import tritonclient.grpc as grpc

        from ops.client import _inputs

        params = dict(job.params)
        if job.version is not None:
            params["VOICE_VERSION"] = job.version
        return _inputs(grpc, text, job.voice, job.language, params, job.reference)

    def _note(self, job: Job, result) -> None:
        version = int(result.as_numpy("VOICE_VERSION").reshape(-1)[0])
        job.sample_rate = int(result.as_numpy("SAMPLE_RATE").reshape(-1)[0])
        if job.version is None:
            job.version = version   # the rest of the reply runs on this version

    async def chunks(self, job: Job) -> AsyncIterator[Chunk]:
        """The job's audio in order, one tts request per packed text, a pause between them."""
        for i, text in enumerate(job.requests()):
            if i:
                yield Chunk(np.zeros(int(PAUSE_S * job.sample_rate), np.float32), sentence_end=False)
            source = self._stream(job, text) if job.stream else self._whole(job, text)
            try:
                async for chunk in source:
                    job.samples += chunk.audio.size
                    yield chunk
            finally:
                await source.aclose()   # a client that went away cancels the Triton stream now

    async def _whole(self, job: Job, text: str) -> AsyncIterator[Chunk]:
        from tritonclient.utils import InferenceServerException

        try:
            result = await self.client.infer("tts", self._inputs(job, text), client_timeout=self.timeout)
        except InferenceServerException as exc:
            raise TritonError(str(exc.message()).splitlines()[0], _status_of(exc)) from None
        self._note(job, result)
        yield Chunk(result.as_numpy("AUDIO").astype(np.float32), sentence_end=True)

    async def _stream(self, job: Job, text: str) -> AsyncIterator[Chunk]:
        from tritonclient.utils import InferenceServerException

        done = asyncio.Event()
        request = {"model_name": "tts_stream", "inputs": self._inputs(job, text)}

        async def requests():
            yield request
            await done.wait()   # keep the stream open until the final response came

        call = self.client.stream_infer(requests(), stream_timeout=self.timeout)
        try:
            async for result, error in call:
                if error is not None:
                    raise TritonError(str(error.message()).splitlines()[0], _status_of(error))
                self._note(job, result)
                audio = result.as_numpy("AUDIO")
                reason = result.as_numpy("FINISH_REASON").reshape(-1)[0]
                final = bool(result.as_numpy("IS_FINAL").reshape(-1)[0])
                if audio is not None and audio.size:
                    yield Chunk(audio.astype(np.float32), sentence_end=bool(reason))
                if final:
                    break
        except InferenceServerException as exc:
            raise TritonError(str(exc.message()).splitlines()[0], _status_of(exc)) from None
        finally:
            done.set()
            call.cancel()   # no-op after the final response; frees the voice's decode slot otherwise


async def read_reference(root: Path | None, path: str, aux: list[str] | None, text: str, language: str | None):
    """ops.client.Reference from files inside ``root`` (read in a worker thread)."""
    from ops.client import ClientError, Reference

    main = resolve_reference(root, path)
    extra = [resolve_reference(root, p, "aux_ref_audio_paths") for p in (aux or [])]
    try:
        return await asyncio.to_thread(Reference.from_files, main, text or None, language, extra)
    except ClientError as exc:
        message = str(exc).replace(str(root.resolve()) + "/", "")   # no server paths in answers
        raise RequestError(f"reference: {message}") from None


# ---- the app ------------------------------------------------------------------------------

@dataclass
class GatewayConfig:
    triton: str
    default_voice: str | None = None
    ref_root: Path | None = None
    max_in_flight: int = 32
    max_tokens: int | None = None   #: tts MAX_TOKENS (semantic tokens per sentence); None: tts's budget
    retry_after_s: int = 1
    timeout_s: float = 600.0
    control: str | None = None      #: the control service's base URL (the console's routing and events)
    admin_key: str | None = None    #: Triton's admin key, for the repository index (voice lists) only
    control_token: str | None = None  #: the control service's bearer token (its /events need it when set)


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.synth: Synthesizer | None = None
        self.in_flight = 0

    # ---- plumbing -----------------------------------------------------------------------

    def app(self) -> web.Application:
        from ops import gateway_openai
        from ops.gateway_console import Console

        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        app.router.add_get("/tts", self.tts)
        app.router.add_post("/tts", self.tts)
        app.router.add_get("/health", self.health)
        for path in ("/set_gpt_weights", "/set_sovits_weights", "/set_refer_audio", "/control"):
            app.router.add_route("*", path, self.not_here)
        gateway_openai.add_routes(app, self)
        Console(self).add_routes(app)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app) -> None:
        self.synth = Synthesizer(self.config.triton, self.config.timeout_s, self.config.admin_key)

    async def _stop(self, app) -> None:
        if self.synth is not None:
            await self.synth.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return message(400, f"the body is larger than {MAX_BODY} bytes")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return message(exc.status, exc.reason)

    def admit(self) -> web.Response | None:
        """None, and a slot taken; or the 503 to send when every slot is busy."""
        if self.in_flight >= self.config.max_in_flight:
            resp = message(503, f"busy: {self.in_flight} requests in flight (limit {self.config.max_in_flight}); retry")
            resp.headers["Retry-After"] = str(self.config.retry_after_s)
            return resp
        self.in_flight += 1
        return None

    def release(self) -> None:
        self.in_flight -= 1

    def params(self, params: dict) -> dict:
        if self.config.max_tokens:
            params["MAX_TOKENS"] = self.config.max_tokens
        return params

    # ---- api_v2 -------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        ready = await self.synth.ready()
        return web.json_response({"status": "ok" if ready else "triton not ready", "in_flight": self.in_flight},
                                 status=200 if ready else 503)

    async def not_here(self, request: web.Request) -> web.Response:
        return message(400, f"{request.path} is not supported: {PUBLISH_HINT}")

    async def guarded(self, api: str, run) -> web.StreamResponse:
        """One admitted api_v2-style call: ``run(state)`` answers it (setting ``state["job"]`` for
        the log line); errors become ``{"message"}`` replies; the slot is released and one line
        logged whatever happens."""
        busy = self.admit()
        if busy is not None:
            return busy
        started, state, status = time.perf_counter(), {"job": None}, 200
        try:
            return await run(state)
        except (RequestError, TritonError, audio_encode.EncodeError) as exc:
            status = getattr(exc, "status", 400)
            return message(status, str(exc))
        except (ConnectionResetError, asyncio.CancelledError):
            status = 499
            raise
        finally:
            self.release()
            log_request(api, state["job"], started, status)

    async def tts(self, request: web.Request) -> web.StreamResponse:
        async def run(state):
            req = await self._apiv2_request(request)
            state["job"] = await self._apiv2_job(req)
            return await self._respond_apiv2(request, req, state["job"])

        return await self.guarded("api_v2", run)

    async def _apiv2_request(self, request: web.Request) -> ApiV2Request:
        if request.method == "GET":
            return ApiV2Request.from_query(request.query)
        return ApiV2Request.from_json(await read_json(request))

    async def _apiv2_job(self, req: ApiV2Request) -> Job:
        voice = req.voice or self.config.default_voice
        if not voice:
            raise RequestError("voice is required (this gateway has no --default-voice)")
        await self.synth.check_voice(voice, req.voice_version)
        job = Job(voice=voice, lines=req.lines(), language=req.text_lang, params=self.params(req.tts_params()),
                  version=req.voice_version, stream=req.streaming_mode != 0)
        if req.ref_audio_path:
            job.reference = await read_reference(self.config.ref_root, req.ref_audio_path, req.aux_ref_audio_paths,
                                                 req.prompt_text, req.prompt_lang or req.text_lang)
        return job

    async def _respond_apiv2(self, request, req: ApiV2Request, job: Job) -> web.StreamResponse:
        content_type = audio_encode.CONTENT_TYPES[req.media_type]
        if req.streaming_mode == 0:
            audio = [c.audio async for c in self.synth.chunks(job)]
            joined = np.concatenate(audio) if audio else np.zeros(0, np.float32)
            body = await asyncio.to_thread(audio_encode.encode, joined, job.sample_rate, req.media_type)
            return web.Response(body=body, content_type=content_type, headers=self._headers(job))
        source = self.synth.chunks(job)
        pieces = per_sentence(source) if req.streaming_mode == 1 else plain(source)
        return await stream_audio(request, source, pieces, job, req.media_type, content_type, self._headers)

    @staticmethod
    def _headers(job: Job) -> dict[str, str]:
        return {"X-Voice-Version": str(job.version), "X-Sample-Rate": str(job.sample_rate)}


async def plain(chunks: AsyncIterator[Chunk]) -> AsyncIterator[np.ndarray]:
    async for chunk in chunks:
        yield chunk.audio


async def per_sentence(chunks: AsyncIterator[Chunk]) -> AsyncIterator[np.ndarray]:
    """streaming_mode 1: one piece per sentence (upstream's return_fragment)."""
    held: list[np.ndarray] = []
    async for chunk in chunks:
        held.append(chunk.audio)
        if chunk.sentence_end:
            yield np.concatenate(held)
            held = []
    if held:
        yield np.concatenate(held)


async def stream_audio(request, source: AsyncIterator, pieces: AsyncIterator[np.ndarray], job: Job, media_type: str,
                       content_type: str, headers) -> web.StreamResponse:
    """Chunked audio; the status and headers wait for the first piece, so an error before any
    audio is still an error status. ``source`` (what ``pieces`` reads) is closed in the end,
    which cancels its Triton stream when the client went away."""
    try:
        first = await anext(pieces, None)
        encoder = audio_encode.Encoder(media_type, job.sample_rate)
        resp = web.StreamResponse(headers={"Content-Type": content_type, **headers(job)})
        await resp.prepare(request)
        try:
            if first is not None:
                await _write(resp, encoder.push(first))
            async for piece in pieces:
                await _write(resp, encoder.push(piece))
            await _write(resp, encoder.close())
        except (TritonError, audio_encode.EncodeError) as exc:   # headers are out: end the body early
            LOG.warning("[gateway] stream for voice %s failed after the first audio: %s", job.voice, exc)
            raise ConnectionResetError(str(exc)) from None
    finally:
        await pieces.aclose()
        await source.aclose()
    await resp.write_eof()
    return resp


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    if data:
        await resp.write(data)


async def read_json(request: web.Request):
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise RequestError(f"the body is larger than {MAX_BODY} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(f"the body is larger than {MAX_BODY} bytes") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"the body is not valid JSON ({str(exc)[:120]})") from None


def message(status: int, text: str) -> web.Response:
    return web.json_response({"message": text}, status=status)


def log_request(api: str, job: Job | None, started: float, status: int) -> None:
    seconds = job.samples / job.sample_rate if job and job.sample_rate else 0.0
    LOG.info("[gateway] %s voice=%s version=%s audio_s=%.2f latency_s=%.3f status=%s", api,
             job.voice if job else "-", job.version if job else "-", seconds, time.perf_counter() - started, status)


# ---- command line -------------------------------------------------------------------------

def add_gateway_parser(sub) -> None:
    p = sub.add_parser("gateway", help="HTTP gateway: upstream api_v2 (/tts) and OpenAI /v1/audio/speech over Triton")
    p.add_argument("--triton", required=True, metavar="HOST:GRPC", help="Triton's gRPC address")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9880)
    p.add_argument("--default-voice", metavar="NAME", help="voice of api_v2 requests without a `voice` field")
    p.add_argument("--ref-root", type=Path, metavar="DIR",
                   help="folder that ref_audio_path / aux_ref_audio_paths are read from (none: refused)")
    p.add_argument("--max-in-flight", type=int, default=32, metavar="N",
                   help="synthesis requests at once; more get 503 with Retry-After")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="cap on semantic tokens per sentence (tts MAX_TOKENS, 1-1500; default: tts's own budget)")
    p.add_argument("--control", metavar="URL",
                   help="the control service (http://HOST:PORT): the console at / shows its canary routing and "
                        "live events (none: shown as unknown)")
    p.add_argument("--control-token", default=os.environ.get("GSV_CONTROL_TOKEN"), metavar="TOKEN",
                   help="the control service's bearer token (default: $GSV_CONTROL_TOKEN), for the console's events")
    p.add_argument("--admin-key", default=os.environ.get("GSV_ADMIN_KEY"), metavar="KEY",
                   help="Triton's admin key (default: $GSV_ADMIN_KEY), used only to list voices (repository index)")


def cmd_gateway(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.max_in_flight < 1:
        raise SystemExit("gsv-triton gateway: --max-in-flight must be at least 1")
    if args.ref_root is not None and not args.ref_root.is_dir():
        raise SystemExit(f"gsv-triton gateway: --ref-root {args.ref_root} is not a folder")
    if args.control and not args.control.startswith(("http://", "https://")):
        raise SystemExit(f"gsv-triton gateway: --control {args.control} must be an http:// or https:// URL")
    gateway = Gateway(GatewayConfig(triton=args.triton, default_voice=args.default_voice, ref_root=args.ref_root,
                                    max_in_flight=args.max_in_flight, max_tokens=args.max_tokens,
                                    control=args.control, admin_key=args.admin_key,
                                    control_token=args.control_token))
    LOG.info("[gateway] http://%s:%d -> Triton %s (media: %s)", args.host, args.port, args.triton,
             ", ".join(audio_encode.available()))
    web.run_app(gateway.app(), host=args.host, port=args.port, handler_cancellation=True, print=None)
    return 0
