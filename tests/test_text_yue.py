"""Cantonese front end (python_backend/text/yue.py) against upstream GPT-SoVITS v2."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("ToJyutping", reason="Cantonese needs ToJyutping (pip install ToJyutping==3.2.0)")

from python_backend.text import resources, yue  # noqa: E402
from python_backend.text.symbols import symbols_v2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _kit_segments() -> list[tuple[str, dict]]:
    base = Path(os.environ.get("GSV_CONFORMANCE_DIR", ROOT.parent / "shared" / "gpt-sovits-conformance"))
    path = base / "text" / "golden_text_v2.jsonl"
    if not path.is_file():
        pytest.skip(f"conformance kit not found at {path} (set GSV_CONFORMANCE_DIR)")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            out += [(rec["id"], seg) for seg in rec["segments"] if seg["lang"] == "yue"]
    assert out, "no yue segments in the kit"
    return out


# ---------------------------------------------------------------- upstream rules, pinned
def test_replace_punctuation():
    # Brackets/quotes become "'" and are then dropped with every other non-hanzi (A, 1, 㗎);
    # "..." -> "…" only for three literal dots; 。 and $ become ".".
    assert yue.replace_punctuation("「你好」...。..$A1㗎（係）") == "你好…....係"
    assert yue.replace_punctuation("好：好；好～好——好、好\n") == "好,好,好-好--好,好."


def test_syllable_split_follows_upstream_initial_order():
    assert yue.g2p("呀") == (["Yaa", "Ya3"], [2])          # aa3: "aa" is an "initial", final = its last letter
    assert yue.g2p("鸭") == (["Yaa", "Yp3"], [2])          # aap3: "aa" is tried before "aap"
    assert yue.g2p("唉…") == (["Yai", "Yi1", "…"], [2, 1])
    assert yue.g2p("唔") == (["Ym", "Ym4"], [2])            # syllabic m
    assert yue.g2p("五") == (["Yng", "Yg5"], [2])           # syllabic ng
    assert yue.g2p("卅") == (["Ys", "Yaa1 aa6"], [2])       # a two-syllable reading stays glued


def test_word2ph_and_marks():
    phones, word2ph = yue.g2p("我哋,香港!")
    assert phones == ["Yng", "Yo5", "Yd", "Yei6", ",", "Yh", "Yoeng1", "Yg", "Yong2", "!"]
    assert word2ph == [2, 2, 1, 2, 2, 1] and sum(word2ph) == len(phones)


def test_reading_in_context():
    # ToJyutping reads with phrase context, so g2p must see the whole text at once.
    assert yue.g2p("行")[0] == ["Yh", "Yaang4"]
    assert yue.g2p("银行")[0] == ["Yng", "Yan4", "Yh", "Yong4"]


def test_character_without_reading_is_a_value_error():
    with pytest.raises(ValueError, match="jyutping"):
        yue.g2p("A")


def test_time_grows_linearly():
    yue.g2p("你")
    for unit in ("香港,", "呀", "!"):
        best = []
        for n in (1000, 2000):
            text, t = unit * (n // len(unit)), float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                yue.g2p(text)
                yue.replace_punctuation(text)
                t = min(t, time.perf_counter() - t0)
            best.append(t)
        assert best[1] < 3.5 * best[0] + 0.01, (unit, best)


# ---------------------------------------------------------------- conformance kit
def test_kit_g2p():
    table = set(symbols_v2())
    segments = _kit_segments()
    bad = []
    for rid, seg in segments:
        phones, word2ph = yue.g2p(seg["norm_text"])
        phones = [p if p in table else "UNK" for p in phones]
        if phones != seg["phones"] or word2ph != seg["word2ph"]:
            bad.append(f"{rid}: {seg['norm_text']!r} phones={phones} word2ph={word2ph}")
    assert not bad, f"{len(bad)}/{len(segments)} yue segments differ:\n" + "\n".join(bad[:20])


def test_kit_normalize():
    if resources.upstream_file("char_convert") is None:
        pytest.skip("upstream GPT_SoVITS/text folder not configured (set GSV_UPSTREAM_TEXT): "
                    "traditional -> simplified needs its char_convert.py")
    segments = _kit_segments()
    bad = [f"{rid}: {seg['text']!r} -> {yue.text_normalize(seg['text'])!r} want {seg['norm_text']!r}"
           for rid, seg in segments if yue.text_normalize(seg["text"]) != seg["norm_text"]]
    assert not bad, f"{len(bad)}/{len(segments)} yue normalizations differ:\n" + "\n".join(bad[:20])
