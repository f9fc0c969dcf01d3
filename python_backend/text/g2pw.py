"""G2PW polyphone disambiguation, as upstream GPT-SoVITS runs it (``G2PWOnnxConverter``).

Upstream reads every Chinese sentence through the g2pW ONNX model: the sentence is converted
to Taiwan traditional characters (OpenCC ``s2tw``), monophonic characters take their one
reading, polyphonic ones are predicted by the model from a context window, and the rest come
from pypinyin.  A voice was trained on exactly those readings, so this module reproduces that
plumbing: character selection (with upstream's hand-made exception sets), the +-16 character
window, BERT tokenization, the model inputs, sentence de-duplication, argmax -> bopomofo ->
pinyin.  The user supplies the ``G2PWModel`` folder and the BERT ``vocab.txt``; no
``transformers`` is needed (``BertWordPiece`` below is the tokenizer subset g2pW uses).

``correct_pronunciation`` applies upstream's phrase dictionary (``g2pw/polyphonic.rep`` then
``polyphonic-fix.rep`` from the upstream text folder, see ``resources``).  Without those
files the model's readings are used uncorrected.
"""
from __future__ import annotations

import ast
import json
import os
import threading
import unicodedata
from pathlib import Path

import numpy as np

from . import resources

MODEL_FILES = (
    "g2pW.onnx",
    "config.py",
    "POLYPHONIC_CHARS.txt",
    "MONOPHONIC_CHARS.txt",
    "bopomofo_to_pinyin_wo_tune_dict.json",
    "char_bopomofo_dict.json",
)

# Upstream's hand-made exceptions: polyphonic characters it still reads through pypinyin /
# its monophonic list, and monophonic characters it does not trust.
NON_POLYPHONIC = frozenset("一不和咋嗲剖差攢倒難奔勁拗肖瘙誒泊听噢")
NON_MONOPHONIC = frozenset("似攢")

CONTEXT_CHARS = 16  # upstream's default g2pw_polyphonic_context_chars
MAX_TOKENS = 512  # BERT input length, [CLS] and [SEP] included


# ------------------------------------------------------------------ BERT tokenizer

def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_whitespace(ch: str) -> bool:
    return ch.isspace()


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class BertWordPiece:
    """The uncased Chinese BERT tokenizer (basic tokenizer + WordPiece) over a vocab.txt.

    Same steps as the ``tokenizer.json`` of chinese-roberta-wwm-ext-large: drop control
    characters, CJK characters become their own words, accents stripped (NFD), lowercase,
    split on whitespace and punctuation, then greedy longest-match WordPiece with ``##``
    continuations and ``[UNK]`` for a word that cannot be covered.
    """

    max_chars_per_word = 100

    def __init__(self, vocab_file: str | os.PathLike):
        path = Path(vocab_file)
        if not path.is_file():
            raise ValueError(f"BERT vocab file not found: {path}")
        vocab: dict[str, int] = {}
        with open(path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                vocab[line.rstrip("\n")] = index
        for special in ("[UNK]", "[CLS]", "[SEP]"):
            if special not in vocab:
                raise ValueError(f"BERT vocab file {path} lacks the {special} token")
        self.vocab = vocab
        self.unk_id = vocab["[UNK]"]

    def _words(self, text: str) -> list[str]:
        pieces: list[str] = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                pieces.append(" ")
            elif _is_cjk(cp):
                pieces.append(f" {ch} ")
            else:
                pieces.append(ch)
        norm = unicodedata.normalize("NFD", "".join(pieces))
        norm = "".join(c for c in norm if unicodedata.category(c) != "Mn").lower()
        words: list[str] = []
        current: list[str] = []
        for ch in norm:
            if _is_whitespace(ch) or _is_punctuation(ch):
                if current:
                    words.append("".join(current))
                    current = []
                if not _is_whitespace(ch):
                    words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
        return words

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_chars_per_word:
            return ["[UNK]"]
        out: list[str] = []
        start = 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]
            out.append(piece)
            start = end
        return out

    def tokenize(self, text: str) -> list[str]:
        return [piece for word in self._words(text) for piece in self._wordpiece(word)]

    def ids(self, tokens: list[str]) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]


