"""The decode-side KV cache: caller-owned buffers the ``gpt_step`` graph reads in place.

Layout: ``k``/``v`` are ``[L, B, H, C, hd]`` float32 arrays; ``k[i]`` (one layer, contiguous)
is fed to the graph as ``past_k_<i>`` without a copy. ``C`` is the capacity; columns
``[0, length)`` are in use and every row writes its next key at column ``length`` (rows are
LEFT-padded, as in the server's in-flight batch). ``mask`` is ``[B, C + 1]`` float32: 1 for a
valid key, 0 for padding and unused capacity, and its last column (the new token itself) is
always 1, so it is the graph's ``attn_mask`` as is.

Capacity grows by ``spare`` columns when full: a step reads every column up to ``C``, so
spare columns cost read bandwidth, and regrowing copies the cache, so few large regrowths
cost copies; 32 keeps both small (one copy per 32 steps, at most 31 idle columns).
"""
from __future__ import annotations

import numpy as np

SPARE = 32


class KVCache:
    def __init__(self, k: np.ndarray, v: np.ndarray, mask: np.ndarray, length: int, spare: int = SPARE):
        self.k, self.v, self.mask, self.length, self.spare = k, v, mask, length, spare

    # ------------------------------------------------------------ construction
    @classmethod
    def empty(cls, n_layer: int, batch: int, n_head: int, head_dim: int, length: int, spare: int = SPARE) -> "KVCache":
        """A cache of ``length`` columns, all padding (callers fill rows)."""
        cap = length + spare
        k = np.zeros((n_layer, batch, n_head, cap, head_dim), np.float32)
        mask = np.zeros((batch, cap + 1), np.float32)
        mask[:, cap] = 1.0
        return cls(k, np.zeros_like(k), mask, length, spare)

    @classmethod
    def from_prefill(cls, k: np.ndarray, v: np.ndarray, n_head: int, spare: int = SPARE) -> "KVCache":
        """From the prefill graph's ``[L, B, S, D]`` caches (rows of one prefill have equal S)."""
        n_layer, batch, s, d = k.shape
        cache = cls.empty(n_layer, batch, n_head, d // n_head, s, spare)
        cache.k[:, :, :, :s] = k.reshape(n_layer, batch, s, n_head, d // n_head).transpose(0, 1, 3, 2, 4)
        cache.v[:, :, :, :s] = v.reshape(n_layer, batch, s, n_head, d // n_head).transpose(0, 1, 3, 2, 4)
        cache.mask[:, :s] = 1.0
        return cache

    @classmethod
    def merge(cls, parts: list["KVCache"]) -> "KVCache":
        """Rows of every part, in order, right-aligned at the longest part's length."""
        length = max(p.length for p in parts)
        first = parts[0]
        n_layer, _, n_head, _, head_dim = first.k.shape
        out = cls.empty(n_layer, sum(p.batch for p in parts), n_head, head_dim, length, first.spare)
        row = 0
        for p in parts:
            rows, shift = slice(row, row + p.batch), length - p.length
            out.k[:, rows, :, shift:length] = p.k[:, :, :, : p.length]
            out.v[:, rows, :, shift:length] = p.v[:, :, :, : p.length]
            out.mask[rows, shift:length] = p.mask[:, : p.length]
            row += p.batch
        return out

    # ------------------------------------------------------------ properties
    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def feeds(self) -> dict[str, np.ndarray]:
        """The step graph's cache inputs: ``attn_mask`` and one ``past_k_<i>``/``past_v_<i>`` per layer."""
        feeds = {"attn_mask": self.mask}
        for i in range(self.k.shape[0]):
            feeds[f"past_k_{i}"] = self.k[i]
            feeds[f"past_v_{i}"] = self.v[i]
        return feeds

    def keys(self, row: int) -> np.ndarray:
        """The valid keys of one row as ``[L, n_valid, D]`` (tests and diagnostics)."""
        cols = np.flatnonzero(self.mask[row, : self.length] > 0.5)
        k = self.k[:, row][:, :, cols]  # [L, H, n, hd]
        return k.transpose(0, 2, 1, 3).reshape(k.shape[0], cols.size, -1)

    # ------------------------------------------------------------ updates
    def append(self, new_k: np.ndarray, new_v: np.ndarray) -> None:
        """Write the step graph's ``new_k``/``new_v`` ``[L, B, H, 1, hd]`` at column ``length``."""
        if self.length == self.capacity:
            self._regrow(0)
        col = self.length
        self.k[:, :, :, col] = new_k[:, :, :, 0]
        self.v[:, :, :, col] = new_v[:, :, :, 0]
        self.mask[:, col] = 1.0
        self.length += 1

    def select(self, rows: list[int]) -> None:
        """Keep ``rows`` (in that order) and drop leading columns that are padding for all of them."""
        mask = self.mask[rows, : self.length]
        valid = mask.any(axis=0)
        first = int(np.argmax(valid)) if valid.any() else self.length
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.mask = self.mask[rows]
        self._regrow(first)

    def _regrow(self, first: int) -> None:
        """Copy columns ``[first, length)`` into fresh buffers with ``spare`` free columns."""
        keep = self.length - first
        n_layer, batch, n_head, _, head_dim = self.k.shape
        fresh = KVCache.empty(n_layer, batch, n_head, head_dim, keep, self.spare)
        fresh.k[:, :, :, :keep] = self.k[:, :, :, first: self.length]
        fresh.v[:, :, :, :keep] = self.v[:, :, :, first: self.length]
        fresh.mask[:, :keep] = self.mask[:, first: self.length]
        self.k, self.v, self.mask, self.length = fresh.k, fresh.v, fresh.mask, keep
