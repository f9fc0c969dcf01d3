"""Cantonese text -> GPT-SoVITS v2 phones (upstream ``text/cantonese.py``).

Upstream normalizes Cantonese with the *Mandarin* normalizer (so 係 becomes 系, some
numbers are read digit by digit, and characters outside U+4E00..U+9FA5 such as 㗎 are
dropped), then maps its own punctuation set.  Readings come from ToJyutping, one per
character, chosen with phrase context.  Each syllable becomes a "Y"-prefixed initial and
a "Y"-prefixed final carrying the tone digit; ``word2ph`` gives 2 per syllable and 1 per
punctuation mark.
"""
from __future__ import annotations

import re
import threading
from typing import Any

from .symbols import PUNCTUATION

# Upstream's split of a syllable: the *first* entry (in this order) that the syllable
# starts with is its "initial" (some are really finals: aa, ai, ou, ung ...); the rest is
# the final, or the last letter of the initial when nothing is left.  The order matters.
_INITIALS = (
    "aa aai aak aap aat aau ai au ap at ak a p b e ts t dz d kw k gw g f h l m ng n s y w "
    "c z j ong on ou oi ok o uk ung sp spl spn sil"
).split()

_MARKS = frozenset(PUNCTUATION)  # ! ? … , . -
_TO_MARK = str.maketrans({
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
    "、": ",", "$": ".", "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'",
    "）": "'", "(": "'", ")": "'", "《": "'", "》": "'", "【": "'", "】": "'", "[": "'",
    "]": "'", "—": "-", "～": "-", "~": "-", "「": "'", "」": "'",
})
# What survives: CJK unified ideographs U+4E00..U+9FA5 and the six marks.
_DROPPED = re.compile("[^\u4e00-\u9fa5" + re.escape("".join(PUNCTUATION)) + "]+")
_READING = re.compile("(?:[a-z]+[1-6]+ ?)+")

_lock = threading.Lock()
_converter: Any = None


def replace_punctuation(text: str) -> str:
    """Map punctuation onto the six phone marks and drop every other non-hanzi.

    Upstream does this in one regex pass, so ``...`` becomes ``…`` only where the input
    itself has three dots (a ``。`` turned into ``.`` does not join them)."""
    return _DROPPED.sub("", text.replace("...", "…").translate(_TO_MARK))


def text_normalize(text: str) -> str:
    """Mandarin clause normalization, then Cantonese punctuation, clause by clause."""
    from .zh_normalize import normalize_sentences

    return "".join(replace_punctuation(s) for s in normalize_sentences(text))


def _jyutping_list(text: str) -> list[tuple[str, str | None]]:
    global _converter
    if _converter is None:
        with _lock:
            if _converter is None:
                try:
                    import ToJyutping
                except ImportError:
                    raise ValueError("Cantonese needs ToJyutping: pip install ToJyutping==3.2.0") from None
                _converter = ToJyutping
    return _converter.get_jyutping_list(text)


def _syllables(text: str) -> list[str]:
    """Readings in order; a run of marks contributes one item per mark."""
    items: list[str] = []
    for word, reading in _jyutping_list(text):
        if word and all(ch in _MARKS for ch in word):
            items.extend(word)
        elif reading is None or not _READING.fullmatch(reading):
            raise ValueError(f"Cantonese: no jyutping for {word!r}")
        else:
            items.append(reading)
    return items


def _phone(symbol: str) -> str:
    return symbol if symbol in _MARKS else "Y" + symbol


def _syllable_phones(syllable: str) -> list[str]:
    """One reading -> [initial, final+tone], or [] when no initial fits (as upstream)."""
    try:
        tone, base = int(syllable[-1]), syllable[:-1]
    except ValueError:
        tone, base = 0, syllable
    for initial in _INITIALS:
        if base.startswith(initial):
            final = base[len(initial):] or initial[-1]
            return [_phone(initial), _phone(f"{final}{tone}" if tone else final)]
    return []


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    """Normalized Cantonese text -> (raw phones, phones per character)."""
    phones: list[str] = []
    word2ph: list[int] = []
    for syllable in _syllables(norm_text):
        if syllable in _MARKS or syllable == "_":
            phones.append(_phone(syllable))
            word2ph.append(1)
            continue
        pair = _syllable_phones(syllable)
        if pair:
            phones.extend(pair)
            word2ph.append(2)
    return phones, word2ph
