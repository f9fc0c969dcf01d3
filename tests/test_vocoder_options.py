"""``export --vocoder-int8``: the wav SNR floor against the fp32 vocoder refuses a bad int8 vocoder and
keeps a good one, and a real tritonserver serving the int8 version keeps that floor against the fp32 one.

The tiny random-weight demo voice's vocoder quantizes to roughly 18-23 dB (random weights have no
structure for calibration to exploit; bench/results/optimizations.md), so these tests use a floor of
12 dB where the CLI's default is 30 dB: they check the mechanism, the bench checks the figure.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

from export import vocoder_int8 as int8
from export.errors import InputError
from ops import cli
from ops.client import synthesize
from python_backend import layout
from python_backend.golden import GoldenSample, snr_db
from python_backend.onnx_stage import OnnxStage
from tests.triton_fixtures import require_tritonserver, start_server
from tests.voices import demo_voice, export_args, export_voice

TEST_FLOOR_DB = 12.0
TEXT = "今天天气很好。我们去公园散步吧！"
FIXED = {"TOP_K": 1, "SEED": 5, "MAX_TOKENS": 40}


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocoder_int8")
    src, repo = demo_voice(root / "src", 3), root / "repo"
    repo.mkdir()
    fp32 = export_voice(src, repo, "fp", aux=src)
    return src, repo, fp32


def _feeds(folder, seeds):
    sample = GoldenSample.load(folder)
    return int8.latents(OnnxStage(folder / "sovits.onnx"), sample.codes.reshape(1, -1),
                        sample.target_phones.reshape(1, -1), sample.ge, seeds)


def _misscaled(path, dst):
    """The int8 graph with every weight's dequantization scale 40% off (a broken quantizer's output)."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name.endswith("weight_scale"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.4, init.name))
    onnx.save(model, str(dst))
    return dst


def test_threshold_refuses_a_bad_int8_vocoder_and_accepts_a_good_one(voice, tmp_path):
    _, _, folder = voice
    scored = _feeds(folder, (10, 11))
    good = int8.quantize(folder / "vocoder.onnx", tmp_path / "good.onnx", _feeds(folder, (0, 1, 2)))
    bad = _misscaled(good, tmp_path / "bad.onnx")
    fp32 = OnnxStage(folder / "vocoder.onnx")
    good_snr, bad_snr = int8.snrs(fp32, OnnxStage(good), scored), int8.snrs(fp32, OnnxStage(bad), scored)
    assert min(good_snr) >= TEST_FLOOR_DB > min(bad_snr), (good_snr, bad_snr)
    int8.check(good_snr, TEST_FLOOR_DB)
    with pytest.raises(InputError, match=r"below 12 dB; export this voice without --vocoder-int8") as err:
        int8.check(bad_snr, TEST_FLOOR_DB)
    assert "\n" not in str(err.value)
    meta = {p.key: p.value for p in onnx.load(str(good), load_external_data=False).metadata_props}
    assert meta["quantization"].startswith("int8 QDQ") and meta["stage"] == "vocoder"


def test_export_below_the_floor_is_one_line_and_leaves_no_version(voice, capsys):
    src, repo, _ = voice
    before = sorted(p.relative_to(repo) for p in repo.rglob("*") if ".gsv" not in p.parts)
    code = cli.main(["export", *export_args(src, repo, "q8bad", "--vocoder-int8", "--vocoder-int8-min-snr", "90")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "int8 vocoder: wav SNR against fp32" in err and "below 90 dB" in err
    assert not layout.version_numbers(layout.voice_dir(repo, "q8bad"))
    assert sorted(p.relative_to(repo) for p in repo.rglob("*") if ".gsv" not in p.parts) == before


def test_served_int8_vocoder_keeps_its_floor_against_fp32(voice, tmp_path):
    require_tritonserver()
    src, repo, fp32 = voice
    q8 = export_voice(src, repo, "q8", "--vocoder-int8", "--vocoder-int8-min-snr", str(TEST_FLOOR_DB))
    manifest = json.loads((q8 / "manifest.json").read_text())
    report = manifest["quality"]["vocoder_int8"]
    assert report["threshold_db"] == TEST_FLOOR_DB and report["min_snr_db"] >= TEST_FLOOR_DB
    assert manifest["tolerances"]["wav_snr_min_db"] == TEST_FLOOR_DB and manifest["precision"] == "fp32"
    assert (q8 / "gpt_step.onnx").read_bytes() == (fp32 / "gpt_step.onnx").read_bytes()
    proc = start_server(repo, log_dir=tmp_path, timeout=600)
    try:
        ref = synthesize(TEXT, "fp", proc.grpc_url, **FIXED)
        got = synthesize(TEXT, "q8", proc.grpc_url, **FIXED)
    finally:
        proc.stop()
    assert ref.audio.size == got.audio.size > 0 and np.abs(ref.audio).max() > 1e-4
    assert snr_db(ref.audio, got.audio) >= TEST_FLOOR_DB
    assert not np.array_equal(ref.audio, got.audio)  # the int8 graph is what served it
