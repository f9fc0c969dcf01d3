"""gsv-triton demo-voice + export on tiny random-weight voices: the repository it writes, and bad input."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export import demo
from ops import cli
from export.checkpoints import read_gpt
from python_backend import layout
from python_backend.manifest import VoiceManifest
from python_backend.text import resources

TEXT = "你好，欢迎使用语音合成服务。"


def snapshot(repo: Path) -> dict[str, tuple[int, int]]:
    """Every file outside the staging area (and the lock and version reservations, which an
    export in progress holds), with size and mtime: 'the repository as it was'."""
    out = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if rel.startswith((".gsv/staging", ".gsv/reserved", ".gsv/lock")):
            continue
        st = path.stat()
        out[rel] = (st.st_size, st.st_mtime_ns) if path.is_file() else (0, 0)
    return out


def export_args(voice_dir: Path, repo: Path, *extra: str, voice: str = "demo", aux: bool = True) -> list[str]:
    args = ["export", "--gpt", str(voice_dir / "gpt.ckpt"), "--sovits", str(voice_dir / "sovits.pth"),
            "--ref-audio", str(voice_dir / "ref.wav"), "--ref-text", TEXT, "--ref-lang", "zh",
            "--voice", voice, "--repo", str(repo), "--no-progress", *extra]
    if aux:
        args += ["--hubert", str(voice_dir / "chinese-hubert-base"), "--bert", str(voice_dir / "chinese-roberta-wwm-ext-large"),
                 "--g2pw", str(voice_dir / "G2PWModel")]
    return args


@pytest.fixture(scope="module")
def tiny_voice(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo-voice", str(out), "--size", "tiny", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def exported(tiny_voice, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    assert cli.main(export_args(tiny_voice, repo, "--label", "first")) == 0
    return repo


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    return code, err


# ---------------------------------------------------------------- what a good export writes

def test_version_layout_and_manifest(exported, tiny_voice):
    version = exported / "voice_demo" / "1"
    manifest = VoiceManifest.read(version)
    assert (manifest.voice, manifest.version, manifest.label, manifest.precision) == ("demo", 1, "first", "fp32")
    gpt_sha = read_gpt(tiny_voice / "gpt.ckpt").sha256
    assert {s.kind: s.sha256 for s in manifest.sources}["gpt"] == gpt_sha
    for stage, entry in manifest.graphs.items():
        assert (version / entry.file).is_file(), stage
    assert manifest.quality["fp32"]["step_top1_agreement"] == 1.0
    assert manifest.tools["opset"] == "17"
    for name in ("golden.npz", "reference.npz", "model.py", "manifest.json"):
        assert (version / name).is_file()
    assert not list(layout.staging_root(exported).iterdir())


def test_text_resources_are_installed_once_per_repository(exported, tiny_voice, tmp_path):
    """--g2pw (and --upstream-text) land in .gsv/text/; the manifest says what the reference used."""
    assert (layout.g2pw_dir(exported) / "g2pW.onnx").is_file()
    assert VoiceManifest.read(exported / "voice_demo" / "1").text_frontend["g2pw"] is True
    repo = tmp_path / "repo"
    repo.mkdir()
    assert cli.main(export_args(tiny_voice, repo, aux=False) + [
        "--hubert", str(tiny_voice / "chinese-hubert-base"),
        "--bert", str(tiny_voice / "chinese-roberta-wwm-ext-large")]) == 0
    manifest = VoiceManifest.read(repo / "voice_demo" / "1")
    assert manifest.text_frontend["g2pw"] is False and manifest.text_frontend["parity"] is False
    upstream = resources.upstream_text_dir()
    if upstream is not None:
        assert cli.main(export_args(tiny_voice, repo, "--upstream-text", str(upstream), aux=False)) == 0
        assert (layout.upstream_text_dir(repo) / "cmudict.rep").is_file()


def test_every_config_parses_as_triton_model_config(exported):
    configs = sorted(exported.glob("*/config.pbtxt"))
    assert {c.parent.name for c in configs} == {"voice_demo", "gsv_bert", "gsv_ssl"}
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == path.parent.name
        assert config.backend == "python"
    voice = text_format.Parse((exported / "voice_demo" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert voice.model_transaction_policy.decoupled


def test_graphs_are_checked_opset17_with_named_dynamic_axes(exported):
    graphs = sorted(exported.glob("*/1/*.onnx"))
    assert len(graphs) == 8
    for path in graphs:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        meta = {p.key for p in model.metadata_props}
        assert {"model_type", "stage"} <= meta, path.name
        for tensor in list(model.graph.input):
            dims = tensor.type.tensor_type.shape.dim
            if [d.dim_value for d in dims] == [1]:
                continue  # a per-batch scalar such as speed
            assert any(d.dim_param for d in dims), f"{path.name}:{tensor.name} has no dynamic axis"


def test_second_export_is_next_version_and_reuses_shared_models(exported, tiny_voice):
    assert cli.main(export_args(tiny_voice, exported, aux=False)) == 0
    assert layout.version_numbers(exported / "voice_demo") == [1, 2]
    assert layout.version_numbers(exported / "gsv_bert") == [1]
    assert cli.main(export_args(tiny_voice, exported)) == 0  # same aux folders: still one shared copy
    assert layout.version_numbers(exported / "gsv_ssl") == [1]


def test_precision_options_are_measured_in_manifest(tiny_voice, tmp_path):
    assert cli.main(export_args(tiny_voice, tmp_path, "--precision", "fp16", "--int8-decode")) == 0
    manifest = VoiceManifest.read(tmp_path / "voice_demo" / "1")
    assert manifest.precision == "fp16"
    for option in ("fp16", "int8_decode"):
        q = manifest.quality[option]
        assert 0.0 <= q["step_top1_agreement"] <= 1.0 and q["wav_snr_db"] > 10 and q["step_ms_cache200"] > 0
    assert "quantization" in {p.key for p in onnx.load(str(tmp_path / "voice_demo/1/gpt_step.onnx")).metadata_props}


def test_demo_full_size_layouts_match_official(kit):
    for version in demo.VERSIONS:
        official = json.loads((kit / f"layout_s2_{version}.json").read_text())
        mine = demo.s2_layout(demo.s2_config(version, "full")["model"])
        assert mine == {k: tuple(v) for k, v in official["keys"].items()}, version
        assert official["config"] == demo.s2_config(version, "full")
    official = json.loads((kit / "layout_s1_v2.json").read_text())
    assert demo.s1_layout(demo.s1_config("full")["model"]) == {k: tuple(v) for k, v in official["keys"].items()}


# ---------------------------------------------------------------- bad input loses nothing

def _bad_files(tmp: Path, voice: Path) -> dict[str, Path]:
    (tmp / "notes.pth").write_text("not a checkpoint")
    data = (voice / "sovits.pth").read_bytes()
    (tmp / "trunc.pth").write_bytes(data[: len(data) // 3])
    (tmp / "lora.pth").write_bytes(b"04" + data[2:])
    sf.write(str(tmp / "empty.wav"), np.zeros(0, np.float32), 32000)
    sf.write(str(tmp / "silent.wav"), np.zeros(32000 * 3, np.float32), 32000)
    src = torch.load(io.BytesIO((voice / "gpt.ckpt").read_bytes()), weights_only=False)
    w = src["weight"]["model.ar_text_embedding.word_embeddings.weight"]
    src["weight"]["model.ar_text_embedding.word_embeddings.weight"] = w[:700].clone()
    src["config"]["model"]["phoneme_vocab_size"] = 700
    torch.save(src, tmp / "gpt700.ckpt")
    return {n: tmp / n for n in ("notes.pth", "trunc.pth", "lora.pth", "empty.wav", "silent.wav", "gpt700.ckpt")}


@pytest.mark.parametrize("case,needle", [
    ("missing", "not found"),
    ("not_checkpoint", "not a SoVITS checkpoint"),
    ("truncated", "truncated|damaged|bad"),
    ("unsupported", "not supported yet"),
    ("mismatched_pair", "not one voice"),
    ("empty_clip", "empty"),
    ("silent_clip", "silent"),
    ("unsafe_name", "not a safe folder name"),
    ("existing_version", "already exists"),
    ("empty_text", "empty|no phones|whitespace"),
    ("bad_ref_lang", "--ref-lang 'fr'"),
    ("kana_in_zh", "Japanese kana"),
    ("not_g2pw", "not a G2PWModel folder, missing g2pW.onnx"),
    ("not_upstream_text", "none of upstream's dictionaries"),
])
def test_bad_input_one_line_error_repo_unchanged(exported, tiny_voice, tmp_path, capsys, case, needle):
    bad = _bad_files(tmp_path, tiny_voice)
    args = export_args(tiny_voice, exported, aux=False)

    def put(flag, value):
        args[args.index(flag) + 1] = str(value)

    {"missing": lambda: put("--gpt", tmp_path / "nope.ckpt"),
     "not_checkpoint": lambda: put("--sovits", bad["notes.pth"]),
     "truncated": lambda: put("--sovits", bad["trunc.pth"]),
     "unsupported": lambda: put("--sovits", bad["lora.pth"]),
     "mismatched_pair": lambda: put("--gpt", bad["gpt700.ckpt"]),
     "empty_clip": lambda: put("--ref-audio", bad["empty.wav"]),
     "silent_clip": lambda: put("--ref-audio", bad["silent.wav"]),
     "unsafe_name": lambda: put("--voice", "../evil"),
     "existing_version": lambda: args.extend(["--version", "1"]),
     "empty_text": lambda: put("--ref-text", "   "),
     "bad_ref_lang": lambda: put("--ref-lang", "fr"),
     "kana_in_zh": lambda: put("--ref-text", "こんにちは、元気です。"),
     "not_g2pw": lambda: args.extend(["--g2pw", str(tmp_path)]),
     "not_upstream_text": lambda: args.extend(["--upstream-text", str(tmp_path)]),
     }[case]()
    before = snapshot(exported)
    code, err = run_cli(args, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("gsv-triton: error:"), err
    import re
    assert re.search(needle, err), err
    assert snapshot(exported) == before


def test_disk_full_mid_export_leaves_repo_unchanged(exported, tiny_voice, capsys, monkeypatch):
    import errno

    from export import voice_export

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(voice_export, "export_graph", full)
    before = snapshot(exported)
    code, err = run_cli(export_args(tiny_voice, exported, aux=False), capsys)
    assert code == 2 and "No space left on device" in err and len(err.splitlines()) == 1
    assert snapshot(exported) == before
    assert not list(layout.staging_root(exported).iterdir())


def test_killed_export_leaves_no_partial_version(tiny_voice, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    assert cli.main(export_args(tiny_voice, repo)) == 0
    before = snapshot(repo)
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", *export_args(tiny_voice, repo, aux=False)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = layout.staging_root(repo)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.iterdir() for p in staging.iterdir()) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "export finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert snapshot(repo) == before
    assert layout.version_numbers(repo / "voice_demo") == [1]
    # the next export clears the dead one's staging folder and succeeds
    assert cli.main(export_args(tiny_voice, repo, aux=False)) == 0
    assert layout.version_numbers(repo / "voice_demo") == [1, 2]
    assert not list(staging.iterdir())


def test_export_refuses_checkpoints_that_make_silence(tiny_voice, tmp_path, capsys):
    """A SoVITS whose vocoder outputs zeros: its own torch audio fails the server's checks."""
    import shutil

    silent = tmp_path / "silent"
    shutil.copytree(tiny_voice, silent, ignore=shutil.ignore_patterns("chinese-*"))
    cfg = demo.s2_config("v2", "tiny")
    state = demo.random_state(demo.s2_layout(cfg["model"]), 4)
    state["dec.conv_post.weight"].zero_()
    demo._save_s2({"weight": state, "config": cfg, "info": "silent"}, silent / "sovits.pth", demo.S2_HEADERS["v2"])
    repo = tmp_path / "repo"
    repo.mkdir()
    args = export_args(silent, repo, aux=False)
    args += ["--hubert", str(tiny_voice / "chinese-hubert-base"), "--bert", str(tiny_voice / "chinese-roberta-wwm-ext-large")]
    code, err = run_cli(args, capsys)
    assert code == 2 and "silent" in err and len(err.splitlines()) == 1
    assert not (repo / "voice_demo").exists()


