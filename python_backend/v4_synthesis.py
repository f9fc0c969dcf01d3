"""The SoVITS half of a v4 voice (48 kHz): ``encoder`` -> CFM Euler steps -> ``vocoder`` over the
exported graphs (``export.v4_stages`` documents their inputs and outputs), batched across requests.

Upstream's loop (``TTS.using_vocoder_synthesis``; ``export.v4_pipeline`` is its torch twin): the
reference gives ``fea_ref`` (the encoder on the prompt codes and phones) and ``mel2`` (its
normalized log-mel), both cut to ``T_min`` frames (at most the last ``t_ref``); the target's
``fea_todo`` (4 frames per token) is cut into chunks of ``t_chunk - T_min`` frames; each chunk is
one CFM run of ``n`` Euler steps over ``[prompt | chunk]`` and conditions the next (its last
``T_min`` mel frames and fea frames become the next prompt); the chunks' mel is vocoded to 48 kHz.

Batching: :class:`V4Scheduler` keeps one CFM row per request in progress (its current chunk) and
runs ONE Euler step for up to ``max_batch`` rows per tick; rows may be at different steps, step
counts, chunk lengths and prompts (``t``/``d``/lengths are per row and the step graph masks every
row), so a request that arrives joins at the next tick instead of waiting for a whole CFM run.
Encoder calls are batched per speed, vocoder calls across all rows that finished in the tick.

Streaming: a chunk's audio is sent when its CFM run ends. The vocoder has no state, so a piece is
vocoded from the mel with ``context`` frames on each side and trimmed: the samples of frames
``[e, F - context)`` after a chunk that ends at frame ``F`` (``context`` >= the vocoder's
receptive field), the rest with the last chunk. The stream therefore equals the whole-request wav,
which vocodes the concatenated mel in one call as upstream does, up to float rounding.

Noise (upstream draws ``randn`` per CFM call): chunk ``k`` of a request starts from
``default_rng([seed, 2, k]).standard_normal((mel_dim, T))`` (frames < T_min zeroed), so a request
replays exactly from its seed; ``temperature`` is upstream's 1, CFG off (``inference_cfg_rate`` 0).
"""
from __future__ import annotations

import collections
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable

import numpy as np

from python_backend.onnx_stage import OnnxStage

NOISE_STREAM_CFM = 2
MODEL_TYPE = "gpt-sovits-s2"
# upstream Generator constants of the v4 vocoder (export.v4_vocoder): the receptive field bound
_VOCODER_KERNELS = (20, 12, 4, 4, 4)
_RESBLOCK_KERNELS = (3, 7, 11)
_RESBLOCK_DILATIONS = (1, 3, 5)


