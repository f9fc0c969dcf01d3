"""What the GPU check's steps share: the run's state, the provider configurations they compare,
what a request generates, and how a step that cannot run says why (:class:`Skip`)."""
from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIGS = {"cpu": "all=cpu", "cuda": "all=cuda", "tensorrt": "all=tensorrt,gpt_step=cuda"}
#: what the exported voice asks for (falls back where absent): TensorRT where the shapes are few
#: and the work is large, CUDA with I/O binding for the decode step and for the shared models
#: (a BERT-large engine build at every fresh load would cost minutes of the check's budget)
SERVED = "gpt_prefill=tensorrt,gpt_step=cuda,sovits=tensorrt,vocoder=tensorrt,bert=cuda,ssl=cuda"
TOKENS = 250  # 10 s of audio per request (EOS masked), as bench/run.py
DRY_TOKENS = 20
TEXT = "今天天气很好，我们去公园散步吧。"


@dataclass
class Check:
    out: Path
    work: Path
    dry_run: bool
    size: str
    deadline: float
    levels: tuple[int, ...]
    results: dict = field(default_factory=dict)
    vdir: Path | None = None  # the exported version folder (voice_gpu/1)
    second: Path | None = None  # voice_gpu/2 (another seed, same architecture), held outside the repo

    @property
    def tokens(self) -> int:
        return DRY_TOKENS if self.dry_run else TOKENS

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Skip(Exception):
    """A step that cannot run here; the message says why."""



def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"



def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def tensorrt_version() -> str | None:
    with contextlib.suppress(Exception):
        import tensorrt

        return tensorrt.__version__
    return None


def has(provider: str) -> bool:
    from python_backend import providers as pv

    return provider in pv.available()

