"""Cut a request's text into sentences the voice speaks one by one (one scan, linear time).

A sentence ends after 。！？!?… (a run of them, and closing quotes after them, stay
together), after a line break, and after ``.`` unless the dot is a decimal point (3.14), is
followed by more dots/closers, ends a common abbreviation (Mr., e.g., a.m., U.S.) or sits
inside a word (file.txt).  A sentence longer than ``max_chars`` is cut again at the last
clause mark (，,、；;：:) inside the limit, else at the last space, else hard.  Pieces with
no letter, digit or ideograph (stray marks) join the piece before them.

This is the serving path's ``text_split_method``: ``split_sentences`` returns the pieces,
and ``preprocess`` then treats each as a line (upstream's cut methods insert line breaks).
"""
from __future__ import annotations

DEFAULT_MAX_CHARS = 60

_FINAL = "。！？!?…"
_CLOSERS = "\"'”’」』)）"
_CLAUSE = "，,、；;：:"
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "e.g", "i.e", "no",
           "a.m", "p.m", "u.s", "u.k", "inc", "ltd", "co", "fig", "approx", "mt", "ave", "dept", "vol",
           "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
_LOOKBACK = 12   # longest abbreviation checked, so each dot costs O(1)


def _is_latin(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _abbreviation_before(text: str, i: int) -> bool:
    """Does a known abbreviation, or a dotted initialism (U.S, e.g), end just before ``i``?"""
    j = i
    while j > 0 and i - j < _LOOKBACK and (_is_latin(text[j - 1]) or text[j - 1] == "."):
        j -= 1
    word = text[j:i]
    if not word or (j > 0 and _is_latin(text[j - 1])):
        return False
    if word.lower() in _ABBREV:
        return True
    parts = word.split(".")
    return len(parts) > 1 and all(len(p) == 1 for p in parts)


def _sentence_ends(text: str) -> list[int]:
    ends = []
    n = len(text)
    for i, ch in enumerate(text):
        nxt = text[i + 1] if i + 1 < n else ""
        if ch == "\n":
            ends.append(i + 1)
        elif ch in _FINAL:
            if nxt and (nxt in _FINAL or nxt in _CLOSERS):
                continue
            ends.append(i + 1)
        elif ch in _CLOSERS and i > 0 and text[i - 1] in _FINAL + _CLOSERS + ".":
            if not (nxt and nxt in _CLOSERS):
                ends.append(i + 1)
        elif ch == ".":
            prev = text[i - 1] if i > 0 else ""
            if prev.isdigit() and nxt.isdigit():
                continue
            if nxt and nxt in ".!?…" + _CLOSERS:
                continue
            if _abbreviation_before(text, i):
                continue
            if nxt and not nxt.isspace() and _is_latin(nxt):
                continue
            ends.append(i + 1)
    return ends


def _has_content(s: str) -> bool:
    return any(ch.isalnum() for ch in s)


def _cut_long(piece: str, max_chars: int) -> list[str]:
    out = []
    start, n = 0, len(piece)
    while n - start > max_chars:
        window_end = start + max_chars
        cut = -1
        for k in range(window_end - 1, start, -1):        # at most max_chars steps per cut
            if piece[k] in _CLAUSE:
                cut = k + 1
                break
        if cut < 0:
            sp = piece.rfind(" ", start + 1, window_end)
            cut = sp if sp > start else window_end
        out.append(piece[start:cut])
        start = cut
    out.append(piece[start:])
    return out


def split_sentences(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Sentences of at most ``max_chars`` characters (stray marks may add a few)."""
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    out: list[str] = []
    start = 0
    for end in _sentence_ends(text) + [len(text)]:
        if end <= start:
            continue
        for q in _cut_long(text[start:end].strip(), max_chars):
            q = q.strip()
            if not q:
                continue
            if out and not _has_content(q):
                out[-1] += q
            else:
                out.append(q)
        start = end
    if len(out) > 1 and not _has_content(out[0]):
        out[1] = out[0] + out[1]
        out.pop(0)
    return out
