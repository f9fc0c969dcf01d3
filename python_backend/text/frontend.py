"""Text front end of gsv-triton: text → GPT-SoVITS v2 phone ids and BERT inputs, as upstream.

Public API::

    configure(g2pw_dir=..., vocab_file=..., upstream_text_dir=...)   # once per process
    seqs = sentences("今天天气很好。Hello!", "zh")       # the serving path: one per sentence
    ref = reference_phones("参考音频的文字", "zh")          # a reference transcript
    seq.phone_ids    # int64 [P], indices into the v2 symbol table
    seq.zh_spans     # [(phone_start, phone_end, char_start, char_end)] per Chinese segment
    seq.bert_text    # the Chinese segments' normalized text, concatenated
    bert = bert_features(seq, hidden)     # hidden(text) -> [len(text), 1024]; float32 [1024, P]

Every phone comes from ``preprocess`` (upstream's ``TextPreprocessor`` order of operations,
see ``preprocess.py``) in one of the language modes of ``langsegment.MODES``.  BERT runs on
each Chinese segment alone, as upstream does; other segments get zeros.

What this module adds to upstream: a check that the text suits the mode (``check_text``),
the sentence splitting of the serving path (``sentences.py``), and the process-wide
configuration (G2PW model, upstream dictionaries) reported by ``status()``.
"""
from __future__ import annotations

import logging
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import resources
from .langsegment import MODES
from .preprocess import Piece, TextError, piece_to_phones, preprocess
from .sentences import DEFAULT_MAX_CHARS, split_sentences
from .symbols import PUNCTUATION, symbol_to_id, symbols_v2

__all__ = [
    "PhoneSequence", "TextError", "sentences", "reference_phones", "text_to_phones",
    "split_sentences", "CharTokenizer", "bert_features", "phones_to_ids", "symbols_v2",
    "DEFAULT_MAX_CHARS", "BERT_DIM", "LANGUAGES", "configure", "configure_from_repo", "status", "warmup",
    "normalize_language", "zero_bert",
]

LOG = logging.getLogger("gsv.text")
BERT_DIM = 1024
LANGUAGES = MODES
_CLAUSE_STOPS = frozenset("，。？！,.?!~:：—…")


@dataclass
class PhoneSequence:
    """One sentence as the voice receives it."""

    phone_ids: np.ndarray                                   # int64 [P]
    word2ph: list[int] = field(default_factory=list)        # phones per char of bert_text
    bert_text: str = ""                                     # Chinese segments' norm_text
    zh_spans: list[tuple[int, int, int, int]] = field(default_factory=list)
    language: str = "zh"                                    # zh, en, ja, ko, yue or mixed
    norm_text: str = ""                                     # all segments' norm_text

    @property
    def phones(self) -> list[str]:
        table = symbols_v2()
        return [table[int(i)] for i in self.phone_ids]

    def __len__(self) -> int:
        return int(self.phone_ids.shape[0])


def phones_to_ids(phones: list[str]) -> np.ndarray:
    table = symbol_to_id()
    try:
        return np.asarray([table[p] for p in phones], dtype=np.int64)
    except KeyError as e:  # a bug in a g2p, not in the input (the cleaner maps to UNK)
        raise RuntimeError(f"phone {e.args[0]!r} is not in the v2 table") from None


def normalize_language(language) -> str:
    """A mode name (case-insensitive) or a one-line TextError listing the modes."""
    if not isinstance(language, str) or language.strip().lower() not in MODES:
        raise TextError(f"unsupported language {language!r}; use one of {', '.join(MODES)}")
    return language.strip().lower()


# ---- what a mode can speak ----------------------------------------------------------

def _script(ch: str) -> str | None:
    cp = ord(ch)
    if 0x3041 <= cp <= 0x30FF and cp not in (0x30FB,):      # hiragana, katakana (not the dot)
        return "kana"
    if 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F or 0xAC00 <= cp <= 0xD7AF:
        return "hangul"
    return None


