"""One language segment → phones: upstream v2's ``clean_text`` step.

Dispatches to the language modules (Chinese, English, Japanese, Korean, Cantonese), then
applies the cleaner's own rules, in upstream's order:

* a Chinese segment containing ``￥`` or ``^`` is read with that mark as a pause, and every
  pause of the segment becomes ``SP2`` (for ``￥``) or ``SP3`` (for ``^``);
* an English segment of fewer than 4 phones gets a leading ``,``;
* a phone missing from the v2 table becomes ``UNK``;
* a language the cleaner does not know is read as a single English space.

Japanese and Korean need packages that may be absent; they are imported on first use.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .symbols import symbol_to_id

# The cleaner's special marks: (mark, language it applies to, symbol its pauses become).
SPECIAL_MARKS = (("￥", "zh", "SP2"), ("^", "zh", "SP3"))

_MODULES = {"zh": ("zh_normalize", "zh_g2p"), "en": ("en_normalize", "en_g2p"),
            "ja": ("ja", "ja"), "ko": ("ko", "ko"), "yue": ("yue", "yue")}


@dataclass
class CleanSegment:
    """What the cleaner made of one segment (one language)."""

    lang: str                      # zh, en, ja, ko, yue
    text: str                      # the segment as the splitter gave it
    norm_text: str                 # normalized text (the BERT input for zh)
    phones: list[str]              # v2 symbols
    word2ph: list[int] | None      # phones per char of norm_text (zh, yue), else None


def _module(name: str):
    return importlib.import_module(f"{__package__}.{name}")


def _normalizer(lang: str):
    return _module(_MODULES[lang][0]).text_normalize


def _g2p(lang: str, norm_text: str, g2pw=None):
    mod = _module(_MODULES[lang][1])
    if lang == "zh":
        return mod.g2p(norm_text, g2pw)
    return mod.g2p(norm_text)


def clean_segment(text: str, lang: str, g2pw=None) -> CleanSegment:
    """Upstream's ``clean_text(text, lang, "v2")``; ``g2pw`` is a loaded G2PW model or None."""
    if lang not in _MODULES:
        lang, text = "en", " "
    for mark, mark_lang, symbol in SPECIAL_MARKS:
        if lang == mark_lang and mark in text:
            return _clean_special(text, lang, mark, symbol, g2pw)
    norm_text = _normalizer(lang)(text)
    word2ph = None
    if lang in ("zh", "yue"):
        phones, word2ph = _g2p(lang, norm_text, g2pw)
        if len(phones) != sum(word2ph) or len(norm_text) != len(word2ph):
            raise RuntimeError(f"{lang} g2p misaligned on {norm_text!r}")  # a bug, not input
    else:
        phones = _g2p(lang, norm_text)
        if lang == "en" and len(phones) < 4:
            phones = [","] + phones
    table = symbol_to_id()
    phones = [p if p in table else "UNK" for p in phones]
    return CleanSegment(lang, text, norm_text, phones, word2ph)


def _clean_special(text: str, lang: str, mark: str, symbol: str, g2pw) -> CleanSegment:
    norm_text = _normalizer(lang)(text.replace(mark, ","))
    phones, word2ph = _g2p(lang, norm_text, g2pw)
    phones = [symbol if p == "," else p for p in phones]
    return CleanSegment(lang, text, norm_text, phones, word2ph)
