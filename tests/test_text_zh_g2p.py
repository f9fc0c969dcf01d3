"""Mandarin g2p (upstream chinese2.g2p): syllable table, tone sandhi, erhua, G2PW plumbing.

Hand-written cases pin the rules; the kit-driven tests compare every ``zh`` segment of the
conformance kit (phones and word2ph, with and without G2PW) and every recorded G2PW call.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from python_backend.text import resources
from python_backend.text.g2pw import G2PW, BertWordPiece, _wordize, correct_pronunciation, tokenize_and_map
from python_backend.text.pinyin_phones import PINYIN_TO_PHONES, syllable_phones
from python_backend.text.symbols import symbols_v2
from python_backend.text.tone_sandhi import modified_tone, pre_merge
from python_backend.text.zh_g2p import _drop_latin, g2p, split_sentences

ROOT = Path(__file__).resolve().parent.parent
# Same rule as conftest.kit_dir (importing conftest by name is unreliable: some wheels ship a
# top-level `tests` package).
KIT = Path(os.environ.get("GSV_CONFORMANCE_DIR", ROOT.parent / "shared" / "gpt-sovits-conformance"))
TEXT_KIT = KIT / "text"
GOLDEN = TEXT_KIT / "golden_text_v2.jsonl"
STANDIN = TEXT_KIT / "g2pw_standin"
VOCAB = TEXT_KIT / "tokenizer" / "vocab.txt"
SPECIAL = {"SP2": "￥", "SP3": "^"}  # cleaner's special segments: "," phones become these


def _need_kit() -> None:
    if not GOLDEN.is_file():
        pytest.skip(f"conformance kit not found at {TEXT_KIT} (set GSV_CONFORMANCE_DIR)")


def _need_g2pw_data() -> None:
    _need_kit()
    if not (STANDIN.is_dir() and VOCAB.is_file()):
        pytest.skip("kit lacks g2pw_standin/ or tokenizer/vocab.txt")
    keys = ("polyphonic", "polyphonic_fix", "char_convert")
    missing = [k for k in keys if resources.upstream_file(k) is None]
    if missing:
        pytest.skip(f"upstream GPT_SoVITS/text files missing ({', '.join(missing)}); set GSV_UPSTREAM_TEXT")


@pytest.fixture(scope="module")
def g2pw_model() -> G2PW:
    _need_g2pw_data()
    return G2PW(STANDIN, VOCAB)


# ------------------------------------------------------------------ syllable table

def test_rule_table_matches_opencpop_strict():
    path = resources.upstream_file("opencpop")
    if path is None:
        pytest.skip("opencpop-strict.txt not found (set GSV_UPSTREAM_TEXT)")
    reference = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            syllable, phones = line.split("\t")
            reference[syllable] = tuple(phones.strip().split(" "))
    assert sorted(set(reference) - set(PINYIN_TO_PHONES)) == []
    assert sorted(set(PINYIN_TO_PHONES) - set(reference)) == []
    assert {k: v for k, v in PINYIN_TO_PHONES.items() if reference[k] != v} == {}


@pytest.mark.parametrize("syllable, phones", [
    ("zhi", ("zh", "ir")), ("ri", ("r", "ir")), ("si", ("s", "i0")), ("ji", ("j", "i")),
    ("ju", ("j", "v")), ("jv", ("j", "v")), ("xuan", ("x", "van")), ("qun", ("q", "vn")),
    ("yan", ("y", "En")), ("ye", ("y", "E")), ("yue", ("y", "ve")), ("yi", ("y", "i")),
    ("wu", ("w", "u")), ("a", ("AA", "a")), ("er", ("EE", "er")), ("ou", ("OO", "ou")),
    ("lv", ("l", "v")), ("nve", ("n", "ve")), ("gui", ("g", "ui")), ("niu", ("n", "iu")),
])
def test_syllable_rules(syllable, phones):
    assert syllable_phones(syllable) == phones


def test_syllable_table_is_in_v2_symbols():
    table = set(symbols_v2())
    for initial, final in PINYIN_TO_PHONES.values():
        assert initial in table
        assert all(final + tone in table for tone in "12345")


@pytest.mark.parametrize("bad", ["lu\u0308", "lue", "bong", "ra", "shong", ""])
def test_unknown_syllable_is_value_error(bad):
    with pytest.raises(ValueError):
        syllable_phones(bad)


# ------------------------------------------------------------------ sentence split

@pytest.mark.parametrize("text, pieces", [
    ("你好,世界.", ["你好,", "世界."]),
    ("你好, \t世界!", ["你好,", "世界!"]),
    ("..好", [".", ".", "好"]),
    ("  ", []),
    ("好 的", ["好 的"]),
])
def test_split_sentences(text, pieces):
    assert split_sentences(text) == pieces


# ------------------------------------------------------------------ tone sandhi

@pytest.mark.parametrize("word, pos, finals, expected", [
    ("不怕", "d", ["u4", "a4"], ["u2", "a4"]),
    ("看不懂", "v", ["an4", "u4", "ong3"], ["an4", "u5", "ong3"]),
    ("一天", "m", ["i1", "ian1"], ["i4", "ian1"]),
    ("一段", "m", ["i1", "uan4"], ["i2", "uan4"]),
    ("第一", "m", ["i4", "i1"], ["i4", "i1"]),
    ("看一看", "v", ["an4", "i1", "an4"], ["an4", "i5", "an4"]),
    ("一零一", "m", ["i1", "ing2", "i1"], ["i1", "ing2", "i1"]),
    ("一,", "m", ["i1", ","], ["i1", ","]),
    ("你好", "l", ["i3", "ao3"], ["i2", "ao3"]),
    ("奶奶", "n", ["ai3", "ai3"], ["ai3", "ai5"]),
    ("桌子", "n", ["uo1", "i3"], ["uo1", "i5"]),
    ("电子", "n", ["ian4", "i3"], ["ian4", "i3"]),
    ("好的", "a", ["ao3", "e5"], ["ao3", "e5"]),
    ("回来", "v", ["ui2", "ai2"], ["ui2", "ai5"]),
    ("东西", "n", ["ong1", "i1"], ["ong1", "i5"]),
    ("两个", "m", ["iang3", "e4"], ["iang3", "e5"]),
    ("了", "ul", ["e5"], ["e5"]),
    ("展览馆", "n", ["an3", "an3", "uan3"], ["an2", "an2", "uan3"]),
])
def test_modified_tone(word, pos, finals, expected):
    assert modified_tone(word, pos, list(finals)) == expected


@pytest.mark.parametrize("words, merged", [
    ([("听", "v"), ("一", "m"), ("听", "v")], [("听一听", "v")]),
    ([("不", "d"), ("好", "a")], [("不好", "a")]),  # takes the next word's tag
    ([("好", "a"), ("不", "d")], [("好", "a"), ("不", "d")]),
    ([("一", "m"), ("天", "q")], [("一天", "m")]),
    ([("花", "n"), ("儿", "n")], [("花儿", "n")]),
    ([("看", "v"), ("看", "v")], [("看看", "v")]),
    ([("你", "r"), ("好", "a")], [("你好", "r")]),
])
def test_pre_merge(words, merged):
    assert pre_merge(words) == merged


# ------------------------------------------------------------------ g2p without G2PW

@pytest.mark.parametrize("text, phones, word2ph", [
    ("你好.", "n i2 h ao3 .", [2, 2, 1]),
    ("一天.", "y i4 t ian1 .", [2, 2, 1]),
    ("看一看.", "k an4 y i5 k an4 .", [2, 2, 2, 1]),
    ("桌子.", "zh uo1 z i05 .", [2, 2, 1]),
    ("小院儿.", "x iao3 y van4 EE er4 .", [2, 2, 2, 1]),  # erhua: 儿 takes 院's tone
    ("花儿.", "h ua1 EE er2 .", [2, 2, 1]),  # listed as not erhua
    ("一,二,三.", "y i1 , EE er4 , s an1 .", [2, 1, 2, 1, 2, 1]),
])
def test_g2p_pypinyin_path(text, phones, word2ph):
    assert g2p(text) == (phones.split(), word2ph)


def test_g2p_drops_latin_letters_and_empty_text():
    assert g2p("") == ([], [])
    assert g2p("abc你好.") == g2p("你好.")


def test_g2p_unvoiceable_input_is_value_error():
    with pytest.raises(ValueError):
        g2p("你 好.")


# ------------------------------------------------------------------ tokenizer / G2PW

def test_wordize_groups_ascii_alnum_and_skips_spaces():
    words, char2word, spans = _wordize("ab12 中,x")
    assert words == ["ab12", "中", ",", "x"]
    assert char2word == [0, 0, 0, 0, None, 1, 2, 3]
    assert spans == [(0, 4), (5, 6), (6, 7), (7, 8)]


def test_wordpiece_on_a_small_vocab(tmp_path: Path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "中", "ab", "##12", ",", "e"]) + "\n",
                     encoding="utf-8")
    tok = BertWordPiece(vocab)
    assert tok.tokenize("AB12 中,文É") == ["ab", "##12", "中", ",", "[UNK]", "e"]
    tokens, char2token, token_spans = tokenize_and_map(tok, "ab12中文")
    assert tokens == ["ab", "##12", "中", "[UNK]"]
    assert char2token == [0, 0, 1, 1, 2, 3]
    assert token_spans == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert tok.ids(["[CLS]", "中", "nope"]) == [2, 4, 1]


def test_g2pw_missing_file_is_value_error(tmp_path: Path):
    (tmp_path / "g2pW.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="config.py"):
        G2PW(tmp_path, tmp_path / "vocab.txt")
    with pytest.raises(ValueError, match="not found"):
        G2PW(tmp_path / "nowhere", tmp_path / "vocab.txt")


def test_bert_token_counts_match_kit():
    _need_kit()
    if not VOCAB.is_file():
        pytest.skip("kit lacks tokenizer/vocab.txt")
    tok = BertWordPiece(VOCAB)
    bad = []
    for record in _records():
        for seg in record["segments"]:
            expected = seg.get("bert_tokens")
            if expected is not None and len(tok.tokenize(seg["norm_text"])) != expected:
                bad.append((record["id"], seg["norm_text"]))
    assert bad == []


def test_phrase_dictionary_corrections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if resources.upstream_file("polyphonic") is None:
        pytest.skip("g2pw/polyphonic.rep not found (set GSV_UPSTREAM_TEXT)")
    assert correct_pronunciation("湖泊", ["hu2", "bo2"]) == ["hu2", "po1"]  # whole-word entry
    assert correct_pronunciation("好人", ["hao3", "ren2"]) == ["hao3", "ren2"]
    with monkeypatch.context() as patch:
        patch.setattr(resources, "_override", tmp_path)  # an empty folder: no corrections
        assert correct_pronunciation("湖泊", ["hu2", "bo2"]) == ["hu2", "bo2"]
    assert correct_pronunciation("湖泊", ["hu2", "bo2"]) == ["hu2", "po1"]


def test_g2pw_readings_have_one_entry_per_char(g2pw_model: G2PW):
    out = g2pw_model.pinyin(["行长还没来,", "好."])
    assert [len(x) for x in out] == [6, 2]
    assert out[0][-1] == "," and out[1][-1] == "."
    assert all(isinstance(p, str) and p[-1] in "12345" for p in out[0][:-1])


# ------------------------------------------------------------------ kit parity

def _records() -> list[dict]:
    with open(GOLDEN, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _segment_g2p(seg: dict, model: G2PW | None) -> tuple[list[str], list[int]]:
    """Per-segment g2p, emulating the cleaner's special-symbol segments (SP2/SP3)."""
    phones, word2ph = g2p(seg["norm_text"], model)
    target = next((sp for sp in SPECIAL if sp in seg["phones"]), None)
    if target is not None:
        phones = [target if p == "," else p for p in phones]
    return phones, word2ph


