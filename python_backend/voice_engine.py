"""The serving engine of one voice version: GPT in-flight batching, SoVITS/vocoder dynamic
batching, streaming. numpy + onnxruntime only; no Triton here (the Triton ``model.py`` turns
its tensors into :class:`SynthesisRequest` and :class:`AudioChunk` back into responses).

Threads (vllm_backend style):

* ``submit`` validates, enqueues and returns a :class:`RequestHandle`.
* ``[gpt]`` decode thread: in-flight batching. A new request is prefilled alone (prefill rows
  would need equal lengths) and joins the running batch at the next step. The batch's KV
  cache is a :class:`KVCache` (per-layer buffers the step graph reads in place), LEFT-padded
  (attention mask 0 on padding) so every row appends at the same column; each row has its own position (prompt length +
  generated index), sampling parameters and ``numpy`` Generator. A finished or cancelled row
  leaves at once: its row is removed and leading columns that are padding for every
  remaining row are trimmed.
* ``[sovits]`` thread: dynamic batching. Jobs (a token span of one request) from all
  requests queue up; it takes what is waiting (up to ``max_batch``, one speed per batch),
  pads codes/phones/noise, runs ``sovits`` then ``vocoder`` once for the group and trims
  every row. The vocoder graph masks each row past its own length, so a row's audio in a
  batch equals its solo run.
* sender thread: calls ``emit(chunk)``; decoding never waits on a client.

Per request everything flows decode -> sovits queue -> sender queue in FIFO order, so chunks
arrive in order and the final chunk is the last one. EXACTLY ONE chunk per request has
``final=True``, also on cancel and error; an error is reported in that chunk's ``error``
field (a one-line message, no traceback) with ``finish_reason="error"``.

Finish reasons: ``"eos"`` (the GPT stopped), ``"budget"`` (the token budget ended the
sentence: see :func:`token_budget`), ``"cancelled"``, ``"error"``.

Streaming math (``req.stream``). Semantic tokens are 25 Hz; SoVITS makes 2 latent frames per
token and the vocoder ``hop`` (640) samples per frame, so one token is 1280 samples (40 ms at
32 kHz) at speed 1. A chunk is emitted when ``stream_first_tokens`` tokens exist, then every
``stream_chunk_tokens`` more. Chunk ``k`` commits tokens ``[s, e)`` with ``e = generated -
holdback``; it decodes ``[s - left_context, generated)`` (left context so the start is not
cold; the ``holdback`` tokens as right context) and emits only the samples of ``[s, e)``:
``[(s - c0) * 1280, (e - c0) * 1280)`` of the chunk's audio, ``c0 = max(0, s - left_context)``.
The vocoder does not redo the whole left context: SoVITS needs it (its encoder attends over
the chunk), the vocoder only its receptive field, so each row's latent is cut to start
``vocoder_context`` frames before the frame holding the first emitted sample (the graph's
``vocoder_batch_tail_samples`` rounded up to frames: about 11 frames, 5.5 tokens). A
convolution stack's output farther than its reach from the cut equals the uncut run's, so the
emitted samples equal the uncut schedule's to float rounding while a 25-token chunk vocodes
about 67 latent frames instead of 72 (``stats["vocoder_frames"]`` counts them).
The final chunk decodes ``[s - left_context, N)`` and emits the rest, so the stream's total
length equals a non-stream decode of the same tokens (``N * 1280`` at speed 1). At speed != 1
a chunk's latent has ``int(2 * n / speed) + 1`` frames and the sample boundary of token ``t``
is taken as ``round(t * 1280 / speed)`` (the interpolation is linear, so this is exact only
up to the resampler's edge effects); the final piece is trimmed or zero-padded (at most about
one latent frame) so the total still equals the non-stream length.

Noise: a request's noise is a function of its seed and the latent frame, drawn per chunk
(never for the whole token budget at submit): frames come in blocks of ``NOISE_BLOCK``, block
``k`` drawn from ``default_rng([seed, 1, k])``, times ``noise_scale``; a chunk decode uses the
frames the full decode would use at its position (``round(2 * c0 / speed)`` onwards). See
:func:`noise_frames`.

Bounded work (``python_backend.limits``): ``submit_group`` takes all sentences of one client
request at once and refuses them whole (:class:`EngineBusy`) when the voice already holds
``max_queued`` sentences; the group shares a :class:`RequestGroup` whose token allowance
(the request's audio-seconds cap) ends its sentences with finish reason "budget" when spent.
Admission is fair: the decode thread admits the waiting sentence of the group with the fewest
rows in the batch (oldest first among equals), and one group holds at most
``max_rows_per_request`` rows, so a long request's sentences interleave with other requests
instead of queueing them behind all of its own.

Reproducibility: the sampling Generator is ``default_rng(seed)`` (as ``GPTRunner.generate``),
the noise Generator ``default_rng([seed, 1])``. Without a seed the engine draws one and
reports it on the handle, so any request can be replayed.
"""
from __future__ import annotations

import collections
import logging
import math
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from python_backend import sampling
from python_backend.gpt_runner import GPTRunner
from python_backend.kv_cache import KVCache
from python_backend.limits import BUSY
from python_backend.manifest import VoiceManifest
from python_backend.onnx_stage import OnnxStage, providers, session_options
from python_backend.v4_synthesis import V4Prompt, V4Scheduler, V4Stages

log = logging.getLogger(__name__)
TICK_S = 0.5  # the sender thread's tick (VoiceEngine.on_tick)

BERT_DIM = 1024
MAX_TOKENS = sampling.DEFAULT_MAX_NEW_TOKENS  # upstream's 1500-step cap (60 s of audio)
TOKENS_PER_SECOND = 25
LATENT_FRAMES_PER_TOKEN = 2
BUDGET_BASE_TOKENS = 50  # 2 s: leading/trailing silence and the EOS lag of a short sentence
BUDGET_TOKENS_PER_PHONE = 8  # 0.32 s per phone: 3x a normal v2 speaking rate (~9-10 phones/s)
NOISE_STREAM = 1
NOISE_BLOCK = 256  # latent frames per independently seeded noise block (about 5 s of audio)
MAX_SAMPLE_STEPS = 64  # v4 CFM steps per request (upstream api_v2 default 32, web UI 8)

