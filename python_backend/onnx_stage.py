"""One ONNX stage graph under onnxruntime, bound by name, with its metadata checked at open."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from python_backend import providers as providers_mod


class StageError(RuntimeError):
    """A graph is missing, of the wrong kind, or lacks the inputs/outputs the server binds."""


def session_options(threads: int = 0) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return opts


class PerStage(list):
    """The list :func:`providers` hands out. A stage given it (or nothing) opens with its own
    version's choice (``python_backend.providers``) instead of one list for every stage."""


def providers() -> list[str]:
    """CUDA when this onnxruntime build has it (GPU hosts), else CPU; marked :class:`PerStage`, so
    a stage opened with it follows its version's per-stage choice."""
    available = providers_mod.available()
    return PerStage(p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available)


class OnnxStage:
    def __init__(self, path: str | Path, model_type: str | None = None, inputs: tuple[str, ...] = (),
                 outputs: tuple[str, ...] = (), options: ort.SessionOptions | None = None, provider_list=None):
        """``provider_list``: None or :func:`providers`' list: the version folder's choice for this
        graph's stage (``self.resolution``); a ``ProviderPlan``: that plan's choice (benchmarks
        comparing providers); any other list: exactly those providers."""
        self.path = Path(path)
        if not self.path.is_file():
            raise StageError(f"{self.path}: graph file missing")
        try:
            if isinstance(provider_list, providers_mod.ProviderPlan):
                self.resolution = providers_mod.resolve_graph(self.path, plan=provider_list)
            elif provider_list is None or isinstance(provider_list, PerStage):
                self.resolution = providers_mod.resolve_graph(self.path)
            else:
                self.resolution = providers_mod.Resolution(
                    providers_mod.GRAPH_STAGE.get(self.path.name, self.path.stem), "explicit",
                    tuple((name, {}) for name in provider_list))
            self.session = providers_mod.open_session(self.path, options or session_options(), self.resolution)
        except providers_mod.ProviderError as exc:
            raise StageError(str(exc)) from None
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
            raise StageError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if model_type is not None and self.metadata.get("model_type") != model_type:
            raise StageError(f"{self.path}: model_type {self.metadata.get('model_type')!r}, expected {model_type!r}")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        missing = [n for n in inputs if n not in self.input_names] + [n for n in outputs if n not in self.output_names]
        if missing:
            raise StageError(f"{self.path}: graph lacks {missing}; it has inputs {self.input_names}, outputs {self.output_names}")

    def run(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        unknown = set(feeds) - set(self.input_names)
        if unknown:
            raise StageError(f"{self.path.name}: no inputs named {sorted(unknown)}")
        values = self.session.run(self.output_names, {k: v for k, v in feeds.items()})
        return dict(zip(self.output_names, values))
