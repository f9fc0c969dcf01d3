"""The v4 vocoder (upstream ``Generator`` as ``init_vocoder`` builds it for v4): denormalized mel
[B, 100, T] at 100 frames/s -> 48 kHz audio [B, 1, T * 480], with the batching masks of the v2
generator (every conv input zeroed past a row's length at its stage's rate, so a padded row equals
its solo run, tail included).

Channels, the number of upsamples, their kernel sizes and the resblock kernels come from the
weights; the upsample strides (10, 6, 2, 2, 2) and resblock dilations (1, 3, 5) are upstream
constants (a stride is not in a weight's shape) and are checked against the kernel sizes. A
state dict still carrying ``weight_g``/``weight_v`` is folded; any other key mismatch is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.checkpoints import V4Vocoder
from export.errors import CheckpointError
from export.sovits_model import LRELU_SLOPE, ResBlock1, _count, _fold_weight_norm, sequence_mask

UPSAMPLE_RATES = (10, 6, 2, 2, 2)
RESBLOCK_DILATIONS = (1, 3, 5)
SAMPLE_RATE = 48000
HOP = math.prod(UPSAMPLE_RATES)  # 480 samples per mel frame


@dataclass(frozen=True)
class VocoderConfig:
    mel_dim: int
    channels: int
    upsample_kernels: tuple[int, ...]
    resblock_kernels: tuple[int, ...]

    @classmethod
    def from_state(cls, sd: dict, label: str) -> "VocoderConfig":
        try:
            ch, mel, _ = sd["conv_pre.weight"].shape
            n_ups = _count(sd, r"ups\.(\d+)\.")
            n_rb = _count(sd, r"resblocks\.(\d+)\.")
            ups_k = tuple(sd[f"ups.{i}.weight"].shape[2] for i in range(n_ups))
            n_k = n_rb // max(n_ups, 1)
            rb_k = tuple(sd[f"resblocks.{j}.convs1.0.weight"].shape[2] for j in range(n_k))
        except KeyError as exc:
            raise CheckpointError(f"{label}: v4 vocoder weights incomplete (missing {exc})") from None
        if n_ups != len(UPSAMPLE_RATES) or any((k - u) % 2 or k < u for k, u in zip(ups_k, UPSAMPLE_RATES)):
            raise CheckpointError(
                f"{label}: vocoder upsample kernels {ups_k} do not fit upstream v4 strides {UPSAMPLE_RATES}")
        if n_k * n_ups != n_rb or _count(sd, r"resblocks\.0\.convs1\.(\d+)\.") != len(RESBLOCK_DILATIONS):
            raise CheckpointError(f"{label}: {n_rb} vocoder resblocks do not fit {n_ups} upsamples x 3 dilations")
        return cls(mel, ch, ups_k, rb_k)


class Vocoder(nn.Module):
    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.conv_pre = nn.Conv1d(cfg.mel_dim, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(UPSAMPLE_RATES, cfg.upsample_kernels)):
            cout = ch // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(ch // 2**i, cout, k, u, padding=(k - u) // 2))
            for rk in cfg.resblock_kernels:
                self.resblocks.append(ResBlock1(cout, rk, RESBLOCK_DILATIONS))
        self.conv_post = nn.Conv1d(cout, 1, 7, padding=3, bias=True)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """mel [B, 100, T] (denormalized log mel) -> wav [B, 1, T * 480] in [-1, 1]; ``lengths``
        [B] mel frames per row (None: every row is full length, upstream's plain generator)."""
        n_k = len(self.cfg.resblock_kernels)
        mask = None if lengths is None else sequence_mask(lengths, mel.shape[2]).to(mel.dtype)
        x = self.conv_pre(mel if mask is None else mel * mask)
        if mask is not None:
            x = x * mask
        rate = 1
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            if lengths is not None:
                rate *= UPSAMPLE_RATES[i]
                mask = sequence_mask(lengths * rate, x.shape[2]).to(x.dtype)
                x = x * mask
            xs = None
            for j in range(n_k):
                r = self.resblocks[i * n_k + j](x, mask)
                xs = r if xs is None else xs + r
            x = xs / n_k
        x = torch.tanh(self.conv_post(F.leaky_relu(x, 0.01)))
        return x if mask is None else x * mask


def build_vocoder(ckpt: V4Vocoder) -> Vocoder:
    """Build the vocoder from its state dict, accounting for every key."""
    label = f"vocoder {ckpt.path}"
    state = _fold_weight_norm({k: (v.float() if v.is_floating_point() else v) for k, v in ckpt.state_dict.items()})
    model = Vocoder(VocoderConfig.from_state(state, label))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{label}: weights do not fit the v4 vocoder: missing {missing[:6]} ({len(missing)}), "
                              f"unexpected {unexpected[:6]} ({len(unexpected)})")
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{label}: vocoder shape mismatch (key, file, model): {bad[:4]}")
    model.load_state_dict(state, strict=True)
    return model.eval()