def test_next_version_never_reuses_quarantined_or_retired_numbers(tmp_path):
    from python_backend.layout import next_version

    (layout.voice_dir(tmp_path, "a") / "1").mkdir(parents=True)
    layout.quarantine_root(tmp_path).mkdir(parents=True)
    (layout.quarantine_root(tmp_path) / "voice_a.3.20261125T000000Z").mkdir()
    assert next_version(tmp_path, "a") == 4
    layout.retired_root(tmp_path).mkdir(parents=True)
    (layout.retired_root(tmp_path) / "voice_a.5.20261125T000001Z").mkdir()
    assert next_version(tmp_path, "a") == 6


# ---------------------------------------------------------------- v2Pro / v2ProPlus: sv_emb from the SV model

@pytest.fixture(scope="module")
def pro_voice(tmp_path_factory) -> tuple[Path, str]:
    """A tiny v2ProPlus demo voice (with the full-size random SV checkpoint) and what demo-voice printed."""
    out = tmp_path_factory.mktemp("pro")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["demo-voice", str(out), "--size", "tiny", "--seed", "4", "--sovits-version", "v2ProPlus"]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def pro_exported(pro_voice, tmp_path_factory) -> Path:
    src, _ = pro_voice
    repo = tmp_path_factory.mktemp("pro_repo")
    assert cli.main(export_args(src, repo, "--sv-model", str(src / cli.DEMO_FILES["sv"]))) == 0
    return repo


