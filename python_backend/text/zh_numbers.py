"""Chinese reading of numbers, dates, times and other digit expressions.

This follows upstream GPT-SoVITS v2 (``zh_normalization`` in ``GPT_SoVITS/text``, itself from
PaddleSpeech) rule for rule, in the same order, because a voice was trained on exactly those
readings -- including the odd ones (``第2名`` reads 两, ``010-1234`` reads the dash as 减).

Linear time.  Python's ``re`` backtracks, and many upstream patterns open with ``\\d+``, so a
search over a long digit run retries from every digit and rescans the run: quadratic.  Every
such pattern here refuses to *start* inside a digit run (``(?<![0-9])``) and never gives digits
back (``++``).  That is exact, not an approximation: the token after the run can never be a
digit, so an attempt from the middle of a run fails whenever the attempt from its start did.
(One pattern can end a match inside a run -- ``~`` ranges ending in the unit ``m2``/``m3`` --
and there the start is allowed.)

Digits: upstream's ``\\d`` also matches non-ASCII decimal digits, then fails on them with a
``KeyError``.  Here ``ascii_digits`` first turns every decimal digit into ASCII, so ``٣`` is read
as 三 where upstream raises.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable

_DIGIT_NAMES = "零一二三四五六七八九"
# Place-value words by power of ten; 万 and 亿 group four and eight digits.
_UNIT_POWERS = (8, 4, 3, 2, 1)
_UNIT_NAMES = {1: "十", 2: "百", 3: "千", 4: "万", 8: "亿"}


def ascii_digits(text: str) -> str:
    """Replace every non-ASCII decimal digit (Unicode Nd) by its ASCII digit."""
    return _OTHER_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group())), text)


_OTHER_DIGIT = re.compile(r"(?![0-9])\d")


def verbalize_digits(digits: str, alt_one: bool = False) -> str:
    """Read a digit string digit by digit (``alt_one``: 一 as 幺, as for phone numbers)."""
    out = "".join(_DIGIT_NAMES[ord(c) - 48] for c in digits)
    return out.replace("一", "幺") if alt_one else out


def _place_value(s: str, lo: int, hi: int) -> list[str]:
    """Words for ``s[lo:hi]`` read with place values.

    The reading splits the digits at the largest unit shorter than the significant part:
    the left part is read recursively, then the unit, then the right part (at most 8 digits).
    A left part that keeps leading zeros down to one digit is read 零 + digit.  The left
    recursion is unrolled so that a very long number costs no deep Python stack.
    """
    first_nz = lo
    while first_nz < hi and s[first_nz] == "0":
        first_nz += 1
    tails: list[list[str]] = []
    head: list[str] = []
    while True:
        start = first_nz if first_nz < hi else hi
        n = hi - start
        if n == 1:
            head = ([_DIGIT_NAMES[0]] if start > lo else []) + [_DIGIT_NAMES[ord(s[start]) - 48]]
        if n <= 1:
            break
        unit = next(p for p in _UNIT_POWERS if p < n)
        tails.append([_UNIT_NAMES[unit]] + _place_value(s, hi - unit, hi))
        hi -= unit
    for part in reversed(tails):
        head.extend(part)
    return head


def verbalize_cardinal(digits: str) -> str:
    """Read an integer digit string as a cardinal (``""`` stays empty, zeros read 零)."""
    if not digits:
        return ""
    digits = digits.lstrip("0")
    if not digits:
        return _DIGIT_NAMES[0]
    words = _place_value(digits, 0, len(digits))
    if len(words) >= 2 and words[0] == "一" and words[1] == "十":
        words = words[1:]  # 一十五 is said 十五
    return "".join(words)


def verbalize_number(value: str) -> str:
    """Read ``123``, ``1.50`` or ``.5``: cardinal integer part, digit-by-digit decimals.

    Trailing decimal zeros collapse to one (``3.200`` reads 三点二零), and a bare decimal
    part gets 零 (``.5`` reads 零点五).
    """
    integer, dot, decimal = value.partition(".")
    if "." in decimal:
        raise ValueError(f"number {value!r} has more than one decimal point")
    words = verbalize_cardinal(integer)
    if decimal.endswith("0"):
        decimal = decimal.rstrip("0") + "0"
    if decimal:
        words = (words or _DIGIT_NAMES[0]) + "点" + verbalize_digits(decimal)
    return words


def _signed(sign: str, value: str) -> str:
    return ("负" if sign else "") + verbalize_number(value)


# ---------------------------------------------------------------- dates and times

_DATE = re.compile(
    r"(?P<y>[0-9]{4}|[0-9]{2})年"
    r"(?:(?P<mon>0?[1-9]|1[0-2])月)?"
    r"(?:(?P<d>0?[1-9]|[12][0-9]|3[01])(?P<dw>[日号]))?")
# 2024-03-05, 2024/03/05, 2024.03.05, 2024 03 05 (same separator twice).
_DATE_SEP = re.compile(r"([0-9]{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12][0-9]|3[01])")

_CLOCK = r"([01]?[0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?"
_TIME = re.compile(_CLOCK)
_TIME_RANGE = re.compile(_CLOCK + "[~-]" + _CLOCK)


def _date(m: re.Match) -> str:
    out = verbalize_digits(m["y"]) + "年"
    if m["mon"]:
        out += verbalize_cardinal(m["mon"]) + "月"
    if m["d"]:
        out += verbalize_cardinal(m["d"]) + m["dw"]
    return out


def _date_sep(m: re.Match) -> str:
    return (verbalize_digits(m[1]) + "年" + verbalize_cardinal(m[3]) + "月"
            + verbalize_cardinal(m[4]) + "日")


def _clock_part(two_digits: str) -> str:
    """Minutes/seconds: a leading zero is read (08 -> 零八)."""
    return ("零" if two_digits.startswith("0") else "") + verbalize_number(two_digits.lstrip("0"))


def _clock(hour: str, minute: str, second: str | None, half_if: str) -> str:
    """One clock time; ``half_if`` is the minute whose value 30 makes it 半.

    Upstream tests the *first* time's minute for both ends of a range; kept.
    """
    out = verbalize_number(hour) + "点"
    if minute.lstrip("0"):
        out += "半" if int(half_if) == 30 else _clock_part(minute) + "分"
    if second and second.lstrip("0"):
        out += _clock_part(second) + "秒"
    return out


def _time(m: re.Match) -> str:
    return _clock(m[1], m[2], m[3], m[2])


def _time_range(m: re.Match) -> str:
    return _clock(m[1], m[2], m[3], m[2]) + "至" + _clock(m[4], m[5], m[6], m[2])


# ---------------------------------------------------------------- units and ranges

# Units after a number in a "~" range; order matters for where a match ends (m2 before m).
_RANGE_UNITS = "(?:%|°C|℃|度|摄氏度|cm2|cm²|cm3|cm³|cm|db|ds|kg|km|m2|m²|m³|m3|ml|m|mm|s)"
# A number that may start right after a previous match ended in "m2"/"m3".
_TO_NUM_FIRST = r"(?:-?(?:(?<![0-9])|(?<=m[23]))[0-9]++(?:\.[0-9]++)?+|\.[0-9]++)"
_TO_NUM = r"(?:-?[0-9]++(?:\.[0-9]++)?+|\.[0-9]++)"
_TO_RANGE = re.compile(_TO_NUM_FIRST + _RANGE_UNITS + "~" + _TO_NUM + _RANGE_UNITS)

_TEMPERATURE = re.compile(r"(-?)(?<![0-9])([0-9]++(?:\.[0-9]++)?+)(°C|℃|度|摄氏度)")

# Latin unit abbreviations, replaced anywhere in this order (so "mm" never survives "m").
_MEASURES = (
    ("cm2", "平方厘米"), ("cm²", "平方厘米"), ("cm3", "立方厘米"), ("cm³", "立方厘米"),
    ("cm", "厘米"), ("db", "分贝"), ("ds", "毫秒"), ("kg", "千克"), ("km", "千米"),
    ("m2", "平方米"), ("m²", "平方米"), ("m³", "立方米"), ("m3", "立方米"), ("ml", "毫升"),
    ("m", "米"), ("mm", "毫米"), ("s", "秒"),
)


def _temperature(m: re.Match) -> str:
    # Every unit, 摄氏度 included, reads 度 (upstream tests the wrong group; kept).
    return ("零下" if m[1] else "") + verbalize_number(m[2]) + "度"


def _replace_measures(text: str) -> str:
    for abbr, word in _MEASURES:
        text = text.replace(abbr, word)
    return text


# ---------------------------------------------------------------- arithmetic

_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ"
_SUPERSCRIPT_PLAIN = dict(zip(_SUPERSCRIPTS, "0123456789xyn"))
_SUP = f"[{_SUPERSCRIPTS}]*+"
_OPERAND_FIRST = (rf"(?:-?(?<![0-9])[0-9]++(?:\.[0-9]++)?+{_SUP}"
                  rf"|\.[0-9]++{_SUP}|[A-Za-z]{_SUP})")
_OPERAND = rf"(?:-?[0-9]++(?:\.[0-9]++)?+{_SUP}|\.[0-9]++{_SUP}|[A-Za-z]{_SUP})"
_ARITH = re.compile(f"({_OPERAND_FIRST})([-+×÷=])({_OPERAND})")
_OPERATOR_WORDS = {"+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等于"}
_POWER = re.compile(f"[{_SUPERSCRIPTS}]+")
# Upstream repeats the arithmetic pass until nothing matches; two passes always suffice
# (each pass frees the left operand of every operator it skipped).  The cap only bounds
# the cost on input that would disprove that.
_MAX_ARITH_PASSES = 8


def _arith(m: re.Match) -> str:
    return m[1] + _OPERATOR_WORDS[m[2]] + m[3]


def _power(m: re.Match) -> str:
    return "的" + "".join(_SUPERSCRIPT_PLAIN[c] for c in m.group()) + "次方"


def _replace_arith(text: str) -> str:
    for _ in range(_MAX_ARITH_PASSES):
        text, n = _ARITH.subn(_arith, text)
        if not n:
            break
    return text


# ---------------------------------------------------------------- fractions, percent, phones

_FRACTION = re.compile(r"(-?)(?<![0-9])([0-9]++)/([0-9]++)")
_PERCENT = re.compile(r"(-?)(?<![0-9])([0-9]++(?:\.[0-9]++)?+)%")
_MOBILE = re.compile(
    r"(?<![0-9])(?:\+?86 ?)?1(?:[38][0-9]|5[0-35-9]|7[678]|9[89])[0-9]{8}(?![0-9])")
_LANDLINE = re.compile(r"(?<![0-9])(?:0(?:10|2[1-3]|[3-9][0-9]{2})-?)?[1-9][0-9]{6,7}(?![0-9])")
_SERVICE_NUMBER = re.compile(r"400-?[0-9]{3}-?[0-9]{4}")


def _fraction(m: re.Match) -> str:
    return ("负" if m[1] else "") + verbalize_number(m[3]) + "分之" + verbalize_number(m[2])


def _percent(m: re.Match) -> str:
    return ("负" if m[1] else "") + "百分之" + verbalize_number(m[2])


def _mobile(m: re.Match) -> str:
    # Space-separated groups (country code) are read apart, with a pause between them.
    return "，".join(verbalize_digits(p, alt_one=True) for p in m.group().strip("+").split())


def _landline(m: re.Match) -> str:
    return "，".join(verbalize_digits(p, alt_one=True) for p in m.group().split("-"))


# ---------------------------------------------------------------- plain numbers

# "1-5", "2~3": not touching other digits or operators on either side.
_RANGE = re.compile(r"(?<![0-9+\-×÷=])(-?)([0-9]+(?:\.[0-9]+)?)[-~]"
                    r"(-?)([0-9]+(?:\.[0-9]+)?)(?![0-9+\-×÷=])")
_NEGATIVE = re.compile(r"-([0-9]++)")
_VERSION = re.compile(r"(?<![0-9])[0-9]++(?:\.[0-9]++){2,}+")
_DECIMAL = re.compile(r"(-?)(?<![0-9])([0-9]++\.[0-9]++)|\.([0-9]++)")
# Measure words after a count.  Upstream lists ~200 words; since the match keeps the word
# as it is, only whether one starts here matters, which these decide.
_MEASURE_WORD_CHARS = (
    "处台架枚趟幅平方堵间床株批项例列篇栋注亩封艘把目套段人所朵匹张座回场尾条个首阙阵网炮"
    "顶丘棵只支袭辆挑担颗壳窠曲墙群腔砣客贯扎捆刀令打手罗坡山岭江溪钟队单双对出口头脚板跳"
    "枝件贴针线管名位身堂课本页家户层丝毫厘分钱两斤铢石钧锱忽寸尺丈里寻常铺程米撮勺合升斗"
    "盘碗碟叠桶笼盆盒杯斛锅簋篮罐瓶壶卮盏箩箱煲啖袋钵年月日季刻时周天秒旬纪岁世更夜春夏秋"
    "冬代伏辈丸泡粒幢堆根道面片块元亿万千百吨角毛")
_MEASURE_WORDS_MULTI = ("公分", "小时", "美元", "十吨")
_COUNT = re.compile(r"(?<![0-9])([0-9]++)([多余几+])?"
                    rf"([{_MEASURE_WORD_CHARS}]|{'|'.join(_MEASURE_WORDS_MULTI)})")
_DIGIT_STRING = re.compile(r"[0-9]{3,}")
_NUMBER = re.compile(r"(-?)([0-9]+(?:\.[0-9]+)?)|\.([0-9]+)")


def _range(m: re.Match) -> str:
    return _signed(m[1], m[2]) + "到" + _signed(m[3], m[4])


def _negative(m: re.Match) -> str:
    return "负" + verbalize_number(m[1])


def _version(m: re.Match) -> str:
    return "".join("点" if c == "." else _DIGIT_NAMES[ord(c) - 48] for c in m.group())


def _number(m: re.Match) -> str:
    # A bare ".5" ignores any sign in front of it (the "-" is handled later as 减).
    return verbalize_number("." + m[3]) if m[3] else _signed(m[1], m[2])


def _count(m: re.Match) -> str:
    number = verbalize_number(m[1])
    if number == "二":
        number = "两"  # also for 第2名 (upstream does not look at 第)
    more = "多" if m[2] == "+" else (m[2] or "")
    return number + more + m[3]


def _digit_string(m: re.Match) -> str:
    return verbalize_digits(m.group(), alt_one=True)


_Rule = Callable[[str], str]


def _sub(pattern: re.Pattern, repl: Callable[[re.Match], str]) -> _Rule:
    return lambda text: pattern.sub(repl, text)


# Upstream's order; each rule sees the previous one's output.
_RULES: tuple[_Rule, ...] = (
    _sub(_DATE, _date),
    _sub(_DATE_SEP, _date_sep),
    _sub(_TIME_RANGE, _time_range),
    _sub(_TIME, _time),
    _sub(_TO_RANGE, lambda m: m.group().replace("~", "至")),
    _sub(_TEMPERATURE, _temperature),
    _replace_measures,
    _replace_arith,
    _sub(_POWER, _power),
    _sub(_FRACTION, _fraction),
    _sub(_PERCENT, _percent),
    _sub(_MOBILE, _mobile),
    _sub(_LANDLINE, _landline),
    _sub(_SERVICE_NUMBER, _landline),
    _sub(_RANGE, _range),
    _sub(_NEGATIVE, _negative),
    _sub(_VERSION, _version),
    _sub(_DECIMAL, _number),
    _sub(_COUNT, _count),
    _sub(_DIGIT_STRING, _digit_string),
    _sub(_NUMBER, _number),
)


def verbalize_sentence_numbers(sentence: str) -> str:
    """Spell out every digit expression of one sentence (ASCII digits; see ``ascii_digits``)."""
    for rule in _RULES:
        sentence = rule(sentence)
    return sentence
