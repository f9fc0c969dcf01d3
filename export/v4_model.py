"""Torch modules of the GPT-SoVITS v4 SoVITS path: ``decode_encp`` (codes + phones + ge -> CFM
features at 100 frames/s), the speaker embedding ``ge``, prompt-code extraction, the reference
mel, and the CFM (``export.v4_cfm``), loaded from a v4 state dict with every key accounted for.

The v2 building blocks are reused as they are (TextEncoder with MRTE, MelStyleEncoder, WN,
Quantizer); v4 adds ``bridge`` (1x1 conv + LeakyReLU), a nearest x2 upsampling (50 -> 100 Hz,
so 4 frames per 25 Hz code) and ``wns1`` (a WN encoder conditioned on ge). Every size comes from
the weights (the conformance kit shrinks sizes upstream hardcodes). Keys the inference path never
reaches (``enc_p.proj``: the v2 prior's stats; ``linear_mel``: a training head) are listed in
``IGNORED_KEYS`` and dropped; any other missing or unexpected key is a CheckpointError.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.checkpoints import V4Sovits
from export.errors import CheckpointError
from export.sovits_model import (IGNORED_SUFFIXES, REF_ENC_BINS, SSL_DIM, WN, EncoderConfig, MelStyleEncoder,
                                 Quantizer, SovitsConfig, TextEncoder, _count, _fold_weight_norm, _rename,
                                 interpolate_rows, sequence_mask)
from export.v4_cfm import CFM, DiTConfig
from python_backend import mel_v4

FRAMES_PER_CODE = 4  # 25 Hz codes -> 100 Hz CFM frames
IGNORED_KEYS = ("enc_p.proj.weight", "enc_p.proj.bias", "linear_mel.weight", "linear_mel.bias")


def _encoder_config(sd: dict, name: str, hidden: int, label: str) -> EncoderConfig:
    p = f"enc_p.{name}."
    n = _count(sd, re.escape(p) + r"attn_layers\.(\d+)\.")
    if n == 0:
        raise CheckpointError(f"{label}: encoder {name} has no layers")
    rel = sd[p + "attn_layers.0.emb_rel_k"]
    conv = sd[p + "ffn_layers.0.conv_1.weight"]
    return EncoderConfig(n_layers=n, hidden=hidden, filter_channels=conv.shape[0], n_heads=hidden // rel.shape[-1],
                         kernel_size=conv.shape[2], window_size=(rel.shape[1] - 1) // 2)


@dataclass(frozen=True)
class V4Config:
    text: SovitsConfig  # what the reused v2 TextEncoder needs (flow/decoder fields unused)
    gin_channels: int
    fea_channels: int  # inter_channels2: bridge out, wns1 width, DiT text_dim
    wns1_layers: int
    wns1_kernel: int
    codebook_size: int
    dit: DiTConfig

    @classmethod
    def from_state(cls, sd: dict, label: str) -> "V4Config":
        try:
            hidden = sd["enc_p.ssl_proj.weight"].shape[0]
            text = SovitsConfig(
                version="v4", hidden_channels=hidden, inter_channels=sd["enc_p.proj.weight"].shape[0] // 2,
                gin_channels=sd["ref_enc.fc.fc.weight"].shape[0], is_pro=False,
                encoder_ssl=_encoder_config(sd, "encoder_ssl", hidden, label),
                encoder_text=_encoder_config(sd, "encoder_text", hidden, label),
                encoder2=_encoder_config(sd, "encoder2", hidden, label),
                mrte_hidden=sd["enc_p.mrte.c_pre.weight"].shape[0], n_phones=sd["enc_p.text_embedding.weight"].shape[0],
                codebook_size=sd["quantizer.vq.layers.0._codebook.embed"].shape[0], flow_layers=(), wn_layers=0,
                wn_kernel=0, upsample_rates=(), upsample_kernel_sizes=(), upsample_initial_channel=0,
                resblock_kernel_sizes=(), resblock_dilation_sizes=())
            cfg = cls(
                text=text, gin_channels=text.gin_channels, fea_channels=sd["bridge.0.weight"].shape[0],
                wns1_layers=_count(sd, r"wns1\.enc\.in_layers\.(\d+)\."),
                wns1_kernel=sd["wns1.enc.in_layers.0.weight_v"].shape[2], codebook_size=text.codebook_size,
                dit=DiTConfig.from_state(sd, label))
        except KeyError as exc:
            raise CheckpointError(f"{label}: v4 SoVITS weights incomplete (missing {exc})") from None
        if cfg.dit.text_dim != cfg.fea_channels:
            raise CheckpointError(f"{label}: DiT text_dim {cfg.dit.text_dim} != bridge width {cfg.fea_channels}")
        if text.mrte_hidden != text.gin_channels:
            raise CheckpointError(f"{label}: MRTE width {text.mrte_hidden} != gin_channels {text.gin_channels}")
        return cfg


class WNEncoder(nn.Module):
    """Upstream ``Encoder`` (pre 1x1 -> WN conditioned on ge -> proj 1x1), as ``wns1``."""

    def __init__(self, channels: int, kernel: int, layers: int, gin: int):
        super().__init__()
        self.pre = nn.Conv1d(channels, channels, 1)
        self.enc = WN(channels, kernel, layers, gin)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x, mask, g):
        x = self.pre(x) * mask
        return self.proj(self.enc(x, mask, g)) * mask


def fea_frames(code_lengths: torch.Tensor, speed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (frames upstream masks in wns1, frames upstream synthesizes). At speed 1 both are
    4 * codes; otherwise wns1 keeps int(4T / speed) + 1 and the CFM still gets 2 * (int(2T / speed) + 1)."""
    speed = speed.reshape(-1)[:1].to(torch.float64)
    lf = code_lengths.to(torch.float64)
    masked = torch.where(speed == 1.0, 4 * code_lengths, torch.floor(4 * lf / speed + 1e-4).to(torch.int64) + 1)
    enc = torch.where(speed == 1.0, 2 * code_lengths, torch.floor(2 * lf / speed + 1e-4).to(torch.int64) + 1)
    return masked, 2 * enc


