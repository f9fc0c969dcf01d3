"""The text front end's own rules: modes, pieces, sentences, bad input, BERT alignment, linear time.

Phone-for-phone parity with upstream is ``test_conformance_text.py`` (the kit); the language
modules have their own tests (``test_text_<lang>.py``).  Here: what this project adds around
upstream's path, and upstream's piece rules pinned on hand-made cases.
"""
from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import numpy as np
import pytest

from python_backend.text import (
    LANGUAGES,
    CharTokenizer,
    TextError,
    bert_features,
    reference_phones,
    sentences,
    split_sentences,
    symbols_v2,
    text_to_phones,
)
from python_backend.text.langsegment import split_by_script
from python_backend.text.preprocess import fold_repeated_pauses, preprocess, split_pieces

ROOT = Path(__file__).resolve().parent.parent
TEXT_DIR = ROOT / "python_backend" / "text"


def test_symbol_table_is_the_v2_table():
    table = symbols_v2()
    assert len(table) == 732
    kit = ROOT.parent / "shared" / "gpt-sovits-conformance" / "symbols.json"
    if kit.is_file():
        assert list(table) == json.loads(kit.read_text(encoding="utf-8"))["v2"]


def test_no_torch_or_transformers_imports_in_text_package():
    for path in TEXT_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] in ("torch", "transformers") for n in names), path


def test_modes_are_upstreams():
    assert set(LANGUAGES) == {"all_zh", "zh", "en", "auto", "all_ja", "ja", "all_ko", "ko",
                              "all_yue", "yue", "auto_yue"}


# ------------------------------------------------------------------ upstream's piece rules

def test_leading_stop_when_the_first_clause_is_short():
    assert split_pieces("你好，我是小明。", "zh") == ["。你好，我是小明。"]
    assert split_pieces("今天天气很好，我们出去玩。", "zh") == ["今天天气很好，我们出去玩。"]
    assert split_pieces("Hi, there", "en") == [".Hi, there."]


def test_lines_become_pieces_and_short_lines_join():
    assert split_pieces("第一行很长很长。\n第二行也很长很长。", "all_zh") == ["第一行很长很长。", "第二行也很长很长。"]
    # upstream joins lines under 5 characters to the next one, without a pause
    # (a line break is no clause mark, so the first clause here is long: no leading "。")
    assert split_pieces("你好\n我是一个很长的句子", "all_zh") == ["你好我是一个很长的句子。"]
    assert split_pieces("……\n！！", "all_zh") == []


def test_repeated_pause_marks_fold():
    assert fold_repeated_pauses("好,,,吗?!.") == "好,吗?"
    assert fold_repeated_pauses("好，，吗") == "好，，吗"   # full-width marks are not folded


def test_short_pieces_are_retried_with_a_leading_dot():
    pieces = preprocess("嗯", "all_zh")
    assert len(pieces) == 1 and pieces[0].retried
    assert pieces[0].phones[0] == "."


def test_english_mode_keeps_everything_english():
    seq = text_to_phones("Hello world, this is a test.", "en")
    assert seq.language == "en" and seq.bert_text == "" and seq.zh_spans == []


def test_auto_splits_by_script():
    got = [(s.lang, s.text) for s in split_by_script("你好Hello世界、こんにちは。안녕하세요 123")]
    assert got == [("zh", "你好"), ("en", "Hello"), ("zh", "世界、"), ("ja", "こんにちは。"), ("ko", "안녕하세요 123")]
    assert [s.lang for s in split_by_script("漢字とかな", "yue")] == ["ja"]
    assert [s.lang for s in split_by_script("广东话", "yue")] == ["yue"]
    assert [(s.lang, s.text) for s in split_by_script("12 apples")] == [("en", "12 apples")]


def test_serving_path_cuts_sentences_then_runs_upstreams_path():
    seqs = sentences("今天天气很好，我们一起去公园散步吧。明天下雨，我们待在家里看书。", "zh")
    assert len(seqs) == 2
    assert all(s.phones[-1] == "." for s in seqs)
    assert seqs[0].norm_text.startswith("今天天气很好")


def test_reference_text_gets_a_final_stop():
    seq = reference_phones("参考音频的文字内容", "all_zh")
    assert seq.phones[-1] == "." and seq.norm_text.endswith(".")


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("text,language,needle", [
    ("", "zh", "empty"),
    ("   ", "auto", "empty"),
    ("你好", "fr", "unsupported language 'fr'"),
    ("こんにちは", "all_zh", "Japanese kana"),
    ("안녕하세요", "zh", "Korean Hangul"),
    ("안녕하세요", "all_ja", "Korean Hangul"),
    ("ひらがな", "all_ko", "Japanese kana"),
    ("你好\x07世界", "zh", "control character U+0007"),
    ("……！！", "zh", "nothing pronounceable"),
    ("🙂🙂🙂", "auto", "nothing pronounceable"),
])
def test_bad_text_names_the_cause_in_one_line(text, language, needle):
    with pytest.raises(TextError) as info:
        sentences(text, language)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_emoji_and_symbols_are_dropped_as_upstream_drops_them():
    plain = sentences("今天天气很好。", "all_zh")[0].phones
    assert sentences("今天天气很好🙂。", "all_zh")[0].phones == plain


# ------------------------------------------------------------------ sentence splitting

