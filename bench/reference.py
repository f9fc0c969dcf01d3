"""What a reference clip sent with the request costs (api_v2's ref_audio_path per call).

Against a running server: the same short request (``tokens`` semantic tokens, so the audio
work is small and the reference work shows) without a reference, with a reference the server
has not seen (a new clip each time: SSL, BERT, spectrogram, prompt tokens and ge computed), and
with one it has cached. Medians of ``repeats`` requests each.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

TEXT = "今天天气很好，我们去公园散步吧。"


def measure(url: str, voice: str, demo: Path, ref_text: str, tokens: int = 25, repeats: int = 3) -> dict:
    from ops.client import Reference, synthesize

    own = Reference.from_files(Path(demo) / "ref.wav", ref_text, "zh")

    def timed(ref) -> float:
        start = time.perf_counter()
        synthesize(TEXT, voice, url, reference=ref, MAX_TOKENS=tokens, SEED=0, TOP_K=1)
        return time.perf_counter() - start

    timed(None)  # warm
    plain = statistics.median(timed(None) for _ in range(repeats))
    fresh = []
    for i in range(repeats):  # a clip the caches have not seen: shifted by a different amount each time
        shift = (i + 1) * own.sample_rate // 7 + int(time.time_ns() % 997)
        fresh.append(timed(Reference(audio=np.roll(own.audio, shift), sample_rate=own.sample_rate,
                                     text=ref_text, language="zh")))
    timed(own)
    cached = statistics.median(timed(own) for _ in range(repeats))
    new = statistics.median(fresh)
    return {"tokens": tokens, "no_reference_s": plain, "new_reference_s": new, "cached_reference_s": cached,
            "new_reference_overhead_s": new - plain, "cached_reference_overhead_s": cached - plain}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.reference [--size full|tiny] [--out FILE]``: the figures on the demo voice
    (built and exported by ``bench.prepare``, cached), with its own tritonserver."""
    import argparse
    import json
    import os

    from bench.common import HERE, REF_TEXT
    from bench.prepare import prepare
    from bench.processes import machine
    from ops.server import TritonProcess, free_ports

    p = argparse.ArgumentParser(description="cost of a reference clip sent with the request")
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--out", type=Path, default=HERE / "results" / "reference.json")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    cache = HERE / ".cache" / args.size
    prep = prepare(cache, args.size, int8=False)
    os.environ["GSV_BENCH_IGNORE_EOS"] = "1"   # every request runs to its token budget: equal work
    http, grpc, metrics = free_ports(3)
    with TritonProcess(prep["repo"], http, grpc, metrics, log_path=cache / "reference-bench.log") as server:
        server.wait_ready(900)
        result = measure(server.grpc_url, prep["voices"]["fp32"], prep["demo"], REF_TEXT, repeats=args.repeats)
    out = {"machine": machine(), "size": args.size, "command": "python -m bench.reference " +
           " ".join(argv if argv is not None else []), "reference": result}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
