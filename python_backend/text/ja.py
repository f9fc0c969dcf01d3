"""Japanese front end: the phones upstream GPT-SoVITS v2 gets from ``text/japanese.py``.

Upstream reads Japanese through Open JTalk (``pyopenjtalk``) and keeps its prosody marks
(``[`` rise, ``]`` fall, ``#`` accent-phrase border, ``_`` pause); the ones that are not
in the v2 table (``#``, ``_``, brackets such as ``「``) are left raw here and become
``UNK`` in the caller, exactly as upstream's cleaner does.

``pyopenjtalk`` (0.4.1, the version the conformance kit used) is imported only when
Japanese is first spoken, so the rest of the front end works without it.  Its own
global engine downloads a dictionary on first use; this module never uses that engine:
it builds its own ``OpenJTalk`` on a dictionary directory it finds locally
(``$OPEN_JTALK_DICT_DIR``, Debian's ``open-jtalk-mecab-naist-jdic``, or one pyopenjtalk
already extracted) and raises ``ValueError`` when there is none.

Upstream also loads ``ja_userdic/userdict.csv`` when present; the kit's run had none,
so none is used by default.  A compiled MeCab user dictionary can be given with
``$GSV_JA_USER_DICT`` or ``configure(user_dict=...)``.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

DICT_ENV = "OPEN_JTALK_DICT_DIR"
USER_DICT_ENV = "GSV_JA_USER_DICT"
DEBIAN_DICT_DIR = Path("/var/lib/mecab/dic/open-jtalk/naist-jdic")
# The folder pyopenjtalk 0.4.1 extracts its downloaded dictionary into.
_PACKAGE_DICT_NAME = "open_jtalk_dic_utf_8-1.11"
_DICT_FILES = ("sys.dic", "unk.dic", "char.bin", "matrix.bin")

# Punctuation upstream folds when repeated (its ``punctuation`` list of the v2 symbols).
_FOLDED_PUNCTUATION = frozenset("!?…,.-")

# Marks that upstream rewrites after g2p; anything else passes through unchanged.
_MARK_TO_PHONE = {
    "：": ",", "；": ",", "，": ",", "、": ",", "·": ",",
    "。": ".", "\n": ".", "！": "!", "？": "?",
}

# Inclusive code-point ranges that upstream counts as "Japanese" text (readable by
# Open JTalk); every other character is a mark that splits the text.  Unicode decimal
# digits (regex ``\d``) are Japanese too, see ``_is_japanese``.
_JAPANESE_RANGES = (
    (0x41, 0x5A), (0x61, 0x7A),            # ASCII letters
    (0x3005, 0x3005),                      # 々
    (0x3040, 0x30FF),                      # hiragana, katakana
    (0x4E00, 0x9FFF),                      # CJK ideographs
    (0xFF11, 0xFF19),                      # fullwidth 1-9
    (0xFF21, 0xFF3A), (0xFF41, 0xFF5A),    # fullwidth letters
    (0xFF66, 0xFF9D),                      # halfwidth katakana
)

# Fields of an Open JTalk full-context label (fixed layout, bounded length), read the way
# espnet's prosody recipe reads them: the first match anywhere in the label, -50 if none.
_LABEL_FIELDS = {
    "a1": re.compile(r"/A:([0-9\-]+)\+"),
    "a2": re.compile(r"\+(\d+)\+"),
    "a3": re.compile(r"\+(\d+)/"),
    "e3": re.compile(r"!(\d+)_"),
    "f1": re.compile(r"/F:(\d+)_"),
}
_MISSING = -50

# Longest run handed to Open JTalk in one call.  pyopenjtalk 0.4.1 converts the text into
# a fixed 8192-byte buffer without a bound check (a few thousand characters crash the
# process), and its label maker is super-linear in the run length.  Upstream's pipeline
# cuts pieces at 510 characters, so runs up to that length read exactly as upstream's;
# longer runs (which upstream reads slowly or crashes on) are read in 510-character
# slices, at most 4 UTF-8 bytes each after conversion: far inside the buffer.
MAX_RUN = 510


def text_normalize(text: str) -> str:
    """Fold runs of v2 punctuation to their first mark (upstream does nothing else)."""
    out: list[str] = []
    prev_folded = False
    for ch in text:
        folded = ch in _FOLDED_PUNCTUATION
        if not (folded and prev_folded):
            out.append(ch)
        prev_folded = folded
    return "".join(out)


def g2p(norm_text: str) -> list[str]:
    """Raw phones with prosody marks, as upstream's ``japanese.g2p(text)`` returns them."""
    text = norm_text.replace("％", "パーセント").lower()
    phones: list[str] = []
    run: list[str] = []
    for ch in text:
        if _is_japanese(ch):
            run.append(ch)
            continue
        if run:
            phones += _prosody_phones("".join(run))
            run = []
        if ch != " ":
            phones.append(_MARK_TO_PHONE.get(ch, ch))
    if run:
        phones += _prosody_phones("".join(run))
    return phones


def _is_japanese(ch: str) -> bool:
    cp = ord(ch)
    for lo, hi in _JAPANESE_RANGES:
        if lo <= cp <= hi:
            return True
    return ch.isdecimal()


