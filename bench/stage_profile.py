"""Where the time goes: GPT prefill, decode steps, SoVITS and vocoder, on the exported graphs in-process."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import LOAD_TEXT


def profile(repo: Path, voice: str, tokens: int, batches=(1, 8), steps: int = 40) -> dict:
    """Where the time goes, in-process on the exported graphs (the server is stopped)."""
    from python_backend import layout
    from python_backend.voice_engine import VoiceEngine

    vdir = layout.voice_dir(repo, voice)
    engine = VoiceEngine(vdir / str(layout.version_numbers(vdir)[-1]))
    try:
        from python_backend.text.frontend import text_to_phones, zero_bert

        seq = text_to_phones(LOAD_TEXT)
        phones = np.concatenate([engine.ref_phones, seq.phone_ids])[None]
        bert = np.concatenate([engine.ref_bert, zero_bert(seq)], axis=1)[None]
        t = time.perf_counter()
        logits, k, v = engine.gpt.prefill(phones, bert, engine.prompts)
        prefill_ms = 1000 * (time.perf_counter() - t)
        out = {"voice": voice, "prefill_ms": prefill_ms}
        n_prompt = engine.prompts.shape[1]
        for b in batches:
            cache = engine.gpt.start_cache(np.repeat(k, b, axis=1), np.repeat(v, b, axis=1))
            tok = np.full((b, 1), 5, np.int64)
            times = []
            for i in range(steps):
                t = time.perf_counter()
                engine.gpt.step(tok, np.full(b, n_prompt + i), cache)
                times.append(time.perf_counter() - t)
            ms = 1000 * statistics.median(times[2:])
            out[f"gpt_step_ms_b{b}"] = ms
            out[f"gpt_tokens_per_s_b{b}"] = 1000 * b / ms
        from python_backend.voice_engine import latent_frames

        codes = np.random.default_rng(0).integers(0, 1024, (1, tokens)).astype(np.int64)
        ph = np.asarray(seq.phone_ids, np.int64)[None]
        frames = latent_frames(tokens, 1.0)
        times_s, times_v = [], []
        for _ in range(2):
            t = time.perf_counter()
            lat = engine.sovits.run(codes=codes, code_lengths=np.array([tokens], np.int64), phones=ph,
                                    phone_lengths=np.array([ph.shape[1]], np.int64), ge=engine.ge,
                                    noise=np.zeros((1, engine.channels, frames), np.float32),
                                    speed=np.array([1.0], np.float32))
            t2 = time.perf_counter()
            wav = engine.vocoder.run(latent=lat["latent"], ge=engine.ge)["wav"]
            times_s.append(t2 - t)
            times_v.append(time.perf_counter() - t2)
        audio_s = wav.shape[-1] / engine.manifest.sample_rate
        out["sovits_ms_per_10s"] = 1000 * min(times_s) * 10 / audio_s
        out["vocoder_ms_per_10s"] = 1000 * min(times_v) * 10 / audio_s
        out["sovits_vocoder_ms_per_10s"] = out["sovits_ms_per_10s"] + out["vocoder_ms_per_10s"]
        out["sovits_vocoder_rtf"] = out["sovits_vocoder_ms_per_10s"] / 10_000
        out["gpt_tokens_per_s"] = out["gpt_tokens_per_s_b1"]
        return out
    finally:
        engine.close(timeout=5)