@dataclass(frozen=True)
class V4Contract:
    """What the engine reads from the v4 graphs' metadata."""

    sample_rate: int
    hop: int  # output samples per mel frame (480)
    mel_dim: int
    fea_channels: int
    frames_per_code: int
    t_ref: int
    t_chunk: int
    steps_default: int
    steps_max: int
    upsample_rates: tuple[int, ...]

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "V4Contract":
        lo_hi = json.loads(meta.get("sample_steps_range", "[1, 64]"))
        return cls(sample_rate=int(meta["sample_rate"]), hop=int(meta["hop"]), mel_dim=int(meta["mel_dim"]),
                   fea_channels=int(meta["fea_channels"]), frames_per_code=int(meta["mel_frames_per_code"]),
                   t_ref=int(meta["t_ref"]), t_chunk=int(meta["t_chunk"]),
                   steps_default=int(meta["sample_steps_default"]), steps_max=int(lo_hi[1]),
                   upsample_rates=tuple(json.loads(meta.get("upsample_rates", "[10, 6, 2, 2, 2]"))))

    @property
    def samples_per_code(self) -> int:
        return self.frames_per_code * self.hop

    def vocoder_reach_frames(self) -> int:
        """Mel frames on either side that one output sample can depend on (conv_pre, each
        transposed conv's padding, each stage's widest resblock, conv_post), rounded up."""
        reach, rate = 3.0, 1  # conv_pre, kernel 7, at the mel rate
        widest = max(sum(d * (k - 1) // 2 + (k - 1) // 2 for d in _RESBLOCK_DILATIONS) for k in _RESBLOCK_KERNELS)
        for u, k in zip(self.upsample_rates, _VOCODER_KERNELS):
            rate *= u
            reach += ((k - u) // 2 + widest) / rate
        reach += 3 / rate  # conv_post, kernel 7
        return int(math.ceil(reach))


def euler_schedule(steps: int) -> list[tuple[float, float]]:
    """(t, d) per step as upstream computes them: d = 1/n, t starts at 0 and adds d in float64."""
    d, t, out = 1.0 / steps, 0.0, []
    for _ in range(steps):
        out.append((t, d))
        t += d
    return out


def chunk_noise(seed: int, chunk: int, mel_dim: int, frames: int) -> np.ndarray:
    """The initial CFM state of chunk ``chunk`` of a request (module doc)."""
    return np.random.default_rng([int(seed), NOISE_STREAM_CFM, int(chunk)]).standard_normal(
        (mel_dim, frames), dtype=np.float32)


@dataclass
class V4Prompt:
    """The CFM prompt of a reference: encoder features and normalized mel, both T_min frames."""

    fea: np.ndarray  # f32 [C2, T_min]
    mel: np.ndarray  # f32 [mel_dim, T_min]

    @property
    def frames(self) -> int:
        return int(self.fea.shape[1])

    def nbytes(self) -> int:
        return int(self.fea.nbytes + self.mel.nbytes)


def prompt_window(fea: np.ndarray, mel: np.ndarray, t_ref: int) -> V4Prompt:
    """Cut the prompt features [C2, F1] and mel [mel, F2] to their common length, at most the last ``t_ref``."""
    t_min = min(fea.shape[1], mel.shape[1])
    fea, mel = fea[:, :t_min], mel[:, :t_min]
    if t_min > t_ref:
        fea, mel = fea[:, -t_ref:], mel[:, -t_ref:]
    return V4Prompt(np.ascontiguousarray(fea, np.float32), np.ascontiguousarray(mel, np.float32))


class V4Stages:
    """The v4 graphs of one version folder (``encoder``, ``cfm_step``, ``vocoder``; the reference
    graphs ``speaker`` and ``prompt_codes`` open on first use)."""

    def __init__(self, folder: str | Path, options=None, provider_list=None):
        self.folder = Path(folder)
        self._options, self._providers = options, provider_list
        self.encoder = self._open("encoder", ("codes", "code_lengths", "phones", "phone_lengths", "ge", "speed"),
                                  ("fea", "fea_lengths"))
        self.cfm = self._open("cfm_step", ("x", "prompt_x", "lengths", "prompt_lengths", "t", "d", "mu"), ("x_next",))
        self.vocoder = self._open("vocoder", ("mel_norm", "mel_lengths"), ("wav",))
        self.contract = V4Contract.from_metadata(self.cfm.metadata)
        self._ref_lock = threading.Lock()
        self._ref: tuple[OnnxStage, OnnxStage] | None = None

    def _open(self, name: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> OnnxStage:
        return OnnxStage(self.folder / f"{name}.onnx", MODEL_TYPE, inputs=inputs, outputs=outputs,
                         options=self._options, provider_list=self._providers)

    def reference_stages(self) -> tuple[OnnxStage, OnnxStage]:
        """(prompt_codes, speaker), opened on the first per-request reference."""
        with self._ref_lock:
            if self._ref is None:
                self._ref = (self._open("prompt_codes", ("ssl",), ("codes",)),
                             self._open("speaker", ("refer_spec",), ("ge",)))
            return self._ref

    # ------------------------------------------------------------------ graphs, batched
    def encode(self, rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], speed: float) -> list[np.ndarray]:
        """(codes [T], phones [P], ge [1, gin, 1]) per row -> fea [C2, F] per row (one speed)."""
        b = len(rows)
        t = max(r[0].size for r in rows)
        p = max(r[1].size for r in rows)
        codes, phones = np.zeros((b, t), np.int64), np.zeros((b, p), np.int64)
        for i, (c, ph, _) in enumerate(rows):
            codes[i, :c.size], phones[i, :ph.size] = c, ph
        out = self.encoder.run(codes=codes, code_lengths=np.array([r[0].size for r in rows], np.int64),
                               phones=phones, phone_lengths=np.array([r[1].size for r in rows], np.int64),
                               ge=np.concatenate([np.asarray(r[2], np.float32).reshape(1, -1, 1) for r in rows]),
                               speed=np.array([speed], np.float32))
        return [np.ascontiguousarray(out["fea"][i, :, :int(n)]) for i, n in enumerate(out["fea_lengths"])]

    def vocode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        """Normalized mel [mel_dim, F] per row -> 48 kHz wav [F * hop] per row."""
        f = max(m.shape[1] for m in mels)
        batch = np.zeros((len(mels), self.contract.mel_dim, f), np.float32)
        for i, m in enumerate(mels):
            batch[i, :, :m.shape[1]] = m
        wav = self.vocoder.run(mel_norm=batch, mel_lengths=np.array([m.shape[1] for m in mels], np.int64))["wav"]
        return [np.ascontiguousarray(wav[i, :m.shape[1] * self.contract.hop]) for i, m in enumerate(mels)]

    def step(self, rows: list["_CfmRow"]) -> None:
        """One Euler step for every row (in place)."""
        frames = max(r.x.shape[1] for r in rows)
        b, c = len(rows), self.contract
        x = np.zeros((b, c.mel_dim, frames), np.float32)
        px = np.zeros_like(x)
        mu = np.zeros((b, frames, c.fea_channels), np.float32)
        for i, r in enumerate(rows):
            n = r.x.shape[1]
            x[i, :, :n], px[i, :, :r.t_min], mu[i, :n] = r.x, r.prompt_mel, r.mu
        sched = [r.schedule[r.step] for r in rows]
        out = self.cfm.run(x=x, prompt_x=px, lengths=np.array([r.x.shape[1] for r in rows], np.int64),
                           prompt_lengths=np.array([r.t_min for r in rows], np.int64),
                           t=np.array([s[0] for s in sched], np.float32), d=np.array([s[1] for s in sched], np.float32),
                           mu=mu)["x_next"]
        for i, r in enumerate(rows):
            r.x = out[i, :, :r.x.shape[1]]
            r.step += 1

    # ------------------------------------------------------------------ references and one request
    def prompt(self, prompt_codes: np.ndarray, prompt_phones: np.ndarray, ge: np.ndarray, mel: np.ndarray) -> V4Prompt:
        """The CFM prompt of a reference: its codes [T] and transcript phones [P], ge, normalized mel [mel, F]."""
        codes = np.asarray(prompt_codes, np.int64).reshape(-1)
        phones = np.asarray(prompt_phones, np.int64).reshape(-1)
        if codes.size == 0 or phones.size == 0:
            raise ValueError("a v4 voice needs a reference with prompt tokens and transcript phones "
                             "(upstream's v4 path has no reference-free mode)")
        fea = self.encode([(codes, phones, ge)], 1.0)[0]
        return prompt_window(fea, np.asarray(mel, np.float32), self.contract.t_ref)

    def synthesize(self, codes: np.ndarray, phones: np.ndarray, ge: np.ndarray, prompt: V4Prompt, steps: int,
                   seed: int, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """One request alone, upstream's order: (normalized mel [mel, F], wav). Validation and
        tests use it; the engine's scheduler must give the same result."""
        sched = V4Scheduler(self, max_batch=1)
        sched.add("solo", np.asarray(codes, np.int64).reshape(-1), np.asarray(phones, np.int64).reshape(-1), ge,
                  prompt, steps, seed, speed, stream=False)
        pieces = []
        while sched.busy:
            pieces += [p for p in sched.tick() if p.key == "solo"]
        (piece,) = pieces
        return piece.mel, piece.wav


@dataclass
class Piece:
    """Audio of one request out of a tick: frames [start, stop) of its mel (stream pieces) or all."""

    key: Hashable
    wav: np.ndarray
    start: int  # first mel frame the samples belong to
    stop: int
    total: int  # the request's mel frames (known once encoded)
    final: bool
    mel: np.ndarray | None = None  # the whole normalized mel (final piece of a whole request)


@dataclass
class _Synthesis:
    key: Hashable
    fea: np.ndarray  # [C2, F] the target's features
    prompt: V4Prompt  # the current chunk's prompt (the reference's at first)
    steps: int
    seed: int
    stream: bool
    chunk_len: int
    chunk: int = 0
    mels: list = field(default_factory=list)
    emitted: int = 0  # stream: mel frames whose audio is sent

    @property
    def n_chunks(self) -> int:
        return max(1, -(-self.fea.shape[1] // self.chunk_len))

    def mel_so_far(self) -> np.ndarray:
        return np.concatenate(self.mels, axis=1)


@dataclass
class _CfmRow:
    syn: _Synthesis
    x: np.ndarray  # [mel, T]
    prompt_mel: np.ndarray  # [mel, T_min]
    mu: np.ndarray  # [T, C2]
    t_min: int
    schedule: list
    step: int = 0


class V4Scheduler:
    """CFM rows of many requests, one Euler step per tick (module doc). Single-threaded: the
    engine's synthesis thread owns it."""

    def __init__(self, stages: V4Stages, max_batch: int = 16, context: int | None = None,
                 seconds: collections.Counter | None = None, stats: collections.Counter | None = None):
        """``seconds``/``stats``: counters to add stage time and CFM step/row counts to (the
        engine passes its own, so one report covers both threads' work)."""
        self.stages, self.c = stages, stages.contract
        self.max_batch = max(1, int(max_batch))
        self.context = stages.contract.vocoder_reach_frames() + 2 if context is None else int(context)
        self._encode: collections.deque = collections.deque()  # (key, codes, phones, ge, prompt, steps, seed, speed, stream)
        self._rows: collections.OrderedDict = collections.OrderedDict()  # key -> _CfmRow
        self.seconds = collections.Counter() if seconds is None else seconds
        self.stats = collections.Counter() if stats is None else stats

    @property
    def busy(self) -> bool:
        return bool(self._encode or self._rows)

    def keys(self) -> list:
        return [item[0] for item in self._encode] + list(self._rows)

    def add(self, key: Hashable, codes: np.ndarray, phones: np.ndarray, ge: np.ndarray, prompt: V4Prompt, steps: int,
            seed: int, speed: float = 1.0, stream: bool = False) -> None:
        if not 1 <= int(steps) <= self.c.steps_max:
            raise ValueError(f"sample_steps={steps} out of range [1, {self.c.steps_max}]")
        self._encode.append((key, codes, phones, ge, prompt, int(steps), int(seed), float(speed), bool(stream)))

    def drop(self, key: Hashable) -> None:
        self._encode = collections.deque(item for item in self._encode if item[0] != key)
        self._rows.pop(key, None)

    def tick(self) -> list[Piece]:
        """Encode what waits (one speed), one Euler step for up to max_batch rows, vocode what finished."""
        self._encode_waiting()
        rows = list(self._rows.values())[: self.max_batch]
        if not rows:
            return []
        import time
        t0 = time.perf_counter()
        self.stages.step(rows)
        self.seconds["cfm"] += time.perf_counter() - t0
        self.stats["cfm_steps"] += 1
        self.stats["cfm_rows"] += len(rows)
        # rows served move to the back, so more than max_batch requests take turns
        for r in rows:
            self._rows.move_to_end(r.syn.key)
        jobs = []  # (syn, mel window, start, stop, final)
        for r in rows:
            if r.step < len(r.schedule):
                continue
            syn = r.syn
            out = r.x[:, r.t_min:]
            chunk = syn.fea[:, syn.chunk * syn.chunk_len:(syn.chunk + 1) * syn.chunk_len]
            syn.mels.append(out)
            syn.prompt = V4Prompt(np.ascontiguousarray(chunk[:, -r.t_min:]), np.ascontiguousarray(out[:, -r.t_min:]))
            syn.chunk += 1
            last = syn.chunk >= syn.n_chunks
            if last:
                del self._rows[syn.key]
            else:
                self._rows[syn.key] = self._row(syn)
            jobs += self._pieces(syn, last)
        if not jobs:
            return []
        t0 = time.perf_counter()
        wavs = self.stages.vocode([j[1] for j in jobs])
        self.seconds["vocoder"] += time.perf_counter() - t0
        out = []
        for (syn, _, lo, start, stop, final), wav in zip(jobs, wavs):
            hop = self.c.hop
            piece = wav[(start - lo) * hop:(stop - lo) * hop]
            total = syn.fea.shape[1]
            out.append(Piece(syn.key, np.ascontiguousarray(piece), start, stop, total, final,
                             syn.mel_so_far() if final and not syn.stream else None))
        return out

    def _pieces(self, syn: _Synthesis, last: bool) -> list[tuple]:
        """What to vocode after a chunk: (syn, mel window, window start, emit start, emit stop, final)."""
        if not syn.stream:
            if not last:
                return []
            mel = syn.mel_so_far()
            return [(syn, mel, 0, 0, mel.shape[1], True)]
        mel = syn.mel_so_far()
        total = mel.shape[1]
        stop = total if last else max(syn.emitted, total - self.context)
        if stop <= syn.emitted and not last:
            return []
        lo = max(0, syn.emitted - self.context)
        piece = (syn, mel[:, lo:total], lo, syn.emitted, stop, last)
        syn.emitted = stop
        return [piece]

    def _encode_waiting(self) -> None:
        if not self._encode:
            return
        speed = self._encode[0][7]
        take = [item for item in self._encode if item[7] == speed][: self.max_batch]
        self._encode = collections.deque(item for item in self._encode if not any(item is t for t in take))
        import time
        t0 = time.perf_counter()
        feas = self.stages.encode([(item[1], item[2], item[3]) for item in take], speed)
        self.seconds["encoder"] += time.perf_counter() - t0
        for (key, _, _, _, prompt, steps, seed, _, stream), fea in zip(take, feas):
            syn = _Synthesis(key, fea, prompt, steps, seed, stream, chunk_len=self.c.t_chunk - prompt.frames)
            if syn.chunk_len <= 0:
                raise ValueError(f"prompt of {prompt.frames} frames leaves no room in a {self.c.t_chunk}-frame chunk")
            self._rows[key] = self._row(syn)

    def _row(self, syn: _Synthesis) -> _CfmRow:
        t_min = syn.prompt.frames
        chunk = syn.fea[:, syn.chunk * syn.chunk_len:(syn.chunk + 1) * syn.chunk_len]
        frames = t_min + chunk.shape[1]
        x = chunk_noise(syn.seed, syn.chunk, self.c.mel_dim, frames)
        x[:, :t_min] = 0
        mu = np.ascontiguousarray(np.concatenate([syn.prompt.fea, chunk], axis=1).T)
        return _CfmRow(syn, x, syn.prompt.mel, mu, t_min, euler_schedule(syn.steps))
