"""Korean text -> GPT-SoVITS v2 phones (upstream ``text/korean.py``).

Upstream's Korean path has no normalization step: the cleaner passes the segment text
straight to ``g2p``.  ``g2p`` spells Latin letters in Hangul, asks g2pk2 how the Hangul
is pronounced (see ``ko_g2pk``), splits the result into compatibility jamo with compound
vowels as two jamo, fixes one g2pk2 liaison error, adds a pause after a trailing jamo,
and emits one phone per character; characters outside the v2 table become ``停``.
"""
from __future__ import annotations

import re
from functools import lru_cache

from .symbols import symbols_v2

# Letter names used for Latin letters.  Upstream applies one case-insensitive regex per
# letter, and Python's Unicode case folding also matches İ/ı (as i), K (Kelvin sign, as k)
# and ſ (long s, as s); they are listed so that they read the same.
_LETTER_NAMES = dict(zip(
    "abcdefghijklmnopqrstuvwxyz",
    ("에이 비 시 디 이 에프 지 에이치 아이 제이 케이 엘 엠 엔 오 피 큐 아르 에스 티 유 브이 "
     "더블유 엑스 와이 제트").split(),
))
_LATIN = str.maketrans({
    **_LETTER_NAMES,
    **{k.upper(): v for k, v in _LETTER_NAMES.items()},
    "\u0130": _LETTER_NAMES["i"], "\u0131": _LETTER_NAMES["i"],
    "\u212a": _LETTER_NAMES["k"], "\u017f": _LETTER_NAMES["s"],
})

# Compound vowels become their two simple vowels (the v2 table has only simple ones).
# Final consonant clusters (ㄳ, ㄺ, ...) are deliberately left whole, as upstream does.
_SPLIT_VOWELS = str.maketrans({
    "ㅘ": "ㅗㅏ", "ㅙ": "ㅗㅐ", "ㅚ": "ㅗㅣ", "ㅝ": "ㅜㅓ", "ㅞ": "ㅜㅔ", "ㅟ": "ㅜㅣ",
    "ㅢ": "ㅡㅣ", "ㅑ": "ㅣㅏ", "ㅒ": "ㅣㅐ", "ㅕ": "ㅣㅓ", "ㅖ": "ㅣㅔ", "ㅛ": "ㅣㅗ",
    "ㅠ": "ㅣㅜ",
})

# g2pk2 writes the onset of a word after 을/를 as ㄹ ("을 리" for "을 이"); upstream reads
# it as ㄴ.  Left to right, non-overlapping, like upstream's scan.
_EUL_LIAISON = re.compile("([ㅇㄹ]ㅡㄹ) ㄹ")
# A final bare jamo gets a "." after it ($ also matches before a final newline).
_FINAL_JAMO = re.compile("([\u3131-\u3163])$")

# Per-character phone renames before the table check.
_PHONE_RENAME = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".",
    "·": ",", "、": ",", " ": "空",
}
_UNKNOWN = "停"


@lru_cache(maxsize=1)
def _table() -> frozenset[str]:
    return frozenset(symbols_v2())


def text_normalize(text: str) -> str:
    """Identity: upstream's korean module has no ``text_normalize``."""
    return text


def latin_to_hangul(text: str) -> str:
    """Spell every Latin letter by its Korean letter name (``a`` -> ``에이``)."""
    return text.translate(_LATIN)


_JAMO_OF: dict[str, str] = {}  # Hangul character -> its compatibility jamo (memo)


def _is_hangul(ch: str) -> bool:
    c = ord(ch)
    return 0x1100 <= c <= 0x11FF or 0xA960 <= c <= 0xA97F or 0xAC00 <= c <= 0xD7FF


def _to_jamo(pronounced: str) -> str:
    """Syllables -> compatibility jamo, compound vowels split (upstream divide_hangul).

    jamo maps character by character and leaves non-Hangul alone, so a per-character
    memo gives the same string; it rejects archaic jamo (U+A960.., U+D7B0..), as
    upstream does."""
    try:
        from jamo import h2j, j2hcj
    except ImportError:
        raise ValueError("Korean needs jamo: pip install jamo==0.4.1") from None
    parts = []
    for ch in pronounced:
        out = _JAMO_OF.get(ch)
        if out is None:
            if not _is_hangul(ch):
                out = ch.translate(_SPLIT_VOWELS)
            else:
                try:
                    out = j2hcj(h2j(ch)).translate(_SPLIT_VOWELS)
                except Exception:  # jamo.InvalidJamoError
                    raise ValueError(f"Korean: unsupported jamo U+{ord(ch):04X}") from None
                _JAMO_OF[ch] = out
        parts.append(out)
    return "".join(parts)


def _phone(ch: str) -> str:
    ch = _PHONE_RENAME.get(ch, ch)
    return ch if ch in _table() else _UNKNOWN


def g2p(norm_text: str) -> list[str]:
    """Korean text -> raw phones (one per jamo, pause or punctuation)."""
    from .ko_g2pk import pronounce

    jamo_text = _to_jamo(pronounce(latin_to_hangul(norm_text)))
    jamo_text = _EUL_LIAISON.sub("\\1 ㄴ", jamo_text)
    jamo_text = _FINAL_JAMO.sub("\\1.", jamo_text)
    return [_phone(ch) for ch in jamo_text]
