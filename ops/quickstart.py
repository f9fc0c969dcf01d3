"""``gsv-triton quickstart``: the main job end to end on a random-weight demo voice.

demo voice -> export -> tritonserver -> a WAV through tritonclient (and one streamed), then
the server is stopped. Each step is the same code the individual commands run.
"""
from __future__ import annotations

from pathlib import Path

from ops import cli
from ops.client import stream, synthesize, write_wav
from ops.server import TritonProcess, free_ports
from python_backend import layout

REF_TEXT = "你好，欢迎使用语音合成服务。"


def run(folder: Path, size: str, text: str) -> int:
    folder = Path(folder).resolve()
    demo, repo = folder / "demo", folder / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    if not (demo / "gpt.ckpt").is_file():
        if cli.main(["demo-voice", str(demo), "--size", size]) != 0:
            return 2
    if not layout.version_numbers(layout.voice_dir(repo, "demo")):
        code = cli.main(["export", "--gpt", str(demo / "gpt.ckpt"), "--sovits", str(demo / "sovits.pth"),
                         "--ref-audio", str(demo / "ref.wav"), "--ref-text", REF_TEXT, "--ref-lang", "zh",
                         "--hubert", str(demo / "chinese-hubert-base"), "--bert", str(demo / "chinese-roberta-wwm-ext-large"),
                         "--g2pw", str(demo / "G2PWModel"),
                         "--voice", "demo", "--repo", str(repo)])
        if code != 0:
            return code
    http, grpc, metrics = free_ports(3)
    with TritonProcess(repo, http, grpc, metrics, log_path=folder / "tritonserver.log", exit_timeout=10) as server:
        server.wait_ready(600)
        print(f"tritonserver ready on {server.grpc_url} (gRPC); log: {folder / 'tritonserver.log'}", flush=True)
        speech = synthesize(text, "demo", server.grpc_url, SEED=0)
        wav = folder / "out.wav"
        write_wav(wav, speech)
        print(f"wrote {wav} ({speech.audio.size / speech.sample_rate:.2f} s, voice demo version {speech.voice_version}, "
              f"finish {speech.finish_reason}) through tritonclient gRPC -> tts", flush=True)
        streamed = stream(text, "demo", server.grpc_url, SEED=0)
        wav_stream = folder / "out_stream.wav"
        write_wav(wav_stream, streamed)
        print(f"wrote {wav_stream} ({streamed.audio.size / streamed.sample_rate:.2f} s in {streamed.chunks} chunks, "
              f"first chunk after {streamed.first_chunk_s:.2f} s) through tts_stream", flush=True)
    print(f"done: the WAV is {wav}")
    return 0

