"""The shared graphs in the repository: exported once, reused by every voice.

They live as Triton models ``gsv_ssl`` (HuBERT), ``gsv_bert`` and ``gsv_sv`` (ERes2NetV2 speaker
verification, for v2Pro/v2ProPlus). A version records the content hash of the folder or file
it came from; passing the same source again reuses it, a different source adds a version.
Voices exported later without ``--hubert/--bert/--sv-model`` use what the repository has.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from export import aux_models
from export.errors import InputError
from export.onnx_io import export_graph
from export.repository import StagedVersion
from python_backend import layout
from python_backend.model_config import ModelSpec, bert_model_spec, ssl_model_spec, sv_model_spec

SOURCE_FILE = "source.json"
MODEL_PY = '"""Shared {what} model: thin adapter; the logic is in python_backend."""\nfrom python_backend.triton_{what} import TritonPythonModel  # noqa: F401\n'
SV_HINT = "FILE (upstream's pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt; `gsv-triton demo-voice` writes a random one)"


@dataclass(frozen=True)
class Shared:
    """One shared model: its Triton name, graph file, command-line flag and kind of source."""

    name: str
    filename: str
    flag: str
    is_file: bool  # the source is one file (else a folder)
    spec: Callable[[], ModelSpec]
    hint: str = "DIR (a local folder; `gsv-triton demo-voice` writes random ones)"


SSL = Shared(layout.SSL_MODEL, "ssl.onnx", "--hubert", False, ssl_model_spec)
BERT = Shared(layout.BERT_MODEL, "bert.onnx", "--bert", False, bert_model_spec)
SV = Shared(layout.SV_MODEL, "sv.onnx", "--sv-model", True, sv_model_spec, SV_HINT)


@dataclass
class SharedGraphs:
    ssl: Path  # ssl.onnx
    bert: Path  # bert.onnx
    vocab: Path  # vocab.txt next to bert.onnx
    sv: Path | None = None  # sv.onnx, where the repository has gsv_sv


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_digest(shared: Shared, source: Path) -> str:
    """Content hash of a source, after checking it is the kind of path the flag takes."""
    source = Path(source)
    if shared.is_file:
        if source.is_dir():
            raise InputError(f"{shared.flag} {source}: is a folder; pass the checkpoint file itself")
        if not source.is_file():
            raise InputError(f"{shared.flag} {source}: file not found")
        return file_digest(source)
    if not source.is_dir():
        raise InputError(f"{shared.flag} {source}: folder not found")
    return aux_models.folder_digest(source)


def latest(repo: Path, shared: Shared) -> tuple[Path | None, str | None]:
    """Newest complete version folder of ``shared`` and the digest of its source."""
    model_dir = Path(repo) / shared.name
    for version in reversed(layout.version_numbers(model_dir)):
        folder = model_dir / str(version)
        if (folder / shared.filename).is_file() and (folder / SOURCE_FILE).is_file():
            return folder, json.loads((folder / SOURCE_FILE).read_text())["sha256"]
    return None, None


def _ensure(repo: Path, shared: Shared, source: Path | None, write: Callable[[Path, Path], None], progress) -> Path:
    current, digest = latest(repo, shared)
    if source is None:
        if current is None:
            raise InputError(f"the repository has no {shared.name} yet: pass {shared.flag} {shared.hint}")
        return current / shared.filename
    new_digest = source_digest(shared, source)
    if current is not None and digest == new_digest:
        return current / shared.filename
    with StagedVersion(repo, shared.name, None, model_name=shared.name) as staged:
        if progress:
            progress.set_description(f"export {shared.name}")
        write(Path(source), staged.path)
        (staged.path / SOURCE_FILE).write_text(json.dumps({"path": str(source), "sha256": new_digest}, indent=1))
        (staged.path / "model.py").write_text(MODEL_PY.format(what=shared.name.removeprefix("gsv_")))
        target = staged.publish(shared.spec())
    return target / shared.filename


def _write_ssl(folder: Path, out: Path) -> None:
    export_graph(aux_models.ssl_spec(*aux_models.load_ssl(folder)), out)


def _write_bert(folder: Path, out: Path) -> None:
    export_graph(aux_models.bert_spec(aux_models.load_bert(folder)), out)
    shutil.copy2(folder / "vocab.txt", out / "vocab.txt")


def _write_sv(path: Path, out: Path) -> None:
    from export import sv_model

    model, _ = sv_model.load_sv(path)
    spec = sv_model.sv_spec(model)
    # offline optimization measured 1.02x on this graph: not worth its ~10 s and a second 180 MB write
    export_graph(spec, out, optimize=False)
    sv_model.verify_graph(spec, out / SV.filename)


def check_sv_source(repo: Path, source: Path) -> None:
    """Refuse a ``--sv-model`` file that is not the official architecture before anything is written
    (a file the repository already holds was checked when it was exported)."""
    from export import sv_model

    if source_digest(SV, source) != latest(repo, SV)[1]:
        sv_model.read_sv_state(Path(source))


def ensure_sv(repo: Path, source: Path | None, progress=None) -> Path:
    """The repository's sv.onnx, exported from ``source`` unless a version of that file is there."""
    return _ensure(repo, SV, source, _write_sv, progress)


def ensure_shared(repo: Path, hubert: Path | None, bert: Path | None, progress=None,
                  sv_model: Path | None = None, need_sv: bool = False) -> SharedGraphs:
    """The shared graphs, exporting those whose source is new; gsv_sv only when given or needed."""
    ssl = _ensure(repo, SSL, hubert, _write_ssl, progress)
    bert_path = _ensure(repo, BERT, bert, _write_bert, progress)
    if sv_model is not None or need_sv:
        sv = ensure_sv(repo, sv_model, progress)
    else:
        folder = latest(repo, SV)[0]
        sv = None if folder is None else folder / SV.filename
    return SharedGraphs(ssl=ssl, bert=bert_path, vocab=bert_path.parent / "vocab.txt", sv=sv)
