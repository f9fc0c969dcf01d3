"""``gsv-triton say``: synthesize through a running server with tritonclient (gRPC or HTTP)."""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PARAM_TYPES = {"TOP_K": ("INT32", np.int32), "TOP_P": ("FP32", np.float32), "TEMPERATURE": ("FP32", np.float32),
               "REPETITION_PENALTY": ("FP32", np.float32), "NOISE_SCALE": ("FP32", np.float32),
               "SPEED": ("FP32", np.float32), "SEED": ("INT64", np.int64), "MAX_TOKENS": ("INT32", np.int32),
               "VOICE_VERSION": ("INT32", np.int32), "SAMPLE_STEPS": ("INT32", np.int32)}


class ClientError(RuntimeError):
    """The server refused the request or could not be reached; the message is Triton's."""


@dataclass
class Speech:
    audio: np.ndarray
    sample_rate: int
    voice_version: int
    finish_reason: str = ""
    first_chunk_s: float | None = None
    chunks: int = 1
    chunk_times: list[float] = field(default_factory=list)


@dataclass
class Reference:
    """A reference clip sent with the request (upstream api_v2's ref_audio_path, prompt_text,
    prompt_lang, aux_ref_audio_paths). ``aux`` clips share ``sample_rate``."""

    audio: np.ndarray  #: float32 [N] mono
    sample_rate: int
    text: str | None  #: None: upstream's reference-free mode (the clip conditions only the timbre)
    language: str | None = None
    aux: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def from_files(cls, path: Path, text: str | None, language: str | None = None, aux: list[Path] = ()) -> "Reference":
        import soundfile as sf

        from python_backend.audio import resample

        def read(p: Path) -> tuple[np.ndarray, int]:
            try:
                data, rate = sf.read(str(p), dtype="float32", always_2d=True)
            except (RuntimeError, OSError, sf.LibsndfileError) as exc:
                raise ClientError(f"{p}: not a readable audio file ({exc})") from None
            return data.mean(axis=1), int(rate)

        audio, rate = read(Path(path))
        extra = []
        for p in aux:
            clip, clip_rate = read(Path(p))
            extra.append(resample(clip, clip_rate, rate) if clip_rate != rate else clip)
        return cls(audio=audio, sample_rate=rate, text=text, language=language, aux=extra)

    def tensors(self) -> dict[str, tuple[np.ndarray, str]]:
        out = {"REF_AUDIO": (self.audio.astype(np.float32), "FP32"),
               "REF_SAMPLE_RATE": (np.array([self.sample_rate], np.int32), "INT32")}
        if self.text is not None:
            out["REF_TEXT"] = (np.array([self.text.encode("utf-8")], dtype=object), "BYTES")
        if self.language:
            out["REF_LANGUAGE"] = (np.array([self.language.encode()], dtype=object), "BYTES")
        if self.aux:
            width = max(a.size for a in self.aux)
            packed = np.zeros((len(self.aux), width), np.float32)
            for i, a in enumerate(self.aux):
                packed[i, : a.size] = a
            out["AUX_REF_AUDIO"] = (packed, "FP32")
            out["AUX_REF_LENGTHS"] = (np.array([a.size for a in self.aux], np.int32), "INT32")
        return out


def _inputs(module, text: str, voice: str, language: str | None, params: dict,
            reference: Reference | None = None) -> list:
    def tensor(name, array, dtype):
        t = module.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    out = [tensor("TEXT", np.array([text.encode("utf-8")], dtype=object), "BYTES"),
           tensor("VOICE", np.array([voice.encode()], dtype=object), "BYTES")]
    if language:
        out.append(tensor("LANGUAGE", np.array([language.encode()], dtype=object), "BYTES"))
    for name, value in params.items():
        if value is not None:
            triton_type, np_type = PARAM_TYPES[name]
            out.append(tensor(name, np.array([value], dtype=np_type), triton_type))
    if reference is not None:
        out += [tensor(name, array, dtype) for name, (array, dtype) in reference.tensors().items()]
    return out


def _scalar(result, name):
    value = result.as_numpy(name).reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else value


def synthesize(text: str, voice: str, url: str = "127.0.0.1:8001", http: bool = False, language: str | None = None,
               timeout: float = 600.0, reference: Reference | None = None, **params) -> Speech:
    """The whole utterance from ``tts``."""
    if http:
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    from tritonclient.utils import InferenceServerException

    client = module.InferenceServerClient(url, network_timeout=timeout) if http else module.InferenceServerClient(url)
    try:
        kwargs = {"timeout": int(timeout)} if http else {"client_timeout": timeout}
        result = client.infer("tts", _inputs(module, text, voice, language, params, reference), **kwargs)
    except InferenceServerException as exc:
        raise ClientError(exc.message() if hasattr(exc, "message") else str(exc)) from None
    finally:
        client.close()
    return Speech(audio=result.as_numpy("AUDIO").astype(np.float32), sample_rate=int(_scalar(result, "SAMPLE_RATE")),
                  voice_version=int(_scalar(result, "VOICE_VERSION")), finish_reason=str(_scalar(result, "FINISH_REASON")))


