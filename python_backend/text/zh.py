"""Chinese grapheme-to-phoneme for the GPT-SoVITS v2 phone table.

Pipeline: ``normalize_zh`` -> jieba part-of-speech segmentation -> pypinyin
(``Style.TONE3``, neutral tone written 5, pypinyin's phrase dictionary resolves
most polyphones) -> tone sandhi (``apply_tone_sandhi``) -> each syllable becomes
two v2 symbols, an initial and a final carrying the tone digit, in the
opencpop-strict convention:

* zero-initial syllables starting with a/e/o get the pseudo-initials AA/EE/OO
  (an -> AA an1, er -> EE er2, ou -> OO ou3);
* y/w syllables keep y/w as initial: yi -> y i, ya -> y ia, you -> y iu,
  yu -> y v, yue -> y ve, yuan -> y van, yun -> y vn, wu -> w u, wei -> w ui,
  wen -> w un, weng -> w eng, wo -> w uo;
* zhi/chi/shi/ri -> final ir, zi/ci/si -> final i0;
* ü is written v (ju -> j v, lüe -> l ve), uei/iou/uen are already ui/iu/un;
* syllabic nasals (嗯 n, ng; 呣 m; hm, hng) have no final in the table and are
  approximated: n -> EE en, ng -> EE eng, m -> m u, hm -> h en, hng -> h eng.

Each of the five punctuation marks , . ! ? … is one phone.  ``word2ph`` gives
the number of phones per character of the normalized text (2 per hanzi, 1 per
punctuation mark).

Not done (vs. upstream GPT-SoVITS): no G2PW neural polyphone model (polyphones
come from pypinyin's dictionaries only), no erhua merging (儿 is always its own
syllable), and a smaller set of neutral-tone rules.
"""
from __future__ import annotations

import logging
import re
import threading

from .normalize import ZH_PUNCT, is_hanzi, normalize_zh
from .symbols import symbol_to_id

_INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h",
             "j", "q", "x", "r", "z", "c", "s")
_SYLLABIC = {"n": ("EE", "en"), "ng": ("EE", "eng"), "m": ("m", "u"),
             "hm": ("h", "en"), "hng": ("h", "eng"), "ê": ("EE", "e"), "e^": ("EE", "e")}

_lock = threading.Lock()
_jieba_ready = False


def _posseg():
    """jieba.posseg, initialised once (quietly; jieba caches its dictionary in the temp dir)."""
    global _jieba_ready
    import jieba
    import jieba.posseg as pseg

    if not _jieba_ready:
        with _lock:
            if not _jieba_ready:
                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()
                _jieba_ready = True
    return pseg


def split_syllable(syllable: str) -> tuple[str, str]:
    """Split a toneless pinyin syllable (ü written v) into v2 initial and final.

    >>> split_syllable("yue")
    ('y', 've')
    >>> split_syllable("shi")
    ('sh', 'ir')
    """
    s = syllable.lower().replace("ü", "v").replace("u:", "v")
    if s in _SYLLABIC:
        return _SYLLABIC[s]
    if s[0] in "aeo":
        return {"a": "AA", "e": "EE", "o": "OO"}[s[0]], s
    if s[0] == "y":
        rest = s[1:]
        if rest.startswith("u") or rest.startswith("v"):
            return "y", "v" + rest[1:]
        if rest.startswith("i"):
            return "y", rest
        if rest == "ou":
            return "y", "iu"
        if rest == "o":
            return "y", "o"
        return "y", "i" + rest
    if s[0] == "w":
        rest = s[1:]
        if rest.startswith("u"):
            return "w", rest
        if rest in ("ei", "en"):
            return "w", "u" + rest[1:]
        if rest in ("eng", "ong"):  # weng; the rare variant wong
            return "w", rest
        return "w", "u" + rest
    for ini in _INITIALS:
        if s.startswith(ini) and len(s) > len(ini):
            fin = s[len(ini):]
            if fin == "i" and ini in ("zh", "ch", "sh", "r"):
                fin = "ir"
            elif fin == "i" and ini in ("z", "c", "s"):
                fin = "i0"
            elif ini in ("j", "q", "x") and fin.startswith("u"):
                fin = "v" + fin[1:]
            elif fin == "uei":
                fin = "ui"
            elif fin == "iou":
                fin = "iu"
            elif fin == "uen":
                fin = "un"
            return ini, fin
    raise ValueError(f"unparsable pinyin syllable {syllable!r}")


