"""Genie-TTS (``genie-tts`` on PyPI), the CPU ONNX peer: it converts the same .ckpt/.pth into its own graphs.

Genie pins onnxruntime 1.22.1 and pulls numpy 2, neither of which may replace the project's, so
it lives in a folder of its own (``pip install --target GENIE_SITE 'genie-tts==2.0.2'``, the
``bench`` extra's pin) and runs in a child process with that folder first on ``sys.path``; the
project's venv still supplies torch, which Genie's converter needs.

Nothing is downloaded. The runtime files Genie looks for under ``GENIE_DATA_DIR`` (its own
download is a Hugging Face snapshot) are made locally, the way ``demo-voice`` makes ours:

- ``chinese-hubert-base/chinese-hubert-base.onnx``: the repository's SSL graph (``gsv_ssl``: the
  same HuBERT weights) with its input renamed to Genie's ``input_values``;
- ``G2P/ChineseG2P/opencpop-strict.txt`` and ``polyphonic.pickle``: upstream GPT-SoVITS's
  opencpop table and its polyphonic.rep/-fix.rep as the dict Genie unpickles;
- ``speaker_encoder.onnx``: Genie checks at import that it exists, though only v2ProPlus voices
  load it; a one-node graph stands in.

Genie has no RoBERTa here, so its BERT features are zeros (as the eager baseline's; the Triton
side runs BERT for Chinese). It stops decoding at its in-graph EOS; like the other pipelines it
is driven here for a fixed token budget (its own sessions, a decode loop that ignores the stop
flag; tokens it sampled as EOS are voiced as token 0). Only the Chinese texts: Genie's English
front end needs nltk tagger data and a CMU-dict cache that have no local source here.
Genie synthesizes one request at a time (one global session and player), so it is measured
serially: its throughput is the same at every concurrency, and its first audio is its whole
sentence (it streams per sentence).
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

NAME, VERSION = "genie-tts", "2.0.2"
HERE = Path(__file__).resolve().parent


class PeerUnavailable(RuntimeError):
    """The peer cannot run here: the message says why and what to do."""


def default_site() -> Path:
    return HERE / ".cache" / "genie-site"


def genie_version(site: Path) -> str:
    dist = sorted(Path(site).glob("genie_tts-*.dist-info"))
    if not dist:
        raise PeerUnavailable(f"genie-tts is not installed in {site}: pip install --target {site} "
                              f"'{NAME}=={VERSION}' (its own folder: it pins onnxruntime 1.22.1)")
    return dist[-1].name[len("genie_tts-"):-len(".dist-info")]


# ----------------------------------------------------------------------------- runtime files
def upstream_dir(repo: Path, explicit: Path | None = None) -> Path:
    """Upstream GPT-SoVITS's text folder: ``explicit``, the repository's copy (export --upstream-text),
    or ``$GSV_UPSTREAM_TEXT``; the first that holds opencpop-strict.txt."""
    from python_backend import layout

    tried = [Path(p) for p in (explicit, layout.upstream_text_dir(repo), os.environ.get("GSV_UPSTREAM_TEXT")) if p]
    for folder in tried:
        if (folder / "opencpop-strict.txt").is_file():
            return folder
    raise PeerUnavailable("Genie's Chinese front end needs upstream GPT-SoVITS's opencpop-strict.txt (not in "
                          f"{', '.join(map(str, tried))}): set GSV_UPSTREAM_TEXT to GPT-SoVITS's GPT_SoVITS/text folder")


def write_data_dir(data: Path, repo: Path, upstream_text: Path) -> Path:
    """Genie's GENIE_DATA_DIR made from local files (see the module docstring)."""
    import onnx
    from onnx import helper

    from python_backend import layout

    hubert = data / "chinese-hubert-base" / "chinese-hubert-base.onnx"
    if not hubert.is_file():
        ssl_dir = Path(repo) / layout.SSL_MODEL
        graphs = sorted(ssl_dir.glob("*/ssl.onnx"))
        if not graphs:
            raise PeerUnavailable(f"no SSL graph under {ssl_dir}: export the voice with --hubert first")
        model = onnx.load(str(graphs[-1]))
        old = model.graph.input[0].name
        for node in model.graph.node:
            node.input[:] = ["input_values" if i == old else i for i in node.input]
        model.graph.input[0].name = "input_values"
        hubert.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(hubert))
    zh = data / "G2P" / "ChineseG2P"
    zh.mkdir(parents=True, exist_ok=True)
    opencpop = Path(upstream_text) / "opencpop-strict.txt"
    shutil.copy(opencpop, zh / "opencpop-strict.txt")
    poly: dict[str, list[str]] = {}
    for name in ("polyphonic.rep", "polyphonic-fix.rep"):
        rep = Path(upstream_text) / "g2pw" / name
        if rep.is_file():
            for line in rep.read_text(encoding="utf-8").splitlines():
                if ":" in line:
                    word, pinyin = line.split(":", 1)
                    poly[word.strip()] = ast.literal_eval(pinyin.strip())
    (zh / "polyphonic.pickle").write_bytes(pickle.dumps(poly))
    (data / "G2P" / "EnglishG2P").mkdir(parents=True, exist_ok=True)
    sv = data / "speaker_encoder.onnx"
    if not sv.is_file():
        node = helper.make_node("Identity", ["waveform"], ["embedding"])
        io = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("waveform", "embedding")]
        onnx.save(helper.make_model(helper.make_graph([node], "unused_sv", io[:1], io[1:]),
                                    opset_imports=[helper.make_opsetid("", 17)]), str(sv))
    return data