_CANNOT = {"zh": ("kana", "hangul"), "yue": ("kana", "hangul"), "ja": ("hangul",),
           "ko": ("kana",), "en": ("kana", "hangul")}
_SCRIPT_NAMES = {"kana": "Japanese kana", "hangul": "Korean Hangul"}
_SUGGEST = {"kana": "ja, all_ja or auto", "hangul": "ko, all_ko or auto"}


def check_text(text: str, mode: str) -> None:
    """Refuse control characters, and scripts the mode's language module would silently drop."""
    base = mode.removeprefix("all_")
    cannot = _CANNOT.get(base, ())
    for i, ch in enumerate(text):
        if ch in "\n\t\r":
            continue
        if unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\u200b\u200c\u200d\ufeff":
            raise TextError(f"TEXT has a control character U+{ord(ch):04X} at position {i}")
        script = _script(ch)
        if script in cannot:
            raise TextError(f"TEXT has {_SCRIPT_NAMES[script]} ({ch!r} at position {i}), which language "
                            f"mode {mode!r} cannot speak; use {_SUGGEST[script]}")


# ---- configuration ----------------------------------------------------------------

_config_lock = threading.Lock()
_g2pw = None
_g2pw_dir: Path | None = None
_g2pw_error: str | None = None


def configure(g2pw_dir: str | Path | None = None, vocab_file: str | Path | None = None,
              upstream_text_dir: str | Path | None = None) -> dict:
    """Load G2PW (a ``G2PWModel`` folder plus the BERT ``vocab.txt``) and point the front end
    at upstream's dictionaries; returns ``status()``.  Without G2PW, Chinese polyphones come
    from pypinyin alone (upstream's ``is_g2pw = False`` path) and a warning is logged once."""
    global _g2pw, _g2pw_dir, _g2pw_error
    from .g2pw import G2PW

    with _config_lock:
        if upstream_text_dir is not None and Path(upstream_text_dir) != resources.upstream_text_dir():
            resources.set_upstream_text_dir(upstream_text_dir)
            from . import en_g2p, zh_normalize

            en_g2p.reset()                 # dictionaries read from the old folder
            zh_normalize.reset_cache()
        _g2pw, _g2pw_dir, _g2pw_error = None, None, None
        if g2pw_dir is not None:
            if vocab_file is None:
                raise ValueError("G2PW needs the BERT vocabulary (vocab.txt) beside its model folder")
            _g2pw = G2PW(g2pw_dir, vocab_file)
            _g2pw_dir = Path(g2pw_dir)
        else:
            _g2pw_error = "no G2PW model configured"
            LOG.warning("[text] G2PW is off: Chinese polyphones follow pypinyin, not the voice's "
                        "training front end (export with --g2pw DIR to fix)")
        if resources.upstream_text_dir() is None:
            LOG.warning("[text] upstream dictionaries not configured (%s); English and G2PW "
                        "phrases use fallbacks", resources.ENV_VAR)
    return status()


def configure_from_repo(repo: str | Path) -> dict:
    """Use a model repository's text resources (``.gsv/text/``, see ``layout``): G2PW with the
    shared BERT's vocabulary, and upstream's dictionaries when the repository has them."""
    from python_backend import layout

    repo = Path(repo)
    g2pw, upstream = layout.g2pw_dir(repo), layout.upstream_text_dir(repo)
    vocab = None
    bert_dir = repo / layout.BERT_MODEL
    for version in reversed(layout.version_numbers(bert_dir)) if bert_dir.is_dir() else []:
        if (bert_dir / str(version) / "vocab.txt").is_file():
            vocab = bert_dir / str(version) / "vocab.txt"
            break
    use_g2pw = (g2pw / "g2pW.onnx").is_file() and vocab is not None
    return configure(g2pw_dir=g2pw if use_g2pw else None, vocab_file=vocab if use_g2pw else None,
                     upstream_text_dir=upstream if upstream.is_dir() else None)


