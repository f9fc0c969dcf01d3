"""The benchmark's demo voice and exported repository, built once and cached per size.

Each run serves a hard-linked copy (``link_copy``) of the cached repository, so the extra
version the swap part publishes never leaks into the next run.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.common import REF_TEXT, log


def cli(argv: list[str]) -> None:
    from ops import cli as export_cli

    code = export_cli.main(argv)
    if code != 0:
        raise SystemExit(f"gsv-triton {' '.join(argv[:2])} failed with exit code {code}")


def prepare(cache: Path, size: str, int8: bool) -> dict:
    """Demo voice + exported repository (voice ``demo`` fp32, optionally ``demo8`` int8-decode), cached."""
    from python_backend import layout

    demo, repo = cache / "demo", cache / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    if not (demo / "gpt.ckpt").is_file():
        log(f"building the {size} demo voice in {demo}")
        cli(["demo-voice", str(demo), "--size", size])
    common = ["--gpt", str(demo / "gpt.ckpt"), "--sovits", str(demo / "sovits.pth"), "--ref-audio",
              str(demo / "ref.wav"), "--ref-text", REF_TEXT, "--ref-lang", "zh", "--repo", str(repo), "--no-progress"]
    for voice in ("demo", "demo8"):
        _drop_stale(repo, voice)
    if not layout.version_numbers(layout.voice_dir(repo, "demo")):
        log("exporting voice demo (fp32)")
        cli(["export", *common, "--voice", "demo", "--hubert", str(demo / "chinese-hubert-base"),
             "--bert", str(demo / "chinese-roberta-wwm-ext-large"), "--g2pw", str(demo / "G2PWModel")])
    voices, int8_error = {"fp32": "demo"}, None
    failed = cache / "int8-export-failed.txt"  # an export that failed is not retried on every run
    if int8 and failed.is_file():
        int8_error = failed.read_text()
    elif int8:
        if not layout.version_numbers(layout.voice_dir(repo, "demo8")):
            log("exporting voice demo8 (--int8-decode)")
            try:
                cli(["export", *common, "--voice", "demo8", "--int8-decode"])
            except SystemExit as exc:
                int8_error = f"{exc} (see the export's message above: the int8 graphs failed validation)"
                failed.write_text(int8_error)
                log(f"int8-decode voice unavailable: {int8_error}; measuring fp32 only")
        if int8_error is None:
            voices["int8"] = "demo8"
    return {"demo": demo, "repo": repo, "voices": voices, "int8_error": int8_error}


def _drop_stale(repo: Path, voice: str) -> None:
    """Remove a cached export this code can no longer serve: an older decode-step graph format, or a
    manifest or voice config.pbtxt that the server's own preflight would refuse at load."""
    import onnx

    from python_backend import layout
    from python_backend.gpt_runner import GPTGraphError, check_step_format
    from python_backend.manifest import ManifestError
    from python_backend.validation import ValidationError, preflight

    vdir = layout.voice_dir(repo, voice)
    for v in layout.version_numbers(vdir):
        step = vdir / str(v) / "gpt_step.onnx"
        meta = {p.key: p.value for p in onnx.load(str(step), load_external_data=False).metadata_props} \
            if step.is_file() else {}
        try:
            check_step_format(meta, str(step))
            preflight(vdir / str(v))
        except (GPTGraphError, ValidationError, ManifestError) as exc:
            log(f"cached export {vdir.name}/{v} is stale ({exc}); re-exporting")
            shutil.rmtree(vdir)
            return


def link_copy(src: Path, dst: Path) -> None:
    """Hard-linked copy of a repository (graph files are never written in place); .gsv is a real copy."""
    if dst.exists():
        shutil.rmtree(dst)

    def copy(s, d):
        if "/.gsv/" in s or s.endswith(("manifest.json", "config.pbtxt")):
            return shutil.copy2(s, d)
        try:
            return os.link(s, d)
        except OSError:
            return shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy, symlinks=True)
