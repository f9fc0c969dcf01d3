"""Which onnxruntime execution provider runs each stage, as the version asks and the host allows.

A version names one provider choice per stage (:class:`ProviderPlan`, written by ``gsv-triton
export --providers``): a voice's stages in its ``manifest.json`` (``providers``), a shared
model's in ``providers.json`` beside its graph. A version without a choice (every version
exported before this existed) asks for ``auto``: CUDA where this onnxruntime has it, else CPU,
which is what the server always did.

:func:`resolve` is the one place that turns a request into onnxruntime's provider list. It is a
pure function of the request and of what ``onnxruntime.get_available_providers()`` reports
(:func:`available`, the only seam tests replace), so every combination is tested on a CPU
host. When the host cannot give what the version asks, the stage runs on the next provider
down (TensorRT -> CUDA -> CPU) and :func:`open_session` logs one line saying so: a GPU version
still serves on a CPU host, slower, instead of failing its load.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

VOICE_STAGES = ("gpt_prefill", "gpt_step", "sovits", "vocoder")
SHARED_STAGES = ("bert", "ssl", "sv")
STAGES = VOICE_STAGES + SHARED_STAGES
#: ``tensorrt`` builds FP16 engines; ``tensorrt_fp32`` keeps float32 (a voice whose FP16 agreement fails)
CHOICES = ("auto", "cpu", "cuda", "tensorrt", "tensorrt_fp32")
#: graph file -> the stage whose choice it follows (the reference graphs run with SoVITS)
GRAPH_STAGE = {"gpt_prefill.onnx": "gpt_prefill", "gpt_step.onnx": "gpt_step", "sovits.onnx": "sovits",
               "vocoder.onnx": "vocoder", "prompt_codes.onnx": "sovits", "speaker.onnx": "sovits",
               "encoder.onnx": "sovits", "cfm_step.onnx": "sovits",  # v4: decode_encp and the CFM step
               "bert.onnx": "bert", "ssl.onnx": "ssl", "sv.onnx": "sv"}
PLAN_FILE = "providers.json"  # a shared model version's choice (voices keep theirs in manifest.json)
MANIFEST_KEY = "providers"

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


class ProviderError(ValueError):
    """A provider choice names an unknown stage or provider."""


@dataclass(frozen=True)
class ProviderPlan:
    """Stage -> provider choice; a stage left out asks for ``auto``."""

    stages: dict = field(default_factory=dict)

    def __post_init__(self):
        for stage, choice in self.stages.items():
            if stage not in STAGES:
                raise ProviderError(f"--providers: unknown stage {stage!r}; stages are {', '.join(STAGES)} (or all)")
            if choice not in CHOICES:
                raise ProviderError(f"--providers {stage}={choice}: unknown provider; choose one of {', '.join(CHOICES)}")

    def get(self, stage: str) -> str:
        return self.stages.get(stage, "auto")

    def voice_part(self) -> dict:
        """The voice stages' choices (what ``manifest.json`` records)."""
        return {s: c for s, c in self.stages.items() if s in VOICE_STAGES}

    def shared_part(self, stage: str) -> dict:
        """One shared model's choice (what its ``providers.json`` records), empty when not named."""
        return {stage: self.stages[stage]} if stage in self.stages else {}

    @classmethod
    def parse(cls, text: str) -> "ProviderPlan":
        """``"gpt_step=cuda,sovits=tensorrt"``; ``all=X`` sets every stage not named otherwise."""
        stages, default = {}, None
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            stage, sep, choice = item.partition("=")
            stage, choice = stage.strip(), choice.strip()
            if not sep or not stage or not choice:
                raise ProviderError(f"--providers {item!r}: write STAGE=PROVIDER, e.g. gpt_step=cuda,sovits=tensorrt")
            if stage == "all":
                default = choice
            else:
                stages[stage] = choice
        if default is not None:
            stages = {**{s: default for s in STAGES}, **stages}
        return cls(stages)

    @classmethod
    def from_dict(cls, data: dict | None) -> "ProviderPlan":
        if data is not None and not isinstance(data, dict):
            raise ProviderError(f"provider choices must be a mapping of stage to provider, got {data!r}")
        return cls(dict(data or {}))


@dataclass(frozen=True)
class Host:
    """What TensorRT caches are keyed by besides the graph: the GPU and the TensorRT version."""

    gpu_name: str = "no-gpu"
    tensorrt_version: str = "none"


@dataclass(frozen=True)
class Resolution:
    """What one stage runs on: onnxruntime's provider list (name, options) and why, if not as asked."""

    stage: str
    requested: str
    providers: tuple  # ((name, options), ...), best first, CPU last
    fallback: str | None = None  # one line when the host could not give what was asked

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.providers]

    @property
    def device(self) -> str:
        """Where the stage's tensors live: ``cuda`` when a GPU provider leads, else ``cpu``."""
        return "cpu" if self.names[0] == CPU else "cuda"

    @property
    def io_binding(self) -> bool:
        """Keep the decode step's KV cache on the device between steps (CUDA-led stages)."""
        return self.device == "cuda"

    def ort_args(self) -> tuple[list[str], list[dict]]:
        """``providers=``/``provider_options=`` for ``onnxruntime.InferenceSession``."""
        return self.names, [dict(opts) for _, opts in self.providers]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


def trt_cache_dir(root: Path, host: Host, graph_hash: str) -> Path:
    """Engines and timing caches for one graph on one GPU model with one TensorRT version: a cache
    built elsewhere is never loaded (engines are specific to all three)."""
    return Path(root) / _slug(host.gpu_name) / f"trt-{_slug(host.tensorrt_version)}" / (graph_hash[:16] or "nohash")


