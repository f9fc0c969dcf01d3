"""Text normalization for the Chinese and English g2p.

Chinese (``normalize_zh``): full-width -> half-width, numbers read out in Chinese
(integers, decimals, negatives, percentages, fractions, ranges, dates, clock times,
currency, phone-number-like digit strings read digit by digit), punctuation mapped
onto the phones of the v2 table (, . ! ? …) and every other character dropped, so
the result holds only hanzi and those five punctuation marks.

English (``normalize_en``): accents stripped, numbers spelled out (cardinals,
ordinals, decimals, years, negatives, times, currency, percentages), common
abbreviations expanded, punctuation mapped onto , . ! ? … - and other symbols
dropped.  Letter case is kept (the English g2p uses it to spot acronyms).

Only the standard library is used here; the rules are deliberately simple and
deterministic.
"""
from __future__ import annotations

import re
import unicodedata

# --------------------------------------------------------------------------- common

def to_half_width(text: str) -> str:
    """Full-width ASCII variants (U+FF01..U+FF5E) and the ideographic space -> ASCII."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xFF01 <= code <= 0xFF5E:
            out.append(chr(code - 0xFEE0))
        elif code == 0x3000:
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


ZH_PUNCT = ",.!?…"
_PUNCT_RUN = re.compile(r"([,.!?…])[,.!?…]+")


def collapse_punctuation(text: str) -> str:
    """A run of punctuation phones keeps only its first mark (as upstream does)."""
    return _PUNCT_RUN.sub(r"\1", text)


# ------------------------------------------------------------------ Chinese numbers

_ZH_DIGITS = "零一二三四五六七八九"
_ZH_UNITS = ["", "十", "百", "千"]
_ZH_SECTIONS = ["", "万", "亿", "万亿"]


def zh_digits(s: str, one: str = "一") -> str:
    """Read a digit string digit by digit (``one`` lets phone numbers use 幺)."""
    return "".join(one if c == "1" else _ZH_DIGITS[int(c)] for c in s if c.isdigit())


def _zh_section(n: int) -> str:
    """0 < n < 10000 without leading 零."""
    digits = f"{n:04d}"
    out = []
    zero_pending = False
    started = False
    for i, c in enumerate(digits):
        d = int(c)
        unit = _ZH_UNITS[3 - i]
        if d == 0:
            if started:
                zero_pending = True
            continue
        if zero_pending:
            out.append("零")
            zero_pending = False
        out.append(_ZH_DIGITS[d] + unit)
        started = True
    return "".join(out)


def zh_int(n: int) -> str:
    """Chinese reading of an integer: 10 -> 十, 12 -> 十二, 105 -> 一百零五,
    20305 -> 二万零三百零五 (二 is used everywhere, never 两)."""
    if n < 0:
        return "负" + zh_int(-n)
    if n == 0:
        return "零"
    if n >= 10 ** 16:
        return zh_digits(str(n))
    sections = []
    m = n
    while m:
        sections.append(m % 10000)
        m //= 10000
    out = []
    need_zero = False
    for idx in range(len(sections) - 1, -1, -1):
        sec = sections[idx]
        if sec == 0:
            need_zero = bool(out)
            continue
        if out and (need_zero or sec < 1000):
            out.append("零")
        out.append(_zh_section(sec) + _ZH_SECTIONS[idx])
        need_zero = False
    text = "".join(out)
    if text.startswith("一十"):  # 10..19 (and 10万.. etc.) at the start: 十二, 十万
        text = text[1:]
    return text


def zh_number(s: str) -> str:
    """Read a number token: optional sign, digits with optional thousands commas and decimals."""
    s = s.replace(",", "").replace(_SEP, "")
    neg = s.startswith("-")
    s = s.lstrip("+-")
    if "." in s:
        int_part, frac = s.split(".", 1)
        text = zh_int(int(int_part or "0")) + "点" + zh_digits(frac)
    else:
        text = zh_int(int(s)) if len(s) <= 16 else zh_digits(s)
    return ("负" if neg else "") + text


_SEP = "\ue000"  # private-use marker replacing thousands separators while rules run
_NUM = r"\d[\d\ue000]*(?:\.\d+)?"
_MEASURE_WORDS = "个只本位件条张次种块辆台杯瓶家名头匹双对份套首部支把层场篇句声点岁天周年"

_ZH_PUNCT_MAP = {
    "，": ",", "、": ",", "；": ",", ";": ",", "：": ",", ":": ",", "·": ",",
    "。": ".", "．": ".", "！": "!", "？": "?", "⋯": "…",
    "\n": ".", "\r": "",
}
# Quotes, brackets, dashes and similar are dropped in Chinese (upstream drops them too).


def _zh_date(m: re.Match) -> str:
    y, mo, d = m.group(1), m.group(2), m.group(3)
    return f"{zh_digits(y)}年{zh_int(int(mo))}月{zh_int(int(d))}日"


def _zh_time(m: re.Match) -> str:
    h, mi, se = int(m.group(1)), int(m.group(2)), m.group(3)
    text = zh_int(h) + "点"
    if mi:
        text += ("零" if mi < 10 else "") + zh_int(mi) + "分"
    if se is not None and int(se):
        if not mi:
            text += "零分"
        text += zh_int(int(se)) + "秒"
    return text


def _zh_phone(m: re.Match) -> str:
    return zh_digits(m.group(0), one="幺")


def normalize_zh(text: str) -> str:
    """Normalize Chinese text; the result holds only hanzi and , . ! ? …"""
    text = to_half_width(unicodedata.normalize("NFC", text))
    text = text.replace("...", "…").replace("。。。", "…")
    # thousands separators: 1,234,567 -> 1234567
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", _SEP, text)
    # dates: 2024年3月5日, 2024-03-05, 2024/3/5, 2024.03.05
    text = re.sub(r"(?<!\d)(\d{4})年(\d{1,2})月(\d{1,2})[日号]", _zh_date, text)
    text = re.sub(r"(?<![\d.])(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?![\d.])", _zh_date, text)
    text = re.sub(r"(?<!\d)(\d{4})年", lambda m: zh_digits(m.group(1)) + "年", text)
    text = re.sub(r"(?<!\d)(\d{1,2})月(\d{1,2})[日号]",
                  lambda m: f"{zh_int(int(m.group(1)))}月{zh_int(int(m.group(2)))}日", text)
    # clock times 12:30, 8:05:09
    text = re.sub(r"(?<!\d)(\d{1,2}):(\d{2})(?::(\d{2}))?(?!\d)", _zh_time, text)
    # phone numbers: mobile (optional +86) and landline 010-12345678, read digit by digit
    text = re.sub(r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d{9}(?!\d)", _zh_phone, text)
    text = re.sub(r"(?<!\d)0\d{2,3}-\d{7,8}(?!\d)", _zh_phone, text)
    # currency
    text = re.sub(r"[$](" + _NUM + ")", lambda m: zh_number(m.group(1)) + "美元", text)
    text = re.sub(r"[¥￥](" + _NUM + ")", lambda m: zh_number(m.group(1)) + "元", text)
    text = re.sub(r"€(" + _NUM + ")", lambda m: zh_number(m.group(1)) + "欧元", text)
    text = re.sub(r"£(" + _NUM + ")", lambda m: zh_number(m.group(1)) + "英镑", text)
    # percentages (optionally negative) and ranges of percentages: 10%-20%
    text = re.sub(r"(" + _NUM + r")%?\s*[-~～]\s*(" + _NUM + ")%",
                  lambda m: f"百分之{zh_number(m.group(1))}到百分之{zh_number(m.group(2))}", text)
    text = re.sub(r"(?<![\dA-Za-z.])-(" + _NUM + ")%", lambda m: "负百分之" + zh_number(m.group(1)), text)
    text = re.sub(r"(" + _NUM + ")%", lambda m: "百分之" + zh_number(m.group(1)), text)
    # temperature
    text = re.sub(r"(-?" + _NUM + r")\s*(?:℃|°C)", lambda m: zh_number(m.group(1)) + "摄氏度", text)
    text = re.sub(r"(-?" + _NUM + r")\s*°", lambda m: zh_number(m.group(1)) + "度", text)
    # fractions 3/4 -> 四分之三
    text = re.sub(r"(?<![\d.])(\d+)/(\d+)(?![\d.])",
                  lambda m: zh_int(int(m.group(2))) + "分之" + zh_int(int(m.group(1))), text)
    # ranges 3-5, 3~5 -> 三到五
    text = re.sub(r"(?<![\dA-Za-z.])(" + _NUM + r")\s*[-~～]\s*(" + _NUM + r")(?![\d.])",
                  lambda m: zh_number(m.group(1)) + "到" + zh_number(m.group(2)), text)
    # negative numbers
    text = re.sub(r"(?<![\dA-Za-z.])-(?=\d)", "负", text)
    # long digit strings (codes, ids, numbers with a leading zero) digit by digit
    text = re.sub(r"(?<![\d.\ue000])(\d{7,}|0\d+)(?![\d.\ue000])", lambda m: zh_digits(m.group(1)), text)
    # 2 + measure word -> 两
    text = re.sub(r"(?<![\d.第])2(?=[" + _MEASURE_WORDS + "])", "两", text)
    # decimals and integers
    text = re.sub(_NUM, lambda m: zh_number(m.group(0)), text)
    # punctuation
    text = "".join(_ZH_PUNCT_MAP.get(ch, ch) for ch in text)
    text = "".join(ch for ch in text if is_hanzi(ch) or ch in ZH_PUNCT)
    return collapse_punctuation(text)


def is_hanzi(ch: str) -> bool:
    code = ord(ch)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF
            or 0x20000 <= code <= 0x2A6DF or 0xF900 <= code <= 0xFAFF or ch == "〇")


# ------------------------------------------------------------------ English numbers

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ["", "thousand", "million", "billion", "trillion", "quadrillion"]


def _en_below_1000(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def en_int(n: int) -> str:
    """Cardinal words without hyphens or 'and': 1234 -> one thousand two hundred thirty four."""
    if n < 0:
        return "minus " + en_int(-n)
    if n == 0:
        return "zero"
    if n >= 10 ** 18:
        return en_digits(str(n))
    groups = []
    while n:
        groups.append(n % 1000)
        n //= 1000
    words: list[str] = []
    for i in range(len(groups) - 1, -1, -1):
        if groups[i]:
            words += _en_below_1000(groups[i])
            if _SCALES[i]:
                words.append(_SCALES[i])
    return " ".join(words)


def en_digits(s: str) -> str:
    return " ".join(_ONES[int(c)] for c in s if c.isdigit())


_ORD_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                  "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def en_ordinal(n: int) -> str:
    words = en_int(n).split(" ")
    last = words[-1]
    if last in _ORD_IRREGULAR:
        last = _ORD_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join(words[:-1] + [last])


def en_year(n: int) -> str:
    """Years as spoken: 1990 -> nineteen ninety, 2005 -> two thousand five,
    1900 -> nineteen hundred, 2024 -> twenty twenty four, 1805 -> eighteen oh five."""
    if n % 1000 == 0 or 2000 < n < 2010:
        return en_int(n)
    hi, lo = divmod(n, 100)
    if lo == 0:
        return en_int(hi) + " hundred"
    if lo < 10:
        return en_int(hi) + " oh " + _ONES[lo]
    return en_int(hi) + " " + en_int(lo)


def en_number(s: str, allow_year: bool = True) -> str:
    """A number token (digits, optional commas and decimals)."""
    had_comma = "," in s
    s = s.replace(",", "")
    if "." in s:
        int_part, frac = s.split(".", 1)
        return en_int(int(int_part or "0")) + " point " + en_digits(frac)
    if len(s) > 1 and s.startswith("0"):
        return en_digits(s)
    n = int(s)
    if allow_year and not had_comma and len(s) == 4 and 1000 < n < 3000:
        return en_year(n)
    if len(s) > 15:
        return en_digits(s)
    return en_int(n)


_EN_ABBREVIATIONS = {
    "mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "st": "saint",
    "jr": "junior", "sr": "senior", "co": "company", "ltd": "limited", "inc": "incorporated",
    "vs": "versus", "etc": "et cetera", "prof": "professor", "capt": "captain",
    "gen": "general", "lt": "lieutenant", "sgt": "sergeant", "col": "colonel",
    "maj": "major", "rev": "reverend", "hon": "honorable", "ft": "fort", "mt": "mount",
    "approx": "approximately", "dept": "department", "est": "established",
    "jan": "January", "feb": "February", "mar": "March", "apr": "April", "jun": "June",
    "jul": "July", "aug": "August", "sep": "September", "sept": "September",
    "oct": "October", "nov": "November", "dec": "December",
}
_ABBR_RE = re.compile(r"\b(" + "|".join(_EN_ABBREVIATIONS) + r")\.", re.IGNORECASE)
# dotted acronyms (U.S., a.m.) stay one token "U.S." that the g2p spells out;
# while the rules run, their dots are this private-use character
_ACRO_DOT = "\ue001"
_ACRONYM_RE = re.compile(r"\b(?:[A-Za-z]\.){2,}")

_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents"),
               "¥": ("yen", "yen", "", "")}


def _en_currency(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m.group(1)]
    whole = int(m.group(2).replace(",", ""))
    frac = m.group(3)
    scale = m.group(4)
    if scale:  # $3.5 million -> three point five million dollars
        num = en_number(m.group(2) + ("." + frac if frac else ""), allow_year=False)
        return f"{num} {scale.lower()} {many}"
    cents = int((frac + "0")[:2]) if frac else 0
    parts = []
    if whole or not cents:
        parts.append(f"{en_int(whole)} {one if whole == 1 else many}")
    if cents and sub_one:
        parts.append(f"{en_int(cents)} {sub_one if cents == 1 else sub_many}")
    elif cents:
        parts = [f"{en_number(m.group(2) + '.' + frac, allow_year=False)} {many}"]
    return " and ".join(parts)


def _plural(words: str) -> str:
    if words.endswith("y"):
        return words[:-1] + "ies"
    return words + ("es" if words.endswith("x") else "s")


def _en_time(m: re.Match) -> str:
    h, mi = int(m.group(1)), int(m.group(2))
    if mi == 0:
        return en_int(h) + " o'clock"
    if mi < 10:
        return en_int(h) + " oh " + _ONES[mi]
    return en_int(h) + " " + en_int(mi)


_EN_SYMBOLS = {"&": " and ", "@": " at ", "+": " plus ", "=": " equals ", "%": " percent ",
               "#": " number "}
_EN_PUNCT_MAP = {";": ",", ":": ",", "。": ".", "，": ",", "、": ",", "！": "!", "？": "?",
                 "；": ",", "：": ",", "⋯": "…", "—": " - ", "–": " - ", "\n": ". "}


def normalize_en(text: str) -> str:
    """Normalize English text: words separated by single spaces, punctuation kept
    as separate marks from , . ! ? … - ; letter case preserved."""
    text = to_half_width(text)
    text = text.replace("’", "'").replace("‘", "'").replace("`", "'")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.replace("...", "…")
    text = _ACRONYM_RE.sub(lambda m: m.group(0).replace(".", _ACRO_DOT), text)
    text = _ABBR_RE.sub(lambda m: _EN_ABBREVIATIONS[m.group(1).lower()], text)
    text = re.sub(r"\bvs\b", "versus", text, flags=re.IGNORECASE)
    text = re.sub(r"\bNo\.\s*(?=\d)", "number ", text)
    # currency with optional scale word
    text = re.sub(r"([$£€¥])\s?(\d[\d,]*)(?:\.(\d+))?(?:\s?(thousand|million|billion|trillion)\b)?",
                  _en_currency, text, flags=re.IGNORECASE)
    text = re.sub(r"(\d)%", r"\1 percent", text)
    text = re.sub(r"(?<!\d)(\d{1,2}):(\d{2})(?!\d)", _en_time, text)
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: en_ordinal(int(m.group(1))), text,
                  flags=re.IGNORECASE)
    text = re.sub(r"(?<![\dA-Za-z.])-(?=\d)", "minus ", text)
    # decades / plurals of numbers: 1980s -> nineteen eighties
    text = re.sub(r"(\d+)'?s\b", lambda m: _plural(en_number(m.group(1))), text)
    # ranges 3-5 -> three to five
    text = re.sub(r"(?<=\d)\s?-\s?(?=\d)", " to ", text)
    text = re.sub(r"\d[\d,]*(?:\.\d+)?",
                  lambda m: " " + en_number(m.group(0).rstrip(",")) + (" , " if m.group(0).endswith(",") else " "),
                  text)
    for sym, rep in _EN_SYMBOLS.items():
        text = text.replace(sym, rep)
    text = "".join(_EN_PUNCT_MAP.get(ch, ch) for ch in text)
    # hyphenated words are read as separate words; a free-standing dash stays a '-' pause
    text = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", text)
    # keep letters, apostrophes inside words, and the punctuation phones
    text = re.sub(r"[^A-Za-z',.!?…\- " + _ACRO_DOT + "]", " ", text)
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", " ", text)
    text = re.sub(r"\s*([,.!?…\-])\s*", r" \1 ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"([,.!?…\-])( [,.!?…\-])+", r"\1", text)
    return text.replace(_ACRO_DOT, ".")