def stream(text: str, voice: str, url: str = "127.0.0.1:8001", language: str | None = None, timeout: float = 600.0,
           on_chunk=None, reference: Reference | None = None, **params) -> Speech:
    """Chunks from ``tts_stream`` over gRPC streaming, as they arrive."""
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    responses: queue.Queue = queue.Queue()
    client = grpc.InferenceServerClient(url)
    start = time.perf_counter()
    client.start_stream(callback=lambda result, error: responses.put((result, error, time.perf_counter() - start)))
    pieces, times, version, rate, reason = [], [], -1, 0, ""
    try:
        client.async_stream_infer("tts_stream", _inputs(grpc, text, voice, language, params, reference))
        while True:
            try:
                result, error, at = responses.get(timeout=timeout)
            except queue.Empty:
                raise ClientError(f"no response from tts_stream within {timeout:.0f} s") from None
            if error is not None:
                raise ClientError(error.message() if isinstance(error, InferenceServerException) else str(error))
            audio = result.as_numpy("AUDIO")
            version, rate = int(_scalar(result, "VOICE_VERSION")), int(_scalar(result, "SAMPLE_RATE"))
            if audio is not None and audio.size:
                pieces.append(audio.astype(np.float32))
                times.append(at)
                if on_chunk:
                    on_chunk(audio, at)
            if bool(_scalar(result, "IS_FINAL")):
                reason = str(_scalar(result, "FINISH_REASON"))
                break
    finally:
        client.stop_stream()
        client.close()
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return Speech(audio=audio, sample_rate=rate, voice_version=version, finish_reason=reason,
                  first_chunk_s=times[0] if times else None, chunks=len(pieces), chunk_times=times)


def write_wav(path: Path, speech: Speech) -> None:
    import soundfile as sf

    sf.write(str(path), np.clip(speech.audio, -1.0, 1.0), speech.sample_rate, subtype="PCM_16")


def add_say_parser(sub) -> None:
    p = sub.add_parser("say", help="synthesize text through a running gsv-triton server")
    p.add_argument("text")
    p.add_argument("--voice", required=True)
    p.add_argument("-o", "--output", type=Path, default=Path("out.wav"))
    p.add_argument("--url", help="server address (default 127.0.0.1:8001 for gRPC, 127.0.0.1:8000 with --http)")
    p.add_argument("--http", action="store_true", help="use HTTP instead of gRPC")
    p.add_argument("--stream", action="store_true", help="stream audio chunks from tts_stream (gRPC)")
    from python_backend.text.langsegment import MODES

    p.add_argument("--language", choices=MODES, help="language mode, as upstream (default: auto)")
    p.add_argument("--seed", type=int)
    p.add_argument("--speed", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--temperature", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--noise-scale", type=float)
    p.add_argument("--max-tokens", type=int, help="cap on semantic tokens per sentence (25 per second of audio)")
    p.add_argument("--sample-steps", type=int, help="v4 voices: CFM Euler steps, 1-64 (default 32, as upstream api_v2)")
    p.add_argument("--ref-audio", type=Path, help="a reference clip for this request (3-10 s) instead of the voice's own")
    p.add_argument("--ref-text", help="the reference clip's transcript (without it: upstream's reference-free mode)")
    p.add_argument("--ref-lang", choices=MODES, help="the transcript's language mode (default: --language)")
    p.add_argument("--aux-ref", type=Path, action="append", default=[],
                   help="extra clips whose speaker conditioning is averaged in (repeatable, at most 8)")


def cmd_say(args) -> int:
    if args.stream and args.http:
        raise ClientError("--stream needs gRPC (Triton streams decoupled responses over gRPC only)")
    url = args.url or ("127.0.0.1:8000" if args.http else "127.0.0.1:8001")
    params = {"SEED": args.seed, "SPEED": args.speed, "TOP_K": args.top_k, "TOP_P": args.top_p,
              "TEMPERATURE": args.temperature, "REPETITION_PENALTY": args.repetition_penalty,
              "NOISE_SCALE": args.noise_scale, "MAX_TOKENS": args.max_tokens, "SAMPLE_STEPS": args.sample_steps}
    reference = None
    if args.ref_audio is not None:
        reference = Reference.from_files(args.ref_audio, args.ref_text, args.ref_lang, args.aux_ref)
    elif args.ref_text or args.aux_ref:
        raise ClientError("--ref-text and --aux-ref need --ref-audio")
    if args.stream:
        speech = stream(args.text, args.voice, url, args.language, reference=reference, **params)
    else:
        speech = synthesize(args.text, args.voice, url, args.http, args.language, reference=reference, **params)
    write_wav(args.output, speech)
    first = f", first chunk after {speech.first_chunk_s:.2f} s in {speech.chunks} chunks" if speech.first_chunk_s else ""
    print(f"wrote {args.output.resolve()} ({speech.audio.size / max(speech.sample_rate, 1):.2f} s at {speech.sample_rate} Hz, "
          f"voice {args.voice} version {speech.voice_version}, finish {speech.finish_reason or '-'}{first})")
    return 0
