"""OpenAI's speech API on the gateway: ``POST /v1/audio/speech`` and ``GET /v1/models``.

Request fields as OpenAI defines them: ``model`` (any name: accepted for client compatibility),
``input`` (at most 4096 characters), ``voice`` (a voice name of ``/v1/models``),
``response_format`` (wav, pcm, flac, mp3, opus, aac: those this machine can encode),
``speed`` (0.25-4), ``stream_format`` (``audio``: the file as it is made; ``sse``: Server-Sent
Events ``speech.audio.delta`` with base64 audio, then ``speech.audio.done``) and
``instructions`` (accepted, ignored). Errors use OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass

from aiohttp import web

from ops import audio_encode
from ops.gateway_apiv2 import RequestError
from ops.text_cut import cut

MAX_INPUT_CHARS = 4096
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
FIELDS = ("model", "input", "voice", "response_format", "speed", "stream_format", "instructions")


class SpeechError(RequestError):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message, status)
        self.param = param


@dataclass
class SpeechRequest:
    model: str
    input: str
    voice: str
    response_format: str = "mp3"
    speed: float = 1.0
    stream_format: str = "audio"
    instructions: str | None = None

    @classmethod
    def from_json(cls, data) -> "SpeechRequest":
        if not isinstance(data, dict):
            raise SpeechError("the body must be a JSON object")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise SpeechError(f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0])
        for name in ("model", "input", "voice"):
            if not isinstance(data.get(name), str) or not data[name].strip():
                raise SpeechError(f"{name} is required (a non-empty string)", name)
        for name in ("response_format", "stream_format", "instructions"):
            if name in data and data[name] is not None and not isinstance(data[name], str):
                raise SpeechError(f"{name}: expected a string, got {data[name]!r}", name)
        speed = data.get("speed", 1.0)
        if speed is None:
            speed = 1.0
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed):
            raise SpeechError(f"speed: expected a number, got {speed!r}", "speed")
        values = {k: v for k, v in data.items() if v is not None}
        values["speed"] = float(speed)
        return cls(**values).validate()

    def validate(self) -> "SpeechRequest":
        if len(self.input) > MAX_INPUT_CHARS:
            raise SpeechError(f"input has {len(self.input)} characters; the limit is {MAX_INPUT_CHARS}", "input")
        if not 0.25 <= self.speed <= 4.0:
            raise SpeechError(f"speed: {self.speed:g} out of range [0.25, 4]", "speed")
        if self.stream_format not in ("audio", "sse"):
            raise SpeechError(f"stream_format: {self.stream_format!r} is not one of audio, sse", "stream_format")
        usable = [f for f in FORMATS if f in audio_encode.available()]
        if self.response_format not in usable:
            raise SpeechError(f"response_format: {self.response_format!r} is not available here; available: "
                              f"{', '.join(usable)}", "response_format")
        if not cut(self.input, "cut5"):
            raise SpeechError("input has nothing to speak", "input")
        return self


def error(status: int, text: str, param: str | None = None, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": text, "type": kind, "param": param, "code": None}}, status=status)


def add_routes(app: web.Application, gateway) -> None:
    async def speech(request: web.Request) -> web.StreamResponse:
        return await _speech(gateway, request)

    async def models(request: web.Request) -> web.Response:
        try:
            voices = await gateway.synth.voices()
        except Exception as exc:   # Triton unreachable
            return error(503, f"Triton is not reachable: {str(exc).splitlines()[0][:200]}", kind="server_error")
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "gsv-triton", "versions": versions,
                 "active_version": versions[-1]} for name, versions in voices.items()]
        return web.json_response({"object": "list", "data": data})

    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/v1/models", models)


async def _speech(gateway, request: web.Request) -> web.StreamResponse:
    from ops.gateway import Job, TritonError, log_request, read_json

    busy = gateway.admit()
    if busy is not None:
        body = json.loads(busy.body)
        resp = error(503, body["message"], kind="server_error")
        resp.headers["Retry-After"] = busy.headers["Retry-After"]
        return resp
    started, job, status = time.perf_counter(), None, 200
    try:
        req = SpeechRequest.from_json(await read_json(request))
        await gateway.synth.check_voice(req.voice.strip(), None)
        job = Job(voice=req.voice.strip(), lines=cut(req.input, "cut5"), language="auto",
                  params=gateway.params({"SPEED": req.speed}), stream=True)
        return await _send(request, gateway, req, job)
    except SpeechError as exc:
        status = exc.status
        return error(exc.status, str(exc), exc.param)
    except (RequestError, TritonError, audio_encode.EncodeError) as exc:
        status = getattr(exc, "status", 400)
        param = "voice" if status == 404 else None
        return error(status, str(exc), param, "invalid_request_error" if status < 500 else "server_error")
    except BaseException:
        status = 499
        raise
    finally:
        gateway.release()
        log_request("openai", job, started, status)


async def _send(request, gateway, req: SpeechRequest, job) -> web.StreamResponse:
    """The first audio decides the status; then the file (or SSE events) as it is encoded."""
    from ops.gateway import TritonError

    source = gateway.synth.chunks(job)
    try:
        first = await anext(source, None)
        encoder = audio_encode.Encoder(req.response_format, job.sample_rate)
        sse = req.stream_format == "sse"
        headers = {"Content-Type": "text/event-stream" if sse else audio_encode.CONTENT_TYPES[req.response_format],
                   **gateway._headers(job)}
        if sse:
            headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)

        async def put(data: bytes) -> None:
            if not data:
                return
            if sse:
                event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
                await resp.write(f"data: {json.dumps(event)}\n\n".encode())
            else:
                await resp.write(data)

        try:
            if first is not None:
                await put(encoder.push(first.audio))
            async for chunk in source:
                await put(encoder.push(chunk.audio))
            await put(encoder.close())
        except (TritonError, audio_encode.EncodeError) as exc:   # headers are out: end the body early
            raise ConnectionResetError(f"voice {job.voice}: {exc}") from None
        if sse:
            tokens = len(req.input)   # characters: no tokenizer here
            done = {"type": "speech.audio.done",
                    "usage": {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens}}
            await resp.write(f"data: {json.dumps(done)}\n\n".encode())
    finally:
        await source.aclose()
    await resp.write_eof()
    return resp