def test_pro_demo_points_export_at_the_sv_model(pro_voice):
    src, printed = pro_voice
    assert f"--sv-model {src / cli.DEMO_FILES['sv']}" in printed and "--sv-emb" not in printed
    assert (src / cli.DEMO_FILES["sv"]).read_bytes()[:2] == b"PK"  # torch zip, as torch.save writes it


def test_pro_voice_sv_emb_computed_by_the_shared_sv_model(pro_exported, pro_voice):
    """Checkpoints + SV checkpoint alone (no --sv-emb): gsv_sv is exported once and embeds the reference."""
    from python_backend.audio import load_reference
    from python_backend.speaker_verification import SVEmbedder

    src, _ = pro_voice
    version = pro_exported / "voice_demo" / "1"
    manifest = VoiceManifest.read(version)
    sv_sha = hashlib.sha256((src / cli.DEMO_FILES["sv"]).read_bytes()).hexdigest()
    assert manifest.sovits_version == "v2ProPlus"
    assert manifest.reference.sv_emb == {"source": "gsv_sv", "version": 1, "checkpoint_sha256": sv_sha}
    assert manifest.tools["shared_sv"] == "gsv_sv/1/sv.onnx"
    graph = pro_exported / "gsv_sv" / "1" / "sv.onnx"
    want = SVEmbedder(graph).embed(load_reference(src / "ref.wav").wav32k)
    got = np.load(version / "reference.npz")["sv_emb"]
    np.testing.assert_allclose(got, want, atol=1e-5 * float(np.abs(want).max()), rtol=0)
    config = text_format.Parse((pro_exported / "gsv_sv" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, [i.name for i in config.input], [list(o.dims) for o in config.output]) == ("gsv_sv", ["WAV32K"], [[1, 20480]])
    assert "triton_sv" in (pro_exported / "gsv_sv" / "1" / "model.py").read_text()


def test_pro_sv_emb_override_and_shared_sv_model_reused(pro_exported, pro_voice, tmp_path):
    """--sv-emb wins over the SV model and is recorded as a file; the same --sv-model file again
    reuses gsv_sv version 1 (the export path, without a second voice export)."""
    from export.shared_models import ensure_shared
    from export.voice_export import ExportOptions, _speaker_embedding

    src, _ = pro_voice
    shared = ensure_shared(pro_exported, None, None, sv_model=src / cli.DEMO_FILES["sv"])
    assert layout.version_numbers(pro_exported / "gsv_sv") == [1] and shared.sv == pro_exported / "gsv_sv/1/sv.onnx"
    emb = (np.random.default_rng(1).standard_normal(20480) * 0.1).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    opts = ExportOptions(gpt=src / "gpt.ckpt", sovits=src / "sovits.pth", ref_audio=src / "ref.wav", ref_text=TEXT,
                         ref_lang="zh", voice="demo", repo=pro_exported, sv_emb=tmp_path / "emb.npy")
    sv, source = _speaker_embedding(opts, shared, np.zeros(32000, np.float32))
    np.testing.assert_array_equal(sv, emb[None])
    assert source["source"] == "file" and source["sha256"] == hashlib.sha256((tmp_path / "emb.npy").read_bytes()).hexdigest()


@pytest.mark.parametrize("case,needle", [
    ("other_architecture", r"--sv-model .*not ERes2NetV2 w24 s4 ep4 .*missing: .*unexpected: head.weight.*wrong shape: conv1.weight \[32, 1, 3, 3\]"),
    ("not_a_state_dict", r"--sv-model .*not a bare state dict"),
    ("folder", r"--sv-model .*is a folder"),
    ("missing_sv_model", r"v2ProPlus voices need a speaker-verification model .*pass --sv-model"),
    ("bad_sv_emb", r"--sv-emb .*not a readable .npy"),
])
def test_pro_bad_sv_input_one_line_error_repo_unchanged(pro_exported, pro_voice, tmp_path, capsys, case, needle):
    src, _ = pro_voice
    repo = pro_exported
    if case == "other_architecture":
        torch.save({"conv1.weight": torch.zeros(32, 1, 3, 3), "head.weight": torch.zeros(4, 4)}, tmp_path / "other.ckpt")
        extra = ["--sv-model", str(tmp_path / "other.ckpt")]
    elif case == "not_a_state_dict":
        extra = ["--sv-model", str(src / "gpt.ckpt")]
    elif case == "folder":
        extra = ["--sv-model", str(tmp_path)]
    elif case == "missing_sv_model":
        repo, extra = tmp_path / "fresh", []
        repo.mkdir()
    else:
        (tmp_path / "bad.npy").write_bytes(b"not numpy")
        extra = ["--sv-emb", str(tmp_path / "bad.npy")]
    before = snapshot(repo)
    code, err = run_cli(export_args(src, repo, *extra, aux=case == "missing_sv_model"), capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("gsv-triton: error:"), err
    import re
    assert re.search(needle, err), err
    assert snapshot(repo) == before


def test_demo_voice_cache_copies_what_demo_voice_writes(tmp_path):
    """tests/voices.demo_voice makes each (version, seed) once per session and copies it: the copy
    must be byte-identical to a fresh ``demo-voice`` run (deterministic, no paths inside), and
    changing a copy must not reach the next one."""
    from tests.voices import demo_voice

    fresh = tmp_path / "fresh"
    assert cli.main(["demo-voice", str(fresh), "--size", "tiny", "--seed", "7"]) == 0
    first = demo_voice(tmp_path / "first", 7)
    (first / "ref.wav").write_bytes(b"changed by a test")
    second = demo_voice(tmp_path / "second", 7)

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(second) == files(fresh)
