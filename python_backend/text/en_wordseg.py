"""Splitting run-together words (``openai`` -> ``open ai``) as ``wordsegment`` 1.3.1 does.

Upstream's English g2p sends an unknown word longer than three letters to
``wordsegment.segment`` and reads each part.  We read the same unigram/bigram counts from
the installed ``wordsegment`` package (data files only; found without importing it) and
compute the same best split, but as an iterative dynamic program over (position, previous
word) instead of wordsegment's recursion: same scores, summed in the same order, same tie
rule, without its ~0.7 s per 250 characters or its ``RecursionError`` on long words.

Equivalence notes:

* wordsegment's search returns ``max`` over (score, words) tuples, candidates in order of
  increasing first-word length; on an exact score tie the later candidate wins (its first
  word extends the earlier one, so its word list compares greater).  Hence ``>=`` below.
* scores are ``log10`` of the same float expressions, and a state's score is
  ``first + rest`` with ``rest`` the (already summed) best of the remaining text.
* text is cut into 250-character chunks, each re-segmented together with the last five
  words of the previous chunk, as wordsegment does.
"""
from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path

ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
TOTAL = 1024908267229.0
MAX_WORD = 24
CHUNK = 250
CARRY_WORDS = 5


class Segmenter:
    """Unigram/bigram counts plus the segmentation search."""

    def __init__(self, unigrams: dict[str, float], bigrams: dict[str, float]):
        self.unigrams = unigrams
        self.bigrams = bigrams
        # Words that start some bigram and are themselves unigrams: only after one of these
        # can the bigram branch of the score apply.
        self._heads = frozenset(k.split(" ", 1)[0] for k in bigrams) & unigrams.keys()

    @classmethod
    def from_directory(cls, folder: Path) -> "Segmenter":
        return cls(_read_counts(folder / "unigrams.txt"), _read_counts(folder / "bigrams.txt"))

    def _unigram_log(self, word: str) -> float:
        count = self.unigrams.get(word)
        if count is not None:
            return math.log10(count / TOTAL)
        return math.log10(10.0 / (TOTAL * 10 ** len(word)))

    def _best(self, text: str) -> list[str]:
        """wordsegment's ``search(text)`` (previous word ``<s>``): the best word list."""
        n = len(text)
        if n == 0:
            return []
        # uni[i][L-1]: log score of text[i:i+L] when no bigram applies.
        uni = [[self._unigram_log(text[i:i + length]) for length in range(1, min(n - i, MAX_WORD) + 1)]
               for i in range(n)]
        # score[i][p]: best score of text[i:] after a previous word of length p (0: "<s>").
        score = [[0.0] * (MAX_WORD + 1) for _ in range(n + 1)]
        choice = [[0] * (MAX_WORD + 1) for _ in range(n + 1)]
        for i in range(n - 1, -1, -1):
            plain: tuple[float, int] | None = None  # the answer for every prev without bigrams
            for p in (range(1, min(i, MAX_WORD) + 1) if i > 0 else (0,)):
                prev = text[i - p:i] if p else "<s>"
                if prev in self._heads:
                    best = self._pick(text, i, uni[i], score, prev)
                else:
                    if plain is None:
                        plain = self._pick(text, i, uni[i], score, None)
                    best = plain
                score[i][p], choice[i][p] = best
        words: list[str] = []
        i, p = 0, 0
        while i < n:
            length = choice[i][p]
            words.append(text[i:i + length])
            i, p = i + length, length
        return words

    def _pick(self, text: str, i: int, uni_row: list[float], score: list[list[float]],
              prev: str | None) -> tuple[float, int]:
        """Best (score, first-word length) at ``i``; a later candidate wins an exact tie."""
        best_score, best_len = -math.inf, 0
        for length in range(1, len(uni_row) + 1):
            first = uni_row[length - 1]
            if prev is not None:
                count = self.bigrams.get(prev + " " + text[i:i + length])
                if count is not None:
                    first = math.log10(count / TOTAL / (self.unigrams[prev] / TOTAL))
            total = first + score[i + length][length]
            if total >= best_score:
                best_score, best_len = total, length
        return best_score, best_len

    def segment(self, text: str) -> list[str]:
        """Best split of ``text`` (lower-cased, non-alphanumerics dropped) into words."""
        clean = "".join(c for c in text.lower() if c in ALPHABET)
        words: list[str] = []
        carry = ""
        for offset in range(0, len(clean), CHUNK):
            chunk_words = self._best(carry + clean[offset:offset + CHUNK])
            carry = "".join(chunk_words[-CARRY_WORDS:])
            words.extend(chunk_words[:-CARRY_WORDS])
        words.extend(self._best(carry))
        return words


def _read_counts(path: Path) -> dict[str, float]:
    counts: dict[str, float] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, count = line.split("\t")
            counts[word] = float(count)
    return counts


def package_directory() -> Path | None:
    """The installed ``wordsegment`` package folder (located without importing it)."""
    spec = importlib.util.find_spec("wordsegment")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


_lock = threading.Lock()
_segmenter: Segmenter | None = None


def segmenter() -> Segmenter | None:
    """The shared segmenter, loaded on first use (~1.5 s, ~100 MB); None without the package."""
    global _segmenter
    if _segmenter is None:
        with _lock:
            if _segmenter is None:
                folder = package_directory()
                if folder is None or not (folder / "unigrams.txt").is_file():
                    return None
                _segmenter = Segmenter.from_directory(folder)
    return _segmenter
