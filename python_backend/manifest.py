"""The manifest of one voice version: what it was made from, how, and how to check it at load.

Written by the same call that writes the graphs (``gsv-triton export``), read by the voice
model when Triton loads the version. JSON with a ``schema_version``; unknown major
versions are refused rather than guessed at.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
PRECISIONS = ("fp32", "fp16")


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or names a field with a bad value."""


@dataclass
class SourceFile:
    """A checkpoint the version was exported from."""

    path: str  #: path as given at export time (informational)
    sha256: str  #: content hash, to tell versions of the same voice apart
    kind: str  #: "gpt" | "sovits"
    version: str  #: "v2" | "v2Pro" | "v2ProPlus"


@dataclass
class GraphEntry:
    """One ONNX graph of the version."""

    file: str  #: file name inside the version folder
    sha256: str  #: content hash; voices with equal hashes can share one loaded graph
    bytes: int
    optimization: dict = field(default_factory=dict)  #: measured effect of graph optimization


@dataclass
class Reference:
    """The reference clip's data, computed once at export (stored in ``reference.npz``)."""

    text: str
    language: str
    phones: int  #: number of reference phones
    prompt_tokens: int  #: number of prompt semantic tokens
    audio_seconds: float
    #: v2Pro/v2ProPlus: where sv_emb came from, {"source": "gsv_sv", "version": N, "checkpoint_sha256": ...}
    #: (computed by the repository's shared model) or {"source": "file", "path": ..., "sha256": ...} (--sv-emb)
    sv_emb: dict = field(default_factory=dict)


@dataclass
class VoiceManifest:
    """Everything the server and the tools need to know about one voice version."""

    voice: str  #: voice name (safe folder name); the Triton model is ``voice_<voice>``
    version: int  #: Triton version number (the folder name)
    label: str  #: free-form label, e.g. "v2.1"
    created_at: str  #: ISO 8601 UTC
    sovits_version: str  #: "v2" | "v2Pro" | "v2ProPlus"
    precision: str  #: "fp32" | "fp16"
    sample_rate: int
    hop_length: int
    sources: list[SourceFile]
    graphs: dict[str, GraphEntry]  #: stage name -> graph
    reference: Reference
    golden_file: str  #: npz with fixed inputs and torch outputs for the load-time check
    tolerances: dict[str, float]  #: max abs difference allowed per golden output
    sizes: dict[str, int]  #: model sizes (layers, widths) the graphs were built with
    tools: dict[str, str]  #: exporter / torch / onnx / onnxruntime versions, opset
    quality: dict = field(default_factory=dict)  #: measured agreement and speed per precision option
    text_frontend: dict = field(default_factory=dict)  #: G2PW on/off and upstream dictionaries the reference phones used
    schema_version: int = SCHEMA_VERSION

    def validate(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ManifestError(f"manifest schema_version {self.schema_version}, this server reads {SCHEMA_VERSION}")
        if self.precision not in PRECISIONS:
            raise ManifestError(f"manifest precision {self.precision!r}, expected one of {PRECISIONS}")
        if self.version < 1:
            raise ManifestError(f"manifest version {self.version}, expected >= 1")
        for stage in ("gpt_prefill", "gpt_step", "sovits", "vocoder"):
            if stage not in self.graphs:
                raise ManifestError(f"manifest has no graph for stage {stage!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VoiceManifest":
        try:
            manifest = cls(
                **{k: v for k, v in data.items() if k not in ("sources", "graphs", "reference")},
                sources=[SourceFile(**s) for s in data["sources"]],
                graphs={k: GraphEntry(**g) for k, g in data["graphs"].items()},
                reference=Reference(**data["reference"]),
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest is missing or has an unknown field: {exc}") from None
        manifest.validate()
        return manifest

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> "VoiceManifest":
        path = Path(folder) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"{path}: missing; a voice version folder is written by gsv-triton export") from None
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{path}: unreadable ({exc})") from None
        return cls.from_dict(data)
