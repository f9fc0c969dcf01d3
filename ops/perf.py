"""``gsv-triton perf``: Triton's own load tool, perf_analyzer, pointed at a running gsv-triton server.

A Triton user measures a deployment with perf_analyzer; this command saves the three things that
make that fiddly here: the input-data JSON ``tts`` needs (text and voice are BYTES tensors
perf_analyzer cannot invent), the libraries the tritonclient wheel's binary links but does not
ship (``libcudart.so.12``, taken from the nvidia-pytriton wheel; ``libb64.so.0d`` from the OS),
and the admin key it must send to read the model's config and statistics (restricted APIs
under ``gsv-triton serve``). ``--print-command`` prints the equivalent plain command instead.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ops.client import ClientError

DEFAULT_TEXT = "今天天气很好，我们一起去公园散步吧。"
LIB_HINTS = {"libb64.so.0d": "install Debian's libb64-0d (apt-get install libb64-0d)",
             "libcudart.so.12": "install the serve extra (pip install 'gsv-triton[serve]': nvidia-pytriton ships it)"}


class PerfError(ClientError):
    """A perf run that cannot start or did not finish: the message names the cause and the fix."""


@dataclass(frozen=True)
class ConcurrencyRange:
    """perf_analyzer's ``--concurrency-range START:END[:STEP]``."""

    start: int
    end: int
    step: int = 1

    @classmethod
    def parse(cls, text: str) -> "ConcurrencyRange":
        m = re.fullmatch(r"(\d+)(?::(\d+)(?::(\d+))?)?", text.strip())
        if m:
            start = int(m.group(1))
            end = int(m.group(2) or start)
            step = int(m.group(3) or 1)
            if 1 <= start <= end and step >= 1:
                return cls(start, end, step)
        raise PerfError(f"--concurrency-range {text!r}: expected START:END[:STEP] with 1 <= START <= END and "
                        "STEP >= 1, e.g. 1:8 or 1:16:3")

    def __str__(self) -> str:
        return f"{self.start}:{self.end}:{self.step}"


@dataclass
class PerfRequest:
    """What to measure: one request body sent over and over, at each concurrency of the range."""

    url: str
    voice: str
    text: str = DEFAULT_TEXT
    concurrency: ConcurrencyRange = field(default_factory=lambda: ConcurrencyRange(1, 4))
    streaming: bool = False
    max_tokens: int | None = None
    top_k: int | None = None
    seed: int | None = None
    requests_per_window: int = 10
    max_trials: int = 3

    @property
    def model(self) -> str:
        return "tts_stream" if self.streaming else "tts"

    def input_data(self) -> dict:
        """perf_analyzer's ``--input-data`` JSON: one request, the optional inputs only when set."""
        row: dict = {"TEXT": [self.text], "VOICE": [self.voice]}
        if self.max_tokens is not None:
            row["MAX_TOKENS"] = [self.max_tokens]
        if self.top_k is not None:
            row["TOP_K"] = [self.top_k]
        if self.seed is not None:
            row["SEED"] = [self.seed]
        return {"data": [row]}


def find_perf_analyzer() -> Path:
    """The perf_analyzer binary the tritonclient wheel installs (next to this Python, or inside the package)."""
    try:
        import tritonclient
    except ImportError:
        raise PerfError("perf_analyzer comes with the tritonclient wheel: pip install 'gsv-triton[serve]'") from None
    candidates = [Path(tritonclient.__file__).resolve().parent / "bin" / "perf_analyzer",
                  Path(sys.executable).parent / "perf_analyzer", Path(sys.prefix) / "bin" / "perf_analyzer"]
    binary = next((c for c in candidates if c.is_file()), None)
    if binary is None:
        raise PerfError("no perf_analyzer binary in the tritonclient wheel (looked in "
                        f"{', '.join(str(c) for c in candidates)}): pip install 'tritonclient[all]'")
    return binary


def library_dir(work: Path) -> Path:
    """A folder holding ``libcudart.so.12`` (a link into the nvidia-pytriton wheel): perf_analyzer links
    the CUDA runtime even on a CPU-only host, and the wheel ships it under a hashed name."""
    libdir = Path(work) / "pa-libs"
    libdir.mkdir(parents=True, exist_ok=True)
    link = libdir / "libcudart.so.12"
    try:
        import tritonclient

        site = Path(tritonclient.__file__).resolve().parent.parent
        cudart = sorted((site / "nvidia_pytriton.libs").glob("libcudart-*.so.12*"))
    except ImportError:
        cudart = []
    if cudart and not link.exists():
        link.symlink_to(cudart[0])
    return libdir