def status() -> dict:
    """What the front end runs with (for /health and the voice manifest)."""
    up = resources.status()
    return {"g2pw": _g2pw is not None, "g2pw_dir": str(_g2pw_dir) if _g2pw_dir else None,
            "upstream_text": up["upstream_text_dir"], "upstream_files": up["files"],
            "parity": bool(_g2pw is not None and up["parity"])}


# ---- text → sequences ----------------------------------------------------------------

def _sequence(pieces: list[Piece]) -> PhoneSequence:
    phones: list[str] = []
    word2ph: list[int] = []
    bert_text = ""
    spans: list[tuple[int, int, int, int]] = []
    langs: set[str] = set()
    norm = ""
    for piece in pieces:
        for seg in piece.segments:
            if seg.lang == "zh" and seg.phones:
                spans.append((len(phones), len(phones) + len(seg.phones), len(bert_text),
                              len(bert_text) + len(seg.norm_text)))
                bert_text += seg.norm_text
                word2ph.extend(seg.word2ph or [])
            if any(p not in PUNCTUATION for p in seg.phones):
                langs.add(seg.lang)
            phones.extend(seg.phones)
            norm += seg.norm_text
    language = langs.pop() if len(langs) == 1 else "mixed"
    return PhoneSequence(phone_ids=phones_to_ids(phones), word2ph=word2ph, bert_text=bert_text,
                         zh_spans=spans, language=language, norm_text=norm)


def _checked(text: str, language: str, g2pw, what: str = "text"):
    """(mode, G2PW model) for ``text``, or a TextError: unknown mode, empty, unspeakable."""
    mode = normalize_language(language)
    if not isinstance(text, str) or not text.strip():
        raise TextError(f"{what} is empty")
    check_text(text, mode)
    return mode, (_g2pw if g2pw is ... else g2pw)


def _pronounceable(seq: PhoneSequence) -> bool:
    return any(p not in PUNCTUATION and p != "UNK" for p in seq.phones)


def sentences(text: str, language: str = "auto", *, max_chars: int = DEFAULT_MAX_CHARS,
              g2pw=...) -> list[PhoneSequence]:
    """The serving path: sentences of at most ``max_chars`` (the split method), then
    upstream's preprocessing; one sequence per kept piece."""
    mode, model = _checked(text, language, g2pw)
    lines = split_sentences(text, max_chars)
    pieces = preprocess("\n".join(lines), mode, model)
    seqs = [s for s in (_sequence([p]) for p in pieces) if _pronounceable(s)]
    if not seqs:
        raise TextError(f"text has nothing pronounceable in language mode {mode!r}: {text[:40]!r}")
    return seqs


def reference_phones(text: str, language: str = "zh", *, g2pw=...) -> PhoneSequence:
    """A reference transcript as upstream reads a prompt: a stop added when missing, then
    one ``get_phones_and_bert`` over the whole text (no sentence splitting)."""
    mode, model = _checked(text, language, g2pw, "reference text")
    text = text.strip("\n")
    if text[-1] not in _CLAUSE_STOPS:
        text += "." if mode == "en" else "。"
    seq = _sequence([piece_to_phones(text, mode, model)])
    if not _pronounceable(seq):
        raise TextError(f"reference text has nothing pronounceable in language mode {mode!r}")
    return seq


def text_to_phones(text: str, language: str = "auto", *, g2pw=...) -> PhoneSequence:
    """All of ``text`` as one sequence (upstream's preprocessing, pieces joined)."""
    mode, model = _checked(text, language, g2pw)
    seq = _sequence(preprocess(text, mode, model))
    if not _pronounceable(seq):
        raise TextError(f"text has nothing pronounceable in language mode {mode!r}: {text[:40]!r}")
    return seq


