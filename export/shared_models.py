"""The shared SSL and BERT graphs in the repository: exported once, reused by every voice.

They live as Triton models ``gsv_ssl`` and ``gsv_bert``. A version records the content hash
of the folder it came from; passing the same folder again reuses it, a different folder adds
a version. Voices exported later without ``--hubert/--bert`` use what the repository has.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from export import aux_models
from export.errors import InputError
from export.onnx_io import export_graph
from export.repository import StagedVersion
from python_backend import layout
from python_backend.model_config import bert_model_spec, ssl_model_spec

SOURCE_FILE = "source.json"
MODEL_PY = '"""Shared {what} model: thin adapter; the logic is in python_backend."""\nfrom python_backend.triton_{what} import TritonPythonModel  # noqa: F401\n'


@dataclass
class SharedGraphs:
    ssl: Path  # ssl.onnx
    bert: Path  # bert.onnx
    vocab: Path  # vocab.txt next to bert.onnx


def _latest_with(model_dir: Path, filename: str) -> tuple[Path | None, str | None]:
    for version in reversed(layout.version_numbers(model_dir)):
        folder = model_dir / str(version)
        if (folder / filename).is_file() and (folder / SOURCE_FILE).is_file():
            return folder, json.loads((folder / SOURCE_FILE).read_text())["sha256"]
    return None, None


def _ensure(repo: Path, name: str, filename: str, source: Path | None, build, extra_files: tuple[str, ...], flag: str,
            progress) -> Path:
    model_dir = Path(repo) / name
    current, digest = _latest_with(model_dir, filename)
    if source is None:
        if current is None:
            raise InputError(f"the repository has no {name} yet: pass {flag} DIR (a local folder; `gsv-triton demo-voice` writes random ones)")
        return current / filename
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"{flag} {source}: folder not found")
    new_digest = aux_models.folder_digest(source)
    if current is not None and digest == new_digest:
        return current / filename
    spec_fn = ssl_model_spec if name == layout.SSL_MODEL else bert_model_spec
    staged = StagedVersion(repo, name, None, model_name=name)
    with staged:
        if progress:
            progress.set_description(f"export {name}")
        export_graph(build(source), staged.path)
        for extra in extra_files:
            shutil.copy2(source / extra, staged.path / extra)
        (staged.path / SOURCE_FILE).write_text(json.dumps({"path": str(source), "sha256": new_digest}, indent=1))
        (staged.path / "model.py").write_text(MODEL_PY.format(what=name.removeprefix("gsv_")))
        target = staged.publish(spec_fn())
    return target / filename


def ensure_shared(repo: Path, hubert: Path | None, bert: Path | None, progress=None) -> SharedGraphs:
    def build_ssl(folder: Path):
        model, normalize = aux_models.load_ssl(folder)
        return aux_models.ssl_spec(model, normalize)

    def build_bert(folder: Path):
        return aux_models.bert_spec(aux_models.load_bert(folder))

    ssl = _ensure(repo, layout.SSL_MODEL, "ssl.onnx", hubert, build_ssl, (), "--hubert", progress)
    bert_path = _ensure(repo, layout.BERT_MODEL, "bert.onnx", bert, build_bert, ("vocab.txt",), "--bert", progress)
    return SharedGraphs(ssl=ssl, bert=bert_path, vocab=bert_path.parent / "vocab.txt")