def library_env(work: Path) -> dict:
    """This process's environment with ``library_dir`` first on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(library_dir(work)), env.get("LD_LIBRARY_PATH", "")]))
    return env


def admin_key_args(admin_key: str | None) -> list[str]:
    """The ``-H`` header that carries the admin key (perf_analyzer forwards it as gRPC metadata)."""
    from ops import admin

    return ["-H", f"{admin.GRPC_HEADER}:{admin_key}"] if admin_key else []


def perf_argv(binary: Path | str, req: PerfRequest, input_path: Path, csv_path: Path | None = None,
              composing: bool = False, extra: list[str] = ()) -> list[str]:
    """perf_analyzer's arguments for ``req`` (without the admin key: ``admin_key_args`` adds it).

    count_windows of whole requests (a TTS request lasts seconds, perf_analyzer's 5 s time window
    would catch a fraction of one); stability 999% so that the trials stop at ``max_trials``
    instead of waiting for seconds-long requests to agree within 10%."""
    argv = [str(binary), "-m", req.model, "-u", req.url, "-i", "grpc", "--input-data", str(input_path),
            "--concurrency-range", str(req.concurrency), "--measurement-mode", "count_windows",
            "--measurement-request-count", str(req.requests_per_window), "--max-trials", str(req.max_trials),
            "--stability-percentage", "999"]
    if req.streaming:
        argv.append("--streaming")
    if composing:  # the per-stage split: BERT and the voice model under the BLS
        from python_backend import layout

        argv.append(f"--bls-composing-models=gsv_bert,{layout.voice_model(req.voice)}")
    if csv_path is not None:
        argv += ["-f", str(csv_path), "--verbose-csv"]
    return argv + list(extra)


def check_server(req: PerfRequest, timeout: float = 5.0) -> None:
    """One-line errors before perf_analyzer starts: no server at the URL, the BLS or the voice not loaded."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from python_backend import layout

    try:
        model = layout.voice_model(req.voice)
    except layout.LayoutError as exc:
        raise PerfError(f"--voice {req.voice!r}: {exc}") from None
    try:
        client = grpcclient.InferenceServerClient(req.url)
    except (InferenceServerException, ValueError) as exc:
        raise PerfError(f"--url {req.url!r}: {exc}; expected HOST:PORT of Triton's gRPC endpoint") from None
    try:
        try:
            live = client.is_server_live(client_timeout=timeout)
        except InferenceServerException as exc:
            reason = (exc.message() if hasattr(exc, "message") else str(exc)).splitlines()[0][:160]
            raise PerfError(f"no Triton server answers gRPC at {req.url} ({reason}): start one with "
                            "gsv-triton serve, or pass --url HOST:PORT of its gRPC port (8001 by default)") from None
        if not live:
            raise PerfError(f"the Triton server at {req.url} is not live yet: wait for it, then retry")
        for name, what in ((req.model, "the BLS model"), (model, f"voice {req.voice!r}")):
            if not client.is_model_ready(name, client_timeout=timeout):
                fix = ("publish it (gsv-triton publish) or pick a served one (gsv-triton versions --repo REPO)"
                       if name == model else "start the server with gsv-triton serve, which loads it")
                raise PerfError(f"{what} is not served at {req.url} (model {name} is not ready): {fix}")
    finally:
        client.close()


def plain_command(argv: list[str], work: Path, admin_key: str | None) -> str:
    """The equivalent shell command: library path and the admin key from ``$GSV_ADMIN_KEY``, never its value."""
    from ops import admin

    words = [shlex.quote(a) for a in argv]
    if admin_key:
        words += ["-H", f'"{admin.GRPC_HEADER}:${admin.ENV}"']
    return f"LD_LIBRARY_PATH={shlex.quote(str(library_dir(work)))}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} " + " ".join(words)


def missing_library(stderr: str) -> str | None:
    """The loader's 'error while loading shared libraries: X' turned into the fix for X."""
    m = re.search(r"error while loading shared libraries: ([^:\s]+)", stderr)
    if not m:
        return None
    lib = m.group(1)
    return f"perf_analyzer cannot load {lib}: {LIB_HINTS.get(lib, 'install the package that provides it')}"