# ----------------------------------------------------------------------------- parent side
def measure(prep: dict, work: Path, tokens: int, texts: dict[str, str], load_text: str, ref_text: str,
            levels: list[int], repeats: int = 1, site: Path | None = None, upstream_text: Path | None = None,
            timeout: float = 3600) -> dict:
    """Convert the demo voice with Genie, then time it in a child process; ``{"name", "error"}`` when it
    cannot run here (the reason is recorded, never a made-up figure)."""
    site = Path(site or default_site())
    try:
        version = genie_version(site)
        data = write_data_dir(work / "genie-data", prep["repo"], upstream_dir(prep["repo"], upstream_text))
    except PeerUnavailable as exc:
        return {"name": NAME, "version": None, "error": str(exc)}
    spec = {"gpt": str(prep["demo"] / "gpt.ckpt"), "sovits": str(prep["demo"] / "sovits.pth"),
            "ref_wav": str(prep["demo"] / "ref.wav"), "ref_text": ref_text, "texts": texts, "load_text": load_text,
            "tokens": tokens, "repeats": repeats, "onnx_dir": str(work / "genie-voice")}
    spec_path, res_path = work / "genie_spec.json", work / "genie_raw.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    env = dict(os.environ, GENIE_DATA_DIR=str(data), PYTHONPATH=os.pathsep.join(
        filter(None, [str(site), str(HERE.parent), os.environ.get("PYTHONPATH", "")])))
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.peer_genie", str(spec_path), str(res_path)], cwd=work,
                              env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": NAME, "version": version, "error": f"Genie run timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not res_path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"name": NAME, "version": version, "error": f"Genie run failed (exit {proc.returncode}): {tail[0][:300]}",
                "stderr_tail": proc.stderr[-3000:]}
    raw = json.loads(res_path.read_text())
    spec_path.unlink()
    res_path.unlink()
    return summarise(raw, version, texts, load_text, levels)


