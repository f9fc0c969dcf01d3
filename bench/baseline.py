"""The baseline: this project's torch modules run eagerly, the way upstream GPT-SoVITS inference runs.

Batch 1, one request at a time, float32: ``GPT.from_checkpoint(read_gpt(...))`` prefill + a
step loop with the numpy sampler (``python_backend.sampling``), then
``build_sovits(read_sovits(...)).decode(...)``. EOS is masked at every step and generation
stops at the token budget, the same budget the Triton side gets (``MAX_TOKENS``).

Run in its own process (``python -m bench.baseline SPEC.json OUT.json``) so its peak RSS is its own.
``measure`` starts that process from the benchmark and summarises its rows.
The text front end is the server's (phones); BERT features are zeros (the baseline does not
run BERT, which the Triton side does for Chinese: that favours the baseline).
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import LOAD_TEXT, ROOT, TEXTS, TOP_K, log


def eager_gpt_tokens(gpt, phones, bert, prompts, budget: int, rng: np.random.Generator, top_k: int):
    """Upstream's GPT loop in torch, batch 1, EOS masked so exactly ``budget`` tokens come out.

    ``phones``/``bert``: reference then target ([1, P], [1, 1024, P]); ``prompts``: [1, T] prompt
    tokens. Returns (tokens [budget] int64, prefill seconds)."""
    import torch

    from python_backend import sampling

    n_prompt = prompts.shape[1]
    history = np.empty(n_prompt + budget, np.int64)
    history[:n_prompt] = prompts[0].numpy()
    started = time.perf_counter()
    logits, k, v = gpt.prefill(phones, bert, prompts)
    prefill_s = time.perf_counter() - started
    for i in range(budget):
        masked = sampling.mask_eos(logits.numpy(), i, int(gpt.cfg.eos), budget + 1)  # EOS never wins
        tok, _ = sampling.sample(masked, [history[: n_prompt + i]], top_k=top_k, top_p=1.0, temperature=1.0,
                                 repetition_penalty=1.35, rng=rng)
        history[n_prompt + i] = tok[0]
        if i + 1 < budget:
            logits, k, v = gpt.step(torch.from_numpy(tok.reshape(1, 1)), torch.tensor([n_prompt + i]), k, v,
                                    torch.ones(1, k.shape[2] + 1))
    return history[n_prompt:].copy(), prefill_s


def run(spec: dict) -> dict:
    import torch

    from export.checkpoints import read_gpt, read_sovits
    from export.gpt_model import GPT
    from export.sovits_model import build_sovits
    from python_backend.text.frontend import text_to_phones, zero_bert
    from python_backend.voice_engine import token_budget

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    gpt = GPT.from_checkpoint(read_gpt(spec["gpt"])).eval()
    sovits = build_sovits(read_sovits(spec["sovits"])).eval()
    load_s = time.perf_counter() - t0
    with np.load(Path(spec["version_dir"]) / "reference.npz") as ref:
        ref_phones, ref_bert, prompts, spec_ref = ref["phones"], ref["bert"], ref["prompts"], ref["spec"]
    sr = int(sovits.cfg.sample_rate)
    refer_spec = torch.from_numpy(np.asarray(spec_ref, np.float32))
    if refer_spec.dim() == 2:
        refer_spec = refer_spec[None]
    prompts_t = torch.from_numpy(np.asarray(prompts, np.int64).reshape(1, -1))

    def synth(text: str, seed: int) -> dict:
        start = time.perf_counter()
        seq = text_to_phones(text)
        phones = np.asarray(seq.phone_ids, np.int64)
        bert = zero_bert(seq)
        budget = token_budget(len(phones), spec["tokens"])
        all_phones = torch.from_numpy(np.concatenate([ref_phones, phones])[None])
        all_bert = torch.from_numpy(np.concatenate([ref_bert, bert], axis=1)[None].astype(np.float32))
        t_gpt = time.perf_counter()
        generated_tokens, prefill_s = eager_gpt_tokens(gpt, all_phones, all_bert, prompts_t, budget,
                                                       np.random.default_rng(seed), spec["top_k"])
        generated = generated_tokens.size
        gpt_s = time.perf_counter() - t_gpt
        t_sov = time.perf_counter()
        wav = sovits.decode(torch.from_numpy(generated_tokens[None]), torch.from_numpy(phones[None]), refer_spec)
        sovits_s = time.perf_counter() - t_sov
        total = time.perf_counter() - start
        audio_s = wav.numel() / sr
        return {"text": text, "tokens": generated, "compute_s": total, "audio_s": audio_s, "gpt_s": gpt_s,
                "prefill_s": prefill_s, "sovits_s": sovits_s, "rtf": total / audio_s,
                "tokens_per_s": generated / gpt_s, "sovits_rtf": sovits_s / audio_s}

    synth(spec["texts"][0], 0)  # warm-up (first-call allocations), not counted
    rows = []
    for rep in range(spec.get("repeats", 1)):
        for i, text in enumerate(spec["texts"]):
            rows.append(synth(text, 1000 * rep + i))
    rusage = resource.getrusage(resource.RUSAGE_SELF)
    return {"load_s": load_s, "rows": rows, "peak_rss_mb": rusage.ru_maxrss / 1024, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def measure(prep: dict, out: Path, tokens: int, repeats: int) -> dict:
    """Run the baseline in its own process (``python -m bench.baseline``) and summarise its rows."""
    from python_backend import layout

    vdir = layout.voice_dir(prep["repo"], "demo")
    version_dir = vdir / str(layout.version_numbers(vdir)[-1])
    spec = {"gpt": str(prep["demo"] / "gpt.ckpt"), "sovits": str(prep["demo"] / "sovits.pth"),
            "version_dir": str(version_dir), "texts": list(TEXTS.values()), "tokens": tokens, "top_k": TOP_K,
            "repeats": repeats}
    spec_path, res_path = out / "baseline_spec.json", out / "baseline_raw.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    log("baseline: eager torch, batch 1, one request at a time")
    subprocess.run([sys.executable, "-m", "bench.baseline", str(spec_path), str(res_path)], cwd=ROOT, check=True)
    raw = json.loads(res_path.read_text())
    spec_path.unlink()
    res_path.unlink()
    rows = raw["rows"]
    compute, audio = sum(r["compute_s"] for r in rows), sum(r["audio_s"] for r in rows)
    per_text = {}
    for name, text in TEXTS.items():
        rs = [r for r in rows if r["text"] == text]
        per_text[name] = {"rtf": statistics.median(r["rtf"] for r in rs), "audio_s": rs[0]["audio_s"],
                          "tokens": rs[0]["tokens"], "latency_s": statistics.median(r["compute_s"] for r in rs)}
    load = [r for r in rows if r["text"] == LOAD_TEXT]
    service = statistics.median(r["compute_s"] for r in load)
    load_audio = load[0]["audio_s"]
    return {
        "single_stream_rtf": compute / audio,
        "gpt_tokens_per_s": sum(r["tokens"] for r in rows) / sum(r["gpt_s"] for r in rows),
        "gpt_step_ms_b1": 1000 * sum(r["gpt_s"] - r["prefill_s"] for r in rows) / sum(r["tokens"] - 1 for r in rows),
        "sovits_vocoder_rtf": sum(r["sovits_s"] for r in rows) / audio,
        "sovits_vocoder_ms_per_10s": 1000 * 10 * sum(r["sovits_s"] for r in rows) / audio,
        "first_chunk_s": service,  # upstream v2 inference returns the whole utterance: first audio = latency
        "throughput": load_audio / service,  # one request at a time: the same at every concurrency
        "service_s": service,
        "peak_rss_mb": raw["peak_rss_mb"],
        "torch": raw["torch"], "torch_threads": raw["torch_threads"],
        "per_text": per_text,
        "note": "serial server: throughput is the same at every concurrency; latency at concurrency c "
                "is c x the single-request time (closed loop, FIFO)",
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run(spec), ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
