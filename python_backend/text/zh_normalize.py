"""Mandarin text normalization, as upstream GPT-SoVITS v2 does it before Chinese G2P.

Upstream (``chinese2.text_normalize``) splits the text into clauses, rewrites each clause
(traditional -> simplified characters, full-width letters/digits -> ASCII, digit expressions
read out, symbols and Greek letters spelled), maps punctuation onto the six marks the phone
table knows, drops every other non-hanzi character, and folds runs of marks into the first.
Phones are aligned to this text one character at a time, so it has to match exactly.

The traditional -> simplified table is upstream's own
(``GPT_SoVITS/text/zh_normalization/char_convert.py``), read as data through
``resources.upstream_file("char_convert")``.  Without that file no conversion is done:
traditional characters then keep their own readings.

Everything here is a single left-to-right pass per step: linear in the text length.
"""
from __future__ import annotations

import re
import string
import threading

from . import resources
from .zh_numbers import ascii_digits, verbalize_sentence_numbers

# ---------------------------------------------------------------- clause splitting

# A clause ends after one of these marks, plus a closing quote if one follows.
_CLAUSE_END = re.compile(r"([：、，；。？！,;?!][”’]?)")
# Removed before splitting (ASCII spaces too).
_SPLIT_DROP = str.maketrans("", "", " —《》【】<>{}()（）#&@“”^_|\\")


def _split_clauses(text: str) -> list[str]:
    text = text.translate(_SPLIT_DROP)
    text = _CLAUSE_END.sub("\\1\n", text).strip()
    return [clause.strip() for clause in re.split(r"\n+", text)]


# ---------------------------------------------------------------- character conversion

# Upstream's ideographic-space entry is keyed by a str, which str.translate ignores: so
# U+3000 is kept here too (replace_punctuation drops it later).
_F2H = {0xFF00 + ord(c) - 0x20: c for c in string.ascii_letters + string.digits}

_table_lock = threading.Lock()
_char_table: dict[int, str] | None = None


def _character_table() -> dict[int, str]:
    """One ``str.translate`` table: traditional -> simplified, then full width -> ASCII."""
    global _char_table
    with _table_lock:
        if _char_table is None:
            table = {ord(t): s for t, s in resources.traditional_to_simplified_table().items()}
            for code, value in list(table.items()):
                table[code] = _F2H.get(ord(value), value) if len(value) == 1 else value
            for code, value in _F2H.items():
                table.setdefault(code, value)
            _char_table = table
        return _char_table


def reset_cache() -> None:
    """Forget the loaded table (after the upstream folder changed; tests)."""
    global _char_table
    with _table_lock:
        _char_table = None


# ---------------------------------------------------------------- symbols left after numbers

_GREEK = {
    "α": "阿尔法", "β": "贝塔", "γ": "伽玛", "Γ": "伽玛", "δ": "德尔塔", "Δ": "德尔塔",
    "ε": "艾普西龙", "ζ": "捷塔", "η": "依塔", "θ": "西塔", "Θ": "西塔", "ι": "艾欧塔",
    "κ": "喀帕", "λ": "拉姆达", "Λ": "拉姆达", "μ": "缪", "ν": "拗", "ξ": "克西", "Ξ": "克西",
    "ο": "欧米克伦", "π": "派", "Π": "派", "ρ": "肉", "ς": "西格玛", "Σ": "西格玛",
    "σ": "西格玛", "τ": "套", "υ": "宇普西龙", "φ": "服艾", "Φ": "服艾", "χ": "器",
    "ψ": "普赛", "Ψ": "普赛", "ω": "欧米伽", "Ω": "欧米伽",
}
# "/" reads 每 (100元/件), circled numbers and leftover operators become words, and a few
# brackets/symbols go.  All replacements are hanzi, so one translate table does it.
_SYMBOL_WORDS = {"/": "每", "+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等"}
_SYMBOL_WORDS.update(zip("①②③④⑤⑥⑦⑧⑨⑩", "一二三四五六七八九十"))
_SYMBOL_WORDS.update(_GREEK)
_SYMBOLS = str.maketrans(_SYMBOL_WORDS)
_SYMBOLS.update(str.maketrans("", "", "—《》【】<>{}()（）#&@“”^_|\\"))


def normalize_clause(clause: str) -> str:
    """Rewrite one clause: characters, digit expressions, symbols (upstream's order)."""
    clause = ascii_digits(clause.translate(_character_table()))
    clause = verbalize_sentence_numbers(clause)
    return clause.translate(_SYMBOLS)


def normalize_sentences(text: str) -> list[str]:
    """Clauses of ``text``, each normalized (upstream ``TextNormalizer().normalize``).

    Marks are still the original ones (，。！ ...); Cantonese reuses this.
    """
    return [normalize_clause(c) for c in _split_clauses(text)]


# ---------------------------------------------------------------- punctuation

PUNCTUATION = "!?…,.-"  # the marks the v2 phone table has (one phone each)

_MARKS = str.maketrans({
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
    "、": ",", "$": ".", "/": ",", "—": "-", "~": "…", "～": "…", "嗯": "恩", "呣": "母",
})
_NOT_KEPT = re.compile(r"[^\u4e00-\u9fa5!?…,.\-]+")
_MARK_RUN = re.compile(r"([!?…,.\-])[!?…,.\-]+")


def replace_punctuation(text: str) -> str:
    """Map marks onto the phone table's six and drop everything but hanzi and those marks.

    "..." becomes "…" before the single marks are mapped, so that 。。。 stays three dots.
    """
    text = text.replace("...", "…").translate(_MARKS)
    return _NOT_KEPT.sub("", text)


def replace_consecutive_punctuation(text: str) -> str:
    """Keep only the first mark of each run of marks."""
    return _MARK_RUN.sub("\\1", text)


def text_normalize(text: str) -> str:
    """Upstream ``chinese2.text_normalize``: the text the Chinese phones are aligned to."""
    return replace_consecutive_punctuation(
        "".join(replace_punctuation(c) for c in normalize_sentences(text)))