def write_input(req: PerfRequest, work: Path) -> Path:
    """The input-data JSON for ``req`` in ``work`` (named for the model and voice, kept for reruns)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"input-{req.model}-{req.voice}.json"
    path.write_text(json.dumps(req.input_data(), ensure_ascii=False), encoding="utf-8")
    return path


def run(req: PerfRequest, work: Path, admin_key: str | None = None, csv_path: Path | None = None,
        extra: list[str] = (), out=None) -> int:
    """Check the server, write the input data, run perf_analyzer and copy its report to ``out`` line by
    line as it comes (a sweep of seconds-long requests takes minutes)."""
    out = out or sys.stdout
    check_server(req)
    argv = perf_argv(find_perf_analyzer(), req, write_input(req, work), csv_path, composing=admin_key is not None,
                     extra=extra)
    tail: list[str] = []
    with subprocess.Popen(argv + admin_key_args(admin_key), env=library_env(work), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            tail = (tail + [line])[-40:]
    if proc.returncode != 0:
        text = "".join(tail)
        raise PerfError(missing_library(text) or _failure(text, proc.returncode, admin_key))
    return 0


def _failure(text: str, returncode: int, admin_key: str | None) -> str:
    """The last thing perf_analyzer said, with the fix where it is the admin key."""
    from ops import admin

    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "no output")
    if admin.is_refusal(text) and not admin_key:
        return (f"perf_analyzer was refused the model config (a restricted API): pass --admin-key, "
                f"set ${admin.ENV}, or --repo REPO whose .gsv/admin-key to use ({last[:200]})")
    return f"perf_analyzer failed (exit code {returncode}): {last[:300]}"


def add_perf_parser(sub) -> None:
    p = sub.add_parser("perf", help="measure a running server with Triton's perf_analyzer (tts or tts_stream)",
                       description="Measure a running gsv-triton server with Triton's perf_analyzer: writes the "
                                   "input data for tts (or tts_stream), runs the tritonclient wheel's binary with "
                                   "the libraries it needs and prints its table.")
    p.add_argument("--url", default="127.0.0.1:8001", help="Triton's gRPC endpoint HOST:PORT (default 127.0.0.1:8001)")
    p.add_argument("--voice", required=True, help="voice name, as in gsv-triton say --voice")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the text of every request")
    p.add_argument("--concurrency-range", default="1:4", help="START:END[:STEP] concurrent requests (default 1:4)")
    p.add_argument("--streaming", "--stream", action="store_true", help="measure tts_stream over gRPC streaming")
    p.add_argument("--max-tokens", type=int, help="semantic tokens per sentence (25 per second of audio)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--requests-per-window", type=int, default=10, help="requests per measurement window (default 10)")
    p.add_argument("--max-trials", type=int, default=3, help="measurement windows per concurrency (default 3)")
    p.add_argument("--admin-key", help="the server's admin key (default $GSV_ADMIN_KEY, or REPO/.gsv/admin-key with --repo)")
    p.add_argument("--repo", type=Path, help="the served repository: its .gsv/admin-key is the key")
    p.add_argument("--csv", type=Path, help="also write perf_analyzer's verbose CSV here")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "gsv-triton-perf",
                   help="where the input-data JSON and the library links go")
    p.add_argument("--print-command", action="store_true",
                   help="write the input data and print the equivalent plain perf_analyzer command; do not run it")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more perf_analyzer options, passed as they are")


def request_from_args(args) -> PerfRequest:
    for name in ("requests_per_window", "max_trials", "max_tokens", "top_k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise PerfError(f"--{name.replace('_', '-')} {value}: must be at least 1")
    return PerfRequest(url=args.url, voice=args.voice, text=args.text,
                       concurrency=ConcurrencyRange.parse(args.concurrency_range), streaming=args.streaming,
                       max_tokens=args.max_tokens, top_k=args.top_k, seed=args.seed, requests_per_window=args.requests_per_window,
                       max_trials=args.max_trials)


def cmd_perf(args) -> int:
    from ops import admin

    req = request_from_args(args)
    key = admin.read(args.repo, args.admin_key)
    extra = [a for a in args.extra if a != "--"] if args.extra else []
    if args.print_command:
        argv = perf_argv(find_perf_analyzer(), req, write_input(req, args.work_dir), args.csv,
                         composing=key is not None, extra=extra)
        print(plain_command(argv, args.work_dir, key))
        return 0
    return run(req, args.work_dir, key, args.csv, extra)