# ---------------------------------------------------------------------------- prosody

def _prosody_phones(run: str) -> list[str]:
    """Phones of one run of Japanese text, without the sentence start/end marks.

    Upstream takes espnet's ``pyopenjtalk_g2p_prosody`` and drops its first and last
    item (``^`` and ``$``/``?``), whatever they are.
    """
    if len(run) > MAX_RUN:
        out: list[str] = []
        for start in range(0, len(run), MAX_RUN):
            out += _prosody_phones(run[start:start + MAX_RUN])
        return out
    labels = _labels(run)
    fields = [_label_fields(label) for label in labels]
    phones: list[str] = []
    last = len(labels) - 1
    for n, label in enumerate(labels):
        p3 = _current_phoneme(label)
        if p3 in "AEIOU":          # unvoiced vowels are read as plain vowels
            p3 = p3.lower()
        if p3 == "sil":
            if n == 0:
                phones.append("^")
            elif n == last:
                question = fields[n]["e3"]
                if question == 0:
                    phones.append("$")
                elif question == 1:
                    phones.append("?")
            continue
        if p3 == "pau":
            phones.append("_")
            continue
        phones.append(p3)
        f = fields[n]
        next_a2 = fields[n + 1]["a2"]
        if f["a3"] == 1 and next_a2 == 1 and p3 in "aeiouAEIOUNcl":
            phones.append("#")
        elif f["a1"] == 0 and next_a2 == f["a2"] + 1 and f["a2"] != f["f1"]:
            phones.append("]")
        elif f["a2"] == 1 and next_a2 == 2:
            phones.append("[")
    return phones[1:-1]


def _current_phoneme(label: str) -> str:
    """The phoneme between the first ``-`` and the ``+`` after it."""
    start = label.index("-") + 1
    return label[start:label.index("+", start)]


def _label_fields(label: str) -> dict[str, int]:
    out = {}
    for name, pattern in _LABEL_FIELDS.items():
        m = pattern.search(label)
        out[name] = int(m.group(1)) if m else _MISSING
    return out


# ----------------------------------------------------------------------------- engine

_lock = threading.Lock()
_engine: Any = None
_settings: dict[str, str | None] = {"dict_dir": None, "user_dict": None}


def configure(dict_dir: str | os.PathLike | None = None,
              user_dict: str | os.PathLike | None = None) -> None:
    """Choose the Open JTalk dictionary / compiled user dictionary (None: environment).

    Takes effect on the next call (the engine is rebuilt).
    """
    global _engine
    with _lock:
        _settings["dict_dir"] = os.fspath(dict_dir) if dict_dir is not None else None
        _settings["user_dict"] = os.fspath(user_dict) if user_dict is not None else None
        _engine = None


def _labels(text: str) -> list[str]:
    with _lock:
        engine = _engine or _make_engine()
        return list(engine.make_label(engine.run_frontend(text)))


def _make_engine() -> Any:
    """Build the Open JTalk engine (caller holds ``_lock``)."""
    global _engine
    try:
        from pyopenjtalk.openjtalk import OpenJTalk
    except ImportError as exc:
        raise ValueError("Japanese needs pyopenjtalk (pip install pyopenjtalk==0.4.1)") from exc
    dict_dir = find_dict_dir()
    user_dict = _settings["user_dict"] or os.environ.get(USER_DICT_ENV, "").strip() or None
    if user_dict is not None and not Path(user_dict).is_file():
        raise ValueError(f"Japanese user dictionary not found: {user_dict}")
    kwargs = {"dn_mecab": str(dict_dir).encode("utf-8")}
    if user_dict is not None:
        kwargs["userdic"] = user_dict.encode("utf-8")
    try:
        _engine = OpenJTalk(**kwargs)
    except RuntimeError as exc:
        raise ValueError(f"Open JTalk could not load the dictionary in {dict_dir}: {exc}") from exc
    return _engine


def find_dict_dir() -> Path:
    """The Open JTalk dictionary directory to use; ValueError if none is installed.

    Order: ``configure(dict_dir=...)``, ``$OPEN_JTALK_DICT_DIR``, Debian's package,
    then a dictionary pyopenjtalk extracted earlier.  Nothing is ever downloaded.
    """
    explicit = _settings["dict_dir"] or os.environ.get(DICT_ENV, "").strip()
    if explicit:
        if _is_dict_dir(Path(explicit)):
            return Path(explicit)
        raise ValueError(f"{explicit} is not an Open JTalk dictionary ({DICT_ENV} or configure())")
    candidates = [DEBIAN_DICT_DIR]
    try:
        import pyopenjtalk  # noqa: F401  (import only; its dictionary is never fetched)
        candidates.append(Path(pyopenjtalk.__file__).parent / _PACKAGE_DICT_NAME)
    except ImportError:
        pass
    for path in candidates:
        if _is_dict_dir(path):
            return path
    raise ValueError("Japanese needs the Open JTalk dictionary: apt-get install "
                     f"open-jtalk-mecab-naist-jdic, or set {DICT_ENV}")


def _is_dict_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in _DICT_FILES)
