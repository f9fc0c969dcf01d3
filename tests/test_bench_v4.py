"""``python -m bench.v4`` end to end at the tiny size: both sides run, the report has every figure."""
from __future__ import annotations

import json
import math

from bench import v4


def test_bench_v4_tiny(tmp_path):
    assert v4.main(["--size", "tiny", "--steps", "1,2", "--concurrency", "1,2", "--tokens", "15",
                    "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "v4.json").read_text())
    assert set(res["steps"]) == {"1", "2"}
    for row in res["steps"].values():
        for c, r in row["engine"].items():
            assert r["finish"] == ["budget"] * int(c)  # EOS masked: every request runs its 15 tokens
            assert math.isclose(r["audio_s"], int(c) * 15 / 25, rel_tol=1e-6)  # 0.6 s each at 48 kHz
        assert row["eager"]["audio_s"] == 15 / 25 and row["eager"]["rtf"] > 0
        assert {"cfm", "vocoder", "encoder", "step"} <= set(row["engine_profile_s_per_audio_s"])
    assert "| 1 |" in (tmp_path / "v4.md").read_text()