def summarise(raw: dict, version: str, texts: dict[str, str], load_text: str, levels: list[int]) -> dict:
    rows = raw["rows"]
    per_text = {}
    for name, text in texts.items():
        rs = [r for r in rows if r["text"] == text]
        per_text[name] = {"rtf": statistics.median(r["rtf"] for r in rs), "audio_s": rs[0]["audio_s"],
                          "tokens": rs[0]["tokens"], "latency_s": statistics.median(r["compute_s"] for r in rs)}
    service = per_text[next(k for k, t in texts.items() if t == load_text)]["latency_s"]
    load_audio = next(r["audio_s"] for r in rows if r["text"] == load_text)
    return {"name": NAME, "version": version, "texts": sorted(texts),
            "single_stream_rtf": sum(r["compute_s"] for r in rows) / sum(r["audio_s"] for r in rows),
            "first_audio_s": service, "service_s": service,
            "throughput": {str(c): load_audio / service for c in levels},
            "serial": True, "per_text": per_text, "convert_s": raw["convert_s"], "load_s": raw["load_s"],
            "peak_rss_mb": raw["peak_rss_mb"], "onnxruntime": raw["onnxruntime"],
            "note": "one request at a time: throughput is the same at every concurrency; first audio is the whole "
                    "sentence (Genie streams per sentence)"}


# ----------------------------------------------------------------------------- child side
def run(spec: dict) -> dict:
    """In the child (Genie's folder first on sys.path): convert, load, then time each text."""
    import resource

    import numpy as np
    import onnxruntime

    t0 = time.perf_counter()
    import genie_tts
    from genie_tts.Audio.ReferenceAudio import ReferenceAudio
    from genie_tts.GetPhonesAndBert import get_phones_and_bert
    from genie_tts.ModelManager import model_manager

    onnx_dir = Path(spec["onnx_dir"])
    if not (onnx_dir / "vits_fp32.onnx").is_file():
        genie_tts.convert_to_onnx(spec["gpt"], spec["sovits"], str(onnx_dir))  # prints, never raises
        if not (onnx_dir / "vits_fp32.onnx").is_file():
            raise SystemExit("Genie's converter could not convert these checkpoints (it fills fixed graphs of the "
                             "full-size v2/v2ProPlus layout; the tiny demo voice has other layer sizes): use --size full")
    convert_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    genie_tts.load_character("peer", str(onnx_dir), "Chinese")
    model = model_manager.get("peer")
    ref = ReferenceAudio(prompt_wav=spec["ref_wav"], prompt_text=spec["ref_text"], language="Chinese")
    load_s = time.perf_counter() - t1

    def synth(text: str) -> dict:
        start = time.perf_counter()
        text_seq, text_bert = get_phones_and_bert("。" + text, language="Chinese")  # Genie's own prefix
        x, prompts = model.T2S_ENCODER.run(None, {"ref_seq": ref.phonemes_seq, "text_seq": text_seq,
                                                  "ref_bert": ref.text_bert, "text_bert": text_bert,
                                                  "ssl_content": ref.ssl_content})
        y, y_emb, *kv = model.T2S_FIRST_STAGE_DECODER.run(None, {"x": x, "prompts": prompts})
        names = [i.name for i in model.T2S_STAGE_DECODER.get_inputs()]
        for _ in range(spec["tokens"] - 1):  # the first stage made one token; the stop flag is ignored
            y, y_emb, _stop, *kv = model.T2S_STAGE_DECODER.run(None, dict(zip(names, [y, y_emb, *kv])))
        semantic = np.array(y[:, -spec["tokens"]:])[None]
        semantic[semantic >= 1024] = 0  # sampled EOS: voiced as token 0, the work stays the budget's
        wav = model.VITS.run(None, {"text_seq": text_seq, "pred_semantic": semantic, "ref_audio": ref.audio_32k})[0]
        total = time.perf_counter() - start
        audio_s = wav.size / 32000
        return {"text": text, "tokens": int(semantic.shape[-1]), "compute_s": total, "audio_s": audio_s,
                "rtf": total / audio_s}

    synth(spec["load_text"])  # warm-up, not counted
    rows = [synth(text) for _ in range(spec["repeats"]) for text in spec["texts"].values()]
    return {"rows": rows, "convert_s": convert_s, "load_s": load_s, "onnxruntime": onnxruntime.__version__,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run(spec), ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
