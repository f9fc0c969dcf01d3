"""v4 SoVITS stage graphs: one ONNX graph per serving stage, batch and lengths dynamic. Inputs and
outputs bind by name; every graph carries the same metadata (``v4_metadata``), the contract the
serving engine reads. The engine runs upstream's loop (``export.v4_pipeline``) over them:

``speaker``       refer_spec [B, 1025, F] f32 (the v2 linear spectrogram of the 32 kHz reference,
                  ``python_backend.spectrogram.reference_spectrogram``; all F frames valid per row)
                  -> ge [B, gin, 1]. Once per reference.
``prompt_codes``  ssl [B, 768, T50] f32 (HuBERT, 50 Hz) -> codes [B, T50 // 2] i64 (25 Hz).
``encoder``       ``decode_encp``: codes [B, T] i64 (25 Hz), code_lengths [B] i64, phones [B, P] i64,
                  phone_lengths [B] i64, ge [B, gin, 1] f32, speed [1] f32
                  -> fea [B, C2, F] f32 (100 frames/s, zero past each row's length),
                  fea_lengths [B] i64 (= 4 * code_lengths at speed 1; otherwise
                  2 * (int(2T / speed) + 1), upstream's count, the last frame or two zero).
                  Run it twice per request, as upstream does: on the prompt (prompt codes and
                  prompt phones) for ``fea_ref`` (cacheable per reference + prompt text) and on
                  the target for ``fea_todo``; the same ge both times. One speed per batch.
``cfm_step``      one Euler step of the CFM for a padded batch. Inputs:
                  x [B, 100, T] f32 (the current state; for step 0 the initial noise
                  N(0, 1) [B, 100, T] with frames < prompt_lengths set to 0),
                  prompt_x [B, 100, T] f32 (the row's normalized prompt mel in frames
                  < prompt_lengths, 0 elsewhere), lengths [B] i64 (T_row = T_min + chunk frames),
                  prompt_lengths [B] i64 (T_min of the row), t [B] f32, d [B] f32,
                  mu [B, T, C2] f32 (``cat(fea_ref, fea_chunk)`` along time, transposed).
                  Outputs: x_next [B, 100, T] (x + d * v, with frames < prompt_lengths and
                  >= lengths set to 0) and v [B, T, 100] (the DiT velocity, upstream's raw output).
                  For n steps: d = 1 / n for every step and t_j = j * d (upstream adds d to a Python
                  float, t += d, starting at 0). Rows may be at different steps, step counts and
                  lengths in one batch: t, d are per row, and a padded row's valid frames equal its
                  solo run (keys and every convolution masked).
                  After the last step, a chunk's output is x[:, :, T_min:T_row].
``vocoder``       mel_norm [B, 100, T] f32 (the concatenated CFM outputs, normalized as the CFM
                  makes them; the graph applies denorm_spec), mel_lengths [B] i64
                  -> wav [B, T * 480] f32 at 48 kHz in [-1, 1], zero past mel_lengths * 480
                  (row b keeps wav[b, :mel_lengths[b] * 480]; padded rows equal their solo run).

The per-request loop (see ``export.v4_pipeline``): reference mel prompt ``mel2`` =
``python_backend.mel_v4.reference_mel(ref_32k)`` [100, F]; T_min = min(F, fea_ref frames), both
cut to T_min and, if T_min > t_ref (500), to their last 500 frames; chunk_len = t_chunk (1000) -
T_min; per chunk: run cfm_step n times, keep x[:, :, T_min:], the next chunk's prompt mel is that
output's last T_min frames and its fea_ref the chunk's last T_min fea frames; concatenate the chunks
and vocode (per chunk, for streaming: the vocoder has no state, a chunk's mel vocodes alone; the
whole-request wav of upstream vocodes the concatenation in one call, which differs only by the
vocoder's receptive field at chunk joins).
"""
from __future__ import annotations

import json

import torch
from torch import nn

