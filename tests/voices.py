"""Tiny random-weight demo voices and their exports, for tests: one place for the export arguments."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from ops import cli
from python_backend import layout

REF_TEXT = "你好，欢迎使用语音合成服务。"


# Demo voices made in this test session, by (version, seed): ``demo-voice`` is deterministic and
# writes no paths into its files (checked in test_demo_voice_cache_copies_what_demo_voice_writes),
# so each is made once and copied (about 10 s saved per reuse on 2 cores; most modules use seed 3).
_MADE = Path(tempfile.mkdtemp(prefix="gsv-test-demo-voices-"))
atexit.register(shutil.rmtree, _MADE, True)


def demo_voice(dst: Path, seed: int = 3, version: str = "v2") -> Path:
    """A tiny official-format demo voice (checkpoints, reference clip, random HuBERT/BERT; for v2Pro and
    v2ProPlus also the full-size random SV checkpoint, 214 MB) in ``dst``: a copy, so a test may
    change its files."""
    made = _MADE / f"{version}-seed{int(seed)}"
    if not made.is_dir():
        tmp = _MADE / f".{made.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        assert cli.main(["demo-voice", str(tmp), "--size", "tiny", "--seed", str(seed), "--sovits-version", version]) == 0
        tmp.rename(made)
    shutil.copytree(made, dst, dirs_exist_ok=True)
    return Path(dst)


def export_args(src: Path, repo: Path, voice: str, *extra: str, aux: Path | None = None) -> list[str]:
    """Arguments of ``export``/``publish`` for demo voice ``src``; ``aux``: the demo folder whose
    HuBERT/BERT/G2PW (and SV checkpoint, where it has one) to install as the shared models
    (None: the repository has them already)."""
    args = ["--gpt", str(src / "gpt.ckpt"), "--sovits", str(src / "sovits.pth"), "--ref-audio", str(src / "ref.wav"),
            "--ref-text", REF_TEXT, "--ref-lang", "zh", "--voice", voice, "--repo", str(repo), "--no-progress", *extra]
    if aux is not None:
        args += ["--hubert", str(aux / "chinese-hubert-base"), "--bert", str(aux / "chinese-roberta-wwm-ext-large"),
                 "--g2pw", str(aux / "G2PWModel")]
        if (aux / cli.DEMO_FILES["sv"]).is_file():
            args += ["--sv-model", str(aux / cli.DEMO_FILES["sv"])]
    return args


def export_voice(src: Path, repo: Path, voice: str, *extra: str, aux: Path | None = None) -> Path:
    """Export and return the newest version folder of ``voice``."""
    assert cli.main(["export", *export_args(src, repo, voice, *extra, aux=aux)]) == 0
    vdir = layout.voice_dir(repo, voice)
    return vdir / str(layout.version_numbers(vdir)[-1])
