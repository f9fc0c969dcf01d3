"""``gsv-triton export``: GPT + SoVITS checkpoints and a reference clip -> a new voice version.

Order matters for "bad input loses nothing": every cheap check (names, files, checkpoint
formats, pairing, reference clip, transcript) runs before anything is written; the graphs
are then written to a staging folder, validated against torch there, and only then renamed
into the repository.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from export import precision as precision_mod
from export.checkpoints import Checkpoint, read_gpt, read_sovits
from export.errors import InputError
from export.gpt_model import GPT, gpt_graph_specs
from export.onnx_io import OPSET, export_graph
from export.repository import StagedVersion
from export import text_resources
from export.shared_models import SOURCE_FILE, SV, SV_HINT, check_sv_source, ensure_shared, latest
from export.sovits_model import build_sovits
from export.sovits_stages import sovits_graph_specs
from python_backend import golden as golden_mod
from python_backend import history, layout
from python_backend.audio import AudioError, load_reference, prompt_input
from python_backend.gpt_runner import GPTRunner
from python_backend.manifest import (HASHED_FILES, GraphEntry, Reference, SourceFile, VoiceManifest, config_entry,
                                     file_entry, sha256_file)
from python_backend.model_config import voice_model_spec
from python_backend.atomic_io import write_atomic
from python_backend.onnx_stage import OnnxStage
from python_backend.providers import PLAN_FILE, ProviderError, ProviderPlan
from python_backend.speaker_verification import SV_EMB_DIM, SVEmbedder
from python_backend.spectrogram import reference_spectrogram
from python_backend.validation import check_audio
from python_backend.text import frontend
from python_backend.text.frontend import LANGUAGES, CharTokenizer, TextError, bert_features, reference_phones

EXPORTER_VERSION = "0.1.0"
VOICE_MODEL_PY = '"""Voice version model: thin adapter; the logic is in python_backend."""\nfrom python_backend.triton_voice import TritonPythonModel  # noqa: F401\n'
GRAPH_STAGES = ("gpt_prefill", "gpt_step", "sovits", "vocoder", "speaker", "prompt_codes")


@dataclass
class ExportOptions:
    gpt: Path
    sovits: Path
    ref_audio: Path
    ref_text: str
    ref_lang: str
    voice: str
    repo: Path
    version: int | None = None
    label: str = ""
    hubert: Path | None = None
    bert: Path | None = None
    sv_emb: Path | None = None
    sv_model: Path | None = None
    g2pw: Path | None = None
    upstream_text: Path | None = None
    precision: str = "fp32"
    int8_decode: bool = False
    vocoder_int8_min_snr: float | None = None  #: int8 vocoder with this wav SNR floor (dB) against fp32; None: fp32
    providers: str = ""  #: "STAGE=PROVIDER,..." (``python_backend.providers.ProviderPlan.parse``)
    progress: bool = True
    vocoder: Path | None = None  #: v4: the vocoder state dict (upstream gsv-v4-pretrained/vocoder.pth)
    sovits_base: Path | None = None  #: v4 LoRA (``sovits``): the base s2Gv4.pth it was trained on

    @classmethod
    def from_args(cls, args) -> "ExportOptions":
        """From the parsed ``export``/``publish`` command line (see ``cli._add_export_args``)."""
        return cls(
            gpt=args.gpt, sovits=args.sovits, ref_audio=args.ref_audio, ref_text=args.ref_text,
            ref_lang=args.ref_lang, voice=args.voice, repo=args.repo, version=args.version, label=args.label,
            hubert=args.hubert, bert=args.bert, sv_emb=args.sv_emb, sv_model=args.sv_model, g2pw=args.g2pw,
            upstream_text=args.upstream_text, precision=args.precision, int8_decode=args.int8_decode,
            vocoder_int8_min_snr=args.vocoder_int8_min_snr if getattr(args, "vocoder_int8", False) else None,
            providers=getattr(args, "providers", "") or "", progress=not args.no_progress,
            vocoder=getattr(args, "vocoder", None), sovits_base=getattr(args, "sovits_base", None))


@dataclass
class ReferenceData:
    phones: np.ndarray  # [P] int64
    bert: np.ndarray  # [1024, P]
    prompts: np.ndarray  # [T] int64
    spec: np.ndarray  # [1025, F]
    sv_emb: np.ndarray | None
    ge: np.ndarray  # [1, gin, 1]
    seconds: float
    sv_source: dict  # where sv_emb came from (manifest reference.sv_emb)



def check_pair(gpt: Checkpoint, sovits) -> None:
    """A GPT and a SoVITS model (v2 family or v4) must share the phone table and codebook to be one voice."""
    gpt_phones = gpt.state_dict["ar_text_embedding.word_embeddings.weight"].shape[0]
    sovits_phones = sovits.state_dict["enc_p.text_embedding.weight"].shape[0]
    if gpt_phones != sovits_phones:
        raise InputError(f"GPT ({gpt.path.name}) has {gpt_phones} phones but SoVITS ({sovits.path.name}) has {sovits_phones}; they are not one voice")
    codebook = sovits.state_dict["quantizer.vq.layers.0._codebook.embed"].shape[0]
    vocab = gpt.state_dict["ar_audio_embedding.word_embeddings.weight"].shape[0]
    if vocab != codebook + 1:
        raise InputError(f"GPT has {vocab} semantic tokens but SoVITS's codebook has {codebook} (+EOS expected)")


def _phones_and_bert(text: str, lang: str, bert_graph: Path, vocab: Path) -> tuple[np.ndarray, np.ndarray]:
    seq = reference_phones(text, lang)
    tokenizer = CharTokenizer.from_vocab_file(vocab)
    sess = ort.InferenceSession(str(bert_graph), providers=["CPUExecutionProvider"])

    def hidden(segment: str) -> np.ndarray:
        return sess.run(["hidden"], {"input_ids": tokenizer.encode(segment)})[0][0, 1:-1]

    return seq.phone_ids.astype(np.int64), bert_features(seq, hidden).astype(np.float32)


def reference_data(opts: ExportOptions, sovits, shared, is_pro: bool) -> ReferenceData:
    clip = load_reference(opts.ref_audio)
    phones, bert = _phones_and_bert(opts.ref_text, opts.ref_lang, shared.bert, shared.vocab)
    ssl_sess = ort.InferenceSession(str(shared.ssl), providers=["CPUExecutionProvider"])
    ssl = ssl_sess.run(["ssl"], {"wav16k": prompt_input(clip.wav16k)})[0]
    spec = reference_spectrogram(clip.wav32k)
    sv, sv_source = _speaker_embedding(opts, shared, clip.wav32k) if is_pro else (None, {})
    with torch.no_grad():
        prompts = sovits.extract_codes(torch.from_numpy(ssl))[0].numpy().astype(np.int64)
        ge = sovits.get_ge(torch.from_numpy(spec[None]), None if sv is None else torch.from_numpy(sv)).numpy()
    return ReferenceData(phones, bert, prompts, spec.astype(np.float32), sv, ge, clip.seconds, sv_source)


def _read_sv_emb(path: Path) -> np.ndarray:
    try:
        sv = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"--sv-emb {path}: not a readable .npy file ({type(exc).__name__}: {str(exc)[:120]})") from None
    if sv.size != SV_EMB_DIM or not np.issubdtype(sv.dtype, np.floating) or not np.isfinite(sv).all():
        raise InputError(f"--sv-emb {path}: {sv.size} {sv.dtype} values, expected {SV_EMB_DIM} finite floats")
    return sv.astype(np.float32).reshape(1, -1)


def _speaker_embedding(opts: ExportOptions, shared, wav32k: np.ndarray) -> tuple[np.ndarray, dict]:
    """v2Pro/v2ProPlus sv_emb: ``--sv-emb`` when given, else the repository's gsv_sv on the 32 kHz
    reference exactly as the spectrogram sees it (upstream embeds that signal, resampled to 16 kHz)."""
    if opts.sv_emb is not None:
        sv = _read_sv_emb(Path(opts.sv_emb))
        return sv, {"source": "file", "path": str(opts.sv_emb), "sha256": sha256_file(Path(opts.sv_emb))}
    folder = shared.sv.parent
    sv = SVEmbedder(shared.sv, provider_list=["CPUExecutionProvider"]).embed(wav32k)
    source = json.loads((folder / SOURCE_FILE).read_text())
    return sv, {"source": layout.SV_MODEL, "version": int(folder.name), "checkpoint_sha256": source["sha256"]}


def _torch_golden(gpt: GPT, sovits, ref: ReferenceData, synth=None) -> golden_mod.GoldenSample:
    """Fixed inputs from the voice's own reference, and what torch computes from them.
    ``synth(codes [1, C]) -> wav``: the SoVITS half (default: the v2 decoder with noise 0)."""
    phones = np.concatenate([ref.phones, ref.phones])[None]
    bert = np.concatenate([ref.bert, ref.bert], axis=1)[None]
    prompts = ref.prompts[None]
    forced = ref.prompts[: min(8, ref.prompts.size)][None]
    codes = ref.prompts[: min(50, ref.prompts.size)][None]

    def prefill(p, b, y):
        out = gpt.prefill(torch.from_numpy(p), torch.from_numpy(b), torch.from_numpy(y))
        return [t.numpy() for t in out]

    def step(tok, pos, k, v):
        mask = torch.ones(tok.shape[0], k.shape[2] + 1)
        out = gpt.step(torch.from_numpy(tok), torch.from_numpy(pos), torch.from_numpy(k), torch.from_numpy(v), mask)
        return [t.numpy() for t in out]

    with torch.no_grad():
        logits, k, v = prefill(phones, bert, prompts)
        steps = []
        for i, tok in enumerate(forced[0]):
            out, k, v = step(np.array([[tok]]), np.array([prompts.shape[1] + i]), k, v)
            steps.append(out)
        greedy = golden_mod.greedy_reference(step, prefill, (phones, bert, prompts), gpt.cfg.eos)
        if synth is not None:
            wav = synth(codes)
        else:
            wav = sovits.decode(torch.from_numpy(codes), torch.from_numpy(ref.phones[None]), torch.from_numpy(
                ref.spec[None]), None if ref.sv_emb is None else torch.from_numpy(ref.sv_emb))
    return golden_mod.GoldenSample(
        phones=phones, bert=bert.astype(np.float32), prompts=prompts, forced=forced, codes=codes,
        target_phones=ref.phones[None], ge=ref.ge.astype(np.float32), prefill_logits=logits,
        step_logits=np.stack(steps, axis=1), greedy=greedy, wav=wav.numpy().reshape(-1),
    )


def _graph_entries(folder: Path, reports: dict) -> dict[str, GraphEntry]:
    return _graph_entries_for(folder, reports, GRAPH_STAGES)


def _graph_entries_for(folder: Path, reports: dict, stages: tuple[str, ...]) -> dict[str, GraphEntry]:
    return {name: GraphEntry(file=f"{name}.onnx", sha256=sha256_file(folder / f"{name}.onnx"),
                             bytes=(folder / f"{name}.onnx").stat().st_size, optimization=reports.get(name, {}))
            for name in stages}


def _open_graphs(folder: Path) -> tuple[GPTRunner, OnnxStage, OnnxStage]:
    runner = GPTRunner(folder / "gpt_prefill.onnx", folder / "gpt_step.onnx")
    return runner, OnnxStage(folder / "sovits.onnx"), OnnxStage(folder / "vocoder.onnx")


def _check_speaker_inputs(opts: ExportOptions, version: str) -> None:
    """--sv-emb / --sv-model readable and of the right kind, and a v2Pro/v2ProPlus voice able to get sv_emb."""
    if opts.sv_emb is not None:
        _read_sv_emb(Path(opts.sv_emb))
    if opts.sv_model is not None:
        check_sv_source(opts.repo, opts.sv_model)
    elif version in ("v2Pro", "v2ProPlus") and opts.sv_emb is None and latest(opts.repo, SV)[0] is None:
        raise InputError(f"{version} voices need a speaker-verification model and the repository has no "
                         f"{layout.SV_MODEL} yet: pass --sv-model {SV_HINT} (or --sv-emb FILE.npy)")


def _provider_plan(opts: ExportOptions) -> ProviderPlan:
    try:
        return ProviderPlan.parse(opts.providers)
    except ProviderError as exc:
        raise InputError(str(exc)) from None


def _write_shared_plans(shared, plan: ProviderPlan) -> None:
    """A shared model's choice goes beside its graph (``providers.json``), read at its next load;
    shared models not named keep what they had."""
    for stage, graph in (("bert", shared.bert), ("ssl", shared.ssl), ("sv", shared.sv)):
        if graph is not None and plan.shared_part(stage):
            write_atomic(graph.parent / PLAN_FILE, json.dumps(plan.shared_part(stage), indent=1) + "\n")


def _preflight(opts: ExportOptions) -> tuple[Checkpoint, Checkpoint]:
    layout.check_voice_name(opts.voice)
    _provider_plan(opts)
    if opts.precision not in precision_mod.PRECISIONS:
        raise InputError(f"--precision {opts.precision!r}: choose one of {precision_mod.PRECISIONS}")
    check_target(opts)
    gpt_ckpt, sovits_ckpt = read_gpt(opts.gpt), read_sovits(opts.sovits)
    check_pair(gpt_ckpt, sovits_ckpt)
    _check_speaker_inputs(opts, sovits_ckpt.version)
    check_reference_inputs(opts)
    return gpt_ckpt, sovits_ckpt


def check_target(opts: ExportOptions) -> None:
    """The repository exists, the version number is free, the transcript's language mode is known."""
    if not Path(opts.repo).is_dir():
        raise InputError(f"--repo {opts.repo}: folder not found; create it first (mkdir -p)")
    if opts.version is not None and (layout.voice_dir(opts.repo, opts.voice) / str(opts.version)).exists():
        raise InputError(f"voice {opts.voice} version {opts.version} already exists; versions are immutable")
    if opts.ref_lang not in LANGUAGES:
        raise InputError(f"--ref-lang {opts.ref_lang!r}: use one of {', '.join(LANGUAGES)}")


