"""The GPT-SoVITS text-to-semantic decoder (stage 1, "s1") as torch modules for export.

Written from the documented upstream numerics (Text2SemanticDecoder, v2), not copied.
Parameter names equal the checkpoint's state-dict keys (without ``model.``), so loading is
``load_state_dict(strict=True)``: a missing or unexpected key fails loudly.

Two entry points, each exported as one ONNX graph:

* ``prefill(phones [B,P], bert [B,1024,P], prompts [B,T])`` -> ``(logits [B,V], k [L,B,P+T,D], v)``.
  Rows of one prefill batch have equal P and equal T (no padding inside prefill); prefill
  rows of different lengths separately and merge them into a decode batch with padding.
* ``step(token [B,1], position [B], k [L,B,S,D], v, cache_mask [B,S+1])`` -> ``(logits, k', v')``
  with ``k'``/``v'`` of length S+1 (the new token's key/value appended at the end): the
  upstream way (``torch.cat`` per step), used by the eager baseline and the golden samples.
  ``cache_mask`` holds 1.0 for a valid key and 0.0 for padding; its last column is the new
  token itself and must be 1. Padding may sit anywhere in the cache (the server pads on the
  LEFT so every row appends at the same index); masked keys get zero attention weight, so a
  padded row gives the same logits as the row alone. ``position`` is the audio position of
  ``token`` (the first generated token after a prompt of length T sits at position T); the
  sinusoidal encoding is computed inside the graph, so any length works.
* ``step_cached(token, position, attn_mask [B,C+1], past_k, past_v)`` (the exported decode
  step): ``past_k``/``past_v`` are per-layer lists of ``[B,H,C,hd]`` buffers that the caller
  owns and grows (C >= the used length; unused columns masked 0), and only the new token's
  ``new_k``/``new_v`` ``[L,B,H,1,hd]`` come back. The caller writes them into its buffers, so
  a step reads the cache once and copies none of it (the ``torch.cat`` form rewrites the
  whole cache several times per step, which dominated batched decode on a CPU).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.checkpoints import Checkpoint
from export.errors import CheckpointError
from export.onnx_io import GraphSpec
from python_backend.gpt_runner import STEP_FORMAT, step_io

MODEL_TYPE = "gpt-sovits-t2s"
EOS_MASK_STEPS = 11  # upstream: EOS cannot be sampled in the first 11 decode steps
LN_EPS = 1e-5


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    d_model: int
    ffn_dim: int
    vocab_size: int  # semantic tokens incl. EOS (1025)
    phone_vocab_size: int  # 732 for v2
    bert_dim: int  # 1024
    eos: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> "GPTConfig":
        """Sizes from the state-dict shapes; the yaml config supplies only head count and EOS."""
        sd, cfg = ckpt.state_dict, ckpt.config.get("model", {})
        try:
            phone_vocab, d_model = sd["ar_text_embedding.word_embeddings.weight"].shape
            vocab = sd["ar_audio_embedding.word_embeddings.weight"].shape[0]
            bert_dim = sd["bert_proj.weight"].shape[1]
            ffn = sd["h.layers.0.linear1.weight"].shape[0]
        except KeyError as exc:
            raise CheckpointError(f"{ckpt.path}: GPT weight {exc} missing") from None
        layers = {int(k.split(".")[2]) for k in sd if k.startswith("h.layers.")}
        n_layer = len(layers)
        if layers != set(range(n_layer)):
            raise CheckpointError(f"{ckpt.path}: GPT layer indices are not contiguous: {sorted(layers)}")
        n_head = int(cfg.get("head", 0))
        if n_head <= 0 or d_model % n_head:
            raise CheckpointError(f"{ckpt.path}: config model.head={cfg.get('head')!r} does not divide width {d_model}")
        # model.linear_units is not checked: upstream ignores it and sizes the FFN 4 * width
        for key, have in (("embedding_dim", d_model), ("hidden_dim", d_model), ("n_layer", n_layer),
                          ("vocab_size", vocab), ("phoneme_vocab_size", phone_vocab)):
            if key in cfg and int(cfg[key]) != have:
                raise CheckpointError(f"{ckpt.path}: config model.{key}={cfg[key]} but the weights say {have}")
        eos = int(cfg.get("EOS", vocab - 1))
        if not 0 <= eos < vocab:
            raise CheckpointError(f"{ckpt.path}: EOS {eos} outside the {vocab}-token vocabulary")
        return cls(n_layer, n_head, int(d_model), int(ffn), int(vocab), int(phone_vocab), int(bert_dim), eos)


def sine_position(pos: torch.Tensor, d_model: int) -> torch.Tensor:
    """Sinusoidal encoding of integer positions ``pos`` (any shape) -> ``[..., d_model]``.

    pe[p, 0::2] = sin(p * div), pe[p, 1::2] = cos(p * div), div = exp(arange(0, D, 2) * -ln(1e4)/D),
    all float32, positions counted from 0.
    """
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    angle = pos.to(torch.float32).unsqueeze(-1) * div
    pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)
    # explicit last size, not flatten's -1: an empty position list (no prompt tokens) must
    # reshape too, and onnxruntime cannot infer -1 from zero elements
    return pe.reshape(*pe.shape[:-2], d_model)


class _Embedding(nn.Module):
    def __init__(self, n: int, d: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(n, d)


class _Position(nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))


class _SelfAttention(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d))
        self.out_proj = nn.Linear(d, d)


class _Layer(nn.Module):
    """Post-norm transformer layer; returns the new hidden states and this layer's k, v."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.self_attn = _SelfAttention(cfg.d_model)
        self.linear1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=LN_EPS)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B,S,D] -> [B,H,S,hd]
        return t.reshape(t.shape[0], -1, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x, k_past, v_past, keep):
        """x [B,Sq,D]; k_past/v_past [B,Sp,D] or None; keep: bool mask broadcastable to [B,1,Sq,Sk]."""
        q, k, v = F.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias).chunk(3, dim=-1)
        if k_past is not None:
            k = torch.cat([k_past, k], dim=1)
            v = torch.cat([v_past, v], dim=1)
        scores = torch.matmul(self._heads(q), self._heads(k).transpose(-1, -2)) * self.scale
        scores = scores.masked_fill(~keep, float("-inf"))
        attn = torch.matmul(torch.softmax(scores, dim=-1), self._heads(v))
        attn = attn.transpose(1, 2).reshape(x.shape[0], -1, self.n_head * self.head_dim)
        return self._finish(x, attn), k, v

    def forward_cached(self, x, k_past, v_past, keep):
        """One new position. x [B,1,D]; k_past/v_past [B,H,C,hd]; keep bool [B,1,1,C+1] (last: itself).

        Returns the new hidden state and this position's k, v as [B,H,1,hd].
        """
        q, k, v = F.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        past = torch.matmul(q, k_past.transpose(-1, -2))  # [B,H,1,C]
        own = (q * k).sum(dim=-1, keepdim=True)  # [B,H,1,1]
        scores = torch.cat([past, own], dim=-1) * self.scale
        weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
        attn = torch.matmul(weights[..., :-1], v_past) + weights[..., -1:] * v
        attn = attn.transpose(1, 2).reshape(x.shape[0], -1, self.n_head * self.head_dim)
        return self._finish(x, attn), k, v

    def _finish(self, x, attn):
        x = self.norm1(x + self.self_attn.out_proj(attn))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class _Stack(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.n_layer))


