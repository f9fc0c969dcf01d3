"""Torch modules of the GPT-SoVITS stage-2 ("SoVITS") inference path, v2 / v2Pro / v2ProPlus.

Written for export: every length is taken from tensor shapes (so traced graphs keep them
dynamic), masks are applied wherever padding could leak into valid frames, relative
position terms use gathers instead of Python-side shape arithmetic, and weight norm is
folded into plain weights when a checkpoint is loaded.

Sizes (layers, channels, kernels, heads) are derived from the state dict; the config is
used only for what shapes cannot tell (upsample strides, resblock dilations, the
semantic frame rate). Loading accounts for every key: a missing or unexpected key raises
:class:`export.errors.CheckpointError`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from export.checkpoints import Checkpoint, read_sovits
from export.errors import CheckpointError

SAMPLE_RATE = 32000
HOP = 640
N_FFT = 2048
SPEC_BINS = N_FFT // 2 + 1
REF_ENC_BINS = 704  # v2+ use only the first 704 bins of the reference spectrogram
SSL_DIM = 768
SV_EMB_DIM = 20480
MRTE_HEADS = 4  # fixed upstream, not in the config
LRELU_SLOPE = 0.1

# Training-only buffers of the quantizer's EMA codebook: present in every file, unused at inference.
IGNORED_SUFFIXES = ("_codebook.inited", "_codebook.cluster_size", "_codebook.embed_avg")


# --------------------------------------------------------------------------- config


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state for m in [rx.match(k)] if m})


@dataclass(frozen=True)
class EncoderConfig:
    n_layers: int
    hidden: int
    filter_channels: int
    n_heads: int
    kernel_size: int
    window_size: int


@dataclass(frozen=True)
class SovitsConfig:
    version: str
    hidden_channels: int
    inter_channels: int
    gin_channels: int
    is_pro: bool
    encoder_ssl: EncoderConfig
    encoder_text: EncoderConfig
    encoder2: EncoderConfig
    mrte_hidden: int
    n_phones: int
    codebook_size: int
    flow_layers: tuple[int, ...]
    wn_layers: int
    wn_kernel: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    sample_rate: int = SAMPLE_RATE
    hop: int = HOP
    semantic_frame_rate: str = "25hz"
    extra: dict = field(default_factory=dict)

    @property
    def mrte_ge_channels(self) -> int:
        return self.mrte_hidden

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> "SovitsConfig":
        sd = ckpt.state_dict
        model = ckpt.config.get("model", {}) if isinstance(ckpt.config, dict) else {}
        data = ckpt.config.get("data", {}) if isinstance(ckpt.config, dict) else {}
        try:
            hidden = sd["enc_p.ssl_proj.weight"].shape[0]
            inter = sd["enc_p.proj.weight"].shape[0] // 2

            def enc(name: str) -> EncoderConfig:
                p = f"enc_p.{name}."
                n = _count(sd, re.escape(p) + r"attn_layers\.(\d+)\.")
                if n == 0:
                    raise CheckpointError(f"{ckpt.path}: encoder {name} has no layers")
                rel = sd[p + "attn_layers.0.emb_rel_k"]
                k_ch = rel.shape[-1]
                return EncoderConfig(
                    n_layers=n,
                    hidden=hidden,
                    filter_channels=sd[p + "ffn_layers.0.conv_1.weight"].shape[0],
                    n_heads=hidden // k_ch,
                    kernel_size=sd[p + "ffn_layers.0.conv_1.weight"].shape[2],
                    window_size=(rel.shape[1] - 1) // 2,
                )

            is_pro = "sv_emb.weight" in sd
            gin = sd["ref_enc.fc.fc.weight"].shape[0]
            flows = tuple(sorted(int(i) for i in {m.group(1) for k in sd for m in [re.match(r"flow\.flows\.(\d+)\.", k)] if m}))
            wn_layers = _count(sd, r"flow\.flows\.0\.enc\.in_layers\.(\d+)\.")
            n_ups = _count(sd, r"dec\.ups\.(\d+)\.")
            n_rb = _count(sd, r"dec\.resblocks\.(\d+)\.")
            ups_k = tuple(sd[f"dec.ups.{i}.weight_v"].shape[2] for i in range(n_ups))
            n_kernels = n_rb // n_ups
            rb_k = tuple(sd[f"dec.resblocks.{j}.convs1.0.weight_v"].shape[2] for j in range(n_kernels))
            rates = tuple(int(r) for r in model["upsample_rates"])
            dil = tuple(tuple(int(d) for d in ds) for ds in model["resblock_dilation_sizes"])
            cfg = cls(
                version=ckpt.version,
                hidden_channels=hidden,
                inter_channels=inter,
                gin_channels=gin,
                is_pro=is_pro,
                encoder_ssl=enc("encoder_ssl"),
                encoder_text=enc("encoder_text"),
                encoder2=enc("encoder2"),
                mrte_hidden=sd["enc_p.mrte.c_pre.weight"].shape[0],
                n_phones=sd["enc_p.text_embedding.weight"].shape[0],
                codebook_size=sd["quantizer.vq.layers.0._codebook.embed"].shape[0],
                flow_layers=flows,
                wn_layers=wn_layers,
                wn_kernel=sd["flow.flows.0.enc.in_layers.0.weight_v"].shape[2],
                upsample_rates=rates,
                upsample_kernel_sizes=ups_k,
                upsample_initial_channel=sd["dec.conv_pre.weight"].shape[0],
                resblock_kernel_sizes=rb_k,
                resblock_dilation_sizes=dil,
                sample_rate=int(data.get("sampling_rate", SAMPLE_RATE)),
                hop=int(data.get("hop_length", HOP)),
                semantic_frame_rate=str(model.get("semantic_frame_rate", "25hz")),
            )
        except KeyError as exc:
            raise CheckpointError(f"{ckpt.path}: SoVITS weights or config incomplete (missing {exc})") from None
        if cfg.semantic_frame_rate != "25hz":
            raise CheckpointError(f"{ckpt.path}: semantic_frame_rate {cfg.semantic_frame_rate} not supported (25hz expected)")
        if len(cfg.upsample_rates) != n_ups or math.prod(cfg.upsample_rates) != cfg.hop:
            raise CheckpointError(
                f"{ckpt.path}: upsample_rates {cfg.upsample_rates} do not match {n_ups} upsample layers and hop {cfg.hop}"
            )
        if n_ups * n_kernels != n_rb or len(dil) != n_kernels:
            raise CheckpointError(f"{ckpt.path}: {n_rb} resblocks do not fit {n_ups} upsamples x {len(dil)} dilation sets")
        if cfg.is_pro != (ckpt.version in ("v2Pro", "v2ProPlus")):
            raise CheckpointError(f"{ckpt.path}: version {ckpt.version} disagrees with the speaker-verification weights")
        return cfg


# --------------------------------------------------------------------------- helpers


def sequence_mask(lengths: torch.Tensor, max_len: torch.Tensor | int) -> torch.Tensor:
    """[B] lengths -> [B, 1, T] float mask."""
    pos = torch.arange(max_len, device=lengths.device)
    return (pos.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1).float()


def mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B, C, T]."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, -1)
        x = F.layer_norm(x, (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


# --------------------------------------------------------------------------- attention / encoders


class MultiHeadAttention(nn.Module):
    """VITS attention with optional shared relative position embeddings (window ``w``)."""

    def __init__(self, channels: int, out_channels: int, n_heads: int, window_size: int | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        if window_size is not None:
            self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * window_size + 1, self.k_channels))
            self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * window_size + 1, self.k_channels))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t = x.shape
        return x.view(b, self.n_heads, self.k_channels, t).transpose(2, 3)  # [B, h, T, d]

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.conv_q(x)) / math.sqrt(self.k_channels)
        k = self._heads(self.conv_k(c))
        v = self._heads(self.conv_v(c))
        scores = torch.matmul(q, k.transpose(-2, -1))  # [B, h, Tq, Tk]
        if self.window_size is not None:
            w = self.window_size
            t = x.shape[2]
            pos = torch.arange(t, device=x.device)
            rel = pos.unsqueeze(0) - pos.unsqueeze(1)  # [i, j] = j - i
            band = (rel.abs() <= w).to(q.dtype)
            idx = (rel + w).clamp(0, 2 * w)
            b, h = q.shape[0], q.shape[1]
            rel_logits = torch.matmul(q, self.emb_rel_k[0].transpose(0, 1))  # [B, h, T, 2w+1]
            scores = scores + torch.gather(rel_logits, 3, idx.expand(b, h, t, t)) * band
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = torch.softmax(scores, dim=-1)
        out = torch.matmul(p, v)
        if self.window_size is not None:
            offs = torch.arange(2 * w + 1, device=x.device) - w
            src = pos.unsqueeze(1) + offs.unsqueeze(0)  # [T, 2w+1] absolute key position
            valid = ((src >= 0) & (src < t)).to(p.dtype)
            src = torch.minimum(src.clamp(min=0), (t - 1) * torch.ones_like(src))
            weights = torch.gather(p, 3, src.expand(b, h, t, 2 * w + 1)) * valid
            out = out + torch.matmul(weights, self.emb_rel_v[0])
        b, h, t, d = out.shape
        out = out.transpose(2, 3).reshape(b, h * d, t)
        return self.conv_o(out)


class FFN(nn.Module):
    def __init__(self, channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return F.pad(x, ((k - 1) // 2, k // 2)) if k > 1 else x

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv_1(self._pad(x * mask)))
        h = self.conv_2(self._pad(h * mask))
        return h * mask


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn_layers = nn.ModuleList(
            MultiHeadAttention(cfg.hidden, cfg.hidden, cfg.n_heads, cfg.window_size) for _ in range(cfg.n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(LayerNorm(cfg.hidden) for _ in range(cfg.n_layers))
        self.ffn_layers = nn.ModuleList(FFN(cfg.hidden, cfg.filter_channels, cfg.kernel_size) for _ in range(cfg.n_layers))
        self.norm_layers_2 = nn.ModuleList(LayerNorm(cfg.hidden) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * mask
        for attn, n1, ffn, n2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = n1(x + attn(x, x, attn_mask))
            x = n2(x + ffn(x, mask))
        return x * mask


class MRTE(nn.Module):
    def __init__(self, content: int, hidden: int, out: int, n_heads: int):
        super().__init__()
        self.cross_attention = MultiHeadAttention(hidden, hidden, n_heads)
        self.c_pre = nn.Conv1d(content, hidden, 1)
        self.text_pre = nn.Conv1d(content, hidden, 1)
        self.c_post = nn.Conv1d(hidden, out, 1)

    def forward(self, ssl, ssl_mask, text, text_mask, ge):
        attn_mask = text_mask.unsqueeze(2) * ssl_mask.unsqueeze(-1)  # [B, 1, Ty, Tt]
        ssl_enc = self.c_pre(ssl * ssl_mask)
        text_enc = self.text_pre(text * text_mask)
        x = self.cross_attention(ssl_enc * ssl_mask, text_enc * text_mask, attn_mask) + ssl_enc + ge
        return self.c_post(x * ssl_mask)


def interpolate_rows(y: torch.Tensor, lengths: torch.Tensor, speed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row linear time resampling (F.interpolate mode="linear", align_corners=False).

    Row b of length L becomes int(L / speed) + 1 frames, as upstream does for one row;
    speed == 1 leaves every row untouched (upstream skips the resampling then). Returns
    the resampled [B, C, T'] (zero beyond each row's new length) and the new lengths.
    """
    speed = speed.reshape(-1)[:1].to(torch.float64)
    lf = lengths.to(torch.float64)
    # float32 speeds (0.6 -> 0.60000002) must not push an exact quotient below its integer
    new_len = torch.floor(lf / speed + 1e-4).to(torch.int64) + 1
    new_len = torch.where(speed == 1.0, lengths, new_len)
    t_out = new_len.max()
    pos = torch.arange(t_out, device=y.device).to(torch.float32)  # [T']
    scale = (lengths.to(torch.float32) / new_len.to(torch.float32)).unsqueeze(1)  # [B, 1]
    src = ((pos.unsqueeze(0) + 0.5) * scale - 0.5).clamp(min=0.0)  # [B, T']
    i0 = torch.floor(src)
    lam = (src - i0).unsqueeze(1)
    i0 = i0.to(torch.int64)
    last = (lengths - 1).clamp(min=0).unsqueeze(1)
    i0 = torch.minimum(i0, last)
    i1 = torch.minimum(i0 + 1, last)
    c = y.shape[1]
    g0 = torch.gather(y, 2, i0.unsqueeze(1).expand(-1, c, -1))
    g1 = torch.gather(y, 2, i1.unsqueeze(1).expand(-1, c, -1))
    out = g0 * (1.0 - lam) + g1 * lam
    mask = sequence_mask(new_len, t_out)
    return out * mask, new_len


