"""GPT (s1) conformance: torch modules and exported ONNX graphs vs the kit's upstream outputs.

Runs every ``golden_s1*.npz`` in the kit against its ``<stem>.ckpt``; all sizes come from
the checkpoint, so full-size kits go through the same tests. Also unit tests of the numpy
sampler shared with the Triton server.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from export.checkpoints import read_gpt
from export.errors import CheckpointError
from export.gpt_model import GPT, GPTConfig, gpt_graph_specs
from export.onnx_io import export_graph
from python_backend import sampling
from python_backend.gpt_runner import GPTGraphError, GPTRunner
from python_backend.kv_cache import KVCache
from tests.conftest import kit_files

LOGIT_ATOL = 1e-3
BATCH_ATOL = 1e-4
GOLDENS = kit_files("golden_s1*.npz")
STEMS = [p.name[len("golden_"):-len(".npz")] for p in GOLDENS] or [
    pytest.param(None, marks=pytest.mark.skip(reason="no golden_s1*.npz in the conformance kit"))
]


@functools.lru_cache(maxsize=None)
def _load(stem: str):
    golden_path = next(p for p in GOLDENS if p.name == f"golden_{stem}.npz")
    ckpt_path = golden_path.parent / f"{stem}.ckpt"
    if not ckpt_path.exists():
        pytest.fail(f"{golden_path.name} has no checkpoint {ckpt_path.name}")
    golden = dict(np.load(golden_path))
    model = GPT.from_checkpoint(read_gpt(ckpt_path))
    return model, golden


_EXPORTS: dict[str, GPTRunner] = {}


@pytest.fixture
def runner(stem, tmp_path_factory):
    if stem not in _EXPORTS:
        model, _ = _load(stem)
        out = tmp_path_factory.mktemp(f"onnx_{stem}")
        paths = [out / export_graph(spec, out).file for spec in gpt_graph_specs(model)]
        _EXPORTS[stem] = GPTRunner(*paths)
    return _EXPORTS[stem]


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _eos(golden, model):
    return int(golden["eos"]) if "eos" in golden else model.cfg.eos


def _torch_greedy(model: GPT, golden, early_stop_num: int) -> np.ndarray:
    prompts = golden["prompts"]
    n_prompt = prompts.shape[1]
    history = list(prompts[0])
    with torch.no_grad():
        logits, k, v = model.prefill(_t(golden["phones"]), _t(golden["bert"]), _t(prompts))
        out = []
        while True:
            masked = sampling.mask_eos(logits.numpy(), len(out), model.cfg.eos)
            tok, am = sampling.sample(masked, [history], top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
            out.append(int(tok[0]))
            history.append(int(tok[0]))
            if sampling.stop_reason(len(out), am[0], tok[0], model.cfg.eos, early_stop_num) is not None:
                break
            mask = torch.ones(1, k.shape[2] + 1)
            logits, k, v = model.step(_t(tok.reshape(1, 1)), torch.tensor([n_prompt + len(out) - 1]), k, v, mask)
    if out and out[-1] == model.cfg.eos:
        out = out[:-1]
    return np.array(out, dtype=np.int64)


# ----------------------------------------------------------------------------- torch
@pytest.mark.parametrize("stem", STEMS)
def test_checkpoint_sizes(kit, stem):
    model, golden = _load(stem)
    cfg = model.cfg
    assert cfg.vocab_size == golden["prefill_logits"].shape[-1]
    assert cfg.eos == _eos(golden, model)
    assert cfg.bert_dim == golden["bert"].shape[1]


@pytest.mark.parametrize("stem", STEMS)
def test_torch_prefill_logits(kit, stem):
    model, golden = _load(stem)
    with torch.no_grad():
        logits, k, v = model.prefill(_t(golden["phones"]), _t(golden["bert"]), _t(golden["prompts"]))
    np.testing.assert_allclose(logits.numpy(), golden["prefill_logits"], atol=LOGIT_ATOL, rtol=0)
    seq = golden["phones"].shape[1] + golden["prompts"].shape[1]
    assert tuple(k.shape) == (model.cfg.n_layer, 1, seq, model.cfg.d_model) == tuple(v.shape)


@pytest.mark.parametrize("stem", STEMS)
def test_torch_step_logits(kit, stem):
    model, golden = _load(stem)
    n_prompt = golden["prompts"].shape[1]
    with torch.no_grad():
        _, k, v = model.prefill(_t(golden["phones"]), _t(golden["bert"]), _t(golden["prompts"]))
        for i, tok in enumerate(golden["forced_tokens"][0]):
            mask = torch.ones(1, k.shape[2] + 1)
            logits, k, v = model.step(torch.tensor([[int(tok)]]), torch.tensor([n_prompt + i]), k, v, mask)
            np.testing.assert_allclose(logits.numpy(), golden["step_logits"][:, i], atol=LOGIT_ATOL, rtol=0,
                                       err_msg=f"forced step {i}")


@pytest.mark.parametrize("stem", STEMS)
def test_torch_greedy_tokens(kit, stem):
    model, golden = _load(stem)
    expected = golden["greedy_tokens"][0]
    got = _torch_greedy(model, golden, early_stop_num=len(expected) - 1)
    np.testing.assert_array_equal(got, expected)


def _two_rows(golden):
    """Row A = the kit request; row B = a shorter one (fewer phones and prompt tokens)."""
    p, t = golden["phones"].shape[1], golden["prompts"].shape[1]
    pb, tb = max(1, p - 5), max(1, t - 3)
    a = (golden["phones"], golden["bert"], golden["prompts"])
    b = (golden["phones"][:, :pb], golden["bert"][:, :, :pb], golden["prompts"][:, -tb:])
    return a, b


def _left_pad(cache: np.ndarray, length: int) -> np.ndarray:
    pad = np.zeros(cache.shape[:2] + (length - cache.shape[2],) + cache.shape[3:], dtype=cache.dtype)
    return np.concatenate([pad, cache], axis=2)


def _batched_step_check(prefill, step):
    """prefill(p,b,t)->(logits,k,v), step(tok,pos,k,v,mask)->(logits,k,v), numpy in/out."""
    def run(golden):
        a, b = _two_rows(golden)
        rows = [prefill(*a), prefill(*b)]
        lens = [r[1].shape[2] for r in rows]
        positions = [a[2].shape[1], b[2].shape[1]]
        tokens = [[int(golden["forced_tokens"][0, 0])], [int(golden["forced_tokens"][0, 1])]]
        alone = [step(np.array([tokens[i]]), np.array([positions[i]]), rows[i][1], rows[i][2],
                      np.ones((1, lens[i] + 1), np.float32)) for i in range(2)]
        s = max(lens)
        k = np.concatenate([_left_pad(r[1], s) for r in rows], axis=1)
        v = np.concatenate([_left_pad(r[2], s) for r in rows], axis=1)
        mask = np.zeros((2, s + 1), np.float32)
        for i, n in enumerate(lens):
            mask[i, s - n:] = 1.0
        logits, k2, v2 = step(np.array(tokens), np.array(positions), k, v, mask)
        for i in range(2):
            np.testing.assert_allclose(logits[i], alone[i][0][0], atol=BATCH_ATOL, rtol=0, err_msg=f"row {i}")
            np.testing.assert_allclose(k2[:, i, s - lens[i]:], alone[i][1][:, 0], atol=BATCH_ATOL, rtol=0)
        # a second batched step on the grown (still left-padded) cache
        tokens2 = [[int(golden["forced_tokens"][0, 2])], [int(golden["forced_tokens"][0, 3])]]
        mask2 = np.concatenate([mask, np.ones((2, 1), np.float32)], axis=1)
        logits2, _, _ = step(np.array(tokens2), np.array(positions) + 1, k2, v2, mask2)
        for i in range(2):
            ref, _, _ = step(np.array([tokens2[i]]), np.array([positions[i] + 1]), alone[i][1], alone[i][2],
                             np.ones((1, lens[i] + 2), np.float32))
            np.testing.assert_allclose(logits2[i], ref[0], atol=BATCH_ATOL, rtol=0, err_msg=f"row {i}, 2nd step")
    return run


@pytest.mark.parametrize("stem", STEMS)
def test_torch_batched_step_mixed_cache_lengths(kit, stem):
    model, golden = _load(stem)

    def prefill(p, b, t):
        with torch.no_grad():
            return [x.numpy() for x in model.prefill(_t(p), _t(b), _t(t))]

    def step(tok, pos, k, v, mask):
        with torch.no_grad():
            return [x.numpy() for x in model.step(_t(tok), _t(pos), _t(k), _t(v), _t(mask))]

    _batched_step_check(prefill, step)(golden)


@pytest.mark.parametrize("stem", STEMS)
def test_torch_batched_prefill_equal_lengths(kit, stem):
    model, golden = _load(stem)
    p, b, t = golden["phones"], golden["bert"], golden["prompts"]
    with torch.no_grad():
        logits, k, _ = model.prefill(_t(np.repeat(p, 2, 0)), _t(np.repeat(b, 2, 0)), _t(np.repeat(t, 2, 0)))
    np.testing.assert_allclose(logits.numpy(), np.repeat(golden["prefill_logits"], 2, 0), atol=LOGIT_ATOL, rtol=0)


def test_missing_and_unexpected_keys_fail(kit):
    ckpts = [g.parent / f"{g.name[len('golden_'):-len('.npz')]}.ckpt" for g in GOLDENS]
    if not ckpts:
        pytest.skip("no GPT checkpoint in the kit")
    ckpt = read_gpt(ckpts[0])
    key = "h.layers.0.norm2.bias"
    value = ckpt.state_dict.pop(key)
    with pytest.raises(CheckpointError, match="missing"):
        GPT.from_checkpoint(ckpt)
    ckpt.state_dict[key] = value
    ckpt.state_dict["extra.weight"] = value
    with pytest.raises(CheckpointError, match="unexpected"):
        GPT.from_checkpoint(ckpt)
    del ckpt.state_dict["extra.weight"]
    assert isinstance(GPTConfig.from_checkpoint(ckpt), GPTConfig)


# ----------------------------------------------------------------------------- onnx
@pytest.mark.parametrize("stem", STEMS)
def test_onnx_metadata(kit, stem, runner):
    model, _ = _load(stem)
    meta = runner.metadata
    assert meta["model_type"] == "gpt-sovits-t2s"
    for key, want in (("n_layer", model.cfg.n_layer), ("n_head", model.cfg.n_head), ("d_model", model.cfg.d_model),
                      ("vocab_size", model.cfg.vocab_size), ("phone_vocab_size", model.cfg.phone_vocab_size),
                      ("eos", model.cfg.eos)):
        assert int(meta[key]) == want, key


@pytest.mark.parametrize("stem", STEMS)
def test_onnx_prefill_and_step_logits(kit, stem, runner):
    _, golden = _load(stem)
    logits, k, v = runner.prefill(golden["phones"], golden["bert"], golden["prompts"])
    np.testing.assert_allclose(logits, golden["prefill_logits"], atol=LOGIT_ATOL, rtol=0)
    n_prompt = golden["prompts"].shape[1]
    cache = KVCache.from_prefill(k, v, runner.n_head, spare=2)  # regrows every 2 steps: growth is exercised
    for i, tok in enumerate(golden["forced_tokens"][0]):
        logits = runner.step(np.array([[tok]]), np.array([n_prompt + i]), cache)
        np.testing.assert_allclose(logits, golden["step_logits"][:, i], atol=LOGIT_ATOL, rtol=0,
                                   err_msg=f"forced step {i}")
    assert cache.length == k.shape[2] + len(golden["forced_tokens"][0])


@pytest.mark.parametrize("stem", STEMS)
def test_onnx_greedy_tokens(kit, stem, runner):
    _, golden = _load(stem)
    expected = golden["greedy_tokens"][0]
    got = runner.generate(golden["phones"], golden["bert"], golden["prompts"], top_k=1, top_p=1.0,
                          temperature=1.0, repetition_penalty=1.0, seed=0, early_stop_num=len(expected) - 1)
    np.testing.assert_array_equal(got, expected)
    assert runner.last_stop_reason in (sampling.STOP_EARLY, sampling.STOP_EOS)


@pytest.mark.parametrize("stem", STEMS)
def test_onnx_batched_step_mixed_cache_lengths(kit, stem, runner):
    """Rows of different lengths merged into one cache step exactly as they do alone, also
    after the longer row leaves the batch (its columns are trimmed)."""
    _, golden = _load(stem)
    a, b = _two_rows(golden)
    rows = [runner.prefill(*a), runner.prefill(*b)]
    positions = np.array([a[2].shape[1], b[2].shape[1]])
    alone = [KVCache.from_prefill(r[1], r[2], runner.n_head, spare=1) for r in rows]
    batch = KVCache.merge([KVCache.from_prefill(r[1], r[2], runner.n_head, spare=1) for r in rows])
    forced = golden["forced_tokens"][0]
    for step in range(3):
        tokens = np.array([[int(forced[step % forced.size])], [int(forced[(step + 1) % forced.size])]])
        logits = runner.step(tokens, positions + step, batch)
        for i in range(2):
            solo = runner.step(tokens[i: i + 1], positions[i: i + 1] + step, alone[i])
            np.testing.assert_allclose(logits[i], solo[0], atol=BATCH_ATOL, rtol=0, err_msg=f"row {i}, step {step}")
            np.testing.assert_allclose(batch.keys(i), alone[i].keys(0), atol=BATCH_ATOL, rtol=0)
    batch.select([1])
    assert batch.length == alone[1].length  # the longer row's leading columns are gone
    tokens = np.array([[int(forced[0])]])
    np.testing.assert_allclose(runner.step(tokens, positions[1:] + 3, batch),
                               runner.step(tokens, positions[1:] + 3, alone[1]), atol=BATCH_ATOL, rtol=0)


@pytest.mark.parametrize("stem", STEMS)
def test_runner_rejects_cat_form_step_graph(kit, stem, tmp_path):
    """A version exported before the caller-owned cache (no step_format 2) is refused at open,
    saying to re-export, instead of failing mid-request."""
    import onnx

    model, _ = _load(stem)
    paths = [tmp_path / export_graph(spec, tmp_path, optimize=False).file for spec in gpt_graph_specs(model)]
    GPTRunner(*paths)  # the current export opens
    step = onnx.load(str(paths[1]))
    kept = [(p.key, p.value) for p in step.metadata_props if p.key != "step_format"]
    del step.metadata_props[:]
    for key, value in kept:
        step.metadata_props.add(key=key, value=value)
    old = tmp_path / "old_step.onnx"
    onnx.save(step, str(old))
    with pytest.raises(GPTGraphError, match="re-export"):
        GPTRunner(paths[0], old)


@pytest.mark.parametrize("stem", STEMS)
def test_onnx_sampled_generate_reproducible(kit, stem, runner):
    _, golden = _load(stem)
    args = (golden["phones"], golden["bert"], golden["prompts"])
    kw = dict(top_k=15, top_p=0.9, temperature=1.0, repetition_penalty=1.35, max_new_tokens=14)
    a = runner.generate(*args, seed=7, **kw)
    b = runner.generate(*args, seed=7, **kw)
    np.testing.assert_array_equal(a, b)
    assert 0 < len(a) <= 14
    assert np.all((a >= 0) & (a < runner.vocab_size))


def test_runner_rejects_foreign_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(GPTGraphError):
        GPTRunner(path, path)


# ----------------------------------------------------------------------------- sampling
def _rand_logits(rows=4, vocab=1025, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, vocab)).astype(np.float32) * 3


def test_top_k_1_is_argmax():
    logits = _rand_logits()
    prev = [np.array([int(np.argmax(row)), 5, 5]) for row in logits]
    for rp in (1.0, 1.35):
        tokens, am = sampling.sample(logits, prev, top_k=1, top_p=0.8, temperature=0.7, repetition_penalty=rp,
                                     rng=np.random.default_rng(1))
        expected = np.argmax(sampling.apply_repetition_penalty(logits, prev, rp), axis=-1)
        np.testing.assert_array_equal(tokens, expected)
        np.testing.assert_array_equal(am, expected)


def test_repetition_penalty_sign_rule():
    logits = np.array([[2.0, -2.0, 1.0, -1.0]], np.float32)
    out = sampling.apply_repetition_penalty(logits, [np.array([0, 1, 0, 1])], 2.0)
    np.testing.assert_allclose(out, [[1.0, -4.0, 1.0, -1.0]])
    np.testing.assert_allclose(logits, [[2.0, -2.0, 1.0, -1.0]])  # input untouched
    np.testing.assert_allclose(sampling.apply_repetition_penalty(logits, [np.array([0])], 1.0), logits)


def test_top_p_keeps_at_least_one():
    logits = _rand_logits()
    out = sampling.apply_top_p(logits, 1e-9)
    assert np.all(np.isfinite(out).sum(axis=-1) == 1)
    np.testing.assert_array_equal(np.argmax(out, -1), np.argmax(logits, -1))
    for seed in range(5):
        tokens, _ = sampling.sample(logits, None, top_k=0, top_p=1e-9, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(tokens, np.argmax(logits, -1))
    # upstream rule: drop where the cumulative mass (including the token) exceeds top_p, keep the first
    row = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))  # cumulative 0.5 0.8 0.95 1.0
    np.testing.assert_array_equal(np.isfinite(sampling.apply_top_p(row, 0.7)), [[True, False, False, False]])
    np.testing.assert_array_equal(np.isfinite(sampling.apply_top_p(row, 0.85)), [[True, True, False, False]])
    np.testing.assert_array_equal(np.isfinite(sampling.apply_top_p(row, 1.0)), [[True] * 4])


def test_top_k_and_per_row_parameters():
    logits = _rand_logits(rows=2)
    out = sampling.apply_top_k(logits, [3, 10])
    assert list(np.isfinite(out).sum(axis=-1)) == [3, 10]
    for seed in range(20):
        tokens, _ = sampling.sample(logits, None, top_k=[3, 10], rng=[np.random.default_rng(seed)] * 2)
        assert tokens[0] in np.argsort(-logits[0])[:3]
        assert tokens[1] in np.argsort(-logits[1])[:10]


def test_seed_reproducibility():
    logits = _rand_logits(rows=3)
    draw = lambda seed: np.stack([sampling.sample(logits, None, top_k=50, temperature=1.5, rng=g)[0]
                                  for g in [np.random.default_rng(seed)] for _ in range(30)])
    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


def test_sampling_distribution_matches_softmax():
    logits = np.log(np.array([[0.6, 0.3, 0.1]], np.float32))
    g = np.random.default_rng(0)
    counts = np.bincount([sampling.sample(logits, rng=g)[0][0] for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.03)


def test_eos_masked_for_first_11_steps():
    eos = 1024
    logits = np.zeros((1, 1025), np.float32)
    logits[0, eos] = 100.0
    for gen in range(sampling.EOS_MASK_STEPS):
        masked = sampling.mask_eos(logits, gen, eos)
        assert masked[0, eos] == -np.inf
        tokens, am = sampling.sample(masked, None, top_k=1)
        assert tokens[0] != eos and am[0] != eos
    masked = sampling.mask_eos(logits, sampling.EOS_MASK_STEPS, eos)
    assert masked[0, eos] == 100.0
    assert sampling.sample(masked, None, top_k=1)[0][0] == eos
    rows = sampling.mask_eos(np.repeat(logits, 2, 0), [3, 11], eos)
    assert rows[0, eos] == -np.inf and rows[1, eos] == 100.0
    assert logits[0, eos] == 100.0  # input untouched


def test_stop_rules():
    eos = 1024
    assert sampling.stop_reason(5, 3, eos, eos) == sampling.STOP_EOS
    assert sampling.stop_reason(5, eos, 3, eos) == sampling.STOP_EOS
    assert sampling.stop_reason(20, 3, 3, eos, early_stop_num=20) is None
    assert sampling.stop_reason(21, 3, 3, eos, early_stop_num=20) == sampling.STOP_EARLY
    assert sampling.stop_reason(10_000, 3, 3, eos, early_stop_num=-1, max_new_tokens=None) is None
    assert sampling.stop_reason(1500, 3, 3, eos) == sampling.STOP_BUDGET
    assert sampling.stop_reasons([1, 21, 4], [3, 3, eos], [3, 3, 3], eos, early_stop_num=20) == \
        [None, sampling.STOP_EARLY, sampling.STOP_EOS]


def test_python_backend_has_no_torch():
    root = Path(__file__).resolve().parent.parent / "python_backend"
    for name in ("sampling.py", "gpt_runner.py"):
        text = (root / name).read_text()
        assert "import torch" not in text and "from torch" not in text, name
