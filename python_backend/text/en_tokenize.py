"""Word tokens for English g2p, as NLTK's ``TweetTokenizer().tokenize`` splits normalized text.

Upstream tokenizes ``norm_text`` with ``TweetTokenizer`` (default options).  Its token
boundaries decide the phones (``www.example.com`` is one token, ``don't`` is one token,
``a.`` is two), so they must match.  ``TweetTokenizer`` is one big regex alternation tried
at every position; its URL branch re-scans the rest of a dotted chain from every label,
which is quadratic on ``a.b.c.d...``.  This is a single forward scan that gives the same
tokens on the alphabet ``text_normalize`` produces (``[ A-Za-z'.,?!-]``), where only these
branches of the alternation can match, in this order:

1. a bare domain name: ``label([.-]label)*.tld`` with a 2-13 letter tld after a dot, the
   longest such chain (at most 127 labels) that ends at a word boundary;
2. a word with inner apostrophes/dashes: letter, ``[letter'-_]+``, letter (3+ chars);
3. a run of word characters;
4. an ellipsis: ``.`` then one or more (spaces, ``.``);
5. any other single non-space character.

Before matching, runs of 4+ identical non-letter, non-digit characters shrink to 3 (the
tokenizer's ``HANG_RE``).  Characters outside that alphabet (never produced by
``text_normalize``) fall back to rules 3 and 5 (emoticons, handles, phone numbers and the
like are not recognized).
"""
from __future__ import annotations

import unicodedata
from bisect import bisect_right

_MAX_DOMAIN_SEPARATORS = 127  # the regex's {0,126} repeated labels + the final ".tld"


def _is_ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _is_letter(c: str) -> bool:
    """``[^\\W\\d_]``: a word character that is not a digit or underscore."""
    return c.isalpha()


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


def squeeze_repeats(text: str) -> str:
    """Runs of 4+ identical characters that are not letters/numbers become 3 (``HANG_RE``)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        j = i + 1
        while j < n and text[j] == c:
            j += 1
        run = j - i
        if run >= 4 and unicodedata.category(c)[0] not in "LN":
            run = 3
        out.append(c * run)
        i = j
    return "".join(out)


def _domain_ends(text: str) -> dict[int, int]:
    """For each label start where the bare-domain branch matches: the end of its match.

    A chain is ``r0 s1 r1 ... sm rm`` (labels ``r``: ASCII alnum runs; separators ``s``: one
    ``.`` or ``-``).  From label ``i`` the regex ends at the last label ``j`` in
    ``(i, i+126]`` with ``s_j == "."`` and ``r_j`` made of 2-13 letters.
    """
    ends: dict[int, int] = {}
    n = len(text)
    i = 0
    while i < n:
        if not _is_ascii_alnum(text[i]) or (i > 0 and _is_ascii_alnum(text[i - 1])):
            i += 1
            continue
        # collect one maximal chain starting at i
        starts: list[int] = []
        stops: list[int] = []
        good: list[int] = []
        k = i
        while True:
            start = k
            while k < n and _is_ascii_alnum(text[k]):
                k += 1
            idx = len(starts)
            if (idx > 0 and text[start - 1] == "." and 2 <= k - start <= 13
                    and text[start:k].isalpha() and (k == n or not _is_word(text[k]))):
                good.append(idx)
            starts.append(start)
            stops.append(k)
            if k + 1 < n and text[k] in ".-" and _is_ascii_alnum(text[k + 1]):
                k += 1
                continue
            break
        last = len(starts) - 1
        for idx, start in enumerate(starts):
            limit = min(last, idx + _MAX_DOMAIN_SEPARATORS)
            pos = bisect_right(good, limit) - 1
            if pos >= 0 and good[pos] > idx:
                ends[start] = stops[good[pos]]
        i = k
    return ends


def tokenize(text: str) -> list[str]:
    """Tokens of ``text`` (case preserved), as ``TweetTokenizer().tokenize`` returns them."""
    text = squeeze_repeats(text)
    domains = _domain_ends(text)
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        end = domains.get(i)
        if end is not None:
            tokens.append(text[i:end])
            i = end
            continue
        if _is_letter(c):
            j, last = i + 1, i
            while j < n and (_is_letter(text[j]) or text[j] in "'-_"):
                if _is_letter(text[j]):
                    last = j
                j += 1
            if last >= i + 2:
                tokens.append(text[i:last + 1])
                i = last + 1
                continue
        if _is_word(c):
            j = i + 1
            while j < n and _is_word(text[j]):
                j += 1
            tokens.append(text[i:j])
            i = j
            continue
        if c == ".":
            end = _ellipsis_end(text, i)
            if end is not None:
                tokens.append(text[i:end])
                i = end
                continue
        tokens.append(c)
        i += 1
    return tokens


def _ellipsis_end(text: str, i: int) -> int | None:
    """End of ``\\.([^\\S\\r\\n]*\\.)+`` at ``i``, or None."""
    n = len(text)
    end = None
    j = i + 1
    while True:
        k = j
        while k < n and text[k].isspace() and text[k] not in "\r\n":
            k += 1
        if k < n and text[k] == ".":
            end = j = k + 1
        else:
            return end
