"""Text front end conformance: every record of the kit's ``text/golden_text_*.jsonl``.

Each record is upstream GPT-SoVITS v2's ``TextPreprocessor.preprocess(text, mode, "cut0")``
on one sentence, with G2PW off or on (the kit's random-weight stand-in).  The phone sequence
must be identical, record for record.  Allowed differences: records flagged
``langdetect_decided`` (upstream's language detector decided them; see the kit README).
Records flagged ``upstream_bug:*`` must match too unless ``python_backend/text/DEVIATIONS.md``
lists a rule for that kind (none does today: the front end reproduces upstream there).

Needs the kit (``GSV_CONFORMANCE_DIR``, default ``../shared/gpt-sovits-conformance``) and
upstream's dictionaries (``GSV_UPSTREAM_TEXT``: a ``GPT_SoVITS/text`` folder; ``.ci/run``
prepares one); skipped with the reason when either is absent.
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

from python_backend.text import resources

KIT = Path(os.environ.get("GSV_CONFORMANCE_DIR",
                          Path(__file__).resolve().parents[2] / "shared" / "gpt-sovits-conformance"))
TEXT_KIT = KIT / "text"
GOLDEN_FILES = sorted(TEXT_KIT.glob("golden_text_*.jsonl")) if TEXT_KIT.is_dir() else []
ALLOWED_FLAGS = ("langdetect_decided",)
DEVIATIONS = Path(__file__).resolve().parents[1] / "python_backend" / "text" / "DEVIATIONS.md"


def _records() -> list[dict]:
    out = []
    for path in GOLDEN_FILES:
        with open(path, encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out


RECORDS = _records()
pytestmark = [
    pytest.mark.skipif(not RECORDS, reason=f"no text conformance kit at {TEXT_KIT}"),
    pytest.mark.skipif(resources.upstream_text_dir() is None,
                       reason=f"{resources.ENV_VAR} is not set (a GPT_SoVITS/text folder)"),
]


def _deviating_kinds() -> set[str]:
    """``upstream_bug`` kinds for which DEVIATIONS.md documents a rule of ours (`kind:` lines)."""
    if not DEVIATIONS.is_file():
        return set()
    kinds = set()
    for line in DEVIATIONS.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("- kind:"):
            kinds.add(line.split(":", 2)[1].strip().split()[0])
    return kinds


@pytest.fixture(scope="module")
def results():
    from python_backend.text.g2pw import G2PW
    from python_backend.text.preprocess import preprocess

    g2pw = G2PW(TEXT_KIT / "g2pw_standin", TEXT_KIT / "tokenizer" / "vocab.txt")
    out = {}
    for r in RECORDS:
        try:
            pieces = preprocess(r["text"], r["mode"], g2pw if r["g2pw"] else None)
            mine = [p for piece in pieces for p in piece.phones]
            norm = "".join(piece.norm_text for piece in pieces)
            w2p = [piece.word2ph for piece in pieces]
            word2ph = None if any(w is None for w in w2p) else [n for w in w2p for n in w]
        except Exception as e:  # noqa: BLE001 - reported per record below
            mine, norm, word2ph = f"{type(e).__name__}: {e}", None, None
        out[r["id"]] = (mine, norm, word2ph)
    return out


def _allowed(r: dict, deviating: set[str]) -> bool:
    flags = r.get("flags") or []
    if any(f in ALLOWED_FLAGS for f in flags):
        return True
    return any(f.startswith("upstream_bug:") and f.split(":", 1)[1] in deviating for f in flags)


def test_phones_match_upstream_record_for_record(results, capsys):
    deviating = _deviating_kinds()
    table = collections.defaultdict(lambda: [0, 0])
    failures = []
    for r in RECORDS:
        mine, norm, _ = results[r["id"]]
        ok = mine == r["phones"]
        for key in (("category", r["category"], r["g2pw"]), ("mode", r["mode"], r["g2pw"])):
            table[key][0] += ok
            table[key][1] += 1
        if not ok and not _allowed(r, deviating):
            failures.append(r)
    with capsys.disabled():
        print("\n  text conformance: exact phone matches")
        for kind in ("category", "mode"):
            for (k, name, g2pw), (ok, n) in sorted(table.items(), key=lambda kv: str(kv[0])):
                if k == kind:
                    print(f"    {kind:8s} {name:10s} g2pw={'on ' if g2pw else 'off'} {ok:4d}/{n:<4d}")
    lines = []
    for r in failures[:25]:
        mine, norm, _ = results[r["id"]]
        lines.append(f"{r['id']} {r['text']!r}\n   norm mine {norm!r}\n   norm want {r['norm_text']!r}"
                     f"\n   mine {mine if isinstance(mine, str) else ' '.join(mine)}"
                     f"\n   want {' '.join(r['phones'])}")
    assert not failures, f"{len(failures)} of {len(RECORDS)} records differ:\n" + "\n".join(lines)


def test_word2ph_and_normalized_text_match(results):
    """The BERT input (normalized text) and its alignment, where upstream records them."""
    deviating = _deviating_kinds()
    bad_norm = [r["id"] for r in RECORDS
                if results[r["id"]][1] != r["norm_text"] and not _allowed(r, deviating)]
    bad_w2p = [r["id"] for r in RECORDS
               if r["word2ph"] is not None and results[r["id"]][2] != r["word2ph"] and not _allowed(r, deviating)]
    assert not bad_norm, f"normalized text differs on {len(bad_norm)} records: {bad_norm[:20]}"
    assert not bad_w2p, f"word2ph differs on {len(bad_w2p)} records: {bad_w2p[:20]}"