class GPT(nn.Module):
    """Text2SemanticDecoder inference path (float32)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.bert_proj = nn.Linear(cfg.bert_dim, cfg.d_model)
        self.ar_text_embedding = _Embedding(cfg.phone_vocab_size, cfg.d_model)
        self.ar_text_position = _Position()
        self.ar_audio_embedding = _Embedding(cfg.vocab_size, cfg.d_model)
        self.ar_audio_position = _Position()
        self.h = _Stack(cfg)
        self.ar_predict_layer = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> "GPT":
        """Build from a checkpoint read by ``export.checkpoints.read_gpt``; every key must match."""
        model = cls(GPTConfig.from_checkpoint(ckpt))
        state = ckpt.float_state()
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{ckpt.path}: GPT weights do not match the v2 architecture: "
                f"missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        bad = [f"{k} {tuple(v.shape)} != {expected[k]}" for k, v in state.items() if tuple(v.shape) != expected[k]]
        if bad:
            raise CheckpointError(f"{ckpt.path}: GPT weight shapes differ from the architecture: {bad[:8]}")
        model.load_state_dict(state, strict=True)
        return model.eval()

    load_checkpoint = from_checkpoint

    # ---------------------------------------------------------------- pieces
    def _audio_embed(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.ar_audio_embedding.word_embeddings(tokens) + self.ar_audio_position.alpha * sine_position(pos, self.cfg.d_model)

    def _run(self, x, k_cache, v_cache, keep):
        ks, vs = [], []
        for i, layer in enumerate(self.h.layers):
            x, k, v = layer(x, None if k_cache is None else k_cache[i], None if v_cache is None else v_cache[i], keep)
            ks.append(k)
            vs.append(v)
        logits = self.ar_predict_layer(x[:, -1])
        return logits, torch.stack(ks), torch.stack(vs)

    # ---------------------------------------------------------------- public
    def prefill(self, phones: torch.Tensor, bert: torch.Tensor, prompts: torch.Tensor):
        """phones [B,P] int64, bert [B,bert_dim,P] f32, prompts [B,T] int64 (T >= 0; T = 0 is
        upstream's reference-free mode: the first token is predicted from the last phone).

        Returns logits [B,V] for the first new token and caches [L,B,P+T,D].
        """
        n_phone, n_prompt = phones.shape[1], prompts.shape[1]
        x = self.ar_text_embedding.word_embeddings(phones) + self.bert_proj(bert.transpose(1, 2))
        x = x + self.ar_text_position.alpha * sine_position(torch.arange(n_phone), self.cfg.d_model)
        y = self._audio_embed(prompts, torch.arange(n_prompt))
        xy = torch.cat([x, y], dim=1)
        idx = torch.arange(n_phone + n_prompt)
        col, row = idx.unsqueeze(0), idx.unsqueeze(1)
        # text rows see all text (not audio); audio rows see all text and earlier audio
        keep = (col < n_phone) | (col <= row)
        return self._run(xy, None, None, keep)

    def step(self, token, position, k_cache, v_cache, cache_mask):
        """token [B,1] int64, position [B] int64, caches [L,B,S,D], cache_mask [B,S+1] (1 valid / 0 pad)."""
        x = self._audio_embed(token, position.unsqueeze(1))
        keep = (cache_mask > 0.5).unsqueeze(1).unsqueeze(1)  # [B,1,1,S+1]
        return self._run(x, k_cache, v_cache, keep)

    def step_cached(self, token, position, attn_mask, past_k, past_v):
        """token [B,1], position [B], attn_mask [B,C+1], past_k/past_v: n_layer tensors [B,H,C,hd].

        Returns logits [B,V] and the new token's new_k/new_v [L,B,H,1,hd] (module doc).
        """
        x = self._audio_embed(token, position.unsqueeze(1))
        keep = (attn_mask > 0.5).unsqueeze(1).unsqueeze(1)  # [B,1,1,C+1]
        ks, vs = [], []
        for layer, k_past, v_past in zip(self.h.layers, past_k, past_v):
            x, k, v = layer.forward_cached(x, k_past, v_past, keep)
            ks.append(k)
            vs.append(v)
        return self.ar_predict_layer(x[:, -1]), torch.stack(ks), torch.stack(vs)

    def metadata(self) -> dict[str, object]:
        c = self.cfg
        return {
            "model_type": MODEL_TYPE,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "d_model": c.d_model,
            "vocab_size": c.vocab_size,
            "phone_vocab_size": c.phone_vocab_size,
            "bert_dim": c.bert_dim,
            "eos": c.eos,
            "eos_mask_steps": EOS_MASK_STEPS,
            "cache_layout": "prefill out [n_layer,batch,seq,d_model]; step past_k_<i>/past_v_<i> "
                            "[batch,n_head,capacity,head_dim], new_k/new_v [n_layer,batch,n_head,1,head_dim]",
            "step_format": STEP_FORMAT,
            "attn_mask": "float32 [batch,capacity+1], 1 valid, 0 padding or unused; last column is the new token",
        }


class GPTPrefill(nn.Module):
    """ONNX wrapper: (phones, bert, prompts) -> (logits, out_k_cache, out_v_cache)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, phones, bert, prompts):
        return self.model.prefill(phones, bert, prompts)


