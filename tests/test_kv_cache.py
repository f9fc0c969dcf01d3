"""KVCache bookkeeping (pure numpy): layout, growth, merge alignment, row removal and trimming."""
from __future__ import annotations

import numpy as np

from python_backend.kv_cache import KVCache

L, H, HD = 2, 2, 3
D = H * HD


def _prefill(batch: int, s: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((L, batch, s, D)).astype(np.float32),
            rng.standard_normal((L, batch, s, D)).astype(np.float32))


def _new(batch: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((L, batch, H, 1, HD)).astype(np.float32),
            rng.standard_normal((L, batch, H, 1, HD)).astype(np.float32))


def _as_rows(new_k: np.ndarray) -> np.ndarray:  # [L,B,H,1,hd] -> [L,B,1,D]
    return new_k.transpose(0, 1, 3, 2, 4).reshape(L, new_k.shape[1], 1, D)


def test_from_prefill_layout_and_feeds():
    k, v = _prefill(2, 5, 0)
    cache = KVCache.from_prefill(k, v, H, spare=4)
    assert cache.k.shape == (L, 2, H, 9, HD) and cache.length == 5 and cache.capacity == 9
    np.testing.assert_array_equal(cache.keys(1), k[:, 1])
    assert cache.mask.shape == (2, 10)
    np.testing.assert_array_equal(cache.mask[:, :5], 1)
    np.testing.assert_array_equal(cache.mask[:, 5:9], 0)
    np.testing.assert_array_equal(cache.mask[:, 9], 1)  # the new token's own column
    feeds = cache.feeds()
    assert set(feeds) == {"attn_mask", "past_k_0", "past_k_1", "past_v_0", "past_v_1"}
    assert feeds["past_k_1"].flags.c_contiguous and np.shares_memory(feeds["past_k_1"], cache.k)


def test_append_regrows_and_keeps_every_key():
    k, v = _prefill(1, 3, 1)
    cache = KVCache.from_prefill(k, v, H, spare=2)
    expect = [k]
    for step in range(7):  # crosses capacity several times
        nk, nv = _new(1, 10 + step)
        cache.append(nk, nv)
        expect.append(_as_rows(nk))
    assert cache.length == 10 and cache.capacity >= 10
    np.testing.assert_array_equal(cache.keys(0), np.concatenate(expect, axis=2)[:, 0])
    assert cache.mask[0, -1] == 1 and cache.mask[0, :10].all() and not cache.mask[0, 10:-1].any()


def test_merge_right_aligns_rows_of_different_lengths():
    long, short = KVCache.from_prefill(*_prefill(1, 6, 2), H), KVCache.from_prefill(*_prefill(2, 4, 3), H)
    merged = KVCache.merge([long, short])
    assert merged.batch == 3 and merged.length == 6
    np.testing.assert_array_equal(merged.mask[1, :6], [0, 0, 1, 1, 1, 1])  # left padding
    np.testing.assert_array_equal(merged.keys(0), long.keys(0))
    np.testing.assert_array_equal(merged.keys(2), short.keys(1))
    nk, nv = _new(3, 4)
    merged.append(nk, nv)  # every row writes the same column
    np.testing.assert_array_equal(merged.keys(1)[:, -1], _as_rows(nk)[:, 1, 0])


def test_select_drops_rows_and_common_leading_padding():
    long, short = KVCache.from_prefill(*_prefill(1, 6, 5), H), KVCache.from_prefill(*_prefill(1, 4, 6), H)
    merged = KVCache.merge([long, short])
    merged.append(*_new(2, 7))
    expect = merged.keys(1)
    merged.select([1])
    assert merged.batch == 1 and merged.length == 5  # the 2 columns only the long row used are gone
    np.testing.assert_array_equal(merged.keys(0), expect)
    assert merged.mask[0, :5].all() and merged.mask[0, -1] == 1
