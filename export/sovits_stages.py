"""SoVITS stage graphs: one ONNX graph per serving stage, batch and every length dynamic.

Stages (inputs -> outputs, names bind by name at run time):

``speaker``       refer_spec [B, 1025, F] f32 (+ sv_emb [B, 20480] f32 for v2Pro/v2ProPlus)
                  -> ge [B, gin, 1]. Every row of a batch must use all F frames (references of
                  one batch have equal length: compute ge once per voice, or one per call).
``sovits``        codes [B, T] i64 (25 Hz), code_lengths [B] i64, phones [B, P] i64,
                  phone_lengths [B] i64, ge [B, gin, 1], noise [B, 192, N] f32, speed [1] f32
                  -> latent [B, 192, T'] (z after the reverse flow, zero beyond each row's
                  length), latent_lengths [B] i64.
                  ``noise`` is standard normal noise already multiplied by noise_scale; the
                  graph uses its first T' frames and treats missing frames as 0, so zeros of
                  any length (even N = 1) mean noise_scale 0. T' = 2T at speed 1, otherwise
                  int(2*L/speed) + 1 per row (upstream's resampling, done per row, see
                  :func:`export.sovits_model.interpolate_rows`); one speed per batch.
                  Padded rows/frames never change another row's valid part (masks throughout).
``vocoder``       latent [B, 192, T'] f32, ge [B, gin, 1] -> wav [B, T' * hop] f32 in [-1, 1].
                  The caller trims row b to latent_lengths[b] * hop samples. Batching is exact:
                  the graph takes each row's length from its latent (the ``sovits`` graph zeroes
                  every frame past a row's length, so a row's length is one past its last
                  non-zero frame; an all-zero row counts as full length) and the generator
                  zeroes every convolution input past it at each stage's rate (see
                  :class:`export.sovits_model.Generator`), so a padded row equals its solo run
                  to float rounding, tail included. A latent with no zero tail (any solo
                  call) is its full length, the unmasked generator. Callers keep the contract:
                  frames past a row's length must be exactly zero.
``prompt_codes``  ssl [B, 768, T50] f32 (HuBERT, 50 Hz) -> codes [B, T50 // 2] i64 (25 Hz).
"""
from __future__ import annotations

import json

import torch
from torch import nn

from export.onnx_io import GraphSpec
from export.sovits_model import SPEC_BINS, SSL_DIM, SV_EMB_DIM, SynthesizerTrn

MODEL_TYPE = "gpt-sovits-s2"
STAGES = ("speaker", "sovits", "vocoder", "prompt_codes")


