"""English text normalization, step for step as upstream's ``english.text_normalize``.

Upstream (``text/english.py`` + ``text/en_normalization/expend.py``) is a chain of regex
substitutions.  A voice was trained on what that chain produces, quirks included, so each
step here reproduces the same substitution, in the same order, with the same leftmost,
non-overlapping matching.  The steps are written as single left-to-right scans instead of
regexes: several upstream patterns backtrack quadratically or worse on long digit runs
(``([0-9.,]*[0-9]+)$`` tried at every position), and this runs on user input.

Quirks kept on purpose (the kit flags them ``upstream_bug:*``):

* the Chinese punctuation map is compiled from ``re.escape``d keys, so ``"[;:：，；]"`` and
  ``'["’]'`` only match as literal strings; only 。！？ are really mapped, and everything else
  outside ``[ A-Za-z'.,?!-]`` is deleted later (``，`` disappears);
* ``1,299.99`` loses its commas first, and ``$1299.99`` reads "twelve ninety-nine dollars ...";
* ``" -5"`` becomes ``"negative 5"`` *including* the space it replaced ("tonegative five");
* a 24-hour period is appended to every time ("ten thirty a.m. a.m.");
* an upper-case letter after a non-space gets a space (``NASA`` -> ``N A S A``, ``iPhone``
  -> ``i Phone``).

Deviations, only where upstream raises instead of answering: numbers past inflect's range
(> 36 digits) are read digit by digit, and a currency amount whose integer part carries a
stray ``,`` or ``(`` (``int()`` fails upstream) is read from its digits.
"""
from __future__ import annotations

import unicodedata

from . import en_numbers as num

_DIGITS = frozenset("0123456789")
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_KEEP = frozenset(" '.,?!-") | _ASCII_LETTERS
_PAUSES = frozenset("!?…,.-")  # upstream's ``punctuation`` list

# english.py's rep_map, as its escaped-key regex really applies it (literal strings).
_LITERAL_MAP = (("[;:：，；]", ","), ('["’]', "'"), ("。", "."), ("！", "!"), ("？", "?"))

_SUPERSCRIPTS = frozenset("⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ")
_OPERATORS = {"+": " plus ", "-": " minus ", "×": " times ", "÷": " divided by ", "=": " Equals "}

# (unit, singular, plural) in upstream's alternation order: "km" is tried before "km/h",
# so "km/h" never wins (the "/" after "km" is already a word boundary).
_UNITS = (
    ("m", "meter", "meters"), ("km", "kilometer", "kilometers"),
    ("km/h", "kilometer per hour", "kilometers per hour"), ("ft", "feet", "feet"),
    ("L", "liter", "liters"), ("tbsp", "tablespoon", "tablespoons"),
    ("tsp", "teaspoon", "teaspoons"), ("h", "hour", "hours"), ("min", "minute", "minutes"),
    ("s", "second", "seconds"), ("°C", "degree celsius", "degrees celsius"),
    ("°F", "degree fahrenheit", "degrees fahrenheit"),
)


def text_normalize(text: str) -> str:
    """Upstream ``english.text_normalize``: map, ``normalize``, fold repeated punctuation."""
    if not isinstance(text, str):
        raise ValueError(f"text must be str, not {type(text).__name__}")
    text = _replace_literals(text)
    text = normalize(text)
    return fold_punctuation(text)


def warmup() -> None:
    """Import inflect now (~2.7 s: its type-checking decorators) instead of on the first number."""
    num.cardinal("1")


def normalize(text: str) -> str:
    """Upstream ``expend.normalize``: numbers, money, times, units, then the character filter."""
    text = _ordinal_markers(text)
    text = _arithmetic(text)
    text = _negative_integers(text)
    text = _drop_digit_commas(text)
    text = _times(text)
    text = _measurements(text)
    text = _currency_before(text, "£", _pounds)
    text = _currency_after(text, "£", frozenset("0123456789.,"), _pounds)
    text = _currency_before(text, "$", _dollars)
    text = _currency_after(text, "$", frozenset("(0123456789.,"), _dollars)
    text = _decimals(text)
    text = _fractions(text)
    text = _suffixed_ordinals(text)
    text = _cardinals(text)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = text.replace("%", " percent")
    text = "".join(c for c in text if c in _KEEP)
    text = _replace_ci(text, "i.e.", "that is")
    text = _replace_ci(text, "e.g.", "for example")
    return _space_capitals(text)


def fold_punctuation(text: str) -> str:
    """Upstream ``replace_consecutive_punctuation``: a pause or space eats the pauses after it."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        out.append(c)
        i += 1
        if (c in _PAUSES or c.isspace()) and i < n and text[i] in _PAUSES:
            while i < n and text[i] in _PAUSES:
                i += 1
    return "".join(out)


# --- helpers ---------------------------------------------------------------------------

def _is_word(c: str) -> bool:
    """Python ``re``'s ``\\w`` for str patterns."""
    return c.isalnum() or c == "_"


