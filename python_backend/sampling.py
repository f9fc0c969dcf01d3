"""Token sampling and stop rules of the GPT-SoVITS decode loop, in numpy (no torch).

Batched over rows with per-row parameters, so the in-flight batching server and the
single-request runner share one implementation. Order of operations on float32 logits
``[B, V]`` (upstream ``logits_to_probs`` semantics):

1. repetition penalty over each row's previous tokens (prompt + generated; duplicates are
   fine): ``s = logits[prev]; s = s * rp if s < 0 else s / rp``;
2. top-p (only where ``top_p < 1``): sort descending, cumulative softmax, drop tokens whose
   cumulative probability exceeds ``top_p`` but always keep the most likely one;
3. ``logits /= max(temperature, 1e-5)``;
4. top-k (only where ``top_k > 0``): everything below the k-th largest value is dropped;
5. ``probs = softmax``; draw ``argmax(probs / q)`` with ``q ~ Exponential(1)`` from the
   row's ``numpy.random.Generator`` (a seed reproduces the draw). Rows with ``top_k == 1``
   take the plain argmax, so greedy decoding is exact even with ties.

Decode-loop rules (pure functions): ``mask_eos`` forbids EOS while fewer than
``EOS_MASK_STEPS`` (11) tokens have been generated; ``stop_reason`` says when a row is done.
Upstream checks ``argmax(logits) == EOS`` on the logits *after* the repetition penalty
(it is applied in place there); ``sample`` returns that argmax for ``stop_reason``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

EOS_MASK_STEPS = 11
MIN_TEMPERATURE = 1e-5
DEFAULT_MAX_NEW_TOKENS = 1500

STOP_EOS = "eos"
STOP_EARLY = "early_stop"
STOP_BUDGET = "max_new_tokens"


def _per_row(value, batch: int, dtype) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype).reshape(-1)
    if arr.size == 1:
        return np.full(batch, arr[0], dtype=dtype)
    if arr.size != batch:
        raise ValueError(f"per-row parameter has {arr.size} values for {batch} rows")
    return arr


def _rows(previous_tokens, batch: int) -> list[np.ndarray]:
    if previous_tokens is None:
        return [np.zeros(0, np.int64)] * batch
    rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in previous_tokens]
    if len(rows) != batch:
        raise ValueError(f"previous_tokens has {len(rows)} rows for {batch} logits rows")
    return rows


def softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def mask_eos(logits: np.ndarray, generated: int | Sequence[int] | np.ndarray, eos: int,
             min_steps: int = EOS_MASK_STEPS) -> np.ndarray:
    """Copy of ``logits`` [B,V] with EOS set to -inf in rows that have generated < min_steps tokens.

    Equivalent to upstream's dropping of the EOS column for ``idx < 11``.
    """
    out = np.array(logits, dtype=np.float32, copy=True)
    gen = _per_row(generated, out.shape[0], np.int64)
    out[gen < min_steps, eos] = -np.inf
    return out


def apply_repetition_penalty(logits: np.ndarray, previous_tokens, penalty) -> np.ndarray:
    out = np.array(logits, dtype=np.float32, copy=True)
    pen = _per_row(penalty, out.shape[0], np.float32)
    for b, prev in enumerate(_rows(previous_tokens, out.shape[0])):
        if pen[b] == 1.0 or prev.size == 0:
            continue
        score = out[b, prev]
        out[b, prev] = np.where(score < 0, score * pen[b], score / pen[b])
    return out


def apply_top_p(logits: np.ndarray, top_p) -> np.ndarray:
    out = np.array(logits, dtype=np.float32, copy=True)
    tp = _per_row(top_p, out.shape[0], np.float32)
    for b in np.nonzero(tp < 1.0)[0]:
        order = np.argsort(-out[b], kind="stable")
        cum = np.cumsum(softmax(out[b, order]))
        remove = cum > tp[b]
        remove[0] = False
        out[b, order[remove]] = -np.inf
    return out


def apply_temperature(logits: np.ndarray, temperature) -> np.ndarray:
    t = _per_row(temperature, logits.shape[0], np.float32)
    return (logits / np.maximum(t, MIN_TEMPERATURE)[:, None]).astype(np.float32)


def apply_top_k(logits: np.ndarray, top_k) -> np.ndarray:
    out = np.array(logits, dtype=np.float32, copy=True)
    k = _per_row(top_k, out.shape[0], np.int64)
    for b in np.nonzero(k > 0)[0]:
        kk = min(int(k[b]), out.shape[1])
        pivot = np.partition(out[b], out.shape[1] - kk)[out.shape[1] - kk]  # k-th largest
        out[b, out[b] < pivot] = -np.inf
    return out


def _rngs(rng, batch: int) -> list[np.random.Generator]:
    if rng is None:
        return [np.random.default_rng() for _ in range(batch)]
    if isinstance(rng, np.random.Generator):
        return [rng] * batch
    rngs = list(rng)
    if len(rngs) != batch:
        raise ValueError(f"{len(rngs)} generators for {batch} rows")
    return rngs


def sample(logits: np.ndarray, previous_tokens=None, *, top_k=0, top_p=1.0, temperature=1.0,
           repetition_penalty=1.0, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Sample one token per row.

    logits [B,V] float; previous_tokens: B sequences of token ids (or a [B,N] array) for the
    repetition penalty; top_k/top_p/temperature/repetition_penalty: scalars or one per row;
    rng: a Generator shared by all rows, one Generator per row, or None (fresh entropy).

    Returns ``(tokens [B] int64, penalized_argmax [B] int64)``; the second is what upstream's
    ``argmax(logits) == EOS`` stop check sees.
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, V], got shape {logits.shape}")
    batch = logits.shape[0]
    penalized = apply_repetition_penalty(logits, previous_tokens, repetition_penalty)
    penalized_argmax = np.argmax(penalized, axis=-1).astype(np.int64)
    x = apply_top_p(penalized, top_p)
    x = apply_temperature(x, temperature)
    k = _per_row(top_k, batch, np.int64)
    x = apply_top_k(x, k)
    probs = softmax(x)
    tokens = np.empty(batch, dtype=np.int64)
    for b, gen in enumerate(_rngs(rng, batch)):
        if k[b] == 1:
            tokens[b] = int(np.argmax(x[b]))
            continue
        q = gen.exponential(size=probs.shape[1])
        tokens[b] = int(np.argmax(probs[b] / q))
    return tokens, penalized_argmax


def stop_reason(generated: int, argmax_token: int, sampled_token: int, eos: int,
                early_stop_num: int = -1, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str | None:
    """Why a row stops after appending its ``generated``-th token, or None to continue.

    Upstream: stop when ``generated > early_stop_num`` (unless -1), or when the argmax of the
    (penalized) logits or the sampled token is EOS; plus the hard budget ``max_new_tokens``.
    """
    if int(sampled_token) == eos or int(argmax_token) == eos:
        return STOP_EOS
    if early_stop_num is not None and early_stop_num != -1 and generated > early_stop_num:
        return STOP_EARLY
    if max_new_tokens is not None and generated >= max_new_tokens:
        return STOP_BUDGET
    return None


def stop_reasons(generated, argmax_tokens, sampled_tokens, eos: int, early_stop_num=-1,
                 max_new_tokens=DEFAULT_MAX_NEW_TOKENS) -> list[str | None]:
    """``stop_reason`` per row; ``early_stop_num``/``max_new_tokens`` may be per row."""
    n = len(sampled_tokens)
    gen = _per_row(generated, n, np.int64)
    early = _per_row(-1 if early_stop_num is None else early_stop_num, n, np.int64)
    budget = _per_row(DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens, n, np.int64)
    am = _per_row(argmax_tokens, n, np.int64)
    return [stop_reason(int(gen[i]), int(am[i]), int(sampled_tokens[i]), eos, int(early[i]), int(budget[i]))
            for i in range(n)]
