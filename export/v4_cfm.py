"""The v4 CFM's velocity model (f5-tts ``DiT`` as GPT-SoVITS v4 configures it) and its Euler steps.

Written for a batched, exported step: upstream runs one row whose every frame is valid, so its
DiT masks nothing but the attention keys. Here a batch pads rows to a common length, so every
place where a padded frame could reach a valid one is masked: the text ConvNeXt blocks' depthwise
convs and their GRN (a norm over time), the convolutional position embedding, the attention
keys. A padded row's valid frames then equal its solo run to float rounding.

Sizes come from the weights: ``dim`` (time MLP), ``depth`` (blocks), ``heads`` = inner_dim / 64
(upstream's dim_head is 64), FF width, ``mel_dim`` (proj_out), ``text_dim`` (input projection
minus 2 * mel_dim), ConvNeXt blocks and width, the conv position kernel and groups, and the rotary
frequencies (``rotary_embed.inv_freq``, applied as x-transformers does: to the first 64 channels
of q and k before the head split, interleaved pairs).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.errors import CheckpointError
from export.sovits_model import _count

DIM_HEAD = 64  # upstream DiT(dim_head=64); heads = inner_dim / 64
TEXT_MAX_POS = 4096  # TextEmbedding.precompute_max_pos
PREFIX = "cfm.estimator."


@dataclass(frozen=True)
class DiTConfig:
    dim: int
    depth: int
    heads: int
    ff_inner: int
    mel_dim: int
    text_dim: int
    text_layers: int
    text_inner: int
    freq_dim: int
    conv_pos_kernel: int
    conv_pos_groups: int
    rope_dim: int

    @classmethod
    def from_state(cls, sd: dict, label: str) -> "DiTConfig":
        p = PREFIX
        try:
            dim, freq = sd[p + "time_embed.time_mlp.0.weight"].shape
            inner = sd[p + "transformer_blocks.0.attn.to_q.weight"].shape[0]
            mel = sd[p + "proj_out.weight"].shape[0]
            conv = sd[p + "input_embed.conv_pos_embed.conv1d.0.weight"]
            cfg = cls(
                dim=dim,
                depth=_count(sd, re.escape(p) + r"transformer_blocks\.(\d+)\."),
                heads=inner // DIM_HEAD,
                ff_inner=sd[p + "transformer_blocks.0.ff.ff.0.0.weight"].shape[0],
                mel_dim=mel,
                text_dim=sd[p + "input_embed.proj.weight"].shape[1] - 2 * mel,
                text_layers=_count(sd, re.escape(p) + r"text_embed\.text_blocks\.(\d+)\."),
                text_inner=sd[p + "text_embed.text_blocks.0.pwconv1.weight"].shape[0],
                freq_dim=freq,
                conv_pos_kernel=conv.shape[2],
                conv_pos_groups=dim // conv.shape[1],
                rope_dim=2 * sd[p + "rotary_embed.inv_freq"].shape[0],
            )
        except KeyError as exc:
            raise CheckpointError(f"{label}: v4 CFM weights incomplete (missing {exc})") from None
        if inner % DIM_HEAD or cfg.heads == 0:
            raise CheckpointError(f"{label}: DiT attention width {inner} is not a multiple of {DIM_HEAD}")
        if cfg.rope_dim != DIM_HEAD:
            raise CheckpointError(f"{label}: rotary_embed.inv_freq covers {cfg.rope_dim} dims, expected {DIM_HEAD}")
        return cfg


def _mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """[B] -> [B, T, 1] float, 1 on valid frames."""
    pos = torch.arange(t, device=lengths.device)
    return (pos.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1).float()


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of t * 1000 -> MLP."""

    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [B] -> [B, dim]
        half = self.freq_dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -scale)
        emb = 1000.0 * t.float().unsqueeze(1) * freqs.unsqueeze(0)
        return self.time_mlp(torch.cat((emb.sin(), emb.cos()), dim=-1))


