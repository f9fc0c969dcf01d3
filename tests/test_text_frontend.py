"""Tests for python_backend.text: normalization, zh/en g2p, segmentation, BERT alignment."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from python_backend.text import (
    CharTokenizer,
    PhoneSequence,
    TextError,
    bert_features_per_phone,
    split_sentences,
    symbols_v2,
    text_to_phones,
)
from python_backend.text.en import g2p_en, word_to_phones
from python_backend.text.normalize import (
    en_int,
    en_ordinal,
    en_year,
    normalize_en,
    normalize_zh,
    zh_int,
)
from python_backend.text.segment import split_languages
from python_backend.text.zh import g2p_zh, split_syllable, syllable_to_phones

ROOT = Path(__file__).resolve().parent.parent
TEXT_DIR = ROOT / "python_backend" / "text"
TABLE = set(symbols_v2())


def zh_phones(text: str) -> str:
    return " ".join(text_to_phones(text, "zh").phones)


def en_phones(text: str) -> str:
    return " ".join(text_to_phones(text, "en").phones)


# ------------------------------------------------------------------ phone table

def test_symbol_table_is_the_v2_table():
    table = symbols_v2()
    assert len(table) == 732
    for sym in ("AA", "EE", "OO", "ir1", "i01", "v3", "ve4", "van2", "vn5", "AH0", "…", "UNK"):
        assert sym in TABLE
    kit = ROOT.parent / "shared" / "gpt-sovits-conformance" / "symbols.json"
    if kit.is_file():
        assert list(table) == json.loads(kit.read_text(encoding="utf-8"))["v2"]


def test_every_pypinyin_syllable_maps_into_the_table():
    from pypinyin import Style
    from pypinyin.pinyin_dict import pinyin_dict
    from pypinyin.style import convert

    syllables = set()
    for pys in pinyin_dict.values():
        for py in pys.split(","):
            syllables.add(convert(py, Style.TONE3, strict=False, neutral_tone_with_five=True))
    bad = {s: syllable_to_phones(s) for s in syllables
           if not all(p in TABLE for p in syllable_to_phones(s))}
    assert not bad


def test_no_torch_or_transformers_imports_in_text_package():
    for path in TEXT_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("torch", "transformers", "g2p_en", "nltk"), path


# ------------------------------------------------------------------ Chinese g2p

@pytest.mark.parametrize("text, expected", [
    ("你好", "n i2 h ao3"),            # 3-3 sandhi
    ("一个", "y i2 g e4"),             # 一 before 4th tone
    ("一天", "y i4 t ian1"),           # 一 before 1st tone
    ("第一", "d i4 y i1"),             # ordinal keeps yi1
    ("看一看", "k an4 y i5 k an4"),    # X一X
    ("不是", "b u2 sh ir4"),           # 不 before 4th tone
    ("不好", "b u4 h ao3"),
    ("看不懂", "k an4 b u5 d ong3"),
    ("日", "r ir4"),
    ("字", "z i04"),
    ("鱼", "y v2"),
    ("安", "AA an1"),
    ("饿", "EE e4"),
    ("欧", "OO ou1"),
    ("儿", "EE er2"),
    ("衣", "y i1"),
    ("五", "w u3"),
    ("英", "y ing1"),
    ("月", "y ve4"),
    ("远", "y van3"),
    ("云", "y vn2"),
    ("有", "y iu3"),
    ("为", "w ui4"),
    ("问", "w un4"),
    ("我", "w uo3"),
    ("女", "n v3"),
    ("略", "l ve4"),
    ("去", "q v4"),
    ("军", "j vn1"),
    ("对", "d ui4"),
    ("六", "l iu4"),
    ("吃", "ch ir1"),
    ("四", "s i04"),
    ("展览馆", "zh an2 l an2 g uan3"),  # 2+1: 3-3-3 -> 2-2-3
    ("纸老虎", "zh ir3 l ao2 h u3"),    # 1+2: 3-3-3 -> 3-2-3
    ("效果很好", "x iao4 g uo3 h en2 h ao3"),
    ("我们", "w uo3 m en5"),
    ("你好，世界！", "n i2 h ao3 , sh ir4 j ie4 !"),
])
def test_zh_pinyin_cases(text, expected):
    assert zh_phones(text) == expected


def test_split_syllable_conventions():
    assert split_syllable("zhi") == ("zh", "ir")
    assert split_syllable("ci") == ("c", "i0")
    assert split_syllable("jue") == ("j", "ve")
    assert split_syllable("xuan") == ("x", "van")
    assert split_syllable("lve") == ("l", "ve")
    assert split_syllable("weng") == ("w", "eng")
    assert split_syllable("yo") == ("y", "o")
    assert split_syllable("ang") == ("AA", "ang")
    assert split_syllable("n") == ("EE", "en")
    assert syllable_to_phones("ma") == ["m", "a5"]


def test_zh_word2ph_and_table():
    norm, phones, word2ph = g2p_zh("今天是2024年3月5日，气温-3.5℃！你吃饭了吗？")
    assert len(word2ph) == len(norm)
    assert sum(word2ph) == len(phones)
    assert all(p in TABLE for p in phones)
    for ch, n in zip(norm, word2ph):
        assert n == (1 if ch in ",.!?…" else 2)


def test_zh_drops_unknown_symbols():
    norm, phones, word2ph = g2p_zh("你好😀★《书》")
    assert norm == "你好书"
    assert len(phones) == 6


# ------------------------------------------------------------------ Chinese normalization

@pytest.mark.parametrize("n, text", [
    (0, "零"), (7, "七"), (10, "十"), (12, "十二"), (20, "二十"), (105, "一百零五"),
    (110, "一百一十"), (1001, "一千零一"), (10005, "一万零五"), (100005, "十万零五"),
    (120000, "十二万"), (100010000, "一亿零一万"), (-8, "负八"),
])
def test_zh_int(n, text):
    assert zh_int(n) == text


@pytest.mark.parametrize("raw, norm", [
    ("2024年3月5日", "二零二四年三月五日"),
    ("2024-03-05", "二零二四年三月五日"),
    ("12:30", "十二点三十分"),
    ("8:05", "八点零五分"),
    ("3.14", "三点一四"),
    ("50%", "百分之五十"),
    ("12.5%", "百分之十二点五"),
    ("-5", "负五"),
    ("气温-3度", "气温负三度"),
    ("13812345678", "幺三八幺二三四五六七八"),
    ("1,234,567人", "一百二十三万四千五百六十七人"),
    ("编号0012345", "编号零零一二三四五"),
    ("3/4", "四分之三"),
    ("3-5天", "三到五天"),
    ("2个苹果", "两个苹果"),
    ("第2个", "第二个"),
    ("2月", "二月"),
    ("10年前", "十年前"),
    ("1998年", "一九九八年"),
    ("¥12", "十二元"),
    ("你好，世界。真的吗？！", "你好,世界.真的吗?"),
    ("他说：“好”……", "他说,好…"),
    ("ＡＢＣ１２３", "一百二十三"),
    ("你好~~~", "你好"),
])
def test_normalize_zh(raw, norm):
    assert normalize_zh(raw) == norm


# ------------------------------------------------------------------ English

def test_en_numbers():
    assert en_int(0) == "zero"
    assert en_int(21) == "twenty one"
    assert en_int(1234) == "one thousand two hundred thirty four"
    assert en_int(2_000_001) == "two million one"
    assert en_ordinal(1) == "first"
    assert en_ordinal(22) == "twenty second"
    assert en_ordinal(12) == "twelfth"
    assert en_ordinal(40) == "fortieth"
    assert en_year(1990) == "nineteen ninety"
    assert en_year(2005) == "two thousand five"
    assert en_year(2024) == "twenty twenty four"
    assert en_year(1900) == "nineteen hundred"
    assert en_year(1805) == "eighteen oh five"


@pytest.mark.parametrize("raw, norm", [
    ("Mr. Smith", "mister Smith"),
    ("Dr. Who, etc.", "doctor Who , et cetera"),
    ("$3.50", "three dollars and fifty cents"),
    ("$1", "one dollar"),
    ("$2 million", "two million dollars"),
    ("50%", "fifty percent"),
    ("3.14", "three point one four"),
    ("the 21st", "the twenty first"),
    ("in 1990.", "in nineteen ninety ."),
    ("1,200 items", "one thousand two hundred items"),
    ("-5", "minus five"),
    ("at 10:05", "at ten oh five"),
    ("the 1980s", "the nineteen eighties"),
    ("well-known café", "well known cafe"),
    ("Wait... what?!", "Wait … what ?"),
    ("On Jan. 5th", "On January fifth"),
    ("at 9 a.m. in the U.S.", "at nine a.m. in the U.S."),
])
def test_normalize_en(raw, norm):
    assert normalize_en(raw) == norm


def test_en_dictionary_words():
    assert en_phones("Hello, world!") == "HH AH0 L OW1 , W ER1 L D !"
    assert en_phones("don't") == "D OW1 N T"
    assert en_phones("the U.S. team") == "DH AH0 Y UW1 EH1 S T IY1 M"


def test_en_oov_fallbacks():
    # acronym not in cmudict -> spelled
    assert word_to_phones("GPT") == ("JH", "IY1", "P", "IY1", "T", "IY1")
    # no dictionary part -> spelled letter by letter
    assert word_to_phones("xkcd") == ("EH1", "K", "S", "K", "EY1", "S", "IY1", "D", "IY1")
    # suffix on a known base
    assert word_to_phones("chatbotting")[-2:] == ("IH0", "NG")
    # compound of known words
    cat, dog = word_to_phones("cat"), word_to_phones("dog")
    assert word_to_phones("catdogcatdog") == cat + dog + cat + dog
    # deterministic and inside the table
    for w in ("Zyxwvut", "blorptastic", "Kubernetes", "qwrtzp"):
        ph = word_to_phones(w)
        assert ph and all(p in TABLE for p in ph)
        assert word_to_phones.__wrapped__(w) == ph


def test_en_phones_in_table():
    norm, phones = g2p_en("The quick brown fox, born on May 3rd 2001, paid $4.25 - twice!")
    assert phones and all(p in TABLE for p in phones)


# ------------------------------------------------------------------ mixed text / frontend

def test_split_languages():
    assert split_languages("我有3个apple") == [("zh", "我有3个"), ("en", "apple")]
    assert split_languages("I was born in 1990, 我今年34岁") == [
        ("en", "I was born in 1990, "), ("zh", "我今年34岁")]
    assert split_languages("GPT4很强") == [("en", "GPT4"), ("zh", "很强")]
    assert split_languages("2024年") == [("zh", "2024年")]
    assert split_languages("version 2") == [("en", "version 2")]
    assert split_languages("版本2", mode="zh") == [("zh", "版本2")]
    assert split_languages("iPhone15", mode="zh") == [("en", "iPhone"), ("zh", "15")]


def test_mixed_text_spans():
    seq = text_to_phones("你好，hello world。我爱你！")
    assert isinstance(seq, PhoneSequence)
    assert seq.language == "mixed"
    assert seq.phone_ids.dtype == np.int64 and seq.phone_ids.ndim == 1
    assert seq.bert_text == "你好,我爱你!"
    assert len(seq.word2ph) == len(seq.bert_text)
    phones = seq.phones
    assert all(p in TABLE for p in phones)
    assert seq.zh_spans == [(0, 5, 0, 3), (5 + 9, 5 + 9 + 7, 3, 7)]
    # between the spans: hello world .
    assert phones[5:14] == ["HH", "AH0", "L", "OW1", "W", "ER1", "L", "D", "."]
    for ps, pe, cs, ce in seq.zh_spans:
        assert sum(seq.word2ph[cs:ce]) == pe - ps
    assert sum(seq.word2ph) == sum(pe - ps for ps, pe, _, _ in seq.zh_spans)


def test_language_modes():
    zh = text_to_phones("你好")
    assert zh.language == "zh" and zh.bert_text == "你好" and zh.zh_spans == [(0, 4, 0, 2)]
    en = text_to_phones("Hello there", "en")
    assert en.language == "en" and en.bert_text == "" and en.word2ph == [] and en.zh_spans == []
    assert text_to_phones("我有2个", "ZH").norm_text == "我有两个"
    # en mode drops hanzi and reads numbers in English
    assert text_to_phones("hello 你好 2", "en").norm_text == "hello two"


def test_final_punct_and_short_padding():
    seq = text_to_phones("好", add_final_punct=True, pad_short=True)
    assert seq.phones == [".", "h", "ao3", "."]
    assert seq.bert_text == ".好." and seq.word2ph == [1, 2, 1]
    assert text_to_phones("hello", "en", add_final_punct=True).phones[-1] == "."


@pytest.mark.parametrize("text, language", [
    ("", "auto"), ("   \n", "zh"), ("？？！", "auto"), ("😀😀", "auto"), ("你好", "ja"),
    ("你好", "fr"), ("你好", ""),
])
def test_errors(text, language):
    with pytest.raises(TextError) as info:
        text_to_phones(text, language)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


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
    pieces = split_sentences(long_en, max_chars=50)
    assert all(len(p) <= 50 for p in pieces)
    assert " ".join(pieces).split() == long_en.split()
    hard = "啊" * 25
    assert split_sentences(hard, max_chars=10) == ["啊" * 10, "啊" * 10, "啊" * 5]
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
    assert ids.dtype == np.int64 and ids.shape == (1, 9)
    assert ids.tolist() == [[2, 8, 9, 5, 10, 1, 11, 7, 3]]  # 爱 -> [UNK], A -> a
    seq = text_to_phones("你好，我")
    assert tok(seq.bert_text).shape == (1, len(seq.bert_text) + 2)
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError):
        CharTokenizer.from_vocab_file(bad)


def test_bert_features_per_phone():
    seq = text_to_phones("你好，hello。")
    n = len(seq.bert_text)
    feats = np.arange(n * 1024, dtype=np.float32).reshape(n, 1024)
    out = bert_features_per_phone(feats, seq)
    assert out.shape == (1024, len(seq)) and out.dtype == np.float32
    # chars 你 好 , -> phones 2 2 1 | "hello." (the 。 follows the English run) -> zeros
    assert seq.bert_text == "你好," and seq.word2ph == [2, 2, 1]
    expected_cols = [0, 0, 1, 1, 2, None, None, None, None, None]
    for p, c in enumerate(expected_cols):
        if c is None:
            assert not out[:, p].any()
        else:
            np.testing.assert_array_equal(out[:, p], feats[c])
    with pytest.raises(ValueError):
        bert_features_per_phone(np.zeros((n + 2, 1024), np.float32), seq)
    en = text_to_phones("only english", "en")
    assert not bert_features_per_phone(np.zeros((0, 1024), np.float32), en).any()
