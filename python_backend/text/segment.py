"""Language runs and sentence splitting.

``split_languages``: mixed Chinese/English text -> [(lang, text), ...] runs.
Hanzi are ``zh``; Latin letters are ``en``.  A number token (digits with inner
``.,:/-``, an optional currency sign before it and ``%``/``℃``/``°`` after it) takes
the language of the letter/hanzi touching it on the left, else the one touching
it on the right, else the previous run, else the next run; with nothing to go
by it is ``zh`` when the text contains any hanzi, else ``en``.  Spaces and
punctuation stay with the run before them (leading ones go to the first run).
Characters that are neither (kana, hangul, emoji, ...) are dropped later by the
normalizers.

``split_sentences``: cut after sentence-final marks 。！？!?… and after ``.``
unless it sits inside a number (3.14) or ends a common abbreviation (Mr.);
newlines also end a sentence.  A sentence longer than ``max_chars`` (default
``DEFAULT_MAX_CHARS`` = 60 characters, whitespace included) is cut again at
the last clause mark (，,、；;：:) that keeps the piece within the limit, then at
the last space, and as a last resort hard at ``max_chars``.  Pieces holding no
letter, digit or hanzi (stray punctuation) are appended to the previous piece,
which may then exceed ``max_chars`` by those marks.
"""
from __future__ import annotations

import re

from .normalize import is_hanzi, to_half_width

DEFAULT_MAX_CHARS = 60

_NUM_TOKEN = re.compile(r"[$¥￥€£]?\d(?:[\d.,:/\-]*\d)?(?:%|℃|°C|°)?")


def _char_lang(ch: str) -> str | None:
    if is_hanzi(ch):
        return "zh"
    if ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("\u00c0" <= ch <= "\u024f" and ch.isalpha()):
        return "en"
    return None


def split_languages(text: str, mode: str = "auto") -> list[tuple[str, str]]:
    """Split text into consecutive (language, text) runs; mode 'zh' reads every
    number in Chinese, mode 'en' makes the whole text one English run."""
    text = to_half_width(text)
    if mode == "en":
        return [("en", text)] if text.strip() else []
    n = len(text)
    langs: list[str | None] = [_char_lang(c) for c in text]
    default = "zh" if any(l == "zh" for l in langs) else "en"
    # number tokens
    for m in _NUM_TOKEN.finditer(text):
        s, e = m.span()
        if mode == "zh":
            lang = "zh"
        else:
            left = langs[s - 1] if s > 0 else None
            right = langs[e] if e < n else None
            lang = left or right
            if lang is None:
                lang = next((langs[k] for k in range(s - 1, -1, -1) if langs[k]), None)
            if lang is None:
                lang = next((langs[k] for k in range(e, n) if langs[k]), None)
            lang = lang or default
        for k in range(s, e):
            langs[k] = lang
    # everything else follows the previous run (leading chars: the first run)
    first = next((l for l in langs if l), default)
    cur = first
    for k in range(n):
        if langs[k] is None:
            langs[k] = cur
        else:
            cur = langs[k]
    runs: list[tuple[str, str]] = []
    for ch, lang in zip(text, langs):
        if runs and runs[-1][0] == lang:
            runs[-1] = (lang, runs[-1][1] + ch)
        else:
            runs.append((lang, ch))
    return [(l, t) for l, t in runs if t.strip()]


_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "co", "ltd", "inc", "vs", "etc", "prof",
           "capt", "gen", "lt", "sgt", "col", "maj", "rev", "hon", "ft", "mt", "no", "approx",
           "dept", "est", "e.g", "i.e", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
           "sept", "oct", "nov", "dec"}
_FINAL = "。！？!?…"
_CLAUSE = "，,、；;：:"


def _sentence_ends(text: str) -> list[int]:
    """Indices just after each sentence end."""
    ends = []
    n = len(text)
    for i, ch in enumerate(text):
        if ch == "\n":
            ends.append(i + 1)
        elif ch in _FINAL:
            # keep runs like ?! or …… and closing quotes together
            j = i + 1
            if j < n and (text[j] in _FINAL or text[j] in "\"'”’」』)）"):
                continue
            ends.append(j)
        elif ch == ".":
            prev = text[i - 1] if i > 0 else ""
            nxt = text[i + 1] if i + 1 < n else ""
            if prev.isdigit() and nxt.isdigit():
                continue  # decimal point
            if nxt in ".!?…\"'”’)）":
                continue
            m = re.search(r"([A-Za-z.]+)$", text[:i])
            if m and (m.group(1).lower() in _ABBREV
                      or re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", m.group(1))):
                continue  # Mr. / e.g. / a.m. / U.S.
            if nxt and not nxt.isspace() and _char_lang(nxt) == "en":
                continue  # e.g. file.txt, www.x.com
            ends.append(i + 1)
    return ends


def _has_content(s: str) -> bool:
    return any(ch.isalnum() or is_hanzi(ch) for ch in s)


def _cut_long(piece: str, max_chars: int) -> list[str]:
    out = []
    while len(piece) > max_chars:
        window = piece[:max_chars]
        cut = max((window.rfind(c) for c in _CLAUSE), default=-1)
        if cut > 0:
            cut += 1
        else:
            sp = window.rfind(" ")
            cut = sp if sp > 0 else max_chars
        out.append(piece[:cut])
        piece = piece[cut:]
    out.append(piece)
    return out


def split_sentences(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Split text into sentences of at most ``max_chars`` characters each."""
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    pieces = []
    start = 0
    for end in _sentence_ends(text) + [len(text)]:
        if end > start:
            pieces.append(text[start:end])
            start = end
    out: list[str] = []
    for p in pieces:
        for q in _cut_long(p.strip(), max_chars):
            q = q.strip()
            if not q:
                continue
            if out and not _has_content(q):
                out[-1] += q
            else:
                out.append(q)
    if out and not _has_content(out[0]) and len(out) > 1:
        out[1] = out[0] + out[1]
        out.pop(0)
    return out
