"""The v4 synthesis loop (upstream ``TTS.using_vocoder_synthesis``) over the torch modules: the
reference of truth for the serving engine, which runs the same loop over the exported graphs.

1. ``fea_ref, ge = decode_encp(prompt_codes, prompt_phones, refer_spec)``; ``mel2`` = the
   reference mel (normalized). Both cut to ``T_min = min(frames)``; if ``T_min > T_REF`` (500)
   the LAST 500 frames of both are kept.
2. ``fea_todo = decode_encp(codes, phones, refer_spec, ge)``; ``chunk_len = T_CHUNK - T_min``.
3. Per chunk k of ``fea_todo`` (``chunk_len`` frames, the last one shorter): ``mu = cat(fea_ref,
   chunk)`` (T = T_min + chunk frames), CFM Euler steps from noise [1, 100, T] with the prompt
   ``mel2`` in frames < T_min; keep ``out[:, :, T_min:]``; then ``mel2`` = its last T_min frames
   and ``fea_ref`` = the chunk's last T_min frames. (A chunk shorter than T_min still takes
   ``[-T_min:]``, i.e. the whole chunk: upstream's slicing, reproduced exactly.)
4. Concatenate the chunks, ``denorm_spec``, vocoder -> 48 kHz.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from export.v4_model import SynthesizerV4, reference_mel
from export.v4_vocoder import Vocoder
from python_backend import mel_v4

T_REF = 500
T_CHUNK = 1000


@dataclass
class V4Trace:
    """What one synthesis did, step by step (the conformance test compares it with the goldens)."""

    ge: torch.Tensor | None = None
    fea_ref: torch.Tensor | None = None
    fea_todo: torch.Tensor | None = None
    t_min: int = 0
    chunks: list[dict] = field(default_factory=list)
    mel_norm: torch.Tensor | None = None
    wav: torch.Tensor | None = None


def prompt_window(fea_ref: torch.Tensor, mel2: torch.Tensor, t_ref: int = T_REF):
    """Cut the prompt features and mel to a common length, at most ``t_ref`` (the last frames)."""
    t_min = min(mel2.shape[2], fea_ref.shape[2])
    fea_ref, mel2 = fea_ref[:, :, :t_min], mel2[:, :, :t_min]
    if t_min > t_ref:
        fea_ref, mel2, t_min = fea_ref[:, :, -t_ref:], mel2[:, :, -t_ref:], t_ref
    return fea_ref, mel2, t_min


@torch.no_grad()
def synthesize(model: SynthesizerV4, vocoder: Vocoder, codes, phones, prompt_codes, prompt_phones, refer_spec,
               ref_audio_32k, steps: int, noise: Callable[[int, int], torch.Tensor],
               speed: float = 1.0) -> V4Trace:
    """One request, upstream's way. ``noise(k, T)`` gives chunk k's initial x [1, 100, T]."""
    tr = V4Trace()
    fea_ref, ge = model.decode_encp(prompt_codes, prompt_phones, refer_spec)
    mel2 = reference_mel(ref_audio_32k.reshape(1, -1))
    fea_ref, mel2, t_min = prompt_window(fea_ref, mel2)
    fea_todo, _ = model.decode_encp(codes, phones, refer_spec, ge, speed)
    tr.ge, tr.fea_ref, tr.fea_todo, tr.t_min = ge, fea_ref, fea_todo, t_min
    chunk_len = T_CHUNK - t_min
    outs = []
    for k, start in enumerate(range(0, fea_todo.shape[2], chunk_len)):
        chunk = fea_todo[:, :, start:start + chunk_len]
        mu = torch.cat([fea_ref, chunk], 2).transpose(2, 1)
        x0 = noise(k, mu.shape[1])
        out = model.cfm.inference(mu, mel2, x0, steps)
        tr.chunks.append({"mu": mu, "prompt": mel2, "noise": x0, "out": out})
        out = out[:, :, mel2.shape[2]:]
        mel2, fea_ref = out[:, :, -t_min:], chunk[:, :, -t_min:]
        outs.append(out)
    tr.mel_norm = torch.cat(outs, 2)
    tr.wav = vocoder(torch.from_numpy(mel_v4.denorm_spec(tr.mel_norm.numpy())))[0, 0]
    return tr