from export.onnx_io import GraphSpec
from export.sovits_model import SPEC_BINS, SSL_DIM
from export.sovits_stages import PromptCodesStage, SpeakerStage
from export.v4_model import FRAMES_PER_CODE, SynthesizerV4
from export.v4_pipeline import T_CHUNK, T_REF
from export.v4_vocoder import HOP, SAMPLE_RATE, UPSAMPLE_RATES, Vocoder
from python_backend import mel_v4

MODEL_TYPE = "gpt-sovits-s2"
STAGES = ("speaker", "prompt_codes", "encoder", "cfm_step", "vocoder")
DEFAULT_STEPS = 32  # upstream api_v2's default sample_steps (its web UI uses 8 for v4)
MAX_STEPS = 64


class EncoderStage(nn.Module):
    def __init__(self, model: SynthesizerV4):
        super().__init__()
        self.model = model

    def forward(self, codes, code_lengths, phones, phone_lengths, ge, speed):
        return self.model.encode(codes, code_lengths, phones, phone_lengths, ge, speed)


class CfmStepStage(nn.Module):
    def __init__(self, model: SynthesizerV4):
        super().__init__()
        self.cfm = model.cfm

    def forward(self, x, prompt_x, lengths, prompt_lengths, t, d, mu):
        return self.cfm.step(x, prompt_x, lengths, prompt_lengths, t, d, mu)


class VocoderStage(nn.Module):
    def __init__(self, vocoder: Vocoder):
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel_norm, mel_lengths):
        mel = (mel_norm + 1) / 2 * (mel_v4.SPEC_MAX - mel_v4.SPEC_MIN) + mel_v4.SPEC_MIN
        return self.vocoder(mel, mel_lengths).squeeze(1)


def v4_metadata(model: SynthesizerV4, vocoder: Vocoder) -> dict[str, object]:
    cfg, dit = model.cfg, model.cfg.dit
    return {
        "model_type": MODEL_TYPE,
        "sovits_version": "v4",
        "sample_rate": str(SAMPLE_RATE),
        "reference_sample_rate": str(mel_v4.SAMPLE_RATE),
        "hop": str(HOP),
        "samples_per_mel_frame": str(HOP),
        "upsample_rates": json.dumps(list(UPSAMPLE_RATES)),
        "code_rate_hz": "25",
        "mel_rate_hz": "100",
        "mel_frames_per_code": str(FRAMES_PER_CODE),
        "mel_dim": str(dit.mel_dim),
        "fea_channels": str(cfg.fea_channels),
        "gin_channels": str(cfg.gin_channels),
        "needs_sv_emb": "0",
        "sv_emb_dim": "0",
        "ssl_dim": str(SSL_DIM),
        "spec_bins": str(SPEC_BINS),
        "n_phones": str(cfg.text.n_phones),
        "codebook_size": str(cfg.codebook_size),
        "t_ref": str(T_REF),
        "t_chunk": str(T_CHUNK),
        "spec_min": str(mel_v4.SPEC_MIN),
        "spec_max": str(mel_v4.SPEC_MAX),
        "sample_steps_default": str(DEFAULT_STEPS),
        "sample_steps_range": json.dumps([1, MAX_STEPS]),
        "euler": "d = 1/n; t_j = j*d; x_next = x + d*v; prompt frames held at 0",
        "dit": json.dumps({"dim": dit.dim, "depth": dit.depth, "heads": dit.heads, "ff_inner": dit.ff_inner,
                           "text_dim": dit.text_dim, "text_layers": dit.text_layers}),
        "vocoder_channels": str(vocoder.cfg.channels),
        "mel": json.dumps({"n_fft": mel_v4.N_FFT, "hop": mel_v4.HOP, "win": mel_v4.WIN, "n_mels": mel_v4.N_MELS,
                           "fmin": 0, "fmax": None, "filterbank": "slaney", "window": "hann_periodic",
                           "pad": "reflect (n_fft-hop)/2", "center": False, "log_clamp": mel_v4.CLAMP,
                           "norm": "(x - spec_min) / (spec_max - spec_min) * 2 - 1"}),
        "spectrogram": json.dumps({"n_fft": 2048, "hop": 640, "win": 2048, "window": "hann_periodic",
                                   "pad": "reflect (n_fft-hop)/2", "center": False, "eps": 1e-8}),
    }


