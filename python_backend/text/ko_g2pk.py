"""A deterministic, offline driver for g2pk2's Korean pronunciation rules.

Upstream GPT-SoVITS calls ``g2pk2.G2p()(text)``.  Using that object as is inside a
server has three problems, each solved here while keeping its output:

* **Network at import.**  ``import g2pk2`` asks NLTK for ``cmudict`` and calls
  ``nltk.download`` when it is missing.  We import it with ``nltk.download`` replaced by
  a stub that refuses (under a lock, restored afterwards).  cmudict only feeds g2pk2's
  English-word step, and GPT-SoVITS spells Latin letters in Hangul before g2pk2 runs, so
  that step sees no letters; the reference run had an empty cmudict too.  We skip it.
* **pip at construction.**  ``G2p.__init__`` may start ``pip install`` when MeCab is
  missing.  We never construct ``G2p``; ``pronounce`` runs the same steps in the same
  order with g2pk2's own rule functions and table.
* **Hash-seed dependence.**  g2pk2 iterates over Python sets in three places.  Two do not
  depend on the order (see ``_compose`` and the English step above).  The third, the
  number step, replaces ``<digits><bound noun>/B`` tokens one after another with
  ``str.replace``; when one token ends another (``3시`` inside ``13시``) the order
  decides the reading.  The reference outputs were made with ``PYTHONHASHSEED=0``, so we
  replay the iteration order CPython 3.11 gives that set under seed 0
  (``seed0_set_order``), whatever seed this process runs with.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

_lock = threading.Lock()
_state: dict[str, Any] | None = None

_PACKAGE_OF = {"mecab": "python-mecab-ko"}
INSTALL_HINT = "pip install g2pk2==0.0.3 python-mecab-ko==1.3.7 python-mecab-ko-dic==2.1.1.post2 jamo==0.4.1"


# --------------------------------------------------------------------------------------
# CPython 3.11's set iteration order under PYTHONHASHSEED=0.
# --------------------------------------------------------------------------------------
_M64 = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _siphash13_zero_key(data: bytes) -> int:
    """SipHash-1-3 with a zero key: CPython's str hash when hash randomization is off."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def sipround() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _M64; v2 = (v2 + v3) & _M64
        v1 = _rotl(v1, 13) ^ v0; v3 = _rotl(v3, 16) ^ v2
        v0 = _rotl(v0, 32)
        v2 = (v2 + v1) & _M64; v0 = (v0 + v3) & _M64
        v1 = _rotl(v1, 17) ^ v2; v3 = _rotl(v3, 21) ^ v0
        v2 = _rotl(v2, 32)

    n = len(data)
    whole = n - n % 8
    for off in range(0, whole, 8):
        m = int.from_bytes(data[off:off + 8], "little")
        v3 ^= m
        sipround()
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    sipround()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sipround()
    return v0 ^ v1 ^ v2 ^ v3


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def hash_seed0(obj: Hashable) -> int:
    """``hash(obj)`` as 64-bit CPython 3.11 computes it with PYTHONHASHSEED=0.

    Covers what g2pk2 puts in its sets: str and tuples of str.
    """
    if isinstance(obj, str):
        if not obj:
            return 0
        top = max(map(ord, obj))
        # A str hashes its internal buffer: 1, 2 or 4 bytes per character (PEP 393).
        codec = "latin-1" if top < 0x100 else "utf-16-le" if top < 0x10000 else "utf-32-le"
        h = _signed(_siphash13_zero_key(obj.encode(codec, "surrogatepass")))
        return -2 if h == -1 else h
    if isinstance(obj, tuple):
        p1, p2, p5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
        acc = p5
        for item in obj:
            acc = (acc + (hash_seed0(item) & _M64) * p2) & _M64
            acc = _rotl(acc, 31)
            acc = (acc * p1) & _M64
        acc = (acc + (len(obj) ^ (p5 ^ 3527539))) & _M64
        return 1546275796 if acc == _M64 else _signed(acc)
    raise TypeError(f"hash_seed0 does not model {type(obj).__name__}")


