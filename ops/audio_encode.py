"""Media encoding for the gateway: float samples from ``tts`` -> 16-bit mono files or streams.

Formats are what this machine's libsndfile can write (``soundfile.available_formats()`` and
subtypes), plus AAC through ``ffmpeg`` when it is on PATH (as upstream's api_v2 does):

| name | what | streams as it is generated |
| --- | --- | --- |
| ``wav`` | RIFF, 16-bit PCM | yes: a header with 0xFFFFFFFF sizes first, then raw samples |
| ``raw`` / ``pcm`` | 16-bit little-endian samples, no header | yes |
| ``ogg`` | Ogg Vorbis | yes (libsndfile hands out Ogg pages as they fill) |
| ``flac``, ``mp3``, ``opus`` (Ogg Opus, 48 kHz), ``aac`` (ADTS) | | no: encoded when the audio is done |
"""
from __future__ import annotations

import functools
import shutil
import struct
import subprocess

import numpy as np
import soundfile as sf

from python_backend.audio import resample


class EncodeError(ValueError):
    """A format this machine cannot write, or an encoder that failed."""


#: name -> (libsndfile format, subtype); None: no libsndfile container
_SNDFILE = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
            "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}
CONTENT_TYPES = {"wav": "audio/wav", "raw": "audio/raw", "pcm": "audio/pcm", "ogg": "audio/ogg", "flac": "audio/flac",
                 "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac"}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # what libopus accepts


@functools.lru_cache(maxsize=None)
def available() -> tuple[str, ...]:
    """The names this machine can encode."""
    out = ["wav", "raw", "pcm"]
    formats = sf.available_formats()
    for name, (fmt, subtype) in _SNDFILE.items():
        if name != "wav" and fmt in formats and subtype in sf.available_subtypes(fmt):
            out.append(name)
    if shutil.which("ffmpeg"):
        out.append("aac")
    return tuple(out)


def require(name: str) -> None:
    if name not in available():
        raise EncodeError(f"{name} is not available on this server; available: {', '.join(available())}")


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16 (clipped), as upstream hands its encoders int16."""
    return (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767.0).astype("<i2")


def wav_stream_header(sample_rate: int) -> bytes:
    """A 44-byte RIFF/WAVE header for 16-bit mono whose sizes are unknown (0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


def _aac(pcm: np.ndarray, sample_rate: int) -> bytes:
    cmd = ["ffmpeg", "-loglevel", "error", "-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
           "-c:a", "aac", "-b:a", "192k", "-vn", "-f", "adts", "pipe:1"]
    proc = subprocess.run(cmd, input=pcm.tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise EncodeError(f"aac: ffmpeg failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return proc.stdout


class _Sink:
    """A write-only file for libsndfile: bytes are collected and handed out as they come."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.pos = 0

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:  # Ogg only asks where it is
        return self.pos

    def read(self, size: int = -1) -> bytes:
        return b""

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def encode(audio: np.ndarray, sample_rate: int, name: str) -> bytes:
    """A whole file of ``name`` from float samples."""
    return b"".join(_chunks(Encoder(name, sample_rate), audio))


def _chunks(encoder: "Encoder", audio: np.ndarray):
    yield encoder.push(audio)
    yield encoder.close()


class Encoder:
    """Encode a stream of float chunks; ``push`` and ``close`` return the bytes ready so far, which
    concatenated make one file of the format."""

    def __init__(self, name: str, sample_rate: int):
        require(name)
        self.name, self.rate = name, sample_rate
        self.started = False
        self.pending: list[np.ndarray] = []
        self.sink = self.file = None
        if name == "ogg":
            self.sink = _Sink()
            self.file = sf.SoundFile(self.sink, mode="w", samplerate=sample_rate, channels=1, format="OGG",
                                     subtype="VORBIS")

    @property
    def streams(self) -> bool:
        return self.name in ("wav", "raw", "pcm", "ogg")

    def push(self, audio: np.ndarray) -> bytes:
        pcm = to_int16(audio)
        head = b""
        if not self.started and self.name == "wav":
            head = wav_stream_header(self.rate)
        self.started = True
        if self.name in ("wav", "raw", "pcm"):
            return head + pcm.tobytes()
        if self.file is not None:
            self.file.write(pcm)
            return self.sink.drain()
        self.pending.append(pcm)
        return b""

    def close(self) -> bytes:
        if self.name in ("wav", "raw", "pcm"):
            return b"" if self.started else self.push(np.zeros(0, np.float32))
        if self.file is not None:
            self.file.close()
            return self.sink.drain()
        pcm = np.concatenate(self.pending) if self.pending else np.zeros(0, "<i2")
        self.pending = []
        if self.name == "aac":
            return _aac(pcm, self.rate)
        return _whole(pcm, self.rate, self.name)


def _whole(pcm: np.ndarray, rate: int, name: str) -> bytes:
    import io

    fmt, subtype = _SNDFILE[name]
    if name == "opus" and rate not in OPUS_RATES:
        pcm = to_int16(resample(pcm.astype(np.float32) / 32768.0, rate, 48000))
        rate = 48000
    buffer = io.BytesIO()
    try:
        with sf.SoundFile(buffer, mode="w", samplerate=rate, channels=1, format=fmt, subtype=subtype) as out:
            out.write(pcm)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise EncodeError(f"{name}: {exc}") from None
    return buffer.getvalue()
