"""The ``gsv-triton`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEMO_FILES = {"gpt": "gpt.ckpt", "sovits": "sovits.pth", "ref": "ref.wav", "text": "ref.txt", "sv": "sv.ckpt"}


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpt", type=Path, required=True, help="GPT checkpoint (*.ckpt, stage 1)")
    p.add_argument("--sovits", type=Path, required=True, help="SoVITS checkpoint (*.pth, stage 2)")
    p.add_argument("--ref-audio", type=Path, required=True, help="reference clip (3-10 s of speech)")
    p.add_argument("--ref-text", required=True, help="transcript of the reference clip")
    p.add_argument("--ref-lang", default="zh",
                   help="language mode of the transcript, as upstream: all_zh, zh, en, auto, all_ja, ja, "
                        "all_ko, ko, all_yue, yue, auto_yue")
    p.add_argument("--voice", required=True, help="voice name (letters, digits, _ and -)")
    p.add_argument("--repo", type=Path, required=True, help="Triton model repository folder")
    p.add_argument("--version", type=int, help="version number (default: next free)")
    p.add_argument("--label", default="", help="free-form label, e.g. v2.1")
    p.add_argument("--hubert", type=Path, help="local chinese-hubert-base folder (once per repository)")
    p.add_argument("--bert", type=Path, help="local chinese-roberta-wwm-ext-large folder (once per repository)")
    p.add_argument("--sv-model", type=Path, metavar="FILE",
                   help="speaker-verification checkpoint for v2Pro/v2ProPlus voices: upstream's "
                        "pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt (once per repository)")
    p.add_argument("--sv-emb", type=Path, metavar="FILE.npy",
                   help="v2Pro/v2ProPlus: use this 20480-d speaker embedding (.npy) instead of computing it "
                        "from the reference with the repository's SV model")
    p.add_argument("--g2pw", type=Path, help="GPT-SoVITS's G2PWModel folder (Chinese polyphones; once per repository)")
    p.add_argument("--upstream-text", type=Path,
                   help="GPT-SoVITS's GPT_SoVITS/text folder: upstream's dictionaries (once per repository)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--int8-decode", action="store_true", help="int8 dynamic quantization of the GPT decode step (CPU)")
    p.add_argument("--vocoder-int8", action="store_true",
                   help="v2: int8 static quantization of the vocoder's convolutions (CPU), kept only when its wav "
                        "keeps --vocoder-int8-min-snr against the fp32 vocoder")
    p.add_argument("--vocoder-int8-min-snr", type=float, default=30.0, metavar="DB",
                   help="worst-latent wav SNR (dB) against fp32 an int8 vocoder must keep (default 30)")
    p.add_argument("--providers", default="", metavar="STAGE=PROVIDER,...",
                   help="execution provider per stage (gpt_prefill, gpt_step, sovits, vocoder, bert, ssl, sv; "
                        "all=X for every stage): auto (default: CUDA if available, else CPU), cpu, cuda, "
                        "tensorrt (FP16 engines), tensorrt_fp32; a GPU choice falls back to CPU where the host has no GPU")
    p.add_argument("--vocoder", type=Path, metavar="FILE",
                   help="v4 voices: the vocoder state dict (upstream's gsv-v4-pretrained/vocoder.pth); "
                        "--sovits is then a v4 base s2Gv4.pth or a v4 LoRA file")
    p.add_argument("--sovits-base", type=Path, metavar="FILE",
                   help="v4 LoRA voices: the base s2Gv4.pth the LoRA file (--sovits) was trained on")
    p.add_argument("--no-progress", action="store_true")


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gsv-triton", description="Serve GPT-SoVITS voices on Triton")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-voice", help="write random-weight checkpoints and a reference clip (offline)")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--size", choices=["full", "tiny"], default="full")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--sovits-version", choices=["v2", "v2Pro", "v2ProPlus", "v4"], default="v2")

    _add_export_args(sub.add_parser("export", help="export a voice version into a model repository"))

    inspect = sub.add_parser("inspect", help="print an ONNX graph's inputs, outputs and metadata")
    inspect.add_argument("graph", type=Path)

    from ops.client import add_say_parser
    from ops.control import add_control_parser
    from ops.gateway import add_gateway_parser
    from ops.perf import add_perf_parser
    from ops.server import add_serve_parser
    from ops.swap import add_swap_parsers

    add_say_parser(sub)
    add_serve_parser(sub)
    add_swap_parsers(sub, _add_export_args)  # publish, rollback, canary, promote, versions
    add_control_parser(sub)
    add_gateway_parser(sub)
    add_perf_parser(sub)
    quick = sub.add_parser("quickstart", help="demo voice -> export -> serve -> a WAV through tritonclient, in one go")
    quick.add_argument("--dir", type=Path, default=Path("quickstart"), help="working folder (demo files, repository, WAV)")
    quick.add_argument("--size", choices=["full", "tiny"], default="full")
    quick.add_argument("--text", default="今天天气很好，我们一起去公园散步吧。")
    return parser.parse_args(argv)


def cmd_demo_voice(args) -> int:
    from export import aux_models, demo

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    demo.write_gpt(out / DEMO_FILES["gpt"], args.size, args.seed)
    v4_extra = ""
    if args.sovits_version == "v4":  # a base s2Gv4.pth, a LoRA on it (the voice's --sovits) and the vocoder
        from export.demo_v4 import write_demo_v4

        v4 = write_demo_v4(out, args.size, args.seed, lora_name=DEMO_FILES["sovits"])
        v4_extra = f" --sovits-base {v4.base} --vocoder {v4.vocoder}"
    else:
        demo.write_sovits(out / DEMO_FILES["sovits"], args.sovits_version, args.size, args.seed)
    demo.write_reference(out / DEMO_FILES["ref"], args.seed)
    (out / DEMO_FILES["text"]).write_text(demo.DEMO_TEXT + "\n", encoding="utf-8")
    ssl_dir, bert_dir = aux_models.write_demo_aux(out, args.size, args.seed)
    from export.demo_g2pw import write_demo_g2pw

    g2pw_dir = write_demo_g2pw(out, args.seed)
    extra = ""
    if args.sovits_version in ("v2Pro", "v2ProPlus"):  # ERes2NetV2 has one size: the file is the official layout, 214 MB
        demo.write_sv(out / DEMO_FILES["sv"], args.seed)
        extra = f" --sv-model {out / DEMO_FILES['sv']}"
    print(f"wrote demo voice ({args.size}, {args.sovits_version}) to {out}")
    print(f"next: gsv-triton export --gpt {out / DEMO_FILES['gpt']} --sovits {out / DEMO_FILES['sovits']} "
          f"--ref-audio {out / DEMO_FILES['ref']} --ref-text '{demo.DEMO_TEXT}' --ref-lang zh "
          f"--hubert {ssl_dir} --bert {bert_dir} --g2pw {g2pw_dir}{extra}{v4_extra} --voice demo --repo REPO")
    return 0


def cmd_export(args) -> int:
    from export.voice_export import ExportOptions, export_voice, manifest_summary

    opts = ExportOptions.from_args(args)
    target = export_voice(opts)
    print(f"wrote {target} {manifest_summary(target)}")
    return 0


def cmd_inspect(args) -> int:
    import onnx

    model = onnx.load(str(args.graph), load_external_data=False)

    def dims(t):
        return [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]

    print(json.dumps({
        "inputs": {i.name: dims(i) for i in model.graph.input},
        "outputs": {o.name: dims(o) for o in model.graph.output},
        "opset": [o.version for o in model.opset_import],
        "metadata": {p.key: p.value for p in model.metadata_props},
    }, indent=1, ensure_ascii=False))
    return 0


def cmd_say(args) -> int:
    from ops.client import cmd_say as run

    return run(args)


def cmd_serve(args) -> int:
    from ops.server import cmd_serve as run

    return run(args)


def cmd_quickstart(args) -> int:
    from ops.quickstart import run

    return run(args.dir, args.size, args.text)


COMMANDS = {"demo-voice": cmd_demo_voice, "export": cmd_export, "inspect": cmd_inspect, "say": cmd_say,
            "serve": cmd_serve, "quickstart": cmd_quickstart}


def _delegate(module: str, name: str):
    def run(args) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)
    return run


COMMANDS.update({cmd: _delegate("ops.swap", f"cmd_{cmd}") for cmd in ("publish", "rollback", "canary", "promote", "versions")})
COMMANDS["control"] = _delegate("ops.control", "cmd_control")
COMMANDS["gateway"] = _delegate("ops.gateway", "cmd_gateway")
COMMANDS["perf"] = _delegate("ops.perf", "cmd_perf")


def main(argv=None) -> int:
    args = get_args(argv)
    from ops.client import ClientError
    from export.errors import ExportError
    from python_backend.audio import AudioError
    from python_backend.layout import LayoutError
    from python_backend.manifest import ManifestError
    from python_backend.text.frontend import TextError
    from ops.admin import AdminKeyError

    try:
        return COMMANDS[args.command](args)
    except (ExportError, AudioError, LayoutError, ManifestError, TextError, ClientError, AdminKeyError) as exc:
        print(f"gsv-triton: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions: name the cause, the repository is unchanged
        print(f"gsv-triton: error: {exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gsv-triton: interrupted; the repository is unchanged", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
