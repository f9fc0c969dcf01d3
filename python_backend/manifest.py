"""The manifest of one voice version: what it was made from, how, and how to check it at load.

Written by the same call that writes the graphs (``gsv-triton export``), read by the voice
model when Triton loads the version. JSON with a ``schema_version``; unknown major
versions are refused rather than guessed at.

What the hashes cover (checked at every load, ``validation.preflight``): the graphs
(``graphs``), and since this release ``model.py``, ``reference.npz`` and ``golden.npz``
(``files``) and the voice's ``config.pbtxt`` as exported (``config``). The config lives one
level up, is shared by all versions and has its ``version_policy`` rewritten by the swap
commands, so its hash leaves the policy out (:func:`config_without_policy`), and the load checks
the config against what this server's code renders for the voice (``model_config``), apart from
the policy: a config rewritten by a newer release still loads, a hand-edited one does not.

What this protects against: accidental or partial edits, a file swapped or truncated after the
export (found at the next load, which refuses the version). What it cannot: Triton runs
``model.py`` before any code of ours, so a replaced ``model.py`` that does not call into
``python_backend`` checks nothing, and whoever can write the repository can also rewrite the
manifest. The repository must be writable only by the operator; the hashes are integrity
checks, not a signature.
"""
from __future__ import annotations

import json
import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
PRECISIONS = ("fp32", "fp16")
CONFIG_FILE = "config.pbtxt"
#: files of a version folder besides the graphs whose hashes the manifest records
HASHED_FILES = ("model.py", "reference.npz", "golden.npz")
#: graphs a version must have: v2 family (VITS decoder), v4 (encoder, one CFM Euler step, 48 kHz vocoder)
V2_GRAPHS = ("gpt_prefill", "gpt_step", "sovits", "vocoder")
V4_GRAPHS = ("gpt_prefill", "gpt_step", "encoder", "cfm_step", "vocoder")


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or names a field with a bad value."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    """What ``files`` records for one file: ``{"sha256", "bytes"}``."""
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


_POLICY = re.compile(r"^[ \t]*version_policy\b", re.M)


def config_without_policy(text: str) -> str:
    """config.pbtxt text with its ``version_policy`` block removed (braces balanced, any layout),
    trailing blanks dropped: the part of a voice's config that swap commands never change."""
    out, pos = [], 0
    for match in _POLICY.finditer(text):
        if match.start() < pos:
            continue
        out.append(text[pos:match.start()])
        i, depth, seen = match.end(), 0, False
        while i < len(text):
            ch = text[i]
            if ch == "{":
                depth, seen = depth + 1, True
            elif ch == "}":
                depth -= 1
                if seen and depth == 0:
                    i += 1
                    break
            i += 1
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "\n":
            i += 1
        pos = i
    out.append(text[pos:])
    return "\n".join(line.rstrip() for line in "".join(out).strip().splitlines()) + "\n"


def config_entry(text: str) -> dict:
    """What ``config`` records: the hash of the config as exported, and of it without the policy."""
    return {"file": f"../{CONFIG_FILE}", "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "sha256_without_policy": hashlib.sha256(config_without_policy(text).encode()).hexdigest()}


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
    sovits_version: str  #: "v2" | "v2Pro" | "v2ProPlus" | "v4"
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
    #: other files of the version folder (``HASHED_FILES``) -> {"sha256", "bytes"}; empty in versions
    #: exported before this field existed (their model.py is then not checked)
    files: dict = field(default_factory=dict)
    #: the voice's config.pbtxt as exported (``config_entry``): hashes with and without the policy
    config: dict = field(default_factory=dict)
    #: execution provider per voice stage (``python_backend.providers``: gpt_prefill, gpt_step,
    #: sovits, vocoder -> auto|cpu|cuda|tensorrt|tensorrt_fp32); a stage left out, and every version
    #: exported before this field existed, asks for auto (CUDA where available, else CPU)
    providers: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def validate(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ManifestError(f"manifest schema_version {self.schema_version}, this server reads {SCHEMA_VERSION}")
        if self.precision not in PRECISIONS:
            raise ManifestError(f"manifest precision {self.precision!r}, expected one of {PRECISIONS}")
        if self.version < 1:
            raise ManifestError(f"manifest version {self.version}, expected >= 1")
        for stage in V4_GRAPHS if self.sovits_version == "v4" else V2_GRAPHS:
            if stage not in self.graphs:
                raise ManifestError(f"manifest has no graph for stage {stage!r}")
        from python_backend.providers import VOICE_STAGES, ProviderError, ProviderPlan

        try:
            plan = ProviderPlan.from_dict(self.providers)
        except ProviderError as exc:
            raise ManifestError(f"manifest providers: {exc}") from None
        if set(plan.stages) - set(VOICE_STAGES):
            raise ManifestError(f"manifest providers name {sorted(set(plan.stages) - set(VOICE_STAGES))}; "
                                f"a voice's stages are {', '.join(VOICE_STAGES)}")

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