def test_split_sentences_basic():
    text = "Mr. Smith paid 3.14 dollars. 你好！今天天气不错？Yes!! 好的……再见。"
    assert split_sentences(text) == [
        "Mr. Smith paid 3.14 dollars.", "你好！", "今天天气不错？", "Yes!!", "好的……", "再见。"]


def test_split_sentences_length():
    long_zh = "这是一个非常非常长的句子，它包含了很多很多的字，我们需要把它切成小块，这样服务器就可以一句一句地合成了。"
    pieces = split_sentences(long_zh, max_chars=30)
    assert len(pieces) > 1 and "".join(pieces) == long_zh
    assert all(len(p) <= 30 for p in pieces)
    long_en = " ".join(["word"] * 40)
    assert all(len(p) <= 50 for p in split_sentences(long_en, max_chars=50))
    assert split_sentences("啊" * 25, max_chars=10) == ["啊" * 10, "啊" * 10, "啊" * 5]
    assert split_sentences("第一行\n第二行") == ["第一行", "第二行"]
    assert split_sentences("At 9 a.m. on Jan. 5 we met. Then") == ["At 9 a.m. on Jan. 5 we met.", "Then"]
    assert split_sentences("") == []
    with pytest.raises(ValueError):
        split_sentences("x", max_chars=0)


# ------------------------------------------------------------------ BERT alignment

def _vocab(tmp_path: Path) -> Path:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "!", "你", "好", "我", "a"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def test_char_tokenizer(tmp_path):
    tok = CharTokenizer.from_vocab_file(_vocab(tmp_path))
    ids = tok.encode("你好,我爱A!")
    assert ids.dtype == np.int64 and ids.tolist() == [[2, 8, 9, 5, 10, 1, 11, 7, 3]]
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError):
        CharTokenizer.from_vocab_file(bad)


def test_bert_runs_once_per_chinese_segment():
    seq = text_to_phones("你好，hello world，我很好。", "zh")
    assert len(seq.zh_spans) == 2
    calls = []

    def hidden(text: str) -> np.ndarray:
        calls.append(text)
        return np.tile(np.arange(len(text), dtype=np.float32)[:, None] + 10 * len(calls), (1, 1024))

    out = bert_features(seq, hidden)
    assert out.shape == (1024, len(seq)) and out.dtype == np.float32
    assert calls == [seq.bert_text[cs:ce] for _, _, cs, ce in seq.zh_spans]
    (ps0, pe0, _, _), (ps1, _, _, _) = seq.zh_spans
    assert not out[:, pe0:ps1].any()                       # English phones get zeros
    assert out[0, ps0] == 10 and out[0, ps1] == 20          # each segment's own features
    with pytest.raises(ValueError):
        bert_features(seq, lambda text: np.zeros((len(text) + 2, 1024), np.float32))


# ------------------------------------------------------------------ no slow paths

ADVERSARIAL = {
    "dots": lambda n: "." * n,
    "dots_words": lambda n: ("a." * n)[:n],
    "letters": lambda n: "a" * n,
    "digits": lambda n: "1" * n,
    "digit_groups": lambda n: ("12:30:45-6/7." * n)[:n],
    "punctuation": lambda n: ("，。！？、；：" * n)[:n],
    "emoji": lambda n: "🙂" * n,
    "mixed": lambda n: ("中文English日本語한국어123,." * n)[:n],
    "han": lambda n: "长" * n,
}


def _best_time(fn, text: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            fn(text)
        except (TextError, ValueError):
            pass
        best = min(best, time.perf_counter() - start)
    return best


def _linear(fn, make) -> tuple[float, float]:
    _best_time(fn, make(50), repeat=1)  # warm caches (dictionaries, jieba)
    return _best_time(fn, make(1000)), _best_time(fn, make(2000))


@pytest.mark.parametrize("kind", sorted(ADVERSARIAL))
def test_serving_path_scales_linearly(kind):
    """Twice the text may take about twice the time, never four times (no absolute times)."""
    t1, t2 = _linear(lambda t: sentences(t, "auto"), ADVERSARIAL[kind])
    assert t2 < 3.0 * t1 + 0.05, f"{kind}: 1000 chars {t1:.3f} s, 2000 chars {t2:.3f} s"


@pytest.mark.parametrize("kind", sorted(ADVERSARIAL))
def test_sentence_splitter_and_normalizers_scale_linearly(kind):
    """Each normalizer alone, on one long piece (the serving path would cut it first)."""
    from python_backend.text import en_normalize, zh_normalize

    for fn in (lambda t: split_sentences(t), zh_normalize.text_normalize, en_normalize.text_normalize):
        t1, t2 = _linear(fn, ADVERSARIAL[kind])
        assert t2 < 3.0 * t1 + 0.05, f"{kind} {fn}: 1000 chars {t1:.3f} s, 2000 chars {t2:.3f} s"


def test_health_reports_the_repositorys_text_resources(tmp_path):
    from ops.control import text_frontend_files
    from python_backend import layout

    bare = text_frontend_files(tmp_path)
    assert bare["g2pw"] is False and bare["upstream_dictionaries"] is False and "--g2pw" in bare["warning"]
    layout.g2pw_dir(tmp_path).mkdir(parents=True)
    (layout.g2pw_dir(tmp_path) / "g2pW.onnx").write_bytes(b"")
    layout.upstream_text_dir(tmp_path).mkdir(parents=True)
    assert text_frontend_files(tmp_path) == {"g2pw": True, "upstream_dictionaries": True}