def _wordize(text: str) -> tuple[list[str], list[int | None], list[tuple[int, int]]]:
    """g2pW's pre-split: ASCII spaces dropped, [A-Za-z0-9]+ runs as words, else one char each."""
    words: list[str] = []
    char2word: list[int | None] = []
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == " ":
            char2word.append(None)
            i += 1
            continue
        j = i + 1
        if ch.isascii() and ch.isalnum():
            while j < n and text[j].isascii() and text[j].isalnum():
                j += 1
        spans.append((i, j))
        char2word.extend([len(words)] * (j - i))
        words.append(text[i:j])
        i = j
    return words, char2word, spans


def tokenize_and_map(tokenizer: BertWordPiece, text: str):
    """Tokens of ``text`` plus char -> token and token -> (start, end) char maps (as g2pW)."""
    words, char2token, spans = _wordize(text)
    tokens: list[str] = []
    token_spans: list[tuple[int, int]] = []
    for word, (start, end) in zip(words, spans):
        pieces = tokenizer.tokenize(word)
        if not pieces or pieces == ["[UNK]"]:
            tokens.append("[UNK]")
            token_spans.append((start, end))
            continue
        pos = start
        for piece in pieces:
            width = len(piece[2:] if piece.startswith("##") else piece)
            token_spans.append((pos, pos + width))
            pos += width
            tokens.append(piece)
    for index, (start, end) in enumerate(token_spans):
        for pos in range(start, end):
            char2token[pos] = index  # IndexError when a token outruns the text, as upstream
    return tokens, char2token, token_spans


# ------------------------------------------------------------------ data files