def _at_boundary(text: str, i: int) -> bool:
    """``\\b`` before a word character at ``i``."""
    return i == 0 or not _is_word(text[i - 1])


def _ends_word(text: str, j: int) -> bool:
    """``\\b`` after a word character ending at ``j`` (exclusive)."""
    return j >= len(text) or not _is_word(text[j])


def _digit_run(text: str, i: int) -> int:
    """End of the ASCII digit run starting at ``i``."""
    n = len(text)
    while i < n and text[i] in _DIGITS:
        i += 1
    return i


def _replace_literals(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        for key, value in _LITERAL_MAP:
            if text.startswith(key, i):
                out.append(value)
                i += len(key)
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _replace_ci(text: str, needle: str, value: str) -> str:
    """Case-insensitive literal replacement (the text is ASCII by now)."""
    low = text.lower()
    out: list[str] = []
    i = 0
    while True:
        j = low.find(needle, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        out.append(value)
        i = j + len(needle)


def _space_capitals(text: str) -> str:
    out: list[str] = []
    for i, c in enumerate(text):
        if i > 0 and c in _ASCII_LETTERS and c.isupper() and not text[i - 1].isspace():
            out.append(" ")
        out.append(c)
    return "".join(out)


# --- steps ------------------------------------------------------------------------------

def _ordinal_markers(text: str) -> str:
    """``1. `` -> ``1st, `` (a number ending a list marker reads as an ordinal)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in _DIGITS and _at_boundary(text, i):
            j = _digit_run(text, i)
            digits = text[i:j]
            if text.startswith(". ", j):
                out.append(digits + num.ordinal_suffix(digits) + ", ")
                i = j + 2
            else:
                out.append(digits)
                i = j
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _left_operand_start(text: str, end: int, floor: int) -> int | None:
    """Leftmost start >= ``floor`` of an operand ending exactly at ``end``, or None.

    Operands: ``-?\\d+(\\.\\d+)?S*``, ``\\.\\d+S*``, ``[A-Za-z]S*`` (S: superscripts).
    """
    c = end
    while c > floor and text[c - 1] in _SUPERSCRIPTS:
        c -= 1
    if c <= floor:
        return None
    last = c - 1
    ch = text[last]
    if ch in _ASCII_LETTERS:
        first = last
    elif ch.isdecimal():
        d0 = last
        while d0 > 0 and text[d0 - 1].isdecimal():
            d0 -= 1
        first = d0
        if d0 > 0 and text[d0 - 1] == ".":
            first = d0 - 1
            e0 = d0 - 1
            while e0 > 0 and text[e0 - 1].isdecimal():
                e0 -= 1
            if e0 < d0 - 1:
                first = e0 - 1 if e0 > 0 and text[e0 - 1] == "-" else e0
        elif d0 > 0 and text[d0 - 1] == "-":
            first = d0 - 1
    else:
        return None
    start = max(first, floor)
    return start if start <= last else None


def _right_operand_end(text: str, i: int) -> int | None:
    """End of the greedy operand starting at ``i``, or None."""
    n = len(text)
    if i >= n:
        return None
    j = i
    if text[j] == "-" and j + 1 < n and text[j + 1].isdecimal():
        j += 1
    if text[j].isdecimal():
        while j < n and text[j].isdecimal():
            j += 1
        if j + 1 < n and text[j] == "." and text[j + 1].isdecimal():
            j += 1
            while j < n and text[j].isdecimal():
                j += 1
    elif text[j] == "." and j + 1 < n and text[j + 1].isdecimal():
        j += 1
        while j < n and text[j].isdecimal():
            j += 1
    elif text[j] in _ASCII_LETTERS:
        j += 1
    else:
        return None
    while j < n and text[j] in _SUPERSCRIPTS:
        j += 1
    return j


def _arithmetic_pass(text: str) -> tuple[str, bool]:
    """One ``re.sub`` pass of ``a <op> b`` -> ``a plus b`` (spaces required around the op)."""
    out: list[str] = []
    pos = 0
    n = len(text)
    changed = False
    for k in range(1, n - 1):
        op = text[k]
        if op not in _OPERATORS or not text[k - 1].isspace() or not text[k + 1].isspace():
            continue
        w1 = k - 1
        while w1 > 0 and text[w1 - 1].isspace():
            w1 -= 1
        start = _left_operand_start(text, w1, pos)
        if start is None:
            continue
        w2 = k + 1
        while w2 < n and text[w2].isspace():
            w2 += 1
        end = _right_operand_end(text, w2)
        if end is None:
            continue
        out.append(text[pos:start])
        out.append(text[start:w1] + _OPERATORS[op] + text[w2:end])
        pos = end
        changed = True
    out.append(text[pos:])
    return "".join(out), changed


def _arithmetic(text: str) -> str:
    """Upstream repeats the substitution while anything matches (chains need two passes)."""
    changed = True
    while changed:
        text, changed = _arithmetic_pass(text)
    return text


def _negative_integers(text: str) -> str:
    """``(^|\\s+)-\\d+`` -> ``negative \\d+``; the whitespace is swallowed too."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if i == 0 and text[0] == "-" and n > 1 and text[1].isdecimal():
            j = 1
        elif text[i].isspace():
            k = i
            while k < n and text[k].isspace():
                k += 1
            if not (k + 1 < n and text[k] == "-" and text[k + 1].isdecimal()):
                out.append(text[i:k])
                i = k
                continue
            j = k + 1
        else:
            out.append(text[i])
            i += 1
            continue
        end = j
        while end < n and text[end].isdecimal():
            end += 1
        out.append("negative " + text[j:end])
        i = end
    return "".join(out)


def _drop_digit_commas(text: str) -> str:
    """Inside a run of digits and commas, drop the commas between its first and last digit."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] not in _DIGITS and text[i] != ",":
            out.append(text[i])
            i += 1
            continue
        j = i
        while j < n and (text[j] in _DIGITS or text[j] == ","):
            j += 1
        run = text[i:j]
        first = next((k for k, c in enumerate(run) if c != ","), None)
        if first is None:
            out.append(run)
        else:
            last = len(run) - 1
            while run[last] == ",":
                last -= 1
            out.append(run[:first] + run[first:last + 1].replace(",", "") + run[last + 1:])
        i = j
    return "".join(out)


def _times(text: str) -> str:
    """``H:MM`` / ``HH:MM`` (hours 0-23) -> "ten thirty a.m." (12-hour words + period)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _DIGITS and _at_boundary(text, i):
            colon = _hour_end(text, i)
            if (colon is not None and colon + 2 < n and text[colon + 1] in "012345"
                    and text[colon + 2] in _DIGITS and _ends_word(text, colon + 3)):
                out.append(_time_words(int(text[i:colon]), int(text[colon + 1:colon + 3])))
                i = colon + 3
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _hour_end(text: str, i: int) -> int | None:
    """Index of the ":" after an hour ``[01]?[0-9]`` or ``2[0-3]`` starting at ``i``."""
    c, nxt = text[i], text[i + 1:i + 2]
    if nxt == ":":
        return i + 1
    if nxt and nxt in _DIGITS and text.startswith(":", i + 2) and (c in "01" or (c == "2" and nxt in "0123")):
        return i + 2
    return None


def _time_words(hours: int, minutes: int) -> str:
    period = "a.m." if hours < 12 else "p.m."
    if hours > 12:
        hours -= 12
    hour = num.cardinal(str(hours), andword="and")
    if minutes == 0:
        return f"{hour} o'clock {period}"
    return f"{hour} {num.cardinal(str(minutes), andword='and')} {period}"


def _measurements(text: str) -> str:
    """``5km`` -> "5 kilometers" (the number stays digits; singular only for a bare 1)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if not (text[i] in _DIGITS and _at_boundary(text, i)):
            out.append(text[i])
            i += 1
            continue
        d = _digit_run(text, i)
        e = d
        if d + 1 < n and text[d] == "." and text[d + 1] in _DIGITS:
            e = _digit_run(text, d + 1)
        for unit, one, many in _UNITS:
            u_end = e + len(unit)
            if text.startswith(unit, e) and _ends_word(text, u_end):
                singular = e == d and num.is_one(text[i:d])
                out.append(text[i:e] + " " + (one if singular else many))
                i = u_end
                break
        else:
            out.append(text[i:d])
            i = d
    return "".join(out)


def _amount(group: str, major: tuple[str, str], minor: tuple[str, str], zero: str) -> str:
    """Upstream ``_expand_pounds`` / ``_expand_dollars`` (numbers stay digits)."""
    parts = group.split(".")
    if len(parts) > 2:
        return group + " " + major[1]
    whole = "".join(c for c in parts[0] if c in _DIGITS)
    whole = num.significant(whole) if whole else "0"
    frac = "".join(c for c in parts[1] if c in _DIGITS) if len(parts) > 1 else ""
    frac = num.significant(frac.ljust(2, "0")) if frac else "0"
    has_whole, has_frac = whole != "0", frac != "0"
    major_unit = major[0] if whole == "1" else major[1]
    minor_unit = minor[0] if frac == "1" else minor[1]
    if has_whole and has_frac:
        return f"{whole} {major_unit} and {frac} {minor_unit}"
    if has_whole:
        return f"{whole} {major_unit}"
    if has_frac:
        return f"{frac} {minor_unit}"
    return zero


def _pounds(group: str) -> str:
    return _amount(group, ("pound", "pounds"), ("penny", "pence"), "zero pounds")


def _dollars(group: str) -> str:
    return _amount(group, ("dollar", "dollars"), ("cent", "cents"), "zero dollars")


def _currency_before(text: str, sign: str, expand) -> str:
    """``£1.50``: the sign, then digits/dots/commas up to the last digit of that run."""
    out: list[str] = []
    i, n = 0, len(text)
    amount_chars = "0123456789.,"
    while i < n:
        if text[i] != sign:
            out.append(text[i])
            i += 1
            continue
        j = i + 1
        last = -1
        while j < n and text[j] in amount_chars:
            if text[j] in _DIGITS:
                last = j
            j += 1
        if last < 0:
            out.append(sign)
            i += 1
            continue
        out.append(expand(text[i + 1:last + 1]))
        i = last + 1
    return "".join(out)


def _currency_after(text: str, sign: str, run_chars: frozenset[str], expand) -> str:
    """``1.50£``: the whole run of amount characters before the sign, ending in a digit."""
    out: list[str] = []
    pos = 0
    run_start = 0
    for k, c in enumerate(text):
        if c in run_chars:
            continue
        if c == sign and k > run_start and text[k - 1] in _DIGITS:
            out.append(text[pos:run_start])
            out.append(expand(text[run_start:k]))
            pos = k + 1
        run_start = k + 1
    out.append(text[pos:])
    return "".join(out)


def _decimals(text: str) -> str:
    """``98.5`` -> "98 point 5" (each fraction digit spoken alone; spaces after "." kept)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] not in _DIGITS:
            out.append(text[i])
            i += 1
            continue
        d = _digit_run(text, i)
        if d < n and text[d] == ".":
            k = d + 1
            while k < n and text[k].isspace():
                k += 1
            if k < n and text[k] in _DIGITS:
                e = _digit_run(text, k)
                out.append(text[i:d] + " point " + " ".join(text[d + 1:e]))
                i = e
                continue
        out.append(text[i:d])
        i = d
    return "".join(out)


def _fractions(text: str) -> str:
    """``3/4`` -> "three fourths", ``1/2`` -> "one half", ``5/1`` -> "five"."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] not in _DIGITS:
            out.append(text[i])
            i += 1
            continue
        d = _digit_run(text, i)
        if d + 1 < n and text[d] == "/" and text[d + 1] in _DIGITS:
            e = _digit_run(text, d + 1)
            out.append(_fraction_words(text[i:d], text[d + 1:e]))
            i = e
            continue
        out.append(text[i:d])
        i = d
    return "".join(out)


def _fraction_words(numerator: str, denominator: str) -> str:
    top = num.cardinal(numerator, andword="and")
    den = num.significant(denominator)
    several = num.significant(numerator) not in ("0", "1")
    if den == "2":
        bottom = "halves" if num.significant(numerator) != "1" else "half"
    elif den == "1":
        return top
    else:
        bottom = num.ordinal_of_words(num.cardinal(denominator, andword="and"))
        if several:
            bottom += "s"
    return f"{top} {bottom}"


def _suffixed_ordinals(text: str) -> str:
    """``21st`` -> "twenty-first" (any digits followed by st/nd/rd/th, no boundary needed)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] not in _DIGITS:
            out.append(text[i])
            i += 1
            continue
        d = _digit_run(text, i)
        suffix = text[d:d + 2]
        if suffix in ("st", "nd", "rd", "th"):
            out.append(num.suffixed_ordinal(text[i:d], suffix))
            i = d + 2
        else:
            out.append(text[i:d])
            i = d
    return "".join(out)


def _cardinal_words(digits: str) -> str:
    """Upstream ``_expand_number``: 1001-2999 read as years, the rest plainly (no "and")."""
    value = num.significant(digits)
    if len(value) == 4 and "1000" < value < "3000":
        if value == "2000":
            return "two thousand"
        if "2000" < value < "2010":
            return "two thousand " + num.cardinal(value[-2:])
        if value.endswith("00"):
            return num.cardinal(value[:2]) + " hundred"
        return num.cardinal(value, year=True)
    return num.cardinal(value)


def _cardinals(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] not in _DIGITS:
            out.append(text[i])
            i += 1
            continue
        d = _digit_run(text, i)
        out.append(_cardinal_words(text[i:d]))
        i = d
    return "".join(out)