def _examples(model: SynthesizerV4, batch: int = 2) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    codes, phones, t = 12, 7, 40
    return {
        "refer_spec": torch.rand(batch, SPEC_BINS, 20, generator=g),
        "ssl": torch.randn(batch, SSL_DIM, 24, generator=g),
        "codes": torch.randint(0, cfg.codebook_size, (batch, codes), generator=g),
        "code_lengths": torch.tensor([codes] + [codes - 3] * (batch - 1)),
        "phones": torch.randint(0, cfg.text.n_phones, (batch, phones), generator=g),
        "phone_lengths": torch.tensor([phones] + [phones - 2] * (batch - 1)),
        "ge": torch.randn(batch, cfg.gin_channels, 1, generator=g) * 0.1,
        "speed": torch.ones(1),
        "x": torch.randn(batch, cfg.dit.mel_dim, t, generator=g),
        "prompt_x": torch.randn(batch, cfg.dit.mel_dim, t, generator=g) * 0.3,
        "lengths": torch.tensor([t] + [t - 9] * (batch - 1)),
        "prompt_lengths": torch.tensor([10] + [7] * (batch - 1)),
        "t": torch.tensor([0.0] + [0.5] * (batch - 1)),
        "d": torch.tensor([0.25] + [0.125] * (batch - 1)),
        "mu": torch.randn(batch, t, cfg.fea_channels, generator=g),
        "mel_norm": torch.rand(batch, cfg.dit.mel_dim, 16, generator=g) * 2 - 1,
        "mel_lengths": torch.tensor([16] + [11] * (batch - 1)),
    }


def v4_graph_specs(model: SynthesizerV4, vocoder: Vocoder, stages: tuple[str, ...] = STAGES) -> list[GraphSpec]:
    """GraphSpecs for :func:`export.onnx_io.export_graph`, one per requested stage."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown v4 stages {sorted(unknown)}; known: {STAGES}")
    model, vocoder = model.eval(), vocoder.eval()
    meta = v4_metadata(model, vocoder)
    ex = _examples(model)
    b = {0: "batch"}
    table = {
        "speaker": (SpeakerStage(model), ["refer_spec"], ["ge"],
                    {"refer_spec": {0: "batch", 2: "spec_frames"}, "ge": b}),
        "prompt_codes": (PromptCodesStage(model), ["ssl"], ["codes"],
                         {"ssl": {0: "batch", 2: "ssl_frames"}, "codes": {0: "batch", 1: "prompt_frames"}}),
        "encoder": (EncoderStage(model), ["codes", "code_lengths", "phones", "phone_lengths", "ge", "speed"],
                    ["fea", "fea_lengths"],
                    {"codes": {0: "batch", 1: "code_frames"}, "code_lengths": b,
                     "phones": {0: "batch", 1: "phone_frames"}, "phone_lengths": b, "ge": b,
                     "fea": {0: "batch", 2: "fea_frames"}, "fea_lengths": b}),
        "cfm_step": (CfmStepStage(model), ["x", "prompt_x", "lengths", "prompt_lengths", "t", "d", "mu"],
                     ["x_next", "v"],
                     {"x": {0: "batch", 2: "frames"}, "prompt_x": {0: "batch", 2: "frames"}, "lengths": b,
                      "prompt_lengths": b, "t": b, "d": b, "mu": {0: "batch", 1: "frames"},
                      "x_next": {0: "batch", 2: "frames"}, "v": {0: "batch", 1: "frames"}}),
        "vocoder": (VocoderStage(vocoder), ["mel_norm", "mel_lengths"], ["wav"],
                    {"mel_norm": {0: "batch", 2: "mel_frames"}, "mel_lengths": b, "wav": {0: "batch", 1: "samples"}}),
    }
    specs = []
    for name in stages:
        module, ins, outs, axes = table[name]
        specs.append(GraphSpec(name=name, module=module, args=tuple(ex[n] for n in ins), input_names=ins,
                               output_names=outs, dynamic_axes=axes,
                               metadata={**meta, "inputs": json.dumps(ins), "outputs": json.dumps(outs)}))
    return specs
