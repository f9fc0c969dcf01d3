"""v4 voices served: the CFM scheduler and engine without Triton, then a real tritonserver (whole and
streamed requests, SAMPLE_STEPS, a per-request reference, and a voice moving from a v2 version to a
v4 version by a normal publish while it serves).

Tiny random-weight demo files in upstream's formats (``gsv-triton demo-voice --sovits-version v4``:
base, LoRA, vocoder), exported once per module.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from export import v4_pipeline
from export.checkpoints import read_sovits_v4, read_vocoder_v4
from export.v4_model import build_v4
from export.v4_vocoder import build_vocoder
from python_backend import history, validation
from python_backend.audio import load_reference
from python_backend.voice_engine import RequestError, SynthesisRequest, VoiceEngine
from python_backend.v4_synthesis import V4Scheduler, V4Stages, chunk_noise, euler_schedule
from tests.triton_fixtures import require_tritonserver, start_server
from tests.voices import REF_TEXT, demo_voice, export_args, export_voice

TEXT = "今天天气很好。"


def v4_extra(src) -> tuple[str, ...]:
    return ("--sovits-base", str(src / "s2Gv4.pth"), "--vocoder", str(src / "vocoder.pth"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A v2 demo voice (seed 3) and a v4 demo voice (seed 5); ``repo`` holds the v4 one as voice ``four``."""
    root = tmp_path_factory.mktemp("v4serve")
    v2, v4 = demo_voice(root / "v2", 3), demo_voice(root / "v4", 5, version="v4")
    repo = root / "repo"
    repo.mkdir()
    folder = export_voice(v4, repo, "four", *v4_extra(v4), aux=v4)
    return {"root": root, "v2": v2, "v4": v4, "repo": repo, "folder": folder}


@pytest.fixture(scope="module")
def stages(built):
    return V4Stages(built["folder"])


@pytest.fixture(scope="module")
def prompt(built, stages):
    with np.load(built["folder"] / "reference.npz") as ref:
        return stages.prompt(ref["prompts"], ref["phones"], ref["ge"], ref["mel"]), ref["ge"], ref["phones"]


# --------------------------------------------------------------------------- bad exports


def _tree(repo):
    return sorted((str(p.relative_to(repo)), p.stat().st_size) for p in repo.rglob("*") if p.is_file())


