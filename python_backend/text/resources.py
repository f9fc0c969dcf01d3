"""Where the text front end finds upstream GPT-SoVITS's dictionaries.

A voice was trained on the phones that upstream's own dictionaries produce (its CMU
dictionary and hot words, its name list, its G2PW phrase dictionary, its traditional →
simplified table).  This project ships none of them: the user points the front end at the
``GPT_SoVITS/text`` folder of the GPT-SoVITS checkout the voice was trained with
(``--upstream-text DIR`` at export, ``GSV_UPSTREAM_TEXT`` in the environment).  Every
file is read as data (text, a restricted unpickler, or a parsed literal); nothing in the
folder is imported or executed.

Without the folder the front end still runs, on fallbacks that each module names, and
reports ``parity: false`` (see ``status()``).
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GSV_UPSTREAM_TEXT"

# Files read from the folder, relative to GPT_SoVITS/text.
FILES = {
    "cmudict": "cmudict.rep",
    "cmudict_fast": "cmudict-fast.rep",
    "engdict_hot": "engdict-hot.rep",
    "namedict": "namedict_cache.pickle",
    "opencpop": "opencpop-strict.txt",
    "polyphonic": "g2pw/polyphonic.rep",
    "polyphonic_fix": "g2pw/polyphonic-fix.rep",
    "char_convert": "zh_normalization/char_convert.py",
}

_override: Path | None = None


def set_upstream_text_dir(path: str | os.PathLike | None) -> None:
    """Use ``path`` instead of ``$GSV_UPSTREAM_TEXT`` (None: back to the environment)."""
    global _override
    _override = Path(path) if path is not None else None


def upstream_text_dir() -> Path | None:
    """The configured ``GPT_SoVITS/text`` folder, or None when none is configured."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env) if env else None


def upstream_file(key: str) -> Path | None:
    """Path of one of ``FILES`` inside the configured folder, or None if absent."""
    base = upstream_text_dir()
    if base is None:
        return None
    path = base / FILES[key]
    return path if path.is_file() else None


def status() -> dict:
    """What the front end has: which upstream files were found (for /health and manifests)."""
    base = upstream_text_dir()
    found = {k: upstream_file(k) is not None for k in FILES}
    return {"upstream_text_dir": str(base) if base else None, "files": found,
            "parity": all(found.values())}