FINISH_EOS = "eos"
FINISH_BUDGET = "budget"
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"


from python_backend.errors import RequestError  # noqa: E402  (a field with a bad value: INVALID_ARG)


class EngineClosed(RuntimeError):
    """``submit`` after ``close``."""


class EngineBusy(RuntimeError):
    """The voice holds as many sentences as it may queue: retry later (Triton UNAVAILABLE)."""


class RequestGroup:
    """The sentences of one client request: a fairness key and a token allowance (the
    request's audio-seconds cap) that only the decode thread spends."""

    _ids = iter(range(1, 1 << 62))
    _ids_lock = threading.Lock()

    def __init__(self, tokens: int | None = None):
        with RequestGroup._ids_lock:
            self.id = next(RequestGroup._ids)
        self.tokens_left = None if tokens is None else int(tokens)

    def spend(self, n: int = 1) -> bool:
        """Spend ``n`` tokens; False once the allowance is used up (None: unlimited)."""
        if self.tokens_left is None:
            return True
        self.tokens_left -= n
        return self.tokens_left > 0

    @property
    def exhausted(self) -> bool:
        return self.tokens_left is not None and self.tokens_left <= 0


def token_budget(n_target_phones: int, max_tokens: int | None = None) -> int:
    """Most semantic tokens one sentence may generate: the guard against a GPT that never
    emits EOS (a known GPT-SoVITS failure; every random-weight demo).

    ``min(1500, 50 + 8 * n_target_phones)``: 8 tokens (0.32 s) per phone is about three
    times a normal speaking rate of the v2 phone set, plus 2 s for pauses, so real speech
    ends by EOS long before; capped at upstream's 1500 steps (60 s). The request's
    ``max_tokens`` caps it further. When it ends a sentence the finish reason is "budget".
    """
    budget = min(MAX_TOKENS, BUDGET_BASE_TOKENS + BUDGET_TOKENS_PER_PHONE * max(0, int(n_target_phones)))
    if max_tokens is not None:
        budget = min(budget, int(max_tokens))
    return budget


def noise_frames(seed: int, start: int, stop: int, channels: int, noise_scale: float) -> np.ndarray:
    """Latent frames ``[start, stop)`` of the request's SoVITS noise [channels, stop - start] f32:
    frame ``f`` depends only on the seed and ``f``, so a chunk draws only its own frames (plus
    the rest of their blocks) and equals the slice a whole-utterance decode would use."""
    n = stop - start
    if noise_scale == 0 or n <= 0:
        return np.zeros((channels, max(1, n)), np.float32)
    blocks = []
    for k in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
        rng = np.random.default_rng([int(seed), NOISE_STREAM, k])
        blocks.append(rng.standard_normal((NOISE_BLOCK, channels), dtype=np.float32))
    draws = np.concatenate(blocks, axis=0)
    offset = start - (start // NOISE_BLOCK) * NOISE_BLOCK
    return np.ascontiguousarray(draws[offset: offset + n].T * np.float32(noise_scale))


def request_noise(seed: int, frames: int, channels: int, noise_scale: float) -> np.ndarray:
    """The first ``frames`` frames of the request's noise (what a whole-utterance decode uses)."""
    return noise_frames(seed, 0, frames, channels, noise_scale)


def latent_frames(n_tokens: int, speed: float) -> int:
    """Latent frames SoVITS makes for ``n_tokens`` codes (upstream's resampling at speed != 1)."""
    return LATENT_FRAMES_PER_TOKEN * n_tokens if speed == 1 else int(LATENT_FRAMES_PER_TOKEN * n_tokens / speed) + 1


# --------------------------------------------------------------------------- records


def _check_range(name: str, value, low, high, low_open: bool = False) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name}={value!r} is not a number") from None
    bad = not math.isfinite(v) or v > high or (v <= low if low_open else v < low)
    if bad:
        raise RequestError(f"{name}={value!r} out of range {'(' if low_open else '['}{low}, {high}]")


@dataclass
class EngineReference:
    """A reference other than the version's own (a per-request clip): what the GPT is prompted
    with and what conditions SoVITS."""

    phones: np.ndarray  #: int64 [P] reference transcript phones
    bert: np.ndarray  #: float32 [1024, P]
    prompts: np.ndarray  #: int64 [1, T] prompt semantic tokens (T = 0: reference-free)
    ge: np.ndarray  #: float32 [1, gin, 1] speaker conditioning (mean over the reference clips)
    v4_prompt: V4Prompt | None = None  #: v4 voices: the CFM prompt (features + mel) of the clip

    def nbytes(self) -> int:
        extra = self.v4_prompt.nbytes() if self.v4_prompt is not None else 0
        return int(self.phones.nbytes + self.bert.nbytes + self.prompts.nbytes + self.ge.nbytes + extra)


