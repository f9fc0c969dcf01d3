"""Japanese front end (python_backend/text/ja.py) against upstream's japanese.py rules.

Open JTalk tests need ``pyopenjtalk==0.4.1`` and a dictionary
(``apt-get install open-jtalk-mecab-naist-jdic`` or ``$OPEN_JTALK_DICT_DIR``); they skip
without them.  The kit test compares every ``ja`` segment of the conformance kit.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from python_backend.text import ja
from python_backend.text.symbols import symbols_v2

KIT = Path(os.environ.get("GSV_CONFORMANCE_DIR",
                          Path(__file__).resolve().parents[2] / "shared" / "gpt-sovits-conformance"))


def _have_open_jtalk() -> str | None:
    try:
        import pyopenjtalk  # noqa: F401
    except ImportError:
        return "pyopenjtalk is not installed"
    try:
        ja.find_dict_dir()
    except ValueError as exc:
        return str(exc)
    return None


_MISSING = _have_open_jtalk()
needs_jtalk = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


@pytest.fixture
def fresh_engine():
    """Rebuild the engine around a test that changes where the dictionary comes from."""
    ja.configure()
    yield
    ja.configure()


def _v2(phones: list[str]) -> list[str]:
    table = set(symbols_v2())
    return [p if p in table else "UNK" for p in phones]


# ------------------------------------------------------------------ text_normalize

@pytest.mark.parametrize("text, expected", [
    ("こんにちは。", "こんにちは。"),
    ("本当？！", "本当？！"),            # full-width marks are not folded
    ("えっ!?!?", "えっ!"),
    ("待って...", "待って."),
    ("a-,b", "a-b"),
    ("……。", "…。"),
    ("!a!", "!a!"),
    ("", ""),
])
def test_normalize_folds_runs_of_v2_punctuation(text: str, expected: str) -> None:
    assert ja.text_normalize(text) == expected


def test_japanese_character_class() -> None:
    for ch in "aZあヶー々一龥０１９ＡＺａｚｦｰﾝ0٣":    # ０ and ٣ count as Unicode digits
        assert ja._is_japanese(ch), ch
    for ch in "。、！？!? 　「」ﾞﾟ%％\n":
        assert not ja._is_japanese(ch), ch


# ----------------------------------------------------------------------------- g2p

@needs_jtalk
def test_g2p_prosody_marks() -> None:
    assert ja.g2p("こんにちは。") == ["k", "o", "[", "N", "n", "i", "ch", "i", "w", "a", "."]


@needs_jtalk
def test_g2p_marks_are_mapped_or_passed_through() -> None:
    phones = ja.g2p("「はい」、そう。\nはい！ はい？")
    assert phones[0] == "「" and "」" in phones
    assert phones.count(",") == 1 and phones.count(".") == 2
    assert phones[-1] == "?" and "!" in phones
    assert " " not in phones                         # ASCII spaces are dropped
    assert "　" in ja.g2p("はい　はい")               # other spaces stay (UNK later)


@needs_jtalk
def test_g2p_percent_and_case() -> None:
    assert ja.g2p("５０％") == ja.g2p("５０パーセント")
    assert ja.g2p("ＡＢＣ") == ja.g2p("ａｂｃ")
    assert ja.g2p("") == [] and ja.g2p("ー") == []


@needs_jtalk
def test_g2p_run_ends_and_pauses() -> None:
    # The closing sil's "$"/"?" is dropped with it; a pause inside a run is "_";
    # accent-phrase borders are "#".
    assert ja.g2p("そうですか") == ["s", "o", "[", "o", "d", "e", "s", "u", "]", "k", "a"]
    assert ja.g2p("あ・い") == ["a", "_", "i"]
    assert ja.g2p("今日はいい天気").count("#") == 2


@needs_jtalk
def test_long_runs_do_not_crash_and_scale_linearly() -> None:
    ja.g2p("あ")
    timings = []
    for n in (1000, 2000):
        text = "東京1a" * (n // 4)
        start = time.perf_counter()
        ja.g2p(text)
        timings.append(time.perf_counter() - start)
    assert timings[1] < 3.5 * timings[0] + 0.05, timings
    assert len(ja.g2p("あ" * 8000)) > 8000              # pyopenjtalk alone segfaults here


@needs_jtalk
def test_threads_share_one_engine() -> None:
    texts = ["今日はいい天気ですね。", "ありがとうございました！", "１２３４円です。"] * 4
    expected = [ja.g2p(t) for t in texts]
    results: dict[int, list[str]] = {}

    def work(i: int) -> None:
        results[i] = ja.g2p(texts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(texts))] == expected


# ------------------------------------------------------------------ failure modes

def test_missing_pyopenjtalk_is_a_value_error(monkeypatch, fresh_engine) -> None:
    monkeypatch.setitem(sys.modules, "pyopenjtalk", None)
    monkeypatch.setitem(sys.modules, "pyopenjtalk.openjtalk", None)
    ja.configure()
    with pytest.raises(ValueError, match="pyopenjtalk"):
        ja.g2p("こんにちは")
    assert ja.g2p("、。") == [",", "."]       # no Japanese run: Open JTalk is not needed


@needs_jtalk
def test_missing_dictionary_is_a_value_error_without_download(monkeypatch, tmp_path,
                                                              fresh_engine) -> None:
    import pyopenjtalk

    def no_download(*_a, **_k):
        raise AssertionError("pyopenjtalk tried to download its dictionary")

    monkeypatch.setattr(pyopenjtalk, "urlopen", no_download)
    monkeypatch.setattr(pyopenjtalk, "__file__", str(tmp_path / "pkg" / "__init__.py"))
    monkeypatch.delenv(ja.DICT_ENV, raising=False)
    monkeypatch.setattr(ja, "DEBIAN_DICT_DIR", tmp_path / "none")
    ja.configure()
    with pytest.raises(ValueError, match="open-jtalk-mecab-naist-jdic"):
        ja.g2p("こんにちは")
    monkeypatch.setenv(ja.DICT_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="not an Open JTalk dictionary"):
        ja.g2p("こんにちは")


@needs_jtalk
def test_missing_user_dictionary_is_a_value_error(fresh_engine, tmp_path) -> None:
    ja.configure(user_dict=tmp_path / "user.dic")
    with pytest.raises(ValueError, match="user dictionary"):
        ja.g2p("こんにちは")


# -------------------------------------------------------------------- kit parity

def _kit_segments() -> list[tuple[str, dict]]:
    path = KIT / "text" / "golden_text_v2.jsonl"
    if not path.is_file():
        pytest.skip(f"conformance kit not found at {path} (set GSV_CONFORMANCE_DIR)")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            out += [(record["id"], s) for s in record["segments"] if s["lang"] == "ja"]
    if not out:
        pytest.skip("the kit has no Japanese segments")
    return out


def test_kit_norm_text() -> None:
    bad = [(rid, s["text"], ja.text_normalize(s["text"]), s["norm_text"])
           for rid, s in _kit_segments() if ja.text_normalize(s["text"]) != s["norm_text"]]
    assert not bad, f"{len(bad)} segments differ:\n" + "\n".join(map(repr, bad[:20]))


@needs_jtalk
def test_kit_phones() -> None:
    segments = _kit_segments()
    bad = []
    for rid, s in segments:
        got = _v2(ja.g2p(s["norm_text"]))
        if got != s["phones"]:
            bad.append((rid, s["norm_text"], " ".join(got), " ".join(s["phones"])))
    assert not bad, (f"{len(bad)}/{len(segments)} segments differ:\n"
                     + "\n".join(map(repr, bad[:20])))