def cuda_options(cuda_graph: bool = False) -> dict:
    """CUDA EP options. ``cuda_graph`` only for a stage run with fixed-address bound buffers of fixed
    shapes (ORT replays the captured graph); the decode step's shapes change at every join/leave."""
    opts = {"device_id": 0, "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"}
    if cuda_graph:
        opts["enable_cuda_graph"] = "1"
    return opts


def tensorrt_options(cache: Path, fp16: bool, profile: dict | None = None) -> dict:
    """TensorRT EP options: engine and timing caches under ``cache``, FP16 when asked, and an
    optimization profile (``trt_profile_min_shapes``/``opt``/``max``) where the caller knows the ranges."""
    opts = {"device_id": 0, "trt_fp16_enable": "1" if fp16 else "0",
            "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache),
            "trt_max_workspace_size": str(4 << 30)}
    opts.update(profile or {})
    return opts


def resolve(stage: str, requested: str, available: list[str], *, host: Host = Host(), graph_hash: str = "",
            cache_root: Path | None = None, cuda_graph: bool = False, profile: dict | None = None) -> Resolution:
    """The provider list for ``stage`` asking for ``requested`` on a host whose onnxruntime offers
    ``available``. Pure: no onnxruntime calls, no files."""
    if requested not in CHOICES:
        raise ProviderError(f"stage {stage}: unknown provider {requested!r}; choose one of {', '.join(CHOICES)}")
    have_cuda, have_trt = CUDA in available, TRT in available
    cpu = ((CPU, {}),)
    cuda = ((CUDA, cuda_options(cuda_graph)),)
    if requested == "cpu":
        return Resolution(stage, requested, cpu)
    if requested == "auto":
        return Resolution(stage, requested, cuda + cpu if have_cuda else cpu)
    missing = f"{stage}: asked for {requested} but this onnxruntime offers {', '.join(available) or 'nothing'}"
    if requested == "cuda":
        if have_cuda:
            return Resolution(stage, requested, cuda + cpu)
        return Resolution(stage, requested, cpu, f"{missing}; running on CPU")
    # tensorrt / tensorrt_fp32: TensorRT first, CUDA for the nodes TensorRT leaves, CPU last
    if have_trt and have_cuda:
        cache = trt_cache_dir(cache_root or Path("trt-cache"), host, graph_hash)
        trt = ((TRT, tensorrt_options(cache, requested == "tensorrt", profile)),)
        return Resolution(stage, requested, trt + cuda + cpu)
    if have_cuda:
        return Resolution(stage, requested, cuda + cpu, f"{missing}; running on CUDA without TensorRT")
    return Resolution(stage, requested, cpu, f"{missing}; running on CPU")


# ---------------------------------------------------------------------- the host side


def available() -> list[str]:
    """The seam: what this onnxruntime build offers (tests replace only this)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


@functools.lru_cache(maxsize=1)
def host() -> Host:
    """This machine's GPU model (nvidia-smi) and TensorRT version (installed wheel), for cache keys."""
    gpu = "no-gpu"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    trt = "none"
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12_libs", "tensorrt-lean"):
        try:
            trt = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return Host(gpu, trt)


def read_plan(folder: Path) -> ProviderPlan:
    """A version folder's choices: ``manifest.json``'s ``providers`` (voices) or ``providers.json``
    (shared models); neither (old versions, a staging folder mid-export) asks for auto."""
    folder = Path(folder)
    for name, key in (("manifest.json", MANIFEST_KEY), (PLAN_FILE, None)):
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ProviderError(f"{path}: unreadable ({exc})") from None
            return ProviderPlan.from_dict(data.get(key) if key else data)
    return ProviderPlan()


def _graph_hash(path: Path) -> str:
    from python_backend.manifest import sha256_file  # a voice's hashes are in its manifest; shared graphs are hashed here

    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        for entry in json.loads(manifest.read_text(encoding="utf-8")).get("graphs", {}).values():
            if entry.get("file") == path.name:
                return entry["sha256"]
    return sha256_file(path)


def cache_root_for(graph: Path) -> Path:
    """TensorRT caches live in the repository's state folder (``REPO/.gsv/trt-cache``)."""
    from python_backend.layout import STATE_DIR

    return Path(graph).resolve().parents[2] / STATE_DIR / "trt-cache"


def resolve_graph(graph: Path, stage: str | None = None, plan: ProviderPlan | None = None, *,
                  cuda_graph: bool = False, profile: dict | None = None) -> Resolution:
    """The resolution for one graph file of a version folder, from that folder's own plan."""
    graph = Path(graph)
    stage = stage or GRAPH_STAGE.get(graph.name, graph.stem)
    requested = (plan or read_plan(graph.parent)).get(stage)
    have = available()
    wants_trt = requested.startswith("tensorrt") and TRT in have and CUDA in have
    return resolve(stage, requested, have, host=host() if wants_trt else Host(),
                   graph_hash=_graph_hash(graph) if wants_trt else "",
                   cache_root=cache_root_for(graph) if wants_trt else None, cuda_graph=cuda_graph, profile=profile)


def open_session(graph: Path, options, resolution: Resolution):
    """An ``onnxruntime.InferenceSession`` as ``resolution`` says; logs one line when the host could not give what
    the version asked, including when onnxruntime itself dropped a provider while loading."""
    import onnxruntime as ort

    names, opts = resolution.ort_args()
    if names[0] == TRT:
        Path(opts[0]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    session = ort.InferenceSession(str(graph), options, providers=names, provider_options=opts)
    got = session.get_providers()
    if resolution.fallback:
        log.warning("[providers] %s", resolution.fallback)
    elif got and got[0] != names[0]:
        log.warning("[providers] %s: asked for %s; onnxruntime could not start %s and runs %s",
                    resolution.stage, resolution.requested, names[0], got[0])
    return session
