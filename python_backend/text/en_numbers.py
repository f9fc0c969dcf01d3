"""Numbers in words for the English normalizer, as upstream's ``inflect`` calls spell them.

Upstream reads numbers through ``inflect`` (pinned 7.6.0); we call the same engine with the
same arguments so the words match.  Two guards sit in front of it:

* inflect keeps per-call state on the engine (``_number_args``, ``mill_count``), so every
  call holds one lock;
* inflect raises ``NumOutOfRangeError`` past 36 significant digits (and Python refuses to
  parse ints of more than 4300 digits).  Upstream then fails the whole request; we read such
  numbers digit by digit instead ("one two three ...").  Digit strings are therefore kept as
  strings here and never go through ``int`` unless they are short.

Results are memoized: the same few numbers recur, and an inflect call costs ~0.3 ms.
"""
from __future__ import annotations

import threading
from functools import lru_cache

# inflect's largest scale word is "decillion" (10**33): 36 digits is the most it can read.
MAX_DIGITS = 36

_lock = threading.Lock()
_engine = None


def _inflect():
    """The shared inflect engine (imported on first use: the import costs ~0.3 s)."""
    global _engine
    if _engine is None:
        import inflect

        _engine = inflect.engine()
    return _engine


def significant(digits: str) -> str:
    """``digits`` without leading zeros ("0" when nothing is left), i.e. ``str(int(digits))``."""
    stripped = digits.lstrip("0")
    return stripped or "0"


def is_one(digits: str) -> bool:
    return significant(digits) == "1"


def _digit_by_digit(digits: str) -> str:
    return " ".join(cardinal(d) for d in digits)


@lru_cache(maxsize=4096)
def cardinal(digits: str, andword: str = "", year: bool = False) -> str:
    """``inflect.number_to_words(int(digits), andword=...)``; ``year``: upstream's 1001-2999 form.

    ``year`` is ``number_to_words(n, andword="", zero="oh", group=2)`` with ", " replaced by
    " " (upstream reads 1984 as "nineteen eighty-four").
    """
    value = significant(digits)
    if len(value) > MAX_DIGITS:
        return _digit_by_digit(value)
    with _lock:
        engine = _inflect()
        if year:
            return engine.number_to_words(int(value), andword="", zero="oh", group=2).replace(", ", " ")
        return engine.number_to_words(int(value), andword=andword)


@lru_cache(maxsize=4096)
def suffixed_ordinal(digits: str, suffix: str) -> str:
    """``inflect.number_to_words("21st")`` (default arguments, as upstream calls it)."""
    value = significant(digits)
    if len(value) > MAX_DIGITS:
        words = _digit_by_digit(value)
        head, _, last = words.rpartition(" ")
        return (head + " " if head else "") + ordinal_of_words(last)
    with _lock:
        return _inflect().number_to_words(value + suffix)


@lru_cache(maxsize=1024)
def ordinal_of_words(words: str) -> str:
    """``inflect.ordinal("three")`` -> "third" (the last word becomes ordinal)."""
    with _lock:
        return _inflect().ordinal(words)


def ordinal_suffix(digits: str) -> str:
    """The suffix inflect's ``ordinal("12")`` appends: st, nd, rd or th (11-13 take th)."""
    tail = digits[-2:]
    if len(tail) == 2 and tail[0] == "1":
        return "th"
    return {"1": "st", "2": "nd", "3": "rd"}.get(digits[-1:], "th")