class TextEncoder(nn.Module):
    """enc_p: SSL-rate content + phones + ge -> prior mean / log-std."""

    def __init__(self, cfg: SovitsConfig):
        super().__init__()
        h = cfg.hidden_channels
        self.out_channels = cfg.inter_channels
        self.ssl_proj = nn.Conv1d(SSL_DIM, h, 1)
        self.encoder_ssl = Encoder(cfg.encoder_ssl)
        self.encoder_text = Encoder(cfg.encoder_text)
        self.text_embedding = nn.Embedding(cfg.n_phones, h)
        self.mrte = MRTE(h, cfg.mrte_hidden, h, MRTE_HEADS)
        self.encoder2 = Encoder(cfg.encoder2)
        self.proj = nn.Conv1d(h, cfg.inter_channels * 2, 1)

    def forward(self, y, y_lengths, text, text_lengths, ge, speed=None):
        y_mask = sequence_mask(y_lengths, y.shape[2])
        y = self.ssl_proj(y * y_mask) * y_mask
        y = self.encoder_ssl(y * y_mask, y_mask)
        text_mask = sequence_mask(text_lengths, text.shape[1])
        t = self.text_embedding(text).transpose(1, 2)
        t = self.encoder_text(t * text_mask, text_mask)
        y = self.mrte(y, y_mask, t, text_mask, ge)
        y = self.encoder2(y * y_mask, y_mask)
        lengths = y_lengths
        if speed is not None:
            y, lengths = interpolate_rows(y, y_lengths, speed)
            y_mask = sequence_mask(lengths, y.shape[2])
        stats = self.proj(y) * y_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return m, logs, y_mask, lengths