def check_reference_inputs(opts: ExportOptions) -> None:
    """The reference clip and transcript read, and the text resource folders given are usable."""
    try:
        load_reference(opts.ref_audio)
        reference_phones(opts.ref_text, opts.ref_lang, g2pw=None)   # readable at all (G2PW comes later)
        if opts.g2pw is not None:
            text_resources.check_g2pw_folder(opts.g2pw)
        if opts.upstream_text is not None:
            text_resources.check_upstream_text(opts.upstream_text)
    except (AudioError, TextError) as exc:
        raise InputError(str(exc)) from None


def export_voice(opts: ExportOptions) -> Path:
    """Run the whole export; returns the published version folder."""
    if opts.vocoder is not None or opts.sovits_base is not None:
        if opts.vocoder_int8_min_snr is not None:
            raise InputError("--vocoder-int8 quantizes a v2 vocoder graph; drop it for a v4 voice (--vocoder/--sovits-base)")
        from export.v4_export import export_v4_voice

        return export_v4_voice(opts)
    gpt_ckpt, sovits_ckpt = _preflight(opts)
    bar = tqdm(total=7, desc="export", disable=not opts.progress, unit="step")
    is_pro = sovits_ckpt.version in ("v2Pro", "v2ProPlus")
    shared, text_status, plan = shared_setup(opts, bar, need_sv=is_pro and opts.sv_emb is None)
    bar.set_description("load torch models")
    gpt, sovits = GPT.from_checkpoint(gpt_ckpt), build_sovits(sovits_ckpt)
    bar.update(1)
    bar.set_description("reference data")
    ref = reference_data(opts, sovits, shared, sovits.cfg.is_pro)
    sample = _torch_golden(gpt, sovits, ref)
    # the same audio checks the load runs: refuse a voice that cannot speak before writing anything
    problems = check_audio(sample.wav, sovits.cfg.sample_rate, None)
    if problems:
        raise InputError(f"the checkpoints' own audio fails the checks the server would apply: {'; '.join(problems)}")
    bar.update(1)
    with StagedVersion(opts.repo, opts.voice, opts.version) as staged:
        bar.set_description("export graphs")
        reports = {}
        for spec in gpt_graph_specs(gpt) + sovits_graph_specs(sovits):
            reports[spec.name] = export_graph(spec, staged.path).optimization
        bar.update(1)
        bar.set_description("validate graphs")
        tolerances = golden_mod.TOLERANCES["fp32"]
        metrics = golden_mod.measure(*_open_graphs(staged.path), sample)
        problems = golden_mod.failures(metrics, tolerances)
        if problems:
            raise InputError(f"exported graphs disagree with torch: {'; '.join(problems)}")
        quality = {"fp32": metrics}
        bar.update(1)
        bar.set_description("precision")
        quality.update(precision_mod.apply(staged.path, opts.precision, opts.int8_decode, sample, metrics,
                                           opts.vocoder_int8_min_snr))
        tolerances = precision_mod.tolerances(opts.precision, opts.int8_decode, opts.vocoder_int8_min_snr)
        bar.update(1)
        bar.set_description("write version")
        sample.save(staged.path)
        np.savez(staged.path / "reference.npz", phones=ref.phones, bert=ref.bert, prompts=ref.prompts,
                 ge=ref.ge, spec=ref.spec, **({"sv_emb": ref.sv_emb} if ref.sv_emb is not None else {}))
        (staged.path / "model.py").write_text(VOICE_MODEL_PY)
        spec = voice_model_spec(layout.voice_model(opts.voice))
        manifest = VoiceManifest(
            voice=opts.voice, version=staged.version, label=opts.label or f"v{staged.version}",
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            sovits_version=sovits_ckpt.version, precision=opts.precision, sample_rate=sovits.cfg.sample_rate,
            hop_length=sovits.cfg.hop,
            sources=[SourceFile(str(gpt_ckpt.path), gpt_ckpt.sha256, "gpt", gpt_ckpt.version),
                     SourceFile(str(sovits_ckpt.path), sovits_ckpt.sha256, "sovits", sovits_ckpt.version)],
            graphs=_graph_entries(staged.path, reports),
            reference=Reference(text=opts.ref_text, language=opts.ref_lang, phones=int(ref.phones.size),
                                prompt_tokens=int(ref.prompts.size), audio_seconds=round(ref.seconds, 3),
                                sv_emb=ref.sv_source),
            golden_file=golden_mod.GOLDEN_FILE, tolerances=tolerances,
            sizes={"gpt_layers": gpt.cfg.n_layer, "gpt_width": gpt.cfg.d_model, "gpt_heads": gpt.cfg.n_head,
                   "gin_channels": sovits.cfg.gin_channels, "eos": gpt.cfg.eos},
            quality=quality,
            **manifest_common(opts, staged.path, shared, text_status, spec, plan,
                              with_sv=ref.sv_source.get("source") == layout.SV_MODEL),
        )
        target = publish_version(opts, staged, manifest, spec)
        bar.update(1)
    bar.close()
    return target