WARMUP_TEXTS = {"zh": ("你好，warm up 1 time。", "zh"), "ja": ("こんにちは。", "all_ja"),
                "ko": ("안녕하세요.", "all_ko"), "yue": ("你好。", "all_yue")}


def warmup(languages: tuple[str, ...] = ("zh", "ja", "ko", "yue")) -> dict[str, str]:
    """Load dictionaries, jieba, inflect and each language's packages now (seconds each)
    instead of on a request; a language whose packages are missing is reported, not fatal."""
    from . import en_g2p, en_normalize

    out = {}
    for lang in languages:
        text, mode = WARMUP_TEXTS[lang]
        try:
            text_to_phones(text, mode)
            out[lang] = "ok"
        except (TextError, ValueError) as exc:
            out[lang] = str(exc)
            LOG.warning("[text] %s is unavailable: %s", lang, exc)
    en_normalize.warmup()
    en_g2p.warmup()
    return out


# ---- BERT -------------------------------------------------------------------------

class CharTokenizer:
    """Character-level tokenizer for the Chinese BERT (chinese-roberta-wwm-ext-large).

    Every character of a Chinese segment's normalized text (hanzi or a pause mark) is one
    BERT token in that vocabulary: each char maps to its id (then its lower-case form, then
    [UNK]) between [CLS] and [SEP]."""

    def __init__(self, vocab: dict[str, int]):
        for tok in ("[CLS]", "[SEP]", "[UNK]"):
            if tok not in vocab:
                raise ValueError(f"vocabulary lacks {tok}")
        self.vocab = vocab
        self.cls_id, self.sep_id, self.unk_id = vocab["[CLS]"], vocab["[SEP]"], vocab["[UNK]"]

    @classmethod
    def from_vocab_file(cls, path: str | Path) -> "CharTokenizer":
        vocab: dict[str, int] = {}
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                tok = line.rstrip("\r\n")
                if tok and tok not in vocab:
                    vocab[tok] = i
        return cls(vocab)

    def char_ids(self, text: str) -> list[int]:
        return [self.vocab.get(ch, self.vocab.get(ch.lower(), self.unk_id)) for ch in text]

    def encode(self, text: str) -> np.ndarray:
        """int64 [1, len(text) + 2]: [CLS] chars [SEP]."""
        return np.asarray([self.cls_id] + self.char_ids(text) + [self.sep_id], dtype=np.int64)[None, :]

    __call__ = encode


def bert_features(seq: PhoneSequence, hidden: Callable[[str], np.ndarray]) -> np.ndarray:
    """Per-phone BERT features float32 [1024, P]: ``hidden(text)`` ([len(text), D], i.e.
    hidden_states[-3] without [CLS]/[SEP]) runs once per Chinese segment, as upstream does;
    each char's vector repeats over its phones; other phones get zeros."""
    out = np.zeros((BERT_DIM, len(seq)), dtype=np.float32)
    for ps, pe, cs, ce in seq.zh_spans:
        feats = np.asarray(hidden(seq.bert_text[cs:ce]), dtype=np.float32)
        if feats.ndim == 3 and feats.shape[0] == 1:
            feats = feats[0]
        if feats.ndim != 2 or feats.shape != (ce - cs, BERT_DIM):
            raise ValueError(f"BERT features must be [{ce - cs}, {BERT_DIM}] for a segment of "
                             f"{ce - cs} chars (strip [CLS]/[SEP]); got {tuple(feats.shape)}")
        counts = np.asarray(seq.word2ph[cs:ce], dtype=np.int64)
        rep = np.repeat(feats, counts, axis=0)
        if rep.shape[0] != pe - ps:
            raise ValueError("word2ph does not match zh_spans (internal error)")
        out[:, ps:pe] = rep.T
    return out


def zero_bert(seq: PhoneSequence, dim: int = BERT_DIM) -> np.ndarray:
    """All-zero BERT features [dim, P] (for text without Chinese)."""
    return np.zeros((dim, len(seq)), dtype=np.float32)