# --------------------------------------------------------------------------- flow


class WN(nn.Module):
    def __init__(self, hidden: int, kernel_size: int, n_layers: int, gin: int):
        super().__init__()
        self.hidden = hidden
        self.n_layers = n_layers
        self.in_layers = nn.ModuleList(nn.Conv1d(hidden, 2 * hidden, kernel_size, padding=(kernel_size - 1) // 2) for _ in range(n_layers))
        self.res_skip_layers = nn.ModuleList(
            nn.Conv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1) for i in range(n_layers)
        )
        self.cond_layer = nn.Conv1d(gin, 2 * hidden * n_layers, 1)

    def forward(self, x, mask, g):
        h2 = 2 * self.hidden
        g = self.cond_layer(g)
        out = torch.zeros_like(x)
        for i, (inl, rsl) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a = inl(x) + g[:, i * h2:(i + 1) * h2]
            acts = torch.tanh(a[:, : self.hidden]) * torch.sigmoid(a[:, self.hidden:])
            rs = rsl(acts)
            if i < self.n_layers - 1:
                x = (x + rs[:, : self.hidden]) * mask
                out = out + rs[:, self.hidden:]
            else:
                out = out + rs
        return out * mask


class ResidualCouplingLayer(nn.Module):
    def __init__(self, channels: int, hidden: int, kernel_size: int, n_layers: int, gin: int):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.enc = WN(hidden, kernel_size, n_layers, gin)
        self.post = nn.Conv1d(hidden, self.half, 1)

    def reverse(self, x, mask, g):
        x0, x1 = x[:, : self.half], x[:, self.half:]
        h = self.pre(x0) * mask
        h = self.enc(h, mask, g)
        m = self.post(h) * mask
        x1 = (x1 - m) * mask
        return torch.cat([x0, x1], dim=1)


class Flow(nn.Module):
    """ResidualCouplingBlock; only the coupling layers (even indices) have weights."""

    def __init__(self, cfg: SovitsConfig):
        super().__init__()
        n = max(cfg.flow_layers) + 2
        layers: list[nn.Module] = []
        for i in range(n):
            if i in cfg.flow_layers:
                layers.append(ResidualCouplingLayer(cfg.inter_channels, cfg.hidden_channels, cfg.wn_kernel, cfg.wn_layers, cfg.gin_channels))
            else:
                layers.append(nn.Identity())  # Flip (no weights)
        self.flows = nn.ModuleList(layers)
        self.coupling = set(cfg.flow_layers)

    def reverse(self, x, mask, g):
        for i in reversed(range(len(self.flows))):
            if i in self.coupling:
                x = self.flows[i].reverse(x, mask, g)
            else:
                x = torch.flip(x, [1])
        return x


# --------------------------------------------------------------------------- vocoder


class ResBlock1(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=1, padding=(kernel_size - 1) // 2) for _ in dilations
        )

    def forward(self, x, mask=None):
        """``mask`` [B, 1, T] (1 valid, 0 padded) zeroes every conv input past a row's length, as
        upstream HiFi-GAN's ``x_mask``; None (one row, no padding) is the plain block."""
        if mask is None:
            for c1, c2 in zip(self.convs1, self.convs2):
                x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            return x
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE) * mask)
            xt = c2(F.leaky_relu(xt, LRELU_SLOPE) * mask)
            x = x + xt
        return x * mask