class GRN(nn.Module):
    """Global response norm; the L2 norm over time counts valid frames only."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gx = torch.sqrt(torch.sum((x * mask) ** 2, dim=1, keepdim=True))
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, inner)
        self.grn = GRN(inner)
        self.pwconv2 = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x [B, T, C], zero past lengths
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        h = F.gelu(self.pwconv1(self.norm(h)))
        h = self.pwconv2(self.grn(h, mask))
        return (x + h) * mask


class TextEmbedding(nn.Module):
    def __init__(self, dim: int, layers: int, inner: int):
        super().__init__()
        half = dim // 2
        freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2)[:half].float() / dim))
        angles = torch.outer(torch.arange(TEXT_MAX_POS).float(), freqs)
        self.register_buffer("freqs_cis", torch.cat([angles.cos(), angles.sin()], dim=-1), persistent=False)
        self.text_blocks = nn.ModuleList(ConvNeXtV2Block(dim, inner) for _ in range(layers))

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        t = text.shape[1]
        pos = torch.clamp(torch.arange(t, device=text.device), max=TEXT_MAX_POS - 1)
        x = (text + self.freqs_cis[pos].unsqueeze(0)) * mask
        for block in self.text_blocks:
            x = block(x, mask)
        return x


class ConvPositionEmbedding(nn.Module):
    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv1d = nn.Sequential(
            nn.Conv1d(dim, dim, kernel, groups=groups, padding=kernel // 2), nn.Mish(),
            nn.Conv1d(dim, dim, kernel, groups=groups, padding=kernel // 2), nn.Mish(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        m = mask.transpose(1, 2)
        h = x.transpose(1, 2) * m
        h = self.conv1d[1](self.conv1d[0](h)) * m
        h = self.conv1d[3](self.conv1d[2](h)) * m
        return h.transpose(1, 2)


class InputEmbedding(nn.Module):
    def __init__(self, mel_dim: int, text_dim: int, dim: int, kernel: int, groups: int):
        super().__init__()
        self.proj = nn.Linear(2 * mel_dim + text_dim, dim)
        self.conv_pos_embed = ConvPositionEmbedding(dim, kernel, groups)

    def forward(self, x, cond, text, mask):
        h = self.proj(torch.cat((x, cond, text), dim=-1))
        return self.conv_pos_embed(h, mask) + h


class RotaryEmbedding(nn.Module):
    def __init__(self, rope_dim: int):
        super().__init__()
        self.register_buffer("inv_freq", torch.zeros(rope_dim // 2))

    def forward(self, t: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(t, device=device).float()
        freqs = pos.unsqueeze(1) * self.inv_freq.float().unsqueeze(0)  # [T, rope/2]
        freqs = torch.stack((freqs, freqs), dim=-1).flatten(-2)  # interleaved pairs [T, rope]
        return freqs.cos(), freqs.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x-transformers' apply_rotary_pos_emb on [B, T, inner]: only the first rope_dim channels."""
    r = cos.shape[-1]
    head, rest = x[..., :r], x[..., r:]
    pairs = head.reshape(head.shape[0], head.shape[1], r // 2, 2)
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(head.shape)
    return torch.cat((head * cos + rotated * sin, rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        inner = heads * DIM_HEAD
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x, mask, rope):
        b, t, _ = x.shape
        cos, sin = rope
        q = _rotate(self.to_q(x), cos, sin).view(b, t, self.heads, DIM_HEAD).transpose(1, 2)
        k = _rotate(self.to_k(x), cos, sin).view(b, t, self.heads, DIM_HEAD).transpose(1, 2)
        v = self.to_v(x).view(b, t, self.heads, DIM_HEAD).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(DIM_HEAD)
        key_valid = mask.transpose(1, 2).unsqueeze(1)  # [B, 1, 1, T]
        scores = scores.masked_fill(key_valid == 0, -1e9)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        out = out.transpose(1, 2).reshape(b, t, self.heads * DIM_HEAD)
        return self.to_out[0](out) * mask


class AdaLayerNormZero(nn.Module):
    def __init__(self, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(dim, dim * chunks)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.chunk(self.linear(F.silu(emb)), self.chunks, dim=1)


def _norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """LayerNorm without affine over the last axis (``dim`` static so the export keeps it an op)."""
    return F.layer_norm(x, (dim,), eps=1e-6)


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.ff = nn.Sequential(nn.Sequential(nn.Linear(dim, inner), nn.GELU(approximate="tanh")),
                                nn.Identity(), nn.Linear(inner, dim))

    def forward(self, x):
        return self.ff(x)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ff_inner: int):
        super().__init__()
        self.dim = dim
        self.attn_norm = AdaLayerNormZero(dim, 6)
        self.attn = Attention(dim, heads)
        self.ff = FeedForward(dim, ff_inner)

    def forward(self, x, t_emb, mask, rope):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(t_emb)
        h = _norm(x, self.dim) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        x = x + gate_msa[:, None] * self.attn(h, mask, rope)
        h = _norm(x, self.dim) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(h)


class DiT(nn.Module):
    """Velocity model: (x, prompt, mu, t, d) -> v, all rows padded to one length T."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimestepEmbedding(cfg.dim, cfg.freq_dim)
        self.d_embed = TimestepEmbedding(cfg.dim, cfg.freq_dim)
        self.text_embed = TextEmbedding(cfg.text_dim, cfg.text_layers, cfg.text_inner)
        self.input_embed = InputEmbedding(cfg.mel_dim, cfg.text_dim, cfg.dim, cfg.conv_pos_kernel, cfg.conv_pos_groups)
        self.rotary_embed = RotaryEmbedding(cfg.rope_dim)
        self.transformer_blocks = nn.ModuleList(DiTBlock(cfg.dim, cfg.heads, cfg.ff_inner) for _ in range(cfg.depth))
        self.norm_out = AdaLayerNormZero(cfg.dim, 2)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)

    def forward(self, x, cond, mu, lengths, t, d):
        """x, cond [B, mel, T]; mu [B, T, text_dim]; lengths, t, d [B] -> v [B, T, mel] (upstream's
        raw DiT output; frames past a row's length are meaningless)."""
        n = x.shape[2]
        mask = _mask(lengths, n)
        t_emb = self.time_embed(t) + self.d_embed(d)
        text = self.text_embed(mu, mask)
        h = self.input_embed(x.transpose(1, 2), cond.transpose(1, 2), text, mask)
        rope = self.rotary_embed(n, x.device)
        for block in self.transformer_blocks:
            h = block(h, t_emb, mask, rope)
        scale, shift = self.norm_out(t_emb)
        h = _norm(h, self.cfg.dim) * (1 + scale)[:, None] + shift[:, None]
        return self.proj_out(h)


class CFM(nn.Module):
    """Upstream ``CFM`` at inference: Euler steps of the DiT velocity, prompt frames held at 0."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.estimator = DiT(cfg)

    def step(self, x, prompt_x, lengths, prompt_lengths, t, d, mu):
        """One Euler step for a padded batch. x, prompt_x [B, mel, T] (prompt_x holds the row's
        normalized prompt mel in frames < prompt_lengths, 0 elsewhere); lengths, prompt_lengths
        [B] int64; t, d [B] float; mu [B, T, text_dim]. Returns (x_next [B, mel, T]: x + d * v with
        frames < prompt_length and >= length set to 0; v [B, T, mel]: the DiT output)."""
        v = self.estimator(x, prompt_x, mu, lengths, t, d)
        x_next = x + d.reshape(-1, 1, 1) * v.transpose(1, 2)
        pos = torch.arange(x.shape[2], device=x.device).unsqueeze(0)
        keep = (pos >= prompt_lengths.unsqueeze(1)) & (pos < lengths.unsqueeze(1))
        return x_next * keep.unsqueeze(1).to(x_next.dtype), v

    @torch.no_grad()
    def inference(self, mu, prompt, noise, n_steps: int, record: list | None = None):
        """Upstream ``CFM.inference`` for one row with the initial noise given (no CFG).
        mu [1, T, text_dim], prompt [1, mel, P], noise [1, mel, T] -> x [1, mel, T]."""
        b, _, n = noise.shape
        p = prompt.shape[-1]
        x = noise.clone()
        prompt_x = torch.zeros_like(x)
        prompt_x[..., :p] = prompt
        x[..., :p] = 0
        lengths = torch.full((b,), n, dtype=torch.int64)
        plens = torch.full((b,), p, dtype=torch.int64)
        d = 1 / n_steps
        t = 0.0
        for _ in range(n_steps):
            t_t, d_t = torch.full((b,), t), torch.full((b,), d)
            x_next, v = self.step(x, prompt_x, lengths, plens, t_t, d_t, mu)
            if record is not None:
                record.append((x, v, t_t, d_t))
            x = x_next
            t = t + d
        return x