def _parity(records: list[dict], model: G2PW | None) -> tuple[int, list[str]]:
    total, bad = 0, []
    for record in records:
        for seg in record["segments"]:
            if seg["lang"] != "zh":
                continue
            total += 1
            try:
                mine = _segment_g2p(seg, model)
            except ValueError as exc:
                mine = (["<error>", str(exc)], [])
            if mine != (seg["phones"], seg["word2ph"]):
                kit = (seg["phones"], seg["word2ph"])
                bad.append(f"{record['id']}: {seg['norm_text']!r}\n  mine {mine}\n  kit  {kit}")
    return total, bad


def test_kit_segments_without_g2pw():
    _need_kit()
    total, bad = _parity([r for r in _records() if not r["g2pw"]], None)
    assert total > 0
    assert not bad, f"{len(bad)}/{total} zh segments differ:\n" + "\n".join(bad[:40])


def test_kit_segments_with_g2pw(g2pw_model: G2PW):
    total, bad = _parity([r for r in _records() if r["g2pw"]], g2pw_model)
    assert total > 0
    assert not bad, f"{len(bad)}/{total} zh segments differ:\n" + "\n".join(bad[:40])


def test_kit_g2pw_io(g2pw_model: G2PW):
    """Every G2PW call our g2p makes for a kit segment is one upstream recorded, in order.

    Upstream's record also holds calls for pieces it later retried or for special-symbol
    segments; those are skipped on our side, so ours must be an in-order subsequence and
    equal whenever no such piece exists.
    """
    bad = []
    for record in _records():
        if not record["g2pw"]:
            continue
        calls: list[dict] = []
        for seg in record["segments"]:
            if seg["lang"] != "zh" or any(sp in seg["phones"] for sp in SPECIAL):
                continue
            batch = [s for s in map(_drop_latin, split_sentences(seg["norm_text"])) if s]
            if batch:
                calls += [{"input": s, "pinyin": p} for s, p in zip(batch, g2pw_model.pinyin(batch))]
        recorded = record["g2pw_io"]
        special = any(sp in seg["phones"] for seg in record["segments"] for sp in SPECIAL)
        retried = any(piece.get("retry_dot_prefix") for piece in record["pieces"])
        if special or retried:
            it = iter(recorded)
            ok = all(any(call == r for r in it) for call in calls)
        else:
            ok = calls == recorded
        if not ok:
            bad.append(f"{record['id']}: mine {calls}\n  kit {recorded}")
    assert not bad, f"{len(bad)} records differ in G2PW calls:\n" + "\n".join(bad[:20])


# ------------------------------------------------------------------ linear time

def _time_ratio(fn, unit: str, repeat: int = 5) -> float:
    """Best time on 2000 chars over best time on 1000 chars, runs interleaved against drift."""
    small = unit * (1000 // len(unit))
    large = unit * (2000 // len(unit))
    fn(small)
    best = {small: float("inf"), large: float("inf")}
    for _ in range(repeat):
        for text in (small, large):
            start = time.perf_counter()
            fn(text)
            best[text] = min(best[text], time.perf_counter() - start)
    return best[large] / best[small]


@pytest.mark.parametrize("unit", ["我们一起看一看吧,行长重还不好.", "行长重还不好儿一", "一,"])
def test_g2p_time_is_linear(unit):
    g2p("你好.")  # load jieba / pypinyin first
    ratio = _time_ratio(g2p, unit)
    assert ratio < 3.5, ratio


def test_g2pw_time_is_linear(g2pw_model: G2PW):
    for unit in ("行长重还不好儿一", "行长还,"):
        ratio = _time_ratio(lambda text: g2pw_model.pinyin([text]), unit)
        assert ratio < 3.5, (unit, ratio)