def _read_config(path: Path) -> dict:
    """Literal top-level assignments of g2pW's config.py (read as data, never executed)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"G2PW config {path} is not valid Python: {exc.msg}") from None
    out: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass  # computed fields (paths) are not needed
    return out


def _read_char_table(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").strip().split("\n"):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path.name}: expected 'char<TAB>bopomofo', got {line!r}")
        rows.append((fields[0], fields[1]))
    return rows


def traditional_to_simplified(text: str) -> str:
    """Upstream's character table (absent file: unchanged; pypinyin reads traditional
    characters itself, so only a few phrase readings can differ)."""
    table = resources.traditional_to_simplified_table()
    return "".join(table.get(ch, ch) for ch in text)


_PHRASES: tuple[object, dict[str, list[str]]] | None = None  # (upstream folder, table)
_PHRASES_LOCK = threading.Lock()


def _parse_readings(text: str):
    """``['yi1', 'ding1']`` -> list; a quick path for the plain form, else a literal parse."""
    if text.startswith("[") and text.endswith("]") and "\\" not in text:
        items = [item.strip() for item in text[1:-1].split(",")]
        if all(len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"" and item[0] not in item[1:-1]
               for item in items):
            return [item[1:-1] for item in items]
    return ast.literal_eval(text)


def _read_phrase_file(path: Path, into: dict[str, list[str]]) -> None:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            key, _, value = line.partition(":")
            readings = _parse_readings(value.strip())
            if not isinstance(readings, list) or not all(isinstance(r, str) for r in readings):
                raise ValueError(f"{path.name}: bad entry {line.strip()!r}")
            into[key.strip()] = readings


def phrase_dictionary() -> dict[str, list[str]]:
    """Upstream's G2PW phrase corrections (polyphonic.rep, then polyphonic-fix.rep over it).

    Reloaded when the configured upstream folder changes; empty when the files are absent.
    """
    global _PHRASES
    source = resources.upstream_text_dir()
    with _PHRASES_LOCK:
        if _PHRASES is None or _PHRASES[0] != source:
            table: dict[str, list[str]] = {}
            for key in ("polyphonic", "polyphonic_fix"):
                path = resources.upstream_file(key)
                if path is not None:
                    _read_phrase_file(path, table)
            _PHRASES = (source, table)
        return _PHRASES[1]


def correct_pronunciation(word: str, pinyins: list) -> list:
    """A whole-word dictionary reading wins; else single-character entries replace readings."""
    table = phrase_dictionary()
    if word in table:
        return list(table[word])
    out = list(pinyins)
    for i, ch in enumerate(word):
        if ch in table:
            out[i] = table[ch][0]
    return out


# ------------------------------------------------------------------ the model

class G2PW:
    """Per-character pinyin (``"zhong1"``, neutral tone 5) for Chinese sentences.

    Upstream's defaults are built in: sentence de-duplication on (one copy of a context's
    tokens serves all its queries; for a context over 510 tokens that copy is the first
    query's window, as upstream) and a ``context_chars`` window of 16.  Each distinct
    context runs as its own ONNX call instead of one batch padded to the longest context:
    padding is masked out, so the argmax is the same, and the cost stays linear in the text.
    """

    def __init__(self, model_dir: str | os.PathLike, vocab_file: str | os.PathLike,
                 context_chars: int = CONTEXT_CHARS, threads: int = 1):
        import onnxruntime
        from opencc import OpenCC

        folder = Path(model_dir)
        if not folder.is_dir():
            raise ValueError(f"G2PW model folder not found: {folder}")
        for name in MODEL_FILES:
            if not (folder / name).is_file():
                raise ValueError(f"G2PW model folder {folder} lacks {name}")
        self.tokenizer = BertWordPiece(vocab_file)
        config = _read_config(folder / "config.py")
        self.use_mask = bool(config.get("use_mask", True))
        self.use_char_phoneme = bool(config.get("use_char_phoneme", False))
        self.context_chars = max(0, int(context_chars))

        polyphonic = _read_char_table(folder / "POLYPHONIC_CHARS.txt")
        if self.use_char_phoneme:
            names = [f"{c} {p}" for c, p in polyphonic]
        else:
            names = [p for _, p in polyphonic]
        self.labels = sorted(set(names))
        label_index = {label: i for i, label in enumerate(self.labels)}
        self.char_labels: dict[str, list[int]] = {}
        for (char, _), name in zip(polyphonic, names):
            self.char_labels.setdefault(char, []).append(label_index[name])
        self.char2id = {c: i for i, c in enumerate(sorted(self.char_labels))}
        self.polyphonic = set(self.char_labels) - NON_POLYPHONIC
        self.monophonic = {c: p for c, p in _read_char_table(folder / "MONOPHONIC_CHARS.txt")}
        for char in NON_MONOPHONIC:
            self.monophonic.pop(char, None)
        with open(folder / "bopomofo_to_pinyin_wo_tune_dict.json", encoding="utf-8") as f:
            self.bopomofo_to_pinyin: dict[str, str] = json.load(f)
        # char_bopomofo_dict.json is required like upstream, but not parsed: upstream gives a
        # character found there the same pypinyin reading as one that is not.

        self._opencc = OpenCC("s2tw")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(folder / "g2pW.onnx"), sess_options=options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()

    # -------------------------------------------------------------- public

    def pinyin(self, sentences: str | list[str]) -> list[list[str | None]]:
        """Upstream ``_g2pw``: one list per sentence, one pinyin (or None) per character."""
        if isinstance(sentences, str):
            sentences = [sentences]
        with self._lock:
            return self._run(list(sentences))

    __call__ = pinyin

    # -------------------------------------------------------------- steps

    def _bopomofo_to_pinyin(self, bopomofo: str) -> str | None:
        tone = bopomofo[-1]
        if tone not in "12345":
            raise ValueError(f"G2PW label {bopomofo!r} has no tone digit")
        syllable = self.bopomofo_to_pinyin.get(bopomofo[:-1])
        return syllable + tone if syllable else None

    def _run(self, sentences: list[str]) -> list[list[str | None]]:
        from pypinyin import Style, pinyin as pypinyin

        results: list[list[str | None]] = []
        # queries grouped by their context text: text -> [(sentence no, char no, char no in text)]
        groups: dict[str, list[tuple[int, int, int]]] = {}
        for sent_no, sent in enumerate(sentences):
            trad = self._opencc.convert(sent)
            if len(trad) != len(sent):
                raise ValueError("OpenCC s2tw changed the sentence length")
            fallback = None
            readings: list[str | None] = [None] * len(trad)
            poly: list[int] = []
            for i, ch in enumerate(trad):
                if ch in self.polyphonic:
                    poly.append(i)
                elif ch in self.monophonic:
                    readings[i] = self._bopomofo_to_pinyin(self.monophonic[ch])
                else:
                    if fallback is None:  # pypinyin over the whole sentence, for phrase context
                        fallback = pypinyin(traditional_to_simplified(trad), neutral_tone_with_five=True,
                                            style=Style.TONE3)
                    if i >= len(fallback):
                        raise ValueError(f"pypinyin readings do not line up with {sent!r}")
                    readings[i] = fallback[i][0]
            results.append(readings)
            if not poly:
                continue
            if self.context_chars > 0:
                left = max(0, poly[0] - self.context_chars)
                right = min(len(trad), poly[-1] + self.context_chars + 1)
            else:
                left, right = 0, len(trad)
            queries = groups.setdefault(trad[left:right], [])
            queries.extend((sent_no, i, i - left) for i in poly)
        if not groups:
            return results

        tokenized = {}
        for text in groups:
            lowered = text.lower()
            try:
                tokenized[text] = (lowered, tokenize_and_map(self.tokenizer, lowered))
            except IndexError:
                return results  # upstream: an untokenizable text leaves every query unanswered
        for text, queries in groups.items():
            feeds = self._inputs(*tokenized[text], queries)
            probs = self._session.run(None, feeds)[0]
            for (sent_no, char_no, _), label in zip(queries, np.argmax(probs, axis=1).tolist()):
                name = self.labels[label]
                if self.use_char_phoneme:
                    name = name.split(" ")[1]
                results[sent_no][char_no] = self._bopomofo_to_pinyin(name)
        return results

    def _inputs(self, text: str, tokenized, queries: list[tuple[int, int, int]]) -> dict:
        """ONNX feeds for the queries sharing one context text (one copy of its tokens)."""
        tokens, char2token, _ = tokenized
        limit = MAX_TOKENS - 2
        first_start = None
        positions = []
        for _, _, q in queries:
            token_pos = char2token[q]
            start = 0
            if len(tokens) > limit:
                # Upstream's window of `limit` tokens centred on the query, kept inside the text.
                start = token_pos - limit // 2
                start = max(0, min(start, len(tokens) - limit))
            if first_start is None:
                first_start = start
            positions.append(token_pos - start + 1)  # [CLS] is position 0
        window = tokens[first_start:first_start + limit]
        # De-duplication sends one copy of the tokens: the first query's window, as upstream.
        ids = self.tokenizer.ids(["[CLS]"] + window + ["[SEP]"])
        chars = [text[q] for _, _, q in queries]
        masks = np.zeros((len(queries), len(self.labels)), dtype=np.float32)
        for row, ch in enumerate(chars):
            if self.use_mask:
                masks[row, self.char_labels[ch]] = 1.0
            else:
                masks[row, :] = 1.0
        return {
            "input_ids": np.array([ids], dtype=np.int64),
            "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "phoneme_mask": masks,
            "char_ids": np.array([self.char2id[ch] for ch in chars], dtype=np.int64),
            "position_ids": np.array(positions, dtype=np.int64),
        }