@dataclass
class SynthesisRequest:
    """One sentence for this voice: target phones and BERT features (from the text front end)."""

    phones: np.ndarray  #: int64 [P] v2 phone ids of the target text
    bert: np.ndarray  #: float32 [1024, P] BERT features aligned to ``phones``
    top_k: int = 15  #: 1..1024; 1 is greedy
    top_p: float = 1.0  #: (0, 1]
    temperature: float = 1.0  #: (0, 5]
    repetition_penalty: float = 1.35  #: (0.5, 3]
    noise_scale: float = 0.5  #: [0, 2]; SoVITS sampling noise
    speed: float = 1.0  #: [0.25, 4]
    seed: int | None = None  #: same seed + same request on an idle engine -> same audio
    max_tokens: int | None = None  #: 1..1500; caps :func:`token_budget`
    stream: bool = False  #: emit audio in chunks while the GPT decodes (v4: one piece per CFM chunk)
    sample_steps: int | None = None  #: v4 only: CFM Euler steps, 1..64 (None: the version's default, 32)
    reference: EngineReference | None = None  #: None: the version's own reference (reference.npz)
    group: RequestGroup | None = None  #: the client request it belongs to (fairness, audio cap); None: its own

    def validate(self, phone_vocab_size: int | None = None) -> None:
        phones = np.asarray(self.phones)
        if phones.ndim != 1 or phones.size == 0:
            raise RequestError(f"phones must be a non-empty 1-D array, got shape {phones.shape}")
        if not np.issubdtype(phones.dtype, np.integer):
            raise RequestError(f"phones must be integers, got dtype {phones.dtype}")
        if phones.min() < 0 or (phone_vocab_size is not None and phones.max() >= phone_vocab_size):
            bad = int(phones.min()) if phones.min() < 0 else int(phones.max())
            raise RequestError(f"phones contains id {bad}, outside [0, {phone_vocab_size})")
        bert = np.asarray(self.bert)
        if bert.shape != (BERT_DIM, phones.size):
            raise RequestError(f"bert shape {bert.shape}, expected ({BERT_DIM}, {phones.size}) to match phones")
        if not np.issubdtype(bert.dtype, np.floating) or not np.all(np.isfinite(bert)):
            raise RequestError("bert must be finite floats")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or not 1 <= self.top_k <= 1024:
            raise RequestError(f"top_k={self.top_k!r} out of range [1, 1024]")
        _check_range("top_p", self.top_p, 0, 1, low_open=True)
        _check_range("temperature", self.temperature, 0, 5, low_open=True)
        _check_range("repetition_penalty", self.repetition_penalty, 0.5, 3, low_open=True)
        _check_range("noise_scale", self.noise_scale, 0, 2)
        _check_range("speed", self.speed, 0.25, 4)
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(
                self.max_tokens, (int, np.integer)) or not 1 <= self.max_tokens <= MAX_TOKENS):
            raise RequestError(f"max_tokens={self.max_tokens!r} out of range [1, {MAX_TOKENS}]")
        if self.sample_steps is not None and (isinstance(self.sample_steps, bool) or not isinstance(
                self.sample_steps, (int, np.integer)) or not 1 <= self.sample_steps <= MAX_SAMPLE_STEPS):
            raise RequestError(f"sample_steps={self.sample_steps!r} out of range [1, {MAX_SAMPLE_STEPS}]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or self.seed < 0):
            raise RequestError(f"seed={self.seed!r} must be a non-negative integer")


@dataclass
class AudioChunk:
    """A piece of one request's audio (mono float32 at the version's sample rate: 32 kHz, v4 48 kHz)."""

    audio: np.ndarray  #: f32 [n]
    final: bool  #: exactly one chunk per request is final (the last one)
    finish_reason: str | None  #: set on the final chunk: eos | budget | cancelled | error
    tokens: int  #: semantic tokens whose audio this chunk carries (their sum = tokens generated)
    error: str | None = None  #: one-line reason when finish_reason == "error"


class RequestHandle:
    """What ``submit`` returns: cancel the request, wait for it, read what happened."""

    def __init__(self, request_id: int, seed: int):
        self.id = request_id
        self.seed = seed  #: the seed used (drawn by the engine when the request had none)
        self._cancel = threading.Event()
        self._done = threading.Event()
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.generated = 0  #: tokens sampled so far (written by the decode thread; for progress only)
        self.tokens: np.ndarray | None = None  #: generated semantic tokens (set when the GPT part ends)
        # time.monotonic() of each phase, for the per-request timing line and the profile
        self.submitted_at = time.monotonic()
        self.admitted_at: float | None = None  #: prefilled, joined the GPT batch
        self.gpt_done_at: float | None = None  #: its row left the GPT batch
        self.first_audio_at: float | None = None  #: its first audio chunk went to the sender
        self.done_at: float | None = None  #: its final chunk was emitted

    def timings(self) -> dict[str, float]:
        """Seconds spent waiting for the GPT batch, decoding, and from the GPT end to the final chunk."""
        t = {}
        if self.admitted_at is not None:
            t["queue_s"] = self.admitted_at - self.submitted_at
            if self.gpt_done_at is not None:
                t["gpt_s"] = self.gpt_done_at - self.admitted_at
                if self.done_at is not None:
                    t["audio_s"] = self.done_at - self.gpt_done_at
        if self.first_audio_at is not None:
            t["first_audio_s"] = self.first_audio_at - self.submitted_at
        if self.done_at is not None:
            t["total_s"] = self.done_at - self.submitted_at
        return t

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


@dataclass
class _Request:
    req: SynthesisRequest
    emit: Callable[[AudioChunk], None]
    handle: RequestHandle
    budget: int
    group: RequestGroup
    tokens: list = field(default_factory=list)
    committed: int = 0  # streaming: tokens whose audio is already scheduled
    next_chunk_at: int = 0  # streaming: emit a chunk when this many tokens exist
    failed: bool = False  # an error final was sent; drop its remaining jobs
    final_sent: bool = False  # sender thread only


@dataclass
class _Job:
    """Decode tokens[c0:c1] of one request and emit the samples of tokens [s, e) (e=None: to the end)."""

    r: _Request
    codes: np.ndarray | None  # None: no audio, only the final chunk (cancel)
    c0: int
    s: int
    e: int | None
    final: bool
    reason: str | None = None
    error: str | None = None


@dataclass
class _Row:
    r: _Request
    rng: np.random.Generator
    history: np.ndarray  # prompt + generated tokens
    n_prompt: int
    generated: int = 0


_STOP = object()


class VoiceEngine:
    """Serve one voice version folder (``REPO/voice_<name>/<N>/``).

    ``max_batch``: most rows in the GPT batch and in one SoVITS/vocoder call.
    ``stream_first_tokens`` / ``stream_chunk_tokens`` / ``left_context`` / ``holdback``: the
    streaming chunk schedule (module doc); ``vocoder_context``: latent frames the vocoder sees
    left of a chunk's first emitted sample (None: the graph's receptive field, exact; a huge
    value: the whole decoded left context). ``threads``: onnxruntime intra-op threads per
    session (0: its default). ``ignore_eos``: benchmark mode, every request runs to its budget.
    """

    def __init__(self, version_dir: str | Path, max_batch: int = 16, stream_first_tokens: int = 10,
                 stream_chunk_tokens: int = 25, threads: int = 0, left_context: int = 8, holdback: int = 3,
                 ignore_eos: bool = False, max_queued: int = 512, max_rows_per_request: int | None = None,
                 vocoder_context: int | None = None):
        if max_batch < 1 or stream_first_tokens <= holdback or stream_chunk_tokens < 1:
            raise ValueError(f"max_batch={max_batch} stream_first_tokens={stream_first_tokens} "
                             f"stream_chunk_tokens={stream_chunk_tokens} holdback={holdback}: need max_batch >= 1, "
                             "stream_first_tokens > holdback, stream_chunk_tokens >= 1")
        self.folder = Path(version_dir)
        self.manifest = VoiceManifest.read(self.folder)
        self.max_batch = max_batch
        self.max_queued = max(1, int(max_queued))
        self.max_rows_per_request = max(1, max_batch // 2) if max_rows_per_request is None else max(1, max_rows_per_request)
        self.stream_first_tokens = stream_first_tokens
        self.stream_chunk_tokens = stream_chunk_tokens
        self.left_context = left_context
        self.holdback = holdback
        # benchmark mode: EOS is masked at every step, so every request runs to its budget
        # (compare pipelines on equal work; random-weight GPTs emit EOS at arbitrary points)
        self.eos_mask_steps = MAX_TOKENS + 1 if ignore_eos else sampling.EOS_MASK_STEPS
        opts, prov = session_options(threads), providers()
        self._options, self._providers, self._ref_stages = opts, prov, None
        self._ref_lock = threading.Lock()
        self.gpt = GPTRunner(self.folder / "gpt_prefill.onnx", self.folder / "gpt_step.onnx", prov, opts)
        self.v4: V4Stages | None = None
        self.sovits = self.vocoder = None
        if self.is_v4:  # encoder -> CFM steps -> 48 kHz vocoder (python_backend.v4_synthesis)
            self.v4 = V4Stages(self.folder, opts, prov)
            self.hop = self.v4.contract.hop
            self.samples_per_token = self.v4.contract.samples_per_code
        else:
            self.sovits = OnnxStage(self.folder / "sovits.onnx", "gpt-sovits-s2", options=opts, provider_list=prov,
                                    inputs=("codes", "code_lengths", "phones", "phone_lengths", "ge", "noise",
                                            "speed"), outputs=("latent", "latent_lengths"))
            self.vocoder = OnnxStage(self.folder / "vocoder.onnx", "gpt-sovits-s2", options=opts, provider_list=prov,
                                     inputs=("latent", "ge"), outputs=("wav",))
            self.hop = int(self.vocoder.metadata.get("hop", self.manifest.hop_length))
            self.samples_per_token = LATENT_FRAMES_PER_TOKEN * self.hop
            self.channels = int(self.sovits.metadata.get("latent_channels", 192))
            tail = self.vocoder.metadata.get("vocoder_batch_tail_samples")
            if vocoder_context is None:  # no metadata: keep the whole decoded left context
                vocoder_context = -(-int(tail) // self.hop) if tail else LATENT_FRAMES_PER_TOKEN * left_context
        self.vocoder_context = max(0, int(vocoder_context or 0))
        with np.load(self.folder / "reference.npz") as ref:
            self.ref_phones = ref["phones"].astype(np.int64).reshape(-1)
            self.ref_bert = ref["bert"].astype(np.float32)
            self.prompts = ref["prompts"].astype(np.int64).reshape(1, -1)
            self.ge = ref["ge"].astype(np.float32).reshape(1, -1, 1)
            ref_mel = ref["mel"].astype(np.float32) if "mel" in ref.files else None
        if self.ref_bert.shape != (BERT_DIM, self.ref_phones.size):
            raise ValueError(f"{self.folder}/reference.npz: bert {self.ref_bert.shape} does not match "
                             f"{self.ref_phones.size} phones")
        self.v4_prompt: V4Prompt | None = None
        if self.v4 is not None:
            if ref_mel is None:
                raise ValueError(f"{self.folder}/reference.npz: a v4 version needs the reference mel ('mel')")
            self.v4_prompt = self.v4.prompt(self.prompts, self.ref_phones, self.ge, ref_mel)

        self._lock = threading.Condition()
        self._in_flight = 0
        self._next_id = 0
        self._closed = False
        self._intake = _FairIntake()
        self._jobs: queue.Queue = queue.Queue()
        self._out: queue.Queue = queue.Queue()
        # called about every TICK_S in the sender thread: an adapter's periodic sends
        # (triton_voice's heartbeats) then come from the one thread that sends audio
        self.on_tick: Callable[[], None] | None = None
        # steps, step_rows, max_rows, prefills, sovits_batches, sovits_rows, vocoder_frames (valid latent frames vocoded)
        self.stats = collections.Counter()
        self.seconds = collections.Counter()  # graph time: prefill, step, sampling, sovits, vocoder
        self._threads = [
            threading.Thread(target=self._decode_loop, name="gsv-gpt", daemon=True),
            threading.Thread(target=self._v4_loop if self.v4 is not None else self._sovits_loop, name="gsv-sovits",
                             daemon=True),
            threading.Thread(target=self._send_loop, name="gsv-send", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ references
    @property
    def is_v4(self) -> bool:
        """v4: 48 kHz, CFM + vocoder after the GPT instead of the VITS decoder."""
        return self.manifest.sovits_version == "v4"

    @property
    def sample_rate(self) -> int:
        return self.v4.contract.sample_rate if self.v4 is not None else int(self.manifest.sample_rate)

    @property
    def is_pro(self) -> bool:
        """v2Pro/v2ProPlus: the speaker graph also takes a speaker-verification embedding."""
        return self.manifest.sovits_version in ("v2Pro", "v2ProPlus")

    def _reference_stages(self) -> tuple[OnnxStage, OnnxStage]:
        """The version's prompt_codes and speaker graphs, opened on the first per-request reference."""
        with self._ref_lock:
            if self._ref_stages is None:
                codes = OnnxStage(self.folder / "prompt_codes.onnx", "gpt-sovits-s2", inputs=("ssl",),
                                  outputs=("codes",), options=self._options, provider_list=self._providers)
                names = ("refer_spec", "sv_emb") if self.is_pro else ("refer_spec",)
                speaker = OnnxStage(self.folder / "speaker.onnx", "gpt-sovits-s2", inputs=names, outputs=("ge",),
                                    options=self._options, provider_list=self._providers)
                self._ref_stages = (codes, speaker)
            return self._ref_stages

    def make_reference(self, phones: np.ndarray, bert: np.ndarray, ssl: np.ndarray | None, specs: list[np.ndarray],
                       sv_embs: list[np.ndarray] | None = None, mel: np.ndarray | None = None) -> EngineReference:
        """Upstream's prompt from a clip: prompt tokens from its SSL features [768, T], ge from
        each spectrogram [1025, F] (+ its sv_emb [20480] for Pro voices), averaged over the
        clips as upstream fuses ``aux_ref_audio_paths``.  ``ssl`` None: reference-free (no
        prompt tokens; ``phones`` empty), as upstream runs a request without prompt text.
        v4 voices also need ``mel``, the main clip's normalized log-mel
        (``python_backend.mel_v4.reference_mel``), and have no reference-free mode."""
        codes_stage, speaker = self._reference_stages()
        if self.v4 is not None and (ssl is None or mel is None):
            raise RequestError("a v4 voice needs a reference clip with its transcript (REF_TEXT): upstream's v4 "
                               "path has no reference-free mode")
        if ssl is None:
            if not self.gpt.empty_prompts:
                raise RequestError(f"voice version {self.manifest.version} was exported before reference-free "
                                   "requests were supported; re-export it, or send REF_TEXT")
            if np.asarray(phones).size:
                raise RequestError("a reference-free request has no reference phones")
            prompts = np.zeros((1, 0), np.int64)
        else:
            prompts = codes_stage.run(ssl=np.asarray(ssl, np.float32)[None])["codes"].astype(np.int64).reshape(1, -1)
            if prompts.shape[1] == 0:
                raise RequestError("the reference clip is too short for one prompt token")
        ges = []
        for i, spec in enumerate(specs):
            feeds = {"refer_spec": np.asarray(spec, np.float32)[None]}
            if self.is_pro:
                if sv_embs is None or i >= len(sv_embs):
                    raise RequestError("a v2Pro/v2ProPlus voice needs a speaker-verification embedding per clip")
                feeds["sv_emb"] = np.asarray(sv_embs[i], np.float32).reshape(1, -1)
            ges.append(speaker.run(**feeds)["ge"].astype(np.float32))
        ge = np.mean(np.stack(ges, 0), axis=0).reshape(1, -1, 1).astype(np.float32)
        phones = np.asarray(phones, np.int64).reshape(-1)
        bert = np.asarray(bert, np.float32)
        if bert.shape != (BERT_DIM, phones.size):
            raise RequestError(f"REF_BERT shape {bert.shape} does not match {phones.size} reference phones")
        v4_prompt = None
        if self.v4 is not None:
            if phones.size == 0:
                raise RequestError("a v4 voice needs the reference transcript's phones (REF_TEXT)")
            v4_prompt = self.v4.prompt(prompts, phones, ge, mel)
        return EngineReference(phones=phones, bert=bert, prompts=prompts, ge=ge, v4_prompt=v4_prompt)

    # ------------------------------------------------------------------ public
    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def submit(self, req: SynthesisRequest, emit: Callable[[AudioChunk], None]) -> RequestHandle:
        """Validate and enqueue one sentence; ``emit`` is called from the sender thread (raises
        RequestError, EngineBusy, EngineClosed)."""
        return self.submit_group([req], [emit])[0]

    def submit_group(self, reqs: list[SynthesisRequest], emits: list[Callable[[AudioChunk], None]],
                     group: RequestGroup | None = None) -> list[RequestHandle]:
        """Validate and enqueue the sentences of one client request, all or none: refused whole
        (EngineBusy) when the voice would hold more than ``max_queued`` sentences."""
        for req in reqs:
            req.validate(self.gpt.phone_vocab_size)
            if self.v4 is not None and req.sample_steps is not None and req.sample_steps > self.v4.contract.steps_max:
                raise RequestError(f"sample_steps={req.sample_steps} out of range [1, {self.v4.contract.steps_max}]")
            if self.v4 is not None and req.reference is not None and req.reference.v4_prompt is None:
                raise RequestError("the reference was not made for a v4 voice (no CFM prompt); make it with this engine")
        group = group or RequestGroup()
        with self._lock:
            if self._closed:
                raise EngineClosed("voice engine is closed")
            if self._in_flight + len(reqs) > self.max_queued:
                raise EngineBusy(f"{BUSY} ({self._in_flight} sentences in progress, limit "
                                 f"{self.max_queued}); retry later")
            self._in_flight += len(reqs)
            first = self._next_id + 1
            self._next_id += len(reqs)
        requests = []
        for i, (req, emit) in enumerate(zip(reqs, emits)):
            req.group = req.group or group
            seed = int(req.seed) if req.seed is not None else secrets.randbits(63)
            requests.append(_Request(req=req, emit=emit, handle=RequestHandle(first + i, seed),
                                     budget=token_budget(len(req.phones), req.max_tokens), group=req.group,
                                     next_chunk_at=self.stream_first_tokens))
        self._intake.put_all(requests)
        return [r.handle for r in requests]

    def close(self, timeout: float | None = None) -> None:
        """Stop intake, let in-flight requests finish, join the threads."""
        with self._lock:
            self._closed = True
            self._lock.wait_for(lambda: self._in_flight == 0, timeout)
        self._intake.stop()
        for t in self._threads:
            t.join(timeout)

    # ------------------------------------------------------------------ GPT decode thread
    def _decode_loop(self) -> None:
        batch = _Batch(self.gpt)
        stopping = False
        while True:
            try:
                stopping = self._admit(batch, block=not batch.rows and not stopping) or stopping
                if stopping and not batch.rows:
                    self._jobs.put(_STOP)
                    return
                self._drop_cancelled(batch)
                if batch.rows:
                    self._decode_step(batch)
            except Exception as exc:  # a graph failure fails the batch, never the thread
                log.exception("[gpt] decode step failed")
                for row in batch.rows:
                    self._finish_error(row.r, f"decode failed: {str(exc).splitlines()[0][:200]}")
                batch.clear()

    def _admit(self, batch: "_Batch", block: bool) -> bool:
        """Prefill waiting requests into the batch, fairly (module doc); True when stopping."""
        while len(batch.rows) < self.max_batch:
            rows: dict[int, int] = collections.Counter(row.r.group.id for row in batch.rows)
            r = self._intake.get(block, rows, self.max_rows_per_request)
            if r is None:
                return False
            block = False
            if r is _STOP:
                return True
            if r.handle.cancelled or r.group.exhausted:
                r.handle.tokens = np.zeros(0, np.int64)
                self._jobs.put(_Job(r, None, 0, 0, 0, True, FINISH_CANCELLED if r.handle.cancelled else FINISH_BUDGET))
                continue
            try:
                self._prefill(batch, r)
            except Exception as exc:
                log.exception("[gpt] prefill failed")
                self._finish_error(r, f"prefill failed: {str(exc).splitlines()[0][:200]}")
        return False

    def _prefill(self, batch: "_Batch", r: _Request) -> None:
        req = r.req
        ref_phones, ref_bert, prompts = self.ref_phones, self.ref_bert, self.prompts
        if req.reference is not None:
            ref_phones, ref_bert, prompts = req.reference.phones, req.reference.bert, req.reference.prompts
        phones = np.concatenate([ref_phones, np.asarray(req.phones, np.int64)])[None]
        bert = np.concatenate([ref_bert, np.asarray(req.bert, np.float32)], axis=1)[None]
        t0 = time.perf_counter()
        logits, k, v = self.gpt.prefill(phones, bert, prompts)
        self.seconds["prefill"] += time.perf_counter() - t0
        r.handle.admitted_at = time.monotonic()
        n_prompt = prompts.shape[1]
        history = np.empty(n_prompt + r.budget, np.int64)
        history[:n_prompt] = prompts[0]
        batch.add(_Row(r, np.random.default_rng(r.handle.seed), history, n_prompt), logits, k, v)
        self.stats["prefills"] += 1

    def _drop_cancelled(self, batch: "_Batch") -> None:
        gone = [i for i, row in enumerate(batch.rows) if row.r.handle.cancelled]
        for i in gone:
            self._end_row(batch.rows[i], FINISH_CANCELLED)
        batch.remove(gone)

    def _decode_step(self, batch: "_Batch") -> None:
        rows = batch.rows
        gen = np.array([row.generated for row in rows])
        masked = sampling.mask_eos(batch.logits, gen, self.gpt.eos, self.eos_mask_steps)
        reqs = [row.r.req for row in rows]
        t0 = time.perf_counter()
        tokens, argmax = sampling.sample(
            masked, [row.history[: row.n_prompt + row.generated] for row in rows],
            top_k=[q.top_k for q in reqs], top_p=[q.top_p for q in reqs], temperature=[q.temperature for q in reqs],
            repetition_penalty=[q.repetition_penalty for q in reqs], rng=[row.rng for row in rows])
        self.seconds["sampling"] += time.perf_counter() - t0
        done = []
        for i, row in enumerate(rows):
            row.history[row.n_prompt + row.generated] = tokens[i]
            row.generated += 1
            row.r.handle.generated = row.generated
            reason = sampling.stop_reason(row.generated, argmax[i], tokens[i], self.gpt.eos, -1, row.r.budget)
            if int(tokens[i]) != self.gpt.eos:
                row.r.tokens.append(int(tokens[i]))
                if not row.r.group.spend(1) and reason is None:  # the request's audio cap is spent
                    reason = sampling.STOP_BUDGET
            if reason is not None:
                done.append(i)
                self._end_row(row, FINISH_EOS if reason == sampling.STOP_EOS else FINISH_BUDGET)
            elif row.r.req.stream and self.v4 is None and len(row.r.tokens) >= row.r.next_chunk_at:
                self._stream_chunk(row.r)
        batch.remove(done)
        self.stats["steps_sampled"] += 1
        if batch.rows:
            t0 = time.perf_counter()
            batch.step(tokens[[i for i in range(len(rows)) if i not in set(done)]])
            self.seconds["step"] += time.perf_counter() - t0
            self.stats["steps"] += 1
            self.stats["step_rows"] += len(batch.rows)
            self.stats["max_rows"] = max(self.stats["max_rows"], len(batch.rows))

    def _end_row(self, row: _Row, reason: str) -> None:
        r = row.r
        r.handle.tokens = np.asarray(r.tokens, np.int64)
        r.handle.gpt_done_at = time.monotonic()
        if reason == FINISH_CANCELLED or not r.tokens:
            self._jobs.put(_Job(r, None, 0, 0, 0, True, reason))
            return
        c0 = max(0, r.committed - self.left_context) if r.req.stream else 0
        self._jobs.put(_Job(r, np.asarray(r.tokens[c0:], np.int64), c0, r.committed, None, True, reason))

    def _stream_chunk(self, r: _Request) -> None:
        n = len(r.tokens)
        e = n - self.holdback
        c0 = max(0, r.committed - self.left_context)
        self._jobs.put(_Job(r, np.asarray(r.tokens[c0:n], np.int64), c0, r.committed, e, False))
        r.committed = e
        r.next_chunk_at = n + self.stream_chunk_tokens

    def _finish_error(self, r: _Request, message: str) -> None:
        r.handle.gpt_done_at = r.handle.gpt_done_at or time.monotonic()
        self._jobs.put(_Job(r, None, 0, 0, 0, True, FINISH_ERROR, message))

    # ------------------------------------------------------------------ SoVITS thread
    def _sovits_loop(self) -> None:
        pending: collections.deque = collections.deque()
        stopping = False
        while True:
            if not pending:
                if stopping:
                    self._out.put(_STOP)
                    return
                pending.append(self._jobs.get())
            while True:
                try:
                    pending.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            if any(j is _STOP for j in pending):
                stopping = True
                pending = collections.deque(j for j in pending if j is not _STOP)
                if not pending:
                    continue
            group = self._take_group(pending)
            try:
                audio = self._vocode(group)
            except Exception as exc:
                log.exception("[sovits] batch of %d failed", len(group))
                message = f"sovits failed: {str(exc).splitlines()[0][:200]}"
                for job in group:
                    self._send_error(job.r, message)
                continue
            for job, wav in zip(group, audio):
                self._send(job, wav)

    def _take_group(self, pending: collections.deque) -> list[_Job]:
        """Up to max_batch audio jobs of the first job's speed, in queue order (a request's
        jobs share its speed, so its order is kept); jobs without audio ride along."""
        speed = pending[0].r.req.speed
        group, rest, n_audio = [], collections.deque(), 0
        while pending:
            job = pending.popleft()
            audio = job.codes is not None and not job.r.failed and not job.r.handle.cancelled
            if job.r.req.speed != speed or (audio and n_audio >= self.max_batch):
                rest.append(job)
                continue
            group.append(job)
            n_audio += audio
        pending.extend(rest)
        return group

    def _vocode(self, group: list[_Job]) -> list[np.ndarray | None]:
        """Run sovits + vocoder once for the group's audio jobs; per job the samples it emits."""
        todo = [i for i, j in enumerate(group) if j.codes is not None and j.codes.size
                and not j.r.failed and not j.r.handle.cancelled]
        out: list[np.ndarray | None] = [None] * len(group)
        if not todo:
            return out
        jobs = [group[i] for i in todo]
        speed = float(jobs[0].r.req.speed)
        t = max(j.codes.size for j in jobs)
        p = max(len(j.r.req.phones) for j in jobs)
        b = len(jobs)
        codes = np.zeros((b, t), np.int64)
        phones = np.zeros((b, p), np.int64)
        frames = max(latent_frames(j.codes.size, speed) for j in jobs)
        noise = np.zeros((b, self.channels, frames), np.float32)
        for row, j in enumerate(jobs):
            codes[row, : j.codes.size] = j.codes
            phones[row, : len(j.r.req.phones)] = j.r.req.phones
            f0 = round(LATENT_FRAMES_PER_TOKEN * j.c0 / speed)
            n = latent_frames(j.codes.size, speed)
            if j.r.req.noise_scale:
                noise[row, :, :n] = noise_frames(j.r.handle.seed, f0, f0 + n, self.channels, float(j.r.req.noise_scale))
        ge = np.concatenate([self.ge if j.r.req.reference is None else j.r.req.reference.ge for j in jobs], axis=0)
        t0 = time.perf_counter()
        lat = self.sovits.run(codes=codes, code_lengths=np.array([j.codes.size for j in jobs], np.int64),
                              phones=phones, phone_lengths=np.array([len(j.r.req.phones) for j in jobs], np.int64),
                              ge=ge, noise=noise, speed=np.array([speed], np.float32))
        t1 = time.perf_counter()
        lengths = [int(n) for n in lat["latent_lengths"]]
        cuts = [self._vocoder_cut(j, speed) for j in jobs]
        latent = lat["latent"]
        if any(cuts):  # each row from its cut; zeros past its length keep the vocoder's row mask
            latent = np.zeros((b, latent.shape[1], max(n - c for n, c in zip(lengths, cuts))), np.float32)
            for row, (n, c) in enumerate(zip(lengths, cuts)):
                latent[row, :, : n - c] = lat["latent"][row, :, c:n]
        wav = self.vocoder.run(latent=latent, ge=ge)["wav"]
        self.seconds["sovits"] += t1 - t0
        self.seconds["vocoder"] += time.perf_counter() - t1
        self.stats["sovits_batches"] += 1
        self.stats["sovits_rows"] += b
        self.stats["vocoder_frames"] += sum(n - c for n, c in zip(lengths, cuts))
        for row, (i, j) in enumerate(zip(todo, jobs)):
            full = wav[row, : (lengths[row] - cuts[row]) * self.hop]
            out[i] = self._emit_range(j, full, speed, cuts[row] * self.hop)
        return out

    def _vocoder_cut(self, j: _Job, speed: float) -> int:
        """Leading latent frames of a chunk's decode the vocoder may skip: all but
        ``vocoder_context`` frames before the frame of its first emitted sample."""
        per = self.samples_per_token / speed
        start = round(j.s * per) - round(j.c0 * per)
        return max(0, start // self.hop - self.vocoder_context)

    def _emit_range(self, j: _Job, full: np.ndarray, speed: float, skipped: int = 0) -> np.ndarray:
        """The samples of tokens [s, e) inside a decode of tokens [c0, ...) whose first
        ``skipped`` samples were not vocoded (see module doc)."""
        per = self.samples_per_token / speed
        base = round(j.c0 * per) + skipped
        start = round(j.s * per) - base
        if j.e is not None:
            return np.ascontiguousarray(full[start: round(j.e * per) - base])
        want = latent_frames(len(j.r.tokens), speed) * self.hop - round(j.s * per)  # to a full decode's length
        piece = full[start: start + want]
        if piece.shape[0] < want:  # speed != 1 only: at most about one latent frame
            piece = np.concatenate([piece, np.zeros(want - piece.shape[0], np.float32)])
        return np.ascontiguousarray(piece, dtype=np.float32)

    def _send(self, job: _Job, wav: np.ndarray | None) -> None:
        r = job.r
        if r.failed:  # its error final is already out
            return
        if job.reason == FINISH_ERROR:
            self._send_error(r, job.error or "error")
            return
        if r.handle.cancelled:  # drop its audio; the final says cancelled
            if job.final:
                self._out.put((r, AudioChunk(np.zeros(0, np.float32), True, FINISH_CANCELLED, 0)))
            return
        if wav is None:
            wav, n_tokens = np.zeros(0, np.float32), 0
        else:
            n_tokens = (len(r.tokens) if job.e is None else job.e) - job.s
        self._out.put((r, AudioChunk(wav.astype(np.float32, copy=False), job.final,
                                     job.reason if job.final else None, n_tokens)))

    def _send_error(self, r: _Request, message: str) -> None:
        if r.failed:
            return
        r.failed = True
        self._out.put((r, AudioChunk(np.zeros(0, np.float32), True, FINISH_ERROR, 0, message)))

    # ------------------------------------------------------------------ v4 synthesis thread
    def _v4_loop(self) -> None:
        """v4's counterpart of ``_sovits_loop``: whole sentences from the decode thread go to a
        :class:`V4Scheduler` (CFM rows batched step by step); its pieces go to the sender."""
        sched = V4Scheduler(self.v4, self.max_batch, seconds=self.seconds, stats=self.stats)
        jobs: dict[int, _Job] = {}
        sent: dict[int, int] = {}  # tokens already reported per request (stream pieces)
        stopping = False
        while True:
            new = []
            if not sched.busy:
                if stopping:
                    self._out.put(_STOP)
                    return
                new.append(self._jobs.get())
            while True:
                try:
                    new.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            for job in new:
                if job is _STOP:
                    stopping = True
                elif job.codes is None or not job.codes.size or job.r.failed or job.r.handle.cancelled:
                    self._send(job, None)
                else:
                    try:
                        self._v4_add(sched, job)
                    except Exception as exc:  # a bad prompt fails its request, never the thread
                        log.exception("[cfm] request %d refused", job.r.handle.id)
                        self._send_error(job.r, f"v4 synthesis failed: {str(exc).splitlines()[0][:200]}")
                        continue
                    jobs[job.r.handle.id] = job
            for key in sched.keys():
                if jobs[key].r.handle.cancelled or jobs[key].r.failed:
                    sched.drop(key)
                    self._send(jobs.pop(key), None)
            try:
                pieces = sched.tick()
            except Exception as exc:
                log.exception("[cfm] tick failed")
                message = f"v4 synthesis failed: {str(exc).splitlines()[0][:200]}"
                for key in sched.keys():
                    sched.drop(key)
                    self._send_error(jobs.pop(key).r, message)
                continue
            for piece in pieces:
                job = jobs[piece.key]
                n = len(job.r.tokens)
                s = sent.get(piece.key, 0)
                e = None if piece.final else min(n, round(piece.stop * n / max(1, piece.total)))
                self._send(_Job(job.r, None, 0, s, e, piece.final, job.reason if piece.final else None), piece.wav)
                if piece.final:
                    jobs.pop(piece.key)
                    sent.pop(piece.key, None)
                else:
                    sent[piece.key] = e

    def _v4_add(self, sched: V4Scheduler, job: _Job) -> None:
        req = job.r.req
        ref = req.reference
        prompt = self.v4_prompt if ref is None else ref.v4_prompt
        ge = self.ge if ref is None else ref.ge
        steps = req.sample_steps or self.v4.contract.steps_default
        sched.add(job.r.handle.id, job.codes, np.asarray(req.phones, np.int64), ge, prompt, steps, job.r.handle.seed,
                  float(req.speed), stream=bool(req.stream))

    # ------------------------------------------------------------------ sender thread
    def _send_loop(self) -> None:
        ticked = time.monotonic()
        while True:
            try:
                item = self._out.get(timeout=TICK_S)
            except queue.Empty:
                item = None
            if self.on_tick is not None and time.monotonic() - ticked >= TICK_S:
                ticked = time.monotonic()
                try:
                    self.on_tick()  # in this thread, so the adapter's sends stay in one thread
                except Exception:
                    log.exception("[tts] tick failed")
            if item is None:
                continue
            if item is _STOP:
                return
            r, chunk = item
            if r.final_sent:
                continue
            if r.handle.first_audio_at is None and chunk.audio.size:
                r.handle.first_audio_at = time.monotonic()
            if chunk.final:
                r.handle.done_at = time.monotonic()
            try:
                r.emit(chunk)
            except Exception:
                log.exception("[tts] emit of request %d failed", r.handle.id)
            if chunk.final:
                r.final_sent = True
                r.handle.finish_reason = chunk.finish_reason
                r.handle.error = chunk.error
                r.handle._done.set()
                with self._lock:
                    self._in_flight -= 1
                    self._lock.notify_all()


class _FairIntake:
    """Sentences waiting for the GPT batch, per client request (group), in arrival order.

    ``get`` hands out the next sentence of the waiting group with the fewest rows in the batch
    (the oldest group among equals), skipping groups at ``cap`` rows; so a request that sent 100
    sentences cannot hold back one that arrived later with one. Thread-safe."""

    def __init__(self):
        self._cond = threading.Condition()
        self._groups: "collections.OrderedDict[int, collections.deque]" = collections.OrderedDict()
        self._stopping = False

    def put_all(self, requests: list) -> None:
        with self._cond:
            for r in requests:
                self._groups.setdefault(r.group.id, collections.deque()).append(r)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._groups.values())

    def get(self, block: bool, rows: dict[int, int], cap: int):
        """The next sentence to admit, ``_STOP`` once stopping with nothing waiting, or None."""
        with self._cond:
            while True:
                best = None
                for gid, waiting in self._groups.items():  # oldest group first
                    held = rows.get(gid, 0)
                    if held < cap and (best is None or held < rows.get(best, 0)):
                        best = gid
                if best is not None:
                    waiting = self._groups[best]
                    r = waiting.popleft()
                    if not waiting:
                        del self._groups[best]
                    return r
                if self._stopping and not self._groups:
                    return _STOP
                if not block:
                    return None
                self._cond.wait()


class _Batch:
    """The running GPT batch: rows, their next logits, and the LEFT-padded KV cache (``KVCache``)."""

    def __init__(self, gpt: GPTRunner):
        self.gpt = gpt
        self.clear()

    def clear(self) -> None:
        self.rows: list[_Row] = []
        self.logits: np.ndarray | None = None
        self.cache: KVCache | None = None

    def add(self, row: _Row, logits: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Join a prefilled row (one copy of the batch cache, once per request)."""
        new = self.gpt.start_cache(k, v)
        if not self.rows:
            self.rows, self.logits, self.cache = [row], logits, new
            return
        self.cache = KVCache.merge([self.cache, new])
        self.logits = np.concatenate([self.logits, logits], axis=0)
        self.rows.append(row)

    def remove(self, indices: list[int]) -> None:
        if not indices:
            return
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        if not keep:
            self.clear()
            return
        self.rows = [self.rows[i] for i in keep]
        self.logits = self.logits[keep]
        self.cache.select(keep)

    def step(self, tokens: np.ndarray) -> None:
        positions = np.array([row.n_prompt + row.generated - 1 for row in self.rows], np.int64)
        self.logits = self.gpt.step(tokens.reshape(-1, 1), positions, self.cache)