class Generator(nn.Module):
    def __init__(self, cfg: SovitsConfig):
        super().__init__()
        ch = cfg.upsample_initial_channel
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(cfg.inter_channels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            cin, cout = ch // (2**i), ch // (2 ** (i + 1))
            self.ups.append(nn.ConvTranspose1d(cin, cout, k, u, padding=(k - u) // 2))
            for rk, rd in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(cout, rk, rd))
        self.conv_post = nn.Conv1d(cout, 1, 7, padding=3, bias=False)
        self.cond = nn.Conv1d(cfg.gin_channels, ch, 1)
        self.upsample_rates = tuple(cfg.upsample_rates)

    def forward(self, x, g, lengths: torch.Tensor | None = None):
        """x [B, inter, T] latent, g [B, gin, 1] -> wav [B, 1, T * hop].

        ``lengths`` [B] (latent frames per row) makes a padded batch exact: every
        convolution's input is zeroed past the row's length at its stage's rate (latent
        frames x the cumulative upsample factor), so a row's padding acts as the zero padding
        of its solo run. Without masks, conv biases and the ge conditioning make padded
        frames non-zero and the last ~0.1 s of shorter rows changes. Full lengths (or None)
        give the unmasked result: the masks are then all ones.
        """
        mask = None if lengths is None else sequence_mask(lengths, x.shape[2]).to(x.dtype)
        x = self.conv_pre(x) + self.cond(g)
        if mask is not None:
            x = x * mask
        rate = 1
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            if lengths is not None:
                rate *= self.upsample_rates[i]
                mask = sequence_mask(lengths * rate, x.shape[2]).to(x.dtype)
                x = x * mask
            xs = None
            for j in range(self.num_kernels):
                r = self.resblocks[i * self.num_kernels + j](x, mask)
                xs = r if xs is None else xs + r
            x = xs / self.num_kernels
        x = torch.tanh(self.conv_post(F.leaky_relu(x, 0.01)))
        return x if mask is None else x * mask


# --------------------------------------------------------------------------- speaker encoder


class _Linear(nn.Module):
    def __init__(self, i: int, o: int):
        super().__init__()
        self.fc = nn.Linear(i, o)

    def forward(self, x):
        return self.fc(x)


class _Conv1dGLU(nn.Module):
    def __init__(self, ch: int, kernel: int):
        super().__init__()
        self.conv1 = nn.Module()
        self.conv1.conv = nn.Conv1d(ch, 2 * ch, kernel, padding=(kernel - 1) // 2)
        self.ch = ch

    def forward(self, x):
        y = self.conv1.conv(x)
        return x + y[:, : self.ch] * torch.sigmoid(y[:, self.ch:])


class _StyleAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.d_k = d_model // n_head
        self.temperature = math.sqrt(d_model)  # upstream scales by sqrt(d_model), not sqrt(d_k)
        self.w_qs = nn.Linear(d_model, d_model)
        self.w_ks = nn.Linear(d_model, d_model)
        self.w_vs = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, d_model)

    def forward(self, x):  # [B, T, C]
        b, t, c = x.shape
        q = self.w_qs(x).view(b, t, self.n_head, self.d_k).transpose(1, 2)
        k = self.w_ks(x).view(b, t, self.n_head, self.d_k).transpose(1, 2)
        v = self.w_vs(x).view(b, t, self.n_head, self.d_k).transpose(1, 2)
        p = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / self.temperature, dim=-1)
        out = torch.matmul(p, v).transpose(1, 2).reshape(b, t, c)
        return self.fc(out) + x


class MelStyleEncoder(nn.Module):
    def __init__(self, n_bins: int, gin: int, hidden: int = 128, kernel: int = 5, n_head: int = 2):
        super().__init__()
        self.spectral = nn.ModuleDict({"0": _Linear(n_bins, hidden), "3": _Linear(hidden, hidden)})
        self.temporal = nn.ModuleList([_Conv1dGLU(hidden, kernel), _Conv1dGLU(hidden, kernel)])
        self.slf_attn = _StyleAttention(hidden, n_head)
        self.fc = _Linear(hidden, gin)

    def forward(self, spec):  # [B, n_bins, F] (one reference per row, all frames valid)
        x = spec.transpose(1, 2)
        x = mish(self.spectral["3"](mish(self.spectral["0"](x))))
        x = x.transpose(1, 2)
        for layer in self.temporal:
            x = layer(x)
        x = self.slf_attn(x.transpose(1, 2))
        x = self.fc(x)
        return x.mean(dim=1).unsqueeze(-1)  # [B, gin, 1]


# --------------------------------------------------------------------------- whole model


class Quantizer(nn.Module):
    """Single-codebook residual VQ: decode = embedding lookup, encode = nearest code."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(codebook_size, dim))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, D, T]
        return F.embedding(codes, self.embed).transpose(1, 2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [B, D, T] -> [B, T]
        x = x.transpose(1, 2)
        e = self.embed
        dist = x.pow(2).sum(-1, keepdim=True) - 2 * torch.matmul(x, e.t()) + e.pow(2).sum(-1).unsqueeze(0).unsqueeze(0)
        return torch.argmin(dist, dim=-1)


class SynthesizerTrn(nn.Module):
    """The inference half of GPT-SoVITS ``SynthesizerTrn`` (v2 / v2Pro / v2ProPlus)."""

    def __init__(self, cfg: SovitsConfig):
        super().__init__()
        self.cfg = cfg
        self.enc_p = TextEncoder(cfg)
        self.flow = Flow(cfg)
        self.dec = Generator(cfg)
        self.ref_enc = MelStyleEncoder(REF_ENC_BINS, cfg.gin_channels)
        self.ssl_proj = nn.Conv1d(SSL_DIM, SSL_DIM, 2, stride=2)
        self.quantizer = Quantizer(cfg.codebook_size, SSL_DIM)
        if cfg.is_pro:
            self.sv_emb = nn.Linear(SV_EMB_DIM, cfg.gin_channels)
            self.prelu = nn.Module()
            self.prelu.weight = nn.Parameter(torch.zeros(cfg.gin_channels))
            self.ge_to512 = nn.Linear(cfg.gin_channels, cfg.mrte_hidden)

    # -- stages

    def get_ge(self, refer_spec: torch.Tensor, sv_emb: torch.Tensor | None = None) -> torch.Tensor:
        ge = self.ref_enc(refer_spec[:, :REF_ENC_BINS])
        if self.cfg.is_pro:
            if sv_emb is None:
                raise ValueError(f"{self.cfg.version} needs sv_emb")
            ge = ge + self.sv_emb(sv_emb).unsqueeze(-1)
            w = self.prelu.weight.view(1, -1, 1)
            ge = torch.where(ge >= 0, ge, w * ge)
        return ge

    def mrte_ge(self, ge: torch.Tensor) -> torch.Tensor:
        if self.cfg.is_pro:
            return self.ge_to512(ge.transpose(1, 2)).transpose(1, 2)
        return ge

    def latent(self, codes, code_lengths, phones, phone_lengths, ge, noise=None, speed=None):
        """codes [B, T] (25 Hz) -> z [B, inter, T'] after the reverse flow (masked), lengths [B]."""
        q = self.quantizer.decode(codes)  # [B, D, T]
        b, d, t = q.shape
        q = q.unsqueeze(-1).expand(b, d, t, 2).reshape(b, d, 2 * t)  # nearest x2 (25 -> 50 Hz)
        m, logs, mask, lengths = self.enc_p(q, code_lengths * 2, phones, phone_lengths, self.mrte_ge(ge), speed)
        z_p = m
        if noise is not None:
            n = torch.cat([noise, torch.zeros_like(m)], dim=2)[:, :, : m.shape[2]]
            z_p = m + n * torch.exp(logs)
        z = self.flow.reverse(z_p, mask, ge)
        return z * mask, lengths

    def vocode(self, z: torch.Tensor, ge: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, inter, T] -> wav [B, 1, T * hop]; ``lengths`` [B] latent frames (see ``Generator``)."""
        return self.dec(z, ge, lengths)

    def decode(self, codes, phones, refer_spec, sv_emb=None, noise_scale: float = 0.0, speed: float = 1.0, generator=None):
        """Upstream ``decode`` for one request: codes [1, 1, T] or [1, T] -> wav [1, 1, T*2*hop]."""
        codes = codes.reshape(codes.shape[0], -1) if codes.dim() == 3 else codes
        ge = self.get_ge(refer_spec, sv_emb)
        code_lengths = torch.full((codes.shape[0],), codes.shape[1], dtype=torch.int64)
        phone_lengths = torch.full((phones.shape[0],), phones.shape[1], dtype=torch.int64)
        noise = None
        if noise_scale:
            t_out = 2 * codes.shape[1] if speed == 1 else int(2 * codes.shape[1] / speed) + 1
            noise = torch.randn(codes.shape[0], self.cfg.inter_channels, t_out, generator=generator) * noise_scale
        z, _ = self.latent(codes, code_lengths, phones, phone_lengths, ge, noise, torch.tensor([float(speed)]))
        return self.vocode(z, ge)

    def extract_codes(self, ssl: torch.Tensor) -> torch.Tensor:
        """SSL features [B, 768, T50] -> prompt codes [B, T50 // 2]."""
        return self.quantizer.encode(self.ssl_proj(ssl))


# --------------------------------------------------------------------------- loading


def _fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            base = key[: -len(".weight_v")]
            g = state.get(base + ".weight_g")
            if g is None:
                raise CheckpointError(f"weight norm of {base}: weight_v without weight_g")
            v = value.float()
            dims = tuple(range(1, v.dim()))
            out[base + ".weight"] = g.float() * v / v.norm(dim=dims, keepdim=True)
            continue
        out[key] = value
    orphans = [k for k in state if k.endswith(".weight_g") and k[:-1] + "v" not in state]
    if orphans:
        raise CheckpointError(f"weight norm: weight_g without weight_v: {orphans[:4]}")
    return out


def _rename(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    out, ignored = {}, []
    for key, value in state.items():
        if key.startswith("quantizer.vq.layers."):
            if key.endswith(IGNORED_SUFFIXES):
                ignored.append(key)
                continue
            if key == "quantizer.vq.layers.0._codebook.embed":
                out["quantizer.embed"] = value
                continue
            raise CheckpointError(f"unexpected quantizer key {key} (only one codebook layer is supported)")
        out[key] = value
    return out, ignored


def build_sovits(ckpt: Checkpoint) -> SynthesizerTrn:
    """Build the inference model from a checkpoint, accounting for every key."""
    cfg = SovitsConfig.from_checkpoint(ckpt)
    model = SynthesizerTrn(cfg)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt.state_dict.items()}
    state, _ignored = _rename(_fold_weight_norm(state))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt.path}: SoVITS {ckpt.version} weights do not fit the model: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})"
        )
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{ckpt.path}: shape mismatch (key, file, model): {bad[:6]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_sovits(path: str | Path) -> tuple[Checkpoint, SynthesizerTrn]:
    ckpt = read_sovits(path)
    return ckpt, build_sovits(ckpt)