def seed0_set_order(items: Iterable[Hashable]) -> list:
    """The order in which ``for x in set(items)`` visits items under PYTHONHASHSEED=0.

    Replays setobject.c (3.11): open addressing from ``hash & mask``, up to 9 linear
    probes, then ``i = 5*i + 1 + perturb`` with ``perturb >>= 5``; the table starts with
    8 slots and grows to the next power of two above ``4 * used`` once it is 3/5 full,
    re-inserting old slots in table order.  Iteration is table order.
    """
    table: list[tuple[int, Any] | None] = [None] * 8
    mask, used = 7, 0

    def insert_clean(tab: list, msk: int, h: int, key: Any) -> None:
        i, perturb = h & msk, h & _M64
        while True:
            if tab[i] is None:
                tab[i] = (h, key)
                return
            if i + 9 <= msk:
                for j in range(i + 1, i + 10):
                    if tab[j] is None:
                        tab[j] = (h, key)
                        return
            perturb >>= 5
            i = (i * 5 + 1 + perturb) & msk

    for key in items:
        h = hash_seed0(key)
        i, perturb = h & mask, h & _M64
        slot = -1
        while slot < 0:
            stop = i + 9 if i + 9 <= mask else i
            for j in range(i, stop + 1):
                entry = table[j]
                if entry is None:
                    slot = j
                    break
                if entry[0] == h and entry[1] == key:
                    slot = -2
                    break
            if slot == -2:
                break
            if slot < 0:
                perturb >>= 5
                i = (i * 5 + 1 + perturb) & mask
        if slot == -2:
            continue
        table[slot] = (h, key)
        used += 1  # no deletions, so fill == used
        if used * 5 >= mask * 3:
            size = 8
            while size <= used * 4:
                size <<= 1
            new: list = [None] * size
            for entry in table:
                if entry is not None:
                    insert_clean(new, size - 1, *entry)
            table, mask = new, size - 1
    return [entry[1] for entry in table if entry is not None]


# --------------------------------------------------------------------------------------
# Loading g2pk2 and MeCab without network or pip.
# --------------------------------------------------------------------------------------
def _refuse_download(*_args: Any, **_kwargs: Any) -> bool:
    return False


def _load() -> dict[str, Any]:
    global _state
    if _state is not None:
        return _state
    with _lock:
        if _state is not None:
            return _state
        try:
            import jamo
            import mecab
            import nltk
        except ImportError as e:
            raise ValueError(f"Korean needs {_PACKAGE_OF.get(e.name, e.name)}: {INSTALL_HINT}") from None
        saved = nltk.download
        nltk.download = _refuse_download
        try:
            from g2pk2 import numerals, regular, special, utils
        except ImportError as e:
            raise ValueError(f"Korean needs {_PACKAGE_OF.get(e.name, e.name)}: {INSTALL_HINT}") from None
        finally:
            nltk.download = saved
        try:
            tagger = mecab.MeCab()
        except Exception as e:  # MeCab raises its own types when the dictionary is absent
            raise ValueError(f"Korean: MeCab could not start ({e}); {INSTALL_HINT}") from None
        idioms_path = Path(utils.__file__).with_name("idioms.txt")
        idioms = []
        with open(idioms_path, encoding="utf8") as f:
            for line in f:
                rule = line.split("#")[0].strip()
                if "===" in rule:
                    left, right = rule.split("===")
                    idioms.append((re.compile(left), right))
        _state = {
            "h2j": jamo.h2j,
            "j2h": jamo.j2h,
            "tagger": tagger,
            "tag_lock": threading.Lock(),
            "idioms": idioms,
            "special": (special.jyeo, special.ye, special.consonant_ui, special.josa_ui,
                        special.vowel_ui, special.jamo, special.rieulgiyeok,
                        special.rieulbieub, special.verb_nieun, special.balb,
                        special.palatalize, special.modifying_rieul),
            "table": [(re.compile(a), b) for a, b, _ in utils.parse_table()],
            "links": (regular.link1, regular.link2, regular.link3, regular.link4),
            "spell_number": numerals.process_num,
            "bound_nouns": numerals.BOUND_NOUNS,
        }
        return _state


# --------------------------------------------------------------------------------------
# The pipeline (same steps as g2pk2.G2p.__call__ with its defaults).
# --------------------------------------------------------------------------------------
_NUMBER_TOKEN = re.compile(r"([\d][\d,]*)([ㄱ-힣]+)/B")
_MARKERS = re.compile("/[PJEB]")
_BARE_VOWEL = re.compile("(^|[^\u1100-\u1112])([\u1161-\u1175])")
_SYLLABLE = re.compile("[\u1100-\u1112][\u1161-\u1175][\u11A8-\u11C2]?")
_composed: dict[str, str] = {}  # jamo run -> syllable; at most 19*21*28 entries
_ASCII_DIGITS = str.maketrans({d: n for d, n in zip("0123456789", "영일이삼사오육칠팔구")})


def _annotate(text: str, st: dict[str, Any]) -> str:
    """Mark morphemes the rules need (josa 의 /J, ㄹ-final endings /E, verb stems /P,
    counters /B) from MeCab's tags; leave the text alone if MeCab's tokens do not cover
    it exactly.  One pass (g2pk2 re-slices its tag string once per space)."""
    with st["tag_lock"]:
        tokens = st["tagger"].pos(text)
    if text.replace(" ", "") != "".join(tok for tok, _ in tokens):
        return text
    tags = []
    for tok, tag in tokens:
        last = tag.split("+")[-1]
        tags.append("_" * (len(tok) - 1) + ("B" if last == "NNBC" else last[0]))
    tag_iter = iter("".join(tags))
    h2j = st["h2j"]
    out: list[str] = []
    for ch in text:
        out.append(ch)
        if ch == " ":
            continue
        tag = next(tag_iter)
        if tag == "J" and ch == "의":
            out.append("/J")
        elif tag == "E" and h2j(ch)[-1] == "ᆯ":
            out.append("/E")
        elif tag == "V" and h2j(ch)[-1] in "ᆫᆬᆷᆱᆰᆲᆴ":
            out.append("/P")
        elif tag == "B":
            out.append("/B")
    return "".join(out)


