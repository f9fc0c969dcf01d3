"""Normalized Mandarin text -> v2 phones and ``word2ph``, as upstream ``chinese2.g2p``.

Per punctuation-delimited sentence: Latin letters are dropped, jieba (``jieba_fast.posseg``)
cuts and tags words, ``tone_sandhi.pre_merge`` regroups them, and each word gets its
initials/finals either from pypinyin (no G2PW) or from the G2PW model's per-character
readings corrected by upstream's phrase dictionary.  Tone sandhi and the erhua tone rule
follow, then each syllable becomes an initial + toned final symbol (``pinyin_phones``);
punctuation stays one symbol.  ``word2ph`` counts phones per character (2, or 1 for
punctuation), which is what BERT features are expanded by.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING

import jieba_fast
import jieba_fast.posseg as psg
from pypinyin import Style, lazy_pinyin
from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

from . import tone_sandhi
from .g2pw import correct_pronunciation
from .pinyin_phones import PINYIN_TO_PHONES

if TYPE_CHECKING:
    from .g2pw import G2PW

jieba_fast.setLogLevel(logging.CRITICAL)

PUNCTUATION = ("!", "?", "…", ",", ".", "-")

# Erhua: words always / never read with the 儿 taking the previous syllable's tone.
MUST_ERHUA = frozenset("小院儿 胡同儿 范儿 老汉儿 撒欢儿 寻老礼儿 妥妥儿 媳妇儿".split())
NOT_ERHUA = frozenset("""
一儿 为儿 乞儿 体弱儿 侄儿 侄孙儿 俺儿 可儿 女儿 妻儿 婴儿 婴幼儿 孙儿 孤儿 少儿 幼儿 应采儿 患儿 我儿 护儿 拐儿 救儿 替儿 有儿 流浪儿 混血儿 狗儿 猪儿 猫儿 男儿
瞒儿 祖儿 红孩儿 美儿 聋儿 脑瘫儿 舫儿 花儿 虐儿 虫儿 蜜雪儿 连体儿 马儿 鸟儿
""".split())

# pypinyin's strict finals -> the spelling the syllable table uses.
_FINAL_SPELLING = {"uei": "ui", "iou": "iu", "uen": "un"}
# Zero-initial syllables: whole finals, else the first letter rewritten.
_ZERO_WHOLE = {"ing": "ying", "i": "yi", "in": "yin", "u": "wu"}
_ZERO_LEAD = {"v": "yu", "e": "e", "i": "y", "u": "w"}


def split_sentences(text: str) -> list[str]:
    """Cut after every punctuation mark (eating the whitespace after it); drop blank pieces."""
    pieces: list[str] = []
    start = 0
    i, n = 0, len(text)
    while i < n:
        if text[i] in PUNCTUATION:
            end = i + 1
            pieces.append(text[start:end])
            while end < n and text[end].isspace():
                end += 1
            start = end
            i = end
        else:
            i += 1
    pieces.append(text[start:])
    return [p for p in pieces if p.strip() != ""]


def _drop_latin(text: str) -> str:
    return "".join(ch for ch in text if not ("a" <= ch <= "z" or "A" <= ch <= "Z"))


def _erhua(initials: list[str], finals: list[str], word: str, pos: str) -> tuple[list[str], list[str]]:
    """A final 儿 is er2, and (outside the exception lists) takes the previous syllable's tone."""
    last = len(finals) - 1
    if last >= 0 and word[last] == "儿" and finals[last] == "er1":
        finals[last] = "er2"
    if word not in MUST_ERHUA and (word in NOT_ERHUA or pos in ("a", "j", "nr")):
        return initials, finals
    if len(finals) != len(word):
        return initials, finals
    if (last >= 1 and word[last] == "儿" and finals[last] in ("er2", "er5")
            and word[-2:] not in NOT_ERHUA):
        finals[last] = "er" + finals[last - 1][-1]
    return initials, finals


def _syllable(initial: str, final: str) -> list[str]:
    """Phones of one (initial, toned final) pair; punctuation passes through as one phone."""
    if initial == final:
        if initial not in PUNCTUATION:
            raise ValueError(f"no phones for {initial!r}")
        return [initial]
    if not final or final[-1] not in "12345":
        raise ValueError(f"pinyin {initial + final!r} has no tone")
    base, tone = final[:-1], final[-1]
    if initial:
        spelled = initial + _FINAL_SPELLING.get(base, base)
    elif base in _ZERO_WHOLE:
        spelled = _ZERO_WHOLE[base]
    elif base:
        spelled = _ZERO_LEAD.get(base[0], base[0]) + base[1:]
    else:
        raise ValueError(f"pinyin {final!r} has no syllable")
    phones = PINYIN_TO_PHONES.get(spelled)
    if phones is None:
        raise ValueError(f"pinyin {spelled!r} is not in the v2 syllable table")
    return [phones[0], phones[1] + tone]


@lru_cache(maxsize=8192)
def _initials_of(word: str) -> tuple[str, ...]:
    return tuple(lazy_pinyin(word, neutral_tone_with_five=True, style=Style.INITIALS))


def _pypinyin_word(word: str) -> tuple[list[str], list[str]]:
    initials = _initials_of(word)
    finals = tone_sandhi.finals_of(word)
    n = min(len(initials), len(finals))
    return list(initials[:n]), list(finals[:n])


def _g2pw_word(word: str, readings: list) -> tuple[list[str], list[str]]:
    initials: list[str] = []
    finals: list[str] = []
    for reading in correct_pronunciation(word, readings):
        if not isinstance(reading, str) or not reading:
            raise ValueError(f"G2PW gave no reading inside {word!r}")
        if reading[0].isalpha():
            initials.append(to_initials(reading))
            finals.append(to_finals_tone3(reading, neutral_tone_with_five=True))
        else:
            initials.append(reading)
            finals.append(reading)
    return initials, finals


def g2p(norm_text: str, g2pw: G2PW | None = None) -> tuple[list[str], list[int]]:
    """Phones and per-character phone counts of normalized Chinese text (upstream ``g2p``)."""
    segments = [_drop_latin(s) for s in split_sentences(norm_text)]
    readings: list[list] = []
    if g2pw is not None:
        batch = [s for s in segments if s]
        readings = g2pw.pinyin(batch) if batch else []
    phones: list[str] = []
    word2ph: list[int] = []
    cursor = 0
    for seg in segments:
        seg_readings: list = []
        if g2pw is not None and seg:
            seg_readings = readings[cursor]
            cursor += 1
        offset = 0
        for word, pos in tone_sandhi.pre_merge(psg.lcut(seg)):
            start, offset = offset, offset + len(word)
            if pos == "eng":
                continue
            if g2pw is None:
                initials, finals = _pypinyin_word(word)
            else:
                initials, finals = _g2pw_word(word, seg_readings[start:offset])
            finals = tone_sandhi.modified_tone(word, pos, finals)
            initials, finals = _erhua(initials, finals, word, pos)
            for initial, final in zip(initials, finals):
                syllable = _syllable(initial, final)
                phones.extend(syllable)
                word2ph.append(len(syllable))
    return phones, word2ph