class SynthesizerV4(nn.Module):
    """The inference half of upstream ``SynthesizerTrnV3`` (version v4)."""

    def __init__(self, cfg: V4Config):
        super().__init__()
        self.cfg = cfg
        self.enc_p = TextEncoder(cfg.text)
        del self.enc_p.proj  # v4 takes the encoder's hidden state, not the v2 prior's stats
        self.ref_enc = MelStyleEncoder(REF_ENC_BINS, cfg.gin_channels)
        self.ssl_proj = nn.Conv1d(SSL_DIM, SSL_DIM, 2, stride=2)
        self.quantizer = Quantizer(cfg.codebook_size, SSL_DIM)
        self.bridge = nn.Sequential(nn.Conv1d(cfg.text.inter_channels, cfg.fea_channels, 1), nn.LeakyReLU())
        self.wns1 = WNEncoder(cfg.fea_channels, cfg.wns1_kernel, cfg.wns1_layers, cfg.gin_channels)
        self.cfm = CFM(cfg.dit)

    def get_ge(self, refer_spec: torch.Tensor, sv_emb: torch.Tensor | None = None) -> torch.Tensor:
        """refer_spec [B, 1025, F] (all frames valid) -> ge [B, gin, 1]."""
        return self.ref_enc(refer_spec[:, :REF_ENC_BINS])

    def _text_hidden(self, q, q_lengths, phones, phone_lengths, ge):
        enc = self.enc_p
        y_mask = sequence_mask(q_lengths, q.shape[2])
        y = enc.ssl_proj(q * y_mask) * y_mask
        y = enc.encoder_ssl(y * y_mask, y_mask)
        text_mask = sequence_mask(phone_lengths, phones.shape[1])
        t = enc.text_embedding(phones).transpose(1, 2)
        t = enc.encoder_text(t * text_mask, text_mask)
        y = enc.mrte(y, y_mask, t, text_mask, ge)
        return enc.encoder2(y * y_mask, y_mask)

    def encode(self, codes, code_lengths, phones, phone_lengths, ge, speed):
        """Batched ``decode_encp``: codes [B, T] (25 Hz), code_lengths [B], phones [B, P],
        phone_lengths [B], ge [B, gin, 1], speed [1] -> fea [B, C2, F] (zero past each row's
        length), fea_lengths [B] (= 4 * code_lengths at speed 1)."""
        q = self.quantizer.decode(codes)
        b, d, t = q.shape
        q = q.unsqueeze(-1).expand(b, d, t, 2).reshape(b, d, 2 * t)  # nearest x2 (25 -> 50 Hz)
        x = self._text_hidden(q, 2 * code_lengths, phones, phone_lengths, ge)
        x, x_lengths = interpolate_rows(x, 2 * code_lengths, speed)
        fea = self.bridge(x) * sequence_mask(x_lengths, x.shape[2])
        b, c, t = fea.shape
        fea = fea.unsqueeze(-1).expand(b, c, t, 2).reshape(b, c, 2 * t)  # nearest x2 (50 -> 100 Hz)
        masked, _ = fea_frames(code_lengths, speed)
        mask = sequence_mask(torch.minimum(masked, 2 * x_lengths), fea.shape[2])
        return self.wns1(fea, mask, ge), 2 * x_lengths

    @torch.no_grad()
    def decode_encp(self, codes, phones, refer_spec, ge=None, speed: float = 1.0):
        """Upstream's one-row signature: codes [1, 1, T], phones [1, P] -> (fea [1, C2, F], ge)."""
        if ge is None:
            ge = self.get_ge(refer_spec)
        codes = codes.reshape(codes.shape[0], -1)
        cl = torch.full((codes.shape[0],), codes.shape[1], dtype=torch.int64)
        pl = torch.full((phones.shape[0],), phones.shape[1], dtype=torch.int64)
        fea, _ = self.encode(codes, cl, phones, pl, ge, torch.tensor([float(speed)]))
        return fea, ge

    def extract_codes(self, ssl: torch.Tensor) -> torch.Tensor:
        """SSL features [B, 768, T50] -> prompt codes [B, T50 // 2]."""
        return self.quantizer.encode(self.ssl_proj(ssl))