def syllable_to_phones(tone3: str) -> list[str]:
    """'ni3' -> ['n', 'i3'];  a syllable without tone digit gets the neutral tone 5."""
    if tone3[-1].isdigit():
        base, tone = tone3[:-1], tone3[-1]
    else:
        base, tone = tone3, "5"
    ini, fin = split_syllable(base)
    return [ini, fin + tone]


# ----------------------------------------------------------------------- sandhi

_NUMERALS = set("零一二三四五六七八九十百千万亿两〇")
_PARTICLES = set("吧呢啊呐噻嘛吖哦哒啦喽啰哟呀")
_STRUCTURAL = {"的": ("uj", "ud"), "地": ("uv",), "得": ("ud", "ud"), "了": ("ul",),
               "着": ("uz",), "过": ("ug",)}


def _set_tone(syl: str, tone: int | str) -> str:
    return (syl[:-1] if syl[-1].isdigit() else syl) + str(tone)


def _tone(syl: str) -> int:
    return int(syl[-1]) if syl[-1].isdigit() else 5


def _is_punct_word(word: str) -> bool:
    return all(ch in ZH_PUNCT for ch in word)


def _sub_chunks(word: str) -> list[int]:
    """Lengths of the prosodic sub-words of a word (for third-tone sandhi)."""
    n = len(word)
    if n <= 2:
        return [n]
    if n == 3:
        import jieba

        freq = jieba.dt.FREQ
        if freq.get(word[:2]):
            return [2, 1]
        if freq.get(word[1:]):
            return [1, 2]
        return [2, 1]
    chunks = [2] * (n // 2)
    if n % 2:
        chunks.append(1)
    return chunks


def _third_tone(syls: list[str], chunks: list[int]) -> list[str]:
    """3-3 -> 2-3 inside each chunk, then across chunk boundaries left to right."""
    out = list(syls)
    pos = 0
    bounds = []
    for size in chunks:
        for i in range(pos + size - 2, pos - 1, -1):
            if _tone(out[i]) == 3 and _tone(out[i + 1]) == 3:
                out[i] = _set_tone(out[i], 2)
        pos += size
        bounds.append(pos)
    for b in bounds[:-1]:
        if _tone(out[b - 1]) == 3 and _tone(out[b]) == 3:
            out[b - 1] = _set_tone(out[b - 1], 2)
    return out


def apply_tone_sandhi(words: list[tuple[str, str]], pinyins: list[list[str]]) -> list[list[str]]:
    """Tone sandhi over one sentence.

    ``words``: (word, jieba POS) pairs; ``pinyins``: the TONE3 syllables of each word
    (punctuation words carry their marks).  Rules, in order:

    1. neutral tone: structural particles 的/地/得/了/着/过 (by POS), sentence-final
       modal particles, the suffix 们, and reduplicated nouns/verbs (奶奶, 看看);
    2. 不: X不X inside a word (看不懂) -> bu5; before a 4th tone -> bu2; else bu4;
    3. 一: inside numbers or after 第 -> yi1; X一X (看一看) -> yi5; before a 4th
       tone -> yi2; before another tone -> yi4; before a pause / at the end -> yi1;
    4. third tone: where 3 meets 3, adjacent one-character words are first paired
       (我/也/想/你 -> 我也 想你), then neighbours are merged greedily while a group
       stays within 3 characters (as upstream does); then 3-3 -> 2-3 inside sub-words (3-char words split 2+1 or 1+2 by
       the jieba dictionary, longer ones in pairs) and across sub-word boundaries.
    """
    pys = [list(p) for p in pinyins]
    # 1. neutral tones
    for wi, (word, pos) in enumerate(words):
        if _is_punct_word(word):
            continue
        syl = pys[wi]
        if word in _STRUCTURAL and pos in _STRUCTURAL[word]:
            syl[0] = _set_tone(syl[0], 5)
        if len(word) == 1 and word in _PARTICLES and pos in ("y", "e", "zg"):
            syl[0] = _set_tone(syl[0], 5)
        if len(word) >= 2 and word[-1] == "们":
            syl[-1] = _set_tone(syl[-1], 5)
        if (len(word) == 2 and word[0] == word[1] and pos[:1] in ("n", "v")
                and word[0] not in _NUMERALS):
            syl[1] = _set_tone(syl[1], 5)
    # flat view for 一/不, which look at the following syllable across words
    flat: list[tuple[int, int]] = []  # (word index, char index) of each hanzi
    for wi, (word, _) in enumerate(words):
        for ci, ch in enumerate(word):
            flat.append((wi, ci))

    def char_at(k: int) -> str:
        wi, ci = flat[k]
        return words[wi][0][ci]

    def syl_at(k: int) -> str:
        wi, ci = flat[k]
        return pys[wi][ci]

    # reset 一/不 to their citation tones (pypinyin's phrase dict pre-applies some sandhi)
    base_tones = [_tone(syl_at(k)) for k in range(len(flat))]
    for k in range(len(flat)):
        ch = char_at(k)
        wi, ci = flat[k]
        if ch == "一" and syl_at(k).startswith("yi"):
            base_tones[k] = 1
        elif ch == "不" and syl_at(k).startswith("bu"):
            base_tones[k] = 4
    # Apply 一/不 using the next syllable's tone after the neutral-tone step.
    for k in range(len(flat)):
        ch = char_at(k)
        wi, ci = flat[k]
        word = words[wi][0]
        if ch not in "一不" or not syl_at(k)[:2] in ("yi", "bu"):
            continue
        nxt = char_at(k + 1) if k + 1 < len(flat) else ""
        prv = char_at(k - 1) if k > 0 else ""
        nxt_tone = base_tones[k + 1] if nxt and nxt not in ZH_PUNCT else None
        if ch == "不":
            if len(word) == 3 and ci == 1 and word[0] == word[2]:
                tone = 5
            elif len(word) == 3 and ci == 1 and words[wi][1].startswith("v"):
                tone = 5  # potential complement: 看不懂, 吃不完
            elif nxt_tone == 4:
                tone = 2
            else:
                tone = 4
        else:
            if (all(c in _NUMERALS for c in word) and len(word) > 1) or prv == "第" \
                    or (nxt and nxt in _NUMERALS) or (prv and prv in _NUMERALS and prv != "一"):
                tone = 1
            elif prv and nxt and prv == nxt and is_hanzi(prv) and nxt_tone is not None:
                tone = 5
            elif nxt_tone is None:
                tone = 1
            elif nxt_tone == 4:
                tone = 2
            else:
                tone = 4
        pys[wi][ci] = _set_tone(pys[wi][ci], tone)
    # 4. third tone: group short words, then apply
    def joinable(a: list[int], b: list[int], limit: int) -> bool:
        la, fb = a[-1], b[0]
        if _is_punct_word(words[la][0]) or _is_punct_word(words[fb][0]):
            return False
        size = sum(len(words[i][0]) for i in a + b)
        return size <= limit and _tone(pys[la][-1]) == 3 and _tone(pys[fb][0]) == 3

    # pass 1: pair up single-character words (效果/很/好 -> 效果 (很好))
    groups: list[list[int]] = []
    for wi in range(len(words)):
        if (groups and len(groups[-1]) == 1 and len(words[groups[-1][0]][0]) == 1
                and len(words[wi][0]) == 1 and joinable(groups[-1], [wi], 2)):
            groups[-1].append(wi)
        else:
            groups.append([wi])
    # pass 2: greedy merge of neighbours up to 3 characters (upstream's rule)
    merged: list[list[int]] = []
    for g in groups:
        if merged and joinable(merged[-1], g, 3):
            merged[-1] = merged[-1] + g
        else:
            merged.append(g)
    groups = merged
    for g in groups:
        if len(g) == 1 and _is_punct_word(words[g[0]][0]):
            continue
        syls = [s for i in g for s in pys[i]]
        chunks: list[int] = []
        for i in g:
            chunks.extend(_sub_chunks(words[i][0]))
        new = _third_tone(syls, chunks)
        pos = 0
        for i in g:
            n = len(pys[i])
            pys[i] = new[pos:pos + n]
            pos += n
    return pys


# ----------------------------------------------------------------------- g2p

def _known_hanzi(ch: str) -> bool:
    from pypinyin.pinyin_dict import pinyin_dict

    return ord(ch) in pinyin_dict


def clean_zh(text: str) -> str:
    """normalize_zh and drop hanzi that pypinyin cannot read."""
    text = normalize_zh(text)
    return "".join(ch for ch in text if ch in ZH_PUNCT or _known_hanzi(ch))


def _pinyin_of(word: str) -> list[str]:
    from pypinyin import Style, lazy_pinyin

    syls = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True, errors="default")
    if len(syls) != len(word):  # should not happen for known hanzi; fall back char by char
        syls = [lazy_pinyin(ch, style=Style.TONE3, neutral_tone_with_five=True)[0] for ch in word]
    return syls