class GPTStep(nn.Module):
    """ONNX wrapper: (token, position, attn_mask, past_k_0.., past_v_0..) -> (logits, new_k, new_v)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, token, position, attn_mask, *past):
        n = self.model.cfg.n_layer
        return self.model.step_cached(token, position, attn_mask, past[:n], past[n:])



PREFILL_NAME = "gpt_prefill"
STEP_NAME = "gpt_step"


def example_inputs(cfg: GPTConfig, batch: int = 2, n_phone: int = 7, n_prompt: int = 5, cache: int = 9):
    """Small example inputs for tracing (lengths deliberately unlike any real request)."""
    g = torch.Generator().manual_seed(0)
    prefill = (
        torch.randint(0, cfg.phone_vocab_size, (batch, n_phone), generator=g),
        torch.randn(batch, cfg.bert_dim, n_phone, generator=g),
        torch.randint(0, cfg.vocab_size - 1, (batch, n_prompt), generator=g),
    )
    mask = torch.ones(batch, cache + 1)
    mask[0, :2] = 0.0
    past = [torch.randn(batch, cfg.n_head, cache, cfg.head_dim, generator=g) for _ in range(2 * cfg.n_layer)]
    step = (
        torch.randint(0, cfg.vocab_size - 1, (batch, 1), generator=g),
        torch.full((batch,), 4, dtype=torch.int64),
        mask,
        *past,
    )
    return prefill, step


def gpt_graph_specs(model: GPT, prefill_args: tuple | None = None, step_args: tuple | None = None) -> list[GraphSpec]:
    """GraphSpecs for ``export.onnx_io.export_graph``: ``gpt_prefill`` and ``gpt_step``."""
    ex_prefill, ex_step = example_inputs(model.cfg)
    prefill_args = prefill_args if prefill_args is not None else ex_prefill
    step_args = step_args if step_args is not None else ex_step
    meta = {**model.metadata(), "empty_prompts": "1"}  # the prefill accepts T = 0 (reference-free)
    cache_out = {1: "batch", 2: "cache_out"}
    step_names = list(step_io(model.cfg.n_layer)[0])
    return [
        GraphSpec(
            name=PREFILL_NAME,
            module=GPTPrefill(model).eval(),
            args=tuple(prefill_args),
            input_names=["phones", "bert", "prompts"],
            output_names=["logits", "out_k_cache", "out_v_cache"],
            dynamic_axes={
                "phones": {0: "batch", 1: "phones"},
                "bert": {0: "batch", 2: "phones"},
                "prompts": {0: "batch", 1: "prompt"},
                "logits": {0: "batch"},
                "out_k_cache": cache_out,
                "out_v_cache": cache_out,
            },
            metadata=meta,
        ),
        GraphSpec(
            name=STEP_NAME,
            module=GPTStep(model).eval(),
            args=tuple(step_args),
            input_names=step_names,
            output_names=["logits", "new_k", "new_v"],
            dynamic_axes={
                "token": {0: "batch"},
                "position": {0: "batch"},
                "attn_mask": {0: "batch", 1: "capacity_plus_1"},
                **{name: {0: "batch", 2: "capacity"} for name in step_names[3:]},
                "logits": {0: "batch"},
                "new_k": {1: "batch"},
                "new_v": {1: "batch"},
            },
            metadata=meta,
        ),
    ]


def config_dict(cfg: GPTConfig) -> dict:
    return asdict(cfg)