def shared_setup(opts: ExportOptions, bar, need_sv: bool):
    """The repository's shared models and text resources installed (once per repository), the text
    front end configured from them, and the provider plan: (shared, text_status, plan)."""
    shared = ensure_shared(opts.repo, opts.hubert, opts.bert, bar, opts.sv_model, need_sv=need_sv)
    if opts.upstream_text is not None:
        text_resources.install_upstream_text(opts.repo, opts.upstream_text)
    if opts.g2pw is not None:
        text_resources.install_g2pw(opts.repo, opts.g2pw, shared.vocab)
    text_status = frontend.configure_from_repo(opts.repo)
    plan = _provider_plan(opts)
    _write_shared_plans(shared, plan)
    bar.update(1)
    return shared, text_status, plan


def manifest_common(opts: ExportOptions, folder: Path, shared, text_status: dict, spec, plan: ProviderPlan,
                    with_sv: bool = False) -> dict:
    """The manifest fields every kind of voice version fills the same way: tools, text front end,
    file hashes, the config as exported, providers."""
    return {
        "tools": {"exporter": EXPORTER_VERSION, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": ort.__version__, "opset": str(OPSET),
                  "shared_ssl": str(shared.ssl.relative_to(opts.repo)),
                  "shared_bert": str(shared.bert.relative_to(opts.repo)),
                  **({"shared_sv": str(shared.sv.relative_to(opts.repo))} if with_sv else {})},
        "text_frontend": {k: text_status[k] for k in ("g2pw", "parity", "upstream_files")},
        "files": {name: file_entry(folder / name) for name in HASHED_FILES},
        "config": config_entry(spec.render()),
        "providers": plan.voice_part(),
    }


def publish_version(opts: ExportOptions, staged: StagedVersion, manifest: VoiceManifest, spec) -> Path:
    """Validate and write the manifest, rename the staged version in, record it as staged."""
    manifest.validate()
    manifest.write(staged.path)
    target = staged.publish(spec)
    history.append(opts.repo, history.Event(opts.voice, staged.version, "staged", label=manifest.label))
    return target


def manifest_summary(folder: Path) -> str:
    manifest = json.loads((folder / "manifest.json").read_text())
    return json.dumps({k: manifest[k] for k in ("voice", "version", "label", "precision", "sovits_version")})