@pytest.mark.parametrize("case,needle", [
    ("lora_without_base", "base"),
    ("wrong_vocoder", "vocoder"),
    ("v2_base", "v4"),
    ("fp16", "fp32 only"),
    ("no_transcript", "reference-free"),
])
def test_bad_v4_exports_fail_in_one_line_and_leave_the_repository_untouched(built, case, needle, capsys):
    from ops import cli

    src, repo = built["v4"], built["repo"]
    before = _tree(repo)
    args = export_args(src, repo, "four")
    extra = {
        "lora_without_base": ["--vocoder", str(src / "vocoder.pth")],
        "wrong_vocoder": ["--sovits-base", str(src / "s2Gv4.pth"), "--vocoder", str(src / "s2Gv4.pth")],
        "v2_base": ["--vocoder", str(src / "vocoder.pth")],
        "fp16": [*v4_extra(src), "--precision", "fp16"],
        "no_transcript": [*v4_extra(src)],
    }[case]
    if case == "v2_base":
        args[args.index("--sovits") + 1] = str(built["v2"] / "sovits.pth")
    if case == "no_transcript":
        args[args.index("--ref-text") + 1] = " "
    assert cli.main(["export", *args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsv-triton: error:") and len(err.splitlines()) == 1 and needle in err, err
    assert _tree(repo) == before


# --------------------------------------------------------------------------- scheduler


def test_euler_schedule_is_upstreams():
    assert euler_schedule(4) == [(0.0, 0.25), (0.25, 0.25), (0.5, 0.25), (0.75, 0.25)]
    t = 0.0
    for j, (tj, d) in enumerate(euler_schedule(7)):
        assert tj == t and d == 1 / 7  # t += d in float64, as upstream's loop
        t += d


def test_graphs_follow_the_torch_pipeline_over_two_chunks(built, stages, prompt):
    """The scheduler (graphs) against export.v4_pipeline (torch) on the same seeded chunk noise,
    long enough for two CFM chunks, so the chunk-to-chunk prompt hand-over is covered."""
    p, ge, phones = prompt
    frames_left = stages.contract.t_chunk - p.frames
    n_codes = frames_left // stages.contract.frames_per_code + 20  # two chunks
    codes = np.random.default_rng(1).integers(0, 1024, n_codes).astype(np.int64)
    mel, wav = stages.synthesize(codes, phones, ge, p, steps=3, seed=11)
    src = built["v4"]
    model = build_v4(read_sovits_v4(src / "s2Gv4.pth", lora=src / "sovits.pth")).eval()
    vocoder = build_vocoder(read_vocoder_v4(src / "vocoder.pth")).eval()
    clip = load_reference(src / "ref.wav")
    with np.load(built["folder"] / "reference.npz") as ref:
        trace = v4_pipeline.synthesize(
            model, vocoder, torch.from_numpy(codes[None]), torch.from_numpy(phones[None]),
            torch.from_numpy(ref["prompts"][None]), torch.from_numpy(phones[None]), torch.from_numpy(ref["spec"][None]),
            torch.from_numpy(clip.wav32k.astype(np.float32)[None]), 3,
            lambda k, n: torch.from_numpy(chunk_noise(11, k, 100, n)[None]))
    assert len(trace.chunks) == 2
    np.testing.assert_allclose(mel, trace.mel_norm[0].numpy(), atol=2e-3)
    np.testing.assert_allclose(wav, trace.wav.numpy(), atol=2e-3)


def test_batched_rows_at_different_steps_equal_their_solo_runs(stages, prompt):
    """Rows of different lengths, step counts and streaming modes share CFM and vocoder calls; each
    equals its solo run, and a stream's pieces join into the whole-request wav."""
    p, ge, phones = prompt
    rng = np.random.default_rng(2)
    codes = [rng.integers(0, 1024, n).astype(np.int64) for n in (30, 55, 41)]
    sched = V4Scheduler(stages, max_batch=8)
    sched.add("a", codes[0], phones, ge, p, 4, 1)
    sched.add("b", codes[1], phones, ge, p, 2, 2)
    sched.add("s", codes[2], phones, ge, p, 3, 3, stream=True)
    pieces = []
    while sched.busy:
        pieces += sched.tick()
    assert sched.stats["cfm_rows"] > sched.stats["cfm_steps"]  # rows did share steps
    for key, c, steps, seed in (("a", codes[0], 4, 1), ("b", codes[1], 2, 2), ("s", codes[2], 3, 3)):
        got = np.concatenate([x.wav for x in pieces if x.key == key])
        solo = stages.synthesize(c, phones, ge, p, steps, seed)[1]
        assert got.size == c.size * stages.contract.samples_per_code
        np.testing.assert_allclose(got, solo, atol=1e-5)
    assert [x.final for x in pieces if x.key == "s"][-1] and sum(x.key == "s" for x in pieces) >= 1


def test_a_long_stream_sends_a_piece_per_chunk(stages, prompt):
    p, ge, phones = prompt
    n_codes = (stages.contract.t_chunk - p.frames) // 4 * 2 + 10  # three chunks
    codes = np.random.default_rng(3).integers(0, 1024, n_codes).astype(np.int64)
    sched = V4Scheduler(stages, max_batch=4)
    sched.add("s", codes, phones, ge, p, 1, 5, stream=True)
    pieces = []
    while sched.busy:
        pieces += sched.tick()
    assert [x.final for x in pieces] == [False, False, True]
    assert [x.start for x in pieces[1:]] == [x.stop for x in pieces[:-1]]  # contiguous, no frame twice
    whole = stages.synthesize(codes, phones, ge, p, 1, 5)[1]
    np.testing.assert_allclose(np.concatenate([x.wav for x in pieces]), whole, atol=1e-5)


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def engine(built):
    eng = VoiceEngine(built["folder"], max_batch=4)
    yield eng
    eng.close(30)


def _request(n=12, **kw):
    phones = np.random.default_rng(n).integers(1, 700, n)
    return SynthesisRequest(phones=phones, bert=np.zeros((1024, n), np.float32), top_k=5, max_tokens=40, **kw)


def _run(engine, req):
    chunks = []
    engine.submit(req, chunks.append).wait(300)
    return chunks


def test_engine_validates_and_serves_48k(engine):
    metrics = validation.validate(engine)
    assert metrics["wav_snr_db"] > 40 and engine.sample_rate == 48000
    # the v4 graphs follow the version's "sovits" provider choice (python_backend.providers)
    assert engine.v4.encoder.resolution.stage == engine.v4.cfm.resolution.stage == "sovits"
    whole = _run(engine, _request(seed=4, sample_steps=2))
    streamed = _run(engine, _request(seed=4, sample_steps=2, stream=True))
    assert whole[-1].final and whole[-1].error is None
    a, b = np.concatenate([c.audio for c in whole]), np.concatenate([c.audio for c in streamed])
    assert a.size == sum(c.tokens for c in whole) * 1920  # 4 mel frames x 480 samples per token
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert sum(c.tokens for c in streamed) == sum(c.tokens for c in whole)


def test_sample_steps_changes_the_audio_and_is_bounded(engine):
    one = np.concatenate([c.audio for c in _run(engine, _request(seed=4, sample_steps=1))])
    two = np.concatenate([c.audio for c in _run(engine, _request(seed=4, sample_steps=2))])
    assert one.size == two.size and not np.allclose(one, two)
    for bad in (0, 65, True, 2.5):
        with pytest.raises(RequestError, match="sample_steps"):
            engine.submit(_request(sample_steps=bad), lambda c: None)


def test_v4_has_no_reference_free_mode(engine):
    with pytest.raises(RequestError, match="reference-free|transcript"):
        engine.make_reference(np.zeros(0, np.int64), np.zeros((1024, 0), np.float32), None,
                              [np.zeros((1025, 40), np.float32)])


# --------------------------------------------------------------------------- Triton


@pytest.fixture(scope="module")
def served(built):
    """voice ``mix``: v2 version 1 on a real tritonserver (v4 comes by publish in the swap test)."""
    require_tritonserver()
    repo = built["root"] / "served"
    repo.mkdir()
    export_voice(built["v2"], repo, "mix", aux=built["v2"])
    proc = start_server(repo, models=["voice_mix", "gsv_bert", "gsv_ssl", "tts", "tts_stream"],
                        log_dir=built["root"])
    yield repo, proc
    proc.stop()


def test_a_voice_moves_from_v2_to_v4_by_publish(built, served):
    from ops import cli
    from ops.client import Reference, stream, synthesize

    repo, proc = served
    before = synthesize(TEXT, "mix", proc.grpc_url, TOP_K=1, SEED=3, MAX_TOKENS=30)
    assert (before.voice_version, before.sample_rate) == (1, 32000)
    code = cli.main(["publish", *export_args(built["v4"], repo, "mix", *v4_extra(built["v4"])),
                     "--url", proc.grpc_url])
    assert code == 0
    after = synthesize(TEXT, "mix", proc.grpc_url, TOP_K=1, SEED=3, MAX_TOKENS=30, SAMPLE_STEPS=2)
    assert (after.voice_version, after.sample_rate) == (2, 48000)
    assert after.audio.size % 1920 == 0 and after.audio.size > 0
    streamed = stream(TEXT, "mix", proc.grpc_url, TOP_K=1, SEED=3, MAX_TOKENS=30, SAMPLE_STEPS=2)
    assert (streamed.voice_version, streamed.sample_rate) == (2, 48000)
    np.testing.assert_allclose(streamed.audio, after.audio, atol=1e-4)
    active = [e for e in history.read(repo, "mix") if e.event == "active" and e.version == 2]
    assert active and "48000 Hz" in active[-1].reason and "from 32000 Hz" in active[-1].reason
    # a per-request reference clip on the v4 version
    clip = load_reference(built["v4"] / "ref.wav")
    ref = Reference(clip.wav32k.astype(np.float32), 32000, REF_TEXT, "zh")
    cloned = synthesize(TEXT, "mix", proc.grpc_url, TOP_K=1, SEED=3, MAX_TOKENS=30, SAMPLE_STEPS=2, reference=ref)
    assert cloned.sample_rate == 48000 and cloned.audio.size > 0


def test_bad_sample_steps_is_invalid_arg_and_the_voice_keeps_serving(served):
    from ops.client import ClientError, synthesize

    _, proc = served
    for bad in (0, 65):
        with pytest.raises(ClientError, match="SAMPLE_STEPS|sample_steps"):
            synthesize(TEXT, "mix", proc.grpc_url, TOP_K=1, SEED=3, MAX_TOKENS=20, SAMPLE_STEPS=bad)
    assert synthesize(TEXT, "mix", proc.grpc_url, TOP_K=1, SEED=3, MAX_TOKENS=20).audio.size > 0
