"""The text front end's files in the repository: G2PW and upstream's dictionaries.

Given once per repository, like ``--bert``: ``--g2pw DIR`` (the user's ``G2PWModel`` folder)
and ``--upstream-text DIR`` (the ``GPT_SoVITS/text`` folder of the user's GPT-SoVITS
checkout).  They are copied to ``REPO/.gsv/text/`` (a temporary folder renamed into place,
so a failed copy leaves the previous files), every voice of the repository uses them, and
the ``tts`` models load them at start.  Passing a folder again replaces the copy.

Why G2PW runs inside the ``tts`` process (onnxruntime) rather than as a Triton model: it is
called once per Chinese sentence from the middle of the text front end, whose other steps
are plain Python; a Triton model would add a BLS round trip per sentence and a second place
for the front end's state, and the stand-in and the real model both load in seconds.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from export.errors import InputError
from python_backend import layout
from python_backend.text import resources

G2PW_FILES = ("g2pW.onnx", "config.py", "POLYPHONIC_CHARS.txt", "MONOPHONIC_CHARS.txt",
              "bopomofo_to_pinyin_wo_tune_dict.json", "char_bopomofo_dict.json")
G2PW_OPTIONAL = ("version", "record.log")


def _replace_dir(repo: Path, target: Path, fill) -> Path:
    """Fill a fresh sibling folder, then swap it in for ``target`` under the repository lock
    (two exports installing at once take turns; the old copy is removed after)."""
    from python_backend.repo_lock import repo_lock

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        old = None
        with repo_lock(repo):
            if target.exists():
                old = target.parent / f".{target.name}.old.{uuid.uuid4().hex[:8]}"
                target.rename(old)
            tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def check_g2pw_folder(source: Path) -> Path:
    """The cheap check (files present), run before anything is written."""
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"--g2pw {source}: folder not found (upstream keeps it at GPT_SoVITS/text/G2PWModel)")
    missing = [f for f in G2PW_FILES if not (source / f).is_file()]
    if missing:
        raise InputError(f"--g2pw {source}: not a G2PWModel folder, missing {', '.join(missing)}")
    return source


def check_upstream_text(source: Path) -> list[str]:
    """Which of upstream's dictionaries ``source`` has (at least one, or a one-line error)."""
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"--upstream-text {source}: folder not found (give GPT-SoVITS's GPT_SoVITS/text)")
    present = [rel for rel in resources.FILES.values() if (source / rel).is_file()]
    if not present:
        raise InputError(f"--upstream-text {source}: none of upstream's dictionaries are there "
                         f"(expected e.g. {', '.join(list(resources.FILES.values())[:3])})")
    return present


def install_g2pw(repo: Path, source: Path, vocab: Path) -> Path:
    """Check ``source`` is a loadable G2PWModel folder, then copy it into the repository."""
    from python_backend.text.g2pw import G2PW

    source = check_g2pw_folder(source)
    try:
        G2PW(source, vocab)
    except (ValueError, OSError) as exc:
        raise InputError(f"--g2pw {source}: {exc}") from None

    def fill(tmp: Path) -> None:
        for name in G2PW_FILES + G2PW_OPTIONAL:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)

    return _replace_dir(repo, layout.g2pw_dir(repo), fill)


def install_upstream_text(repo: Path, source: Path) -> Path:
    """Copy upstream's dictionaries (those of ``resources.FILES`` that exist) into the repository."""
    source = Path(source)
    present = check_upstream_text(source)

    def fill(tmp: Path) -> None:
        for rel in present:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, tmp / rel)

    return _replace_dir(repo, layout.upstream_text_dir(repo), fill)
