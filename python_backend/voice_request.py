"""One request to a voice model: its sentences, and the order their audio goes out in.

The engine finishes sentences in any order (they are decoded together); a listener must hear
them in text order with a short pause between them. ``Utterance`` holds later sentences'
chunks until the earlier ones are done and forwards everything through one ``send``
callable, calling it with ``final=True`` exactly once. Triton-free; ``triton_voice`` adapts.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from python_backend.voice_engine import FINISH_ERROR, AudioChunk, RequestError, SynthesisRequest

SENTENCE_PAUSE_S = 0.3  # upstream inserts 0.3 s of silence between sentences


@dataclass
class Outgoing:
    audio: np.ndarray
    finish_reason: str  # set on a sentence's last piece, '' otherwise
    final: bool
    error: str | None = None


def split_sentences(phones: np.ndarray, bert: np.ndarray, counts: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    phones = np.asarray(phones).reshape(-1)
    bert = np.asarray(bert)
    if bert.ndim != 2 or bert.shape[1] != phones.size:
        raise RequestError(f"BERT shape {tuple(bert.shape)} does not match {phones.size} phones (expected [1024, {phones.size}])")
    if counts is None:
        return [(phones, bert)]
    counts = np.asarray(counts).reshape(-1).astype(np.int64)
    if counts.size == 0 or np.any(counts <= 0) or int(counts.sum()) != phones.size:
        raise RequestError(f"SENTENCE_PHONES {counts.tolist()[:8]} must be positive and sum to {phones.size} phones")
    edges = np.concatenate([[0], np.cumsum(counts)])
    return [(phones[a:b], bert[:, a:b]) for a, b in zip(edges[:-1], edges[1:])]


class Utterance:
    """Orders the chunks of a request's sentences; thread-safe (engine sender thread + cancel)."""

    def __init__(self, n_sentences: int, sample_rate: int, send: Callable[[Outgoing], None]):
        self.n = n_sentences
        self.pause = np.zeros(int(SENTENCE_PAUSE_S * sample_rate), np.float32)
        self.send = send
        self.lock = threading.Lock()
        self.current = 0
        self.buffers: list[list[AudioChunk]] = [[] for _ in range(n_sentences)]
        self.done = [False] * n_sentences
        self.finished = False
        self.handles: list = []
        self.wants_heartbeat = False  # the caller asked for heartbeat(): an empty piece every engine tick

    def emit_for(self, index: int) -> Callable[[AudioChunk], None]:
        return lambda chunk: self._on_chunk(index, chunk)

    def _on_chunk(self, index: int, chunk: AudioChunk) -> None:
        with self.lock:
            if self.finished:
                return
            if chunk.finish_reason == FINISH_ERROR:
                self._fail(chunk.error or "synthesis failed")
                return
            self.buffers[index].append(chunk)
            if chunk.final:
                self.done[index] = True
            self._flush()

    def _flush(self) -> None:
        while self.current < self.n:
            i = self.current
            for chunk in self.buffers[i]:
                last_of_all = chunk.final and i == self.n - 1
                audio = chunk.audio
                if chunk.final and i < self.n - 1:
                    audio = np.concatenate([audio, self.pause])
                self.send(Outgoing(audio, (chunk.finish_reason or "") if chunk.final else "", last_of_all))
                if last_of_all:
                    self.finished = True
            self.buffers[i] = []
            if not self.done[i]:
                return
            self.current += 1

    def _fail(self, message: str) -> None:
        self.finished = True
        for handle in self.handles:
            handle.cancel()
        self.send(Outgoing(np.zeros(0, np.float32), FINISH_ERROR, True, error=message))

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    def heartbeat(self) -> None:
        """An empty, non-final piece: tells a caller that waits for the next response that the
        request is alive, so it can look at its own client's cancellation meanwhile."""
        with self.lock:
            if not self.finished:
                self.send(Outgoing(np.zeros(0, np.float32), "", False))


def sentence_requests(parts: list[tuple[np.ndarray, np.ndarray]], params: dict, seed: int | None) -> list[SynthesisRequest]:
    """One engine request per sentence; sentence i uses seed + i so sentences do not repeat noise."""
    return [SynthesisRequest(phones=p.astype(np.int64), bert=b.astype(np.float32),
                             seed=None if seed is None else seed + i, **params)
            for i, (p, b) in enumerate(parts)]