def g2p_zh_normalized(text: str) -> tuple[list[str], list[int]]:
    """Phones and word2ph for text that is already normalized (hanzi + , . ! ? …)."""
    pseg = _posseg()
    phones: list[str] = []
    word2ph: list[int] = []
    # sandhi works per sentence; jieba sees punctuation as separate words
    for sentence in re.findall(r"[^,.!?…]+[,.!?…]*|[,.!?…]+", text):
        words = [(w.word, w.flag) for w in pseg.cut(sentence)]
        # jieba may glue punctuation to nothing else; split any mixed word defensively
        fixed: list[tuple[str, str]] = []
        for w, flag in words:
            if _is_punct_word(w) or not any(ch in ZH_PUNCT for ch in w):
                fixed.append((w, flag))
            else:
                fixed.extend((ch, "x" if ch in ZH_PUNCT else flag) for ch in w)
        words = fixed
        pinyins = [list(w) if _is_punct_word(w) else _pinyin_of(w) for w, _ in words]
        pinyins = apply_tone_sandhi(words, pinyins)
        for (w, _), syls in zip(words, pinyins):
            if _is_punct_word(w):
                for ch in w:
                    phones.append(ch)
                    word2ph.append(1)
                continue
            for syl in syls:
                ph = syllable_to_phones(syl)
                phones.extend(ph)
                word2ph.append(len(ph))
    return phones, word2ph


def g2p_zh(text: str) -> tuple[str, list[str], list[int]]:
    """Normalize and convert Chinese text.  Returns (normalized text, phones, word2ph)
    with len(word2ph) == len(normalized text) and sum(word2ph) == len(phones)."""
    norm = clean_zh(text)
    phones, word2ph = g2p_zh_normalized(norm)
    assert len(word2ph) == len(norm) and sum(word2ph) == len(phones)
    table = symbol_to_id()
    for p in phones:
        if p not in table:
            raise ValueError(f"zh g2p produced {p!r}, which is not in the v2 phone table")
    return norm, phones, word2ph