def _suffix_tries(tokens: list[tuple[str, str]], rank: Callable[[int], int]) -> dict[str, dict]:
    """Per counter, a trie of the reversed numbers; a node's ``""`` holds the token's rank."""
    tries: dict[str, dict] = {}
    for i, (num, noun) in enumerate(tokens):
        node = tries.setdefault(noun, {})
        for ch in reversed(num):
            node = node.setdefault(ch, {})
        node[""] = rank(i)
    return tries


def _has_nested_tokens(tokens: list[tuple[str, str]], tries: dict[str, dict]) -> bool:
    """True if some token's text ends another's (same counter, shorter number)."""
    for num, noun in tokens:
        node = tries[noun]
        for ch in reversed(num[1:]):
            node = node[ch]
            if "" in node:
                return True
    return False


def _spell_numbers(text: str, st: dict[str, Any]) -> str:
    """Read ``<number><counter>/B`` as words (native numerals before the counters g2pk2
    lists, Sino-Korean otherwise), then any other ASCII digit one by one.

    g2pk2 takes the distinct tokens in set order and ``str.replace``s each everywhere.
    A token's text holds one ``/``, at its end, so every occurrence ends at one of the
    ``/B`` marks and each mark's number evolves on its own.  Unless one token ends another
    (``3시`` and ``13시``) exactly one token applies at each mark, whatever the order.
    Otherwise we replay, per mark, the tokens that apply in seed-0 set order: the first
    one found among the suffixes of the remaining digits, then the next after it, and so
    on.  This is the same result as g2pk2's loop without its rescans of the whole text."""
    spell, nouns = st["spell_number"], st["bound_nouns"]

    def words(num: str, noun: str) -> str:
        try:
            return spell(num, sino=noun not in nouns)
        except UnboundLocalError:  # g2pk2 has no words past 10^15 (upstream fails too)
            raise ValueError(f"Korean: number too long to read: {num[:24]}") from None

    tokens = list(dict.fromkeys(_NUMBER_TOKEN.findall(text)))
    if not tokens:
        return text.translate(_ASCII_DIGITS)
    tries = _suffix_tries(tokens, lambda i: i)
    if not _has_nested_tokens(tokens, tries):
        text = _NUMBER_TOKEN.sub(lambda m: words(m.group(1), m.group(2)) + m.group(2) + "/B", text)
        return text.translate(_ASCII_DIGITS)

    order = {tok: r for r, tok in enumerate(seed0_set_order(tokens))}
    tries = _suffix_tries(tokens, lambda i: order[tokens[i]])

    def settle(m: re.Match) -> str:
        digits, noun, after = m.group(1), m.group(2), -1
        while True:
            best, depth, node = None, 0, tries.get(noun)
            for i, ch in enumerate(reversed(digits), 1):
                node = node.get(ch) if node is not None else None
                if node is None:
                    break
                r = node.get("")
                if r is not None and r > after and (best is None or r < best):
                    best, depth = r, i
            if best is None:
                return digits + noun + "/B"
            head, tail = digits[:-depth], digits[-depth:]
            digits, noun, after = head, words(tail, noun) + noun, best

    return _NUMBER_TOKEN.sub(settle, text).translate(_ASCII_DIGITS)


def _compose(letters: str, j2h: Callable[..., str]) -> str:
    """Jamo back to syllables.  g2pk2 collects distinct lead+vowel(+tail) runs in a set and
    replaces each; lead, vowel and tail ranges are disjoint, so occurrences never overlap
    and the set order is irrelevant: one left-to-right pass is the same."""
    letters = _BARE_VOWEL.sub("\\1ᄋ\\2", letters)

    def syllable(m: re.Match) -> str:
        jamo_run = m.group(0)
        out = _composed.get(jamo_run)
        if out is None:
            out = _composed[jamo_run] = j2h(*jamo_run)
        return out

    return _SYLLABLE.sub(syllable, letters)


def pronounce(text: str) -> str:
    """Hangul text -> Hangul spelled as pronounced (g2pk2's ``G2p()(text)``)."""
    st = _load()
    for pattern, repl in st["idioms"]:
        text = pattern.sub(repl, text)
    text = _annotate(text, st)
    text = _spell_numbers(text, st)
    jamo_text = st["h2j"](text)
    for rule in st["special"]:
        jamo_text = rule(jamo_text)
    jamo_text = _MARKERS.sub("", jamo_text)
    for pattern, repl in st["table"]:
        jamo_text = pattern.sub(repl, jamo_text)
    for rule in st["links"]:
        jamo_text = rule(jamo_text)
    return _compose(jamo_text, st["j2h"])
