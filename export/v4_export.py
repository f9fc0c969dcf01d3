"""``gsv-triton export`` for v4 voices: GPT + v4 base (or base + LoRA) + vocoder + a reference
clip -> a 48 kHz voice version in the same repository layout as v2 voices.

Same order as the v2 export (``export.voice_export``): every cheap check before anything is
written, graphs staged, validated against torch, then renamed in. What differs: the SoVITS half
is ``encoder``/``cfm_step``/``vocoder`` (``export.v4_stages``), ``reference.npz`` also holds the
clip's normalized log-mel (the CFM prompt), the golden wav is the torch pipeline
(``export.v4_pipeline``) over the seeded chunk noise the server draws
(``python_backend.v4_synthesis.chunk_noise``) with ``GOLDEN_STEPS`` Euler steps, and the manifest
says ``sovits_version: v4``, 48000 Hz, hop 480. fp32 only for now.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export.checkpoints import Checkpoint, V4Sovits, V4Vocoder, read_gpt, read_sovits_v4, read_vocoder_v4
from export.errors import InputError
from export.gpt_model import GPT, gpt_graph_specs
from export.onnx_io import export_graph
from export.repository import StagedVersion
from export.v4_model import build_v4
from export.v4_pipeline import synthesize as torch_synthesize
from export.v4_stages import STAGES as V4_STAGES
from export.v4_stages import v4_graph_specs
from export.v4_vocoder import SAMPLE_RATE, build_vocoder
from export.voice_export import (VOICE_MODEL_PY, ExportOptions, _graph_entries_for, _provider_plan, _torch_golden,
                                 check_pair, check_reference_inputs, check_target, manifest_common,
                                 publish_version, reference_data, shared_setup)
from python_backend import golden as golden_mod
from python_backend import layout, mel_v4
from python_backend.audio import load_reference
from python_backend.manifest import Reference, SourceFile, VoiceManifest
from python_backend.model_config import voice_model_spec
from python_backend.v4_synthesis import V4Stages, chunk_noise
from python_backend.gpt_runner import GPTRunner
from python_backend.validation import check_audio

GOLDEN_STEPS = 4  # Euler steps of the golden wav (the kit's; the load reruns them on every version)
GOLDEN_SEED = 0
GRAPHS = ("gpt_prefill", "gpt_step") + V4_STAGES


def _preflight(opts: ExportOptions) -> tuple[Checkpoint, V4Sovits, V4Vocoder]:
    layout.check_voice_name(opts.voice)
    _provider_plan(opts)
    if opts.vocoder is None:
        raise InputError("a v4 voice needs --vocoder (upstream's gsv-v4-pretrained/vocoder.pth)")
    if opts.precision != "fp32" or opts.int8_decode:
        raise InputError(f"--precision {opts.precision}{' --int8-decode' if opts.int8_decode else ''}: v4 voices "
                         "export in fp32 only for now")
    check_target(opts)
    if not opts.ref_text.strip():
        raise InputError("--ref-text is empty: upstream's v4 path has no reference-free mode; give the transcript")
    gpt = read_gpt(opts.gpt)
    if opts.sovits_base is not None:
        sovits = read_sovits_v4(opts.sovits_base, lora=opts.sovits)
    else:
        sovits = read_sovits_v4(opts.sovits)
    vocoder = read_vocoder_v4(opts.vocoder, sovits)
    check_pair(gpt, sovits)
    check_reference_inputs(opts)
    return gpt, sovits, vocoder


def _sources(gpt: Checkpoint, sovits: V4Sovits, vocoder: V4Vocoder) -> list[SourceFile]:
    out = [SourceFile(str(gpt.path), gpt.sha256, "gpt", gpt.version),
           SourceFile(str(sovits.path), sovits.sha256, "sovits", "v4")]
    if sovits.lora is not None:
        out.append(SourceFile(str(sovits.lora.path), sovits.lora.sha256, "sovits_lora", f"v4 rank {sovits.lora.rank}"))
    out.append(SourceFile(str(vocoder.path), vocoder.sha256, "vocoder", "v4"))
    return out


def export_v4_voice(opts: ExportOptions) -> Path:
    """Run the whole v4 export; returns the published version folder."""
    gpt_ckpt, sovits_ckpt, vocoder_ckpt = _preflight(opts)
    bar = tqdm(total=6, desc="export v4", disable=not opts.progress, unit="step")
    shared, text_status, plan = shared_setup(opts, bar, need_sv=False)
    bar.set_description("load torch models")
    gpt, model, vocoder = GPT.from_checkpoint(gpt_ckpt), build_v4(sovits_ckpt).eval(), build_vocoder(vocoder_ckpt).eval()
    bar.update(1)
    bar.set_description("reference data")
    ref = reference_data(opts, model, shared, False)
    clip = load_reference(opts.ref_audio)
    mel = mel_v4.reference_mel(clip.wav32k).astype(np.float32)

    def synth(codes: np.ndarray) -> torch.Tensor:
        trace = torch_synthesize(
            model, vocoder, torch.from_numpy(codes), torch.from_numpy(ref.phones[None]),
            torch.from_numpy(ref.prompts[None]), torch.from_numpy(ref.phones[None]),
            torch.from_numpy(ref.spec[None]), torch.from_numpy(clip.wav32k.astype(np.float32)[None]), GOLDEN_STEPS,
            lambda k, frames: torch.from_numpy(chunk_noise(GOLDEN_SEED, k, mel.shape[0], frames)[None]))
        return trace.wav

    sample = _torch_golden(gpt, model, ref, synth)
    sample.cfm_steps, sample.cfm_seed = np.array(GOLDEN_STEPS), np.array(GOLDEN_SEED)
    problems = check_audio(sample.wav, SAMPLE_RATE, None)
    if problems:
        raise InputError(f"the checkpoints' own audio fails the checks the server would apply: {'; '.join(problems)}")
    bar.update(1)
    with StagedVersion(opts.repo, opts.voice, opts.version) as staged:
        bar.set_description("export graphs")
        reports = {}
        for spec in gpt_graph_specs(gpt) + v4_graph_specs(model, vocoder):
            reports[spec.name] = export_graph(spec, staged.path).optimization
        bar.update(1)
        bar.set_description("validate graphs")
        tolerances = golden_mod.TOLERANCES["fp32"]
        stages = V4Stages(staged.path)
        prompt = stages.prompt(ref.prompts, ref.phones, ref.ge, mel)
        wav = golden_mod.synthesize_v4(stages, prompt, sample.codes, sample.target_phones, sample.ge, GOLDEN_STEPS,
                                       GOLDEN_SEED)
        runner = GPTRunner(staged.path / "gpt_prefill.onnx", staged.path / "gpt_step.onnx")
        metrics = {**golden_mod.measure_gpt(runner, sample), **golden_mod.measure_wav(wav, sample)}
        problems = golden_mod.failures(metrics, tolerances)
        if problems:
            raise InputError(f"exported graphs disagree with torch: {'; '.join(problems)}")
        bar.update(1)
        bar.set_description("write version")
        sample.save(staged.path)
        np.savez(staged.path / "reference.npz", phones=ref.phones, bert=ref.bert, prompts=ref.prompts, ge=ref.ge,
                 spec=ref.spec, mel=mel)
        (staged.path / "model.py").write_text(VOICE_MODEL_PY)
        spec = voice_model_spec(layout.voice_model(opts.voice))
        dit = model.cfg.dit
        manifest = VoiceManifest(
            voice=opts.voice, version=staged.version, label=opts.label or f"v{staged.version}",
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            sovits_version="v4", precision="fp32", sample_rate=stages.contract.sample_rate,
            hop_length=stages.contract.hop, sources=_sources(gpt_ckpt, sovits_ckpt, vocoder_ckpt),
            graphs=_graph_entries_for(staged.path, reports, GRAPHS),
            reference=Reference(text=opts.ref_text, language=opts.ref_lang, phones=int(ref.phones.size),
                                prompt_tokens=int(ref.prompts.size), audio_seconds=round(ref.seconds, 3)),
            golden_file=golden_mod.GOLDEN_FILE, tolerances=tolerances,
            sizes={"gpt_layers": gpt.cfg.n_layer, "gpt_width": gpt.cfg.d_model, "gpt_heads": gpt.cfg.n_head,
                   "gin_channels": model.cfg.gin_channels, "eos": gpt.cfg.eos, "dit_dim": dit.dim,
                   "dit_depth": dit.depth, "fea_channels": model.cfg.fea_channels,
                   "vocoder_channels": vocoder.cfg.channels,
                   **({"lora_rank": sovits_ckpt.lora.rank} if sovits_ckpt.lora is not None else {})},
            quality={"fp32": metrics, "golden_cfm_steps": GOLDEN_STEPS},
            **manifest_common(opts, staged.path, shared, text_status, spec, plan),
        )
        target = publish_version(opts, staged, manifest, spec)
        bar.update(1)
    bar.close()
    return target
