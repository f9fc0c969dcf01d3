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

import ast
import os
import threading
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


_t2s_lock = threading.Lock()
_t2s: tuple[Path | None, dict[str, str]] | None = None   # (folder it came from, table)


def traditional_to_simplified_table() -> dict[str, str]:
    """Upstream's traditional → simplified pairs (``zh_normalization/char_convert.py``: two
    string literals, parsed, never imported; later pairs win as in upstream's dict build).
    Empty without the file; read again when the configured folder changes."""
    global _t2s
    source = upstream_text_dir()
    with _t2s_lock:
        if _t2s is not None and _t2s[0] == source:
            return _t2s[1]
        table: dict[str, str] = {}
        path = upstream_file("char_convert")
        if path is not None:
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot parse {path}: {exc}") from None
            literals = {node.targets[0].id: node.value.value for node in tree.body
                        if isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name)
                        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
            table = dict(zip(literals.get("traditional_characters", ""), literals.get("simplified_charcters", "")))
        _t2s = (source, table)
        return table