_FILTERBANK = torch.from_numpy(mel_v4.mel_filterbank())


def reference_mel(wav32k: torch.Tensor) -> torch.Tensor:
    """Upstream ``norm_spec(mel_fn_v4(wav))`` in torch: [B, N] 32 kHz -> [B, 100, N // 320]."""
    pad = (mel_v4.N_FFT - mel_v4.HOP) // 2
    y = F.pad(wav32k.float().unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(y, mel_v4.N_FFT, hop_length=mel_v4.HOP, win_length=mel_v4.WIN,
                      window=torch.hann_window(mel_v4.WIN), center=False, return_complex=True)
    mag = torch.sqrt(spec.real**2 + spec.imag**2 + mel_v4.EPS)
    mel = torch.log(torch.clamp(torch.matmul(_FILTERBANK, mag), min=mel_v4.CLAMP))
    return (mel - mel_v4.SPEC_MIN) / (mel_v4.SPEC_MAX - mel_v4.SPEC_MIN) * 2 - 1


def build_v4(ckpt: V4Sovits) -> SynthesizerV4:
    """Build the v4 inference model, accounting for every key."""
    label = str(ckpt.path)
    sd = ckpt.float_state()
    cfg = V4Config.from_state(sd, label)
    model = SynthesizerV4(cfg)
    state = {k: v for k, v in sd.items() if k not in IGNORED_KEYS}
    state, _ignored = _rename(_fold_weight_norm(state))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{label}: v4 SoVITS weights do not fit the model: missing {missing[:6]} ({len(missing)}), "
            f"unexpected {unexpected[:6]} ({len(unexpected)})")
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{label}: v4 shape mismatch (key, file, model): {bad[:4]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def ignored_suffixes() -> tuple[str, ...]:
    """Training-only quantizer buffers dropped with the keys in IGNORED_KEYS."""
    return IGNORED_SUFFIXES