class SpeakerStage(nn.Module):
    def __init__(self, model: SynthesizerTrn):
        super().__init__()
        self.model = model

    def forward(self, refer_spec: torch.Tensor, sv_emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.get_ge(refer_spec, sv_emb)


class SovitsStage(nn.Module):
    def __init__(self, model: SynthesizerTrn):
        super().__init__()
        self.model = model

    def forward(self, codes, code_lengths, phones, phone_lengths, ge, noise, speed):
        return self.model.latent(codes, code_lengths, phones, phone_lengths, ge, noise, speed)


class VocoderStage(nn.Module):
    def __init__(self, model: SynthesizerTrn):
        super().__init__()
        self.model = model

    def forward(self, latent: torch.Tensor, ge: torch.Tensor) -> torch.Tensor:
        return self.model.vocode(latent, ge, latent_lengths_from_zeros(latent)).squeeze(1)


def latent_lengths_from_zeros(latent: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B] int64: one past each row's last frame with a non-zero value (T for a
    row that is all zero, so a zero latent keeps its solo meaning)."""
    t = latent.shape[2]
    nonzero = (latent.abs().amax(dim=1) > 0).to(torch.int64)  # [B, T]
    index = torch.arange(1, t + 1, dtype=torch.int64, device=latent.device).unsqueeze(0)
    last = (nonzero * index).amax(dim=1)
    return torch.where(last > 0, last, torch.full_like(last, t))


class PromptCodesStage(nn.Module):
    def __init__(self, model: SynthesizerTrn):
        super().__init__()
        self.model = model

    def forward(self, ssl: torch.Tensor) -> torch.Tensor:
        return self.model.extract_codes(ssl)


def vocoder_tail_samples(cfg) -> int:
    """Upper bound on how many samples at the end of a row's valid wav can change when the
    row is vocoded in a batch padded past its length (the generator's leftward reach from
    the first padded latent frame: conv_pre, each transposed conv's padding, each stage's
    widest resblock, conv_post). Outside this tail a batched row equals its solo run.
    Kept for an unmasked generator (graphs exported before ``vocoder_batch_exact``); the
    masked vocoder graph has no tail.
    """
    reach = 3 * cfg.hop  # conv_pre, kernel 7
    rate = 1
    for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
        rate *= u
        per_sample = cfg.hop // rate
        reach += ((k - u) // 2) * per_sample
        res = max(sum(d * (rk - 1) // 2 + (rk - 1) // 2 for d in ds)
                  for rk, ds in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        reach += res * per_sample
    return reach + 3  # conv_post, kernel 7


def stage_metadata(model: SynthesizerTrn) -> dict[str, object]:
    """Metadata shared by all SoVITS graphs (the serving side reads it as the contract)."""
    cfg = model.cfg
    return {
        "model_type": MODEL_TYPE,
        "sovits_version": cfg.version,
        "sample_rate": str(cfg.sample_rate),
        "hop": str(cfg.hop),
        "samples_per_latent_frame": str(cfg.hop),
        "code_rate_hz": "25",
        "latent_rate_hz": str(cfg.sample_rate // cfg.hop),
        "latent_frames_per_code": "2",
        "gin_channels": str(cfg.gin_channels),
        "latent_channels": str(cfg.inter_channels),
        "ssl_dim": str(SSL_DIM),
        "spec_bins": str(SPEC_BINS),
        "needs_sv_emb": "1" if cfg.is_pro else "0",
        "sv_emb_dim": str(SV_EMB_DIM if cfg.is_pro else 0),
        "n_phones": str(cfg.n_phones),
        "codebook_size": str(cfg.codebook_size),
        "vocoder_batch_tail_samples": str(vocoder_tail_samples(cfg)),
        "vocoder_batch_exact": "1",
        "spectrogram": json.dumps({"n_fft": 2048, "hop": 640, "win": 2048, "window": "hann_periodic",
                                   "pad": "reflect (n_fft-hop)/2", "center": False, "eps": 1e-8}),
    }


def _examples(model: SynthesizerTrn, batch: int = 2, code_frames: int = 12, phone_frames: int = 7,
              spec_frames: int = 20, ssl_frames: int = 24) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([code_frames] + [max(1, code_frames - 3)] * (batch - 1), dtype=torch.int64)
    plens = torch.tensor([phone_frames] + [max(1, phone_frames - 2)] * (batch - 1), dtype=torch.int64)
    t_lat = 2 * code_frames
    return {
        "refer_spec": torch.rand(batch, SPEC_BINS, spec_frames, generator=g),
        "sv_emb": torch.randn(batch, SV_EMB_DIM, generator=g),
        "codes": torch.randint(0, cfg.codebook_size, (batch, code_frames), generator=g),
        "code_lengths": lengths,
        "phones": torch.randint(0, cfg.n_phones, (batch, phone_frames), generator=g),
        "phone_lengths": plens,
        "ge": torch.randn(batch, cfg.gin_channels, 1, generator=g) * 0.1,
        "noise": torch.zeros(batch, cfg.inter_channels, t_lat),
        "speed": torch.ones(1),
        "latent": torch.randn(batch, cfg.inter_channels, t_lat, generator=g) * 0.1,
        "ssl": torch.randn(batch, SSL_DIM, ssl_frames, generator=g),
    }


def sovits_graph_specs(model: SynthesizerTrn, stages: tuple[str, ...] = STAGES) -> list[GraphSpec]:
    """GraphSpecs for :func:`export.onnx_io.export_graph`, one per requested stage."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown SoVITS stages {sorted(unknown)}; known: {STAGES}")
    model = model.eval()
    meta = stage_metadata(model)
    ex = _examples(model)
    specs: list[GraphSpec] = []
    batch = {0: "batch"}
    if "speaker" in stages:
        if model.cfg.is_pro:
            args, names = (ex["refer_spec"], ex["sv_emb"]), ["refer_spec", "sv_emb"]
        else:
            args, names = (ex["refer_spec"],), ["refer_spec"]
        specs.append(GraphSpec(
            name="speaker", module=SpeakerStage(model), args=args, input_names=names, output_names=["ge"],
            dynamic_axes={"refer_spec": {0: "batch", 2: "spec_frames"}, "sv_emb": batch, "ge": batch}
            if model.cfg.is_pro else {"refer_spec": {0: "batch", 2: "spec_frames"}, "ge": batch},
            metadata={**meta, "inputs": json.dumps(names), "outputs": json.dumps(["ge"])},
        ))
    if "sovits" in stages:
        names = ["codes", "code_lengths", "phones", "phone_lengths", "ge", "noise", "speed"]
        specs.append(GraphSpec(
            name="sovits", module=SovitsStage(model), args=tuple(ex[n] for n in names), input_names=names,
            output_names=["latent", "latent_lengths"],
            dynamic_axes={
                "codes": {0: "batch", 1: "code_frames"}, "code_lengths": batch,
                "phones": {0: "batch", 1: "phone_frames"}, "phone_lengths": batch,
                "ge": batch, "noise": {0: "batch", 2: "noise_frames"},
                "latent": {0: "batch", 2: "latent_frames"}, "latent_lengths": batch,
            },
            metadata={**meta, "inputs": json.dumps(names), "outputs": json.dumps(["latent", "latent_lengths"]),
                      "noise": "standard normal * noise_scale, [B, latent_channels, >=T'] (missing frames = 0)",
                      "speed": "one value per batch; 1.0 keeps T' = 2 * code_frames"},
        ))
    if "vocoder" in stages:
        specs.append(GraphSpec(
            name="vocoder", module=VocoderStage(model), args=(ex["latent"], ex["ge"]), input_names=["latent", "ge"],
            output_names=["wav"],
            dynamic_axes={"latent": {0: "batch", 2: "latent_frames"}, "ge": batch, "wav": {0: "batch", 1: "samples"}},
            metadata={**meta, "inputs": json.dumps(["latent", "ge"]), "outputs": json.dumps(["wav"]),
                      "trim": "row b keeps wav[b, :latent_lengths[b] * hop]",
                      "row_lengths": "from the latent: frames past a row's length must be exactly 0"},
        ))
    if "prompt_codes" in stages:
        specs.append(GraphSpec(
            name="prompt_codes", module=PromptCodesStage(model), args=(ex["ssl"],), input_names=["ssl"],
            output_names=["codes"],
            dynamic_axes={"ssl": {0: "batch", 2: "ssl_frames"}, "codes": {0: "batch", 1: "prompt_frames"}},
            metadata={**meta, "inputs": json.dumps(["ssl"]), "outputs": json.dumps(["codes"])},
        ))
    return specs
