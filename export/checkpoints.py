"""Read GPT-SoVITS checkpoints exactly as training writes them, without running their code.

GPT (stage 1, ``*.ckpt``) and SoVITS (stage 2, ``*.pth``) files are torch zip pickles.
A pickle can name any Python callable, so they are read with a restricted unpickler that
rebuilds tensors itself and knows only plain containers and a stand-in for upstream's
``utils.HParams``; any other global (``os.system``, say) is refused before anything runs.

SoVITS v2Pro/v2ProPlus files replace the zip's leading ``PK`` with the version bytes
``05``/``06`` (v3/v4 LoRA files use ``03``/``04``); the version is read from those bytes
and from the state dict keys.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from export.errors import CheckpointError, UnsafeCheckpointError

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

HEADER_VERSIONS = {b"05": "v2Pro", b"06": "v2ProPlus"}
UNSUPPORTED_HEADERS = {b"03": "v3 LoRA", b"04": "v4 LoRA"}


class HParams:
    """Stand-in for upstream ``utils.HParams``: attribute bag restored from its ``__dict__``."""

    def to_dict(self) -> dict:
        return {k: _plain(v) for k, v in self.__dict__.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, HParams):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class _PickledOrderedDict(dict):
    """``collections.OrderedDict`` as unpickled here: a module's ``state_dict()`` carries a
    ``_metadata`` attribute (per-module format versions) that arrives through ``__setstate__``;
    it is not needed to load weights and is dropped."""

    def __setstate__(self, state) -> None:
        pass


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _PickledOrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("utils", "HParams"): HParams,
    ("GPT_SoVITS.utils", "HParams"): HParams,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._path = path
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UnsafeCheckpointError(
                f"{self._path}: refused to unpickle global {module}.{name}; a GPT-SoVITS "
                "checkpoint holds only tensors, plain containers and utils.HParams"
            )
        return target

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"{self._path}: unexpected persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self._path}: unexpected storage type {storage_type!r:.80}")
        cached = self._storages.get(key)
        if cached is None:
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except (KeyError, zipfile.BadZipFile, OSError) as exc:
                raise CheckpointError(f"{self._path}: storage {key} unreadable ({exc}); the file is truncated or damaged") from None
            cached = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
            self._storages[key] = cached
        return cached


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None


def load_pickle_zip(path: Path, data: bytes) -> Any:
    """Unpickle a torch zip checkpoint held in ``data`` with the restricted unpickler."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a torch zip checkpoint (bad or truncated zip)") from None
    pkl = [n for n in names if n.endswith("data.pkl")]
    if not pkl:
        raise CheckpointError(f"{path}: zip has no data.pkl; not a torch checkpoint")
    prefix = pkl[0][: -len("data.pkl")]
    try:
        payload = archive.read(pkl[0])
        return _RestrictedUnpickler(payload, archive, prefix, path).load()
    except (CheckpointError, UnsafeCheckpointError):
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from None


@dataclass
class Checkpoint:
    """One GPT or SoVITS checkpoint as read from disk (weights as stored, usually float16)."""

    path: Path
    kind: str  # "gpt" | "sovits"
    version: str  # "v2" | "v2Pro" | "v2ProPlus"
    state_dict: dict[str, torch.Tensor]
    config: dict
    info: str
    sha256: str
    header: str = field(default="PK")

    def float_state(self) -> dict[str, torch.Tensor]:
        return {k: (v.float() if v.is_floating_point() else v) for k, v in self.state_dict.items()}


def _payload_parts(path: Path, obj: Any) -> tuple[dict, dict, str]:
    if not isinstance(obj, dict) or "weight" not in obj or "config" not in obj:
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: not a GPT-SoVITS inference checkpoint (expected keys weight/config, found {keys}); "
            "use the half-weight file training writes to GPT_weights*/SoVITS_weights*"
        )
    weights, config = obj["weight"], _plain(obj["config"])
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: 'weight' is not a state dict of tensors")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: 'config' is {type(config).__name__}, expected a dict or utils.HParams")
    return weights, config, str(obj.get("info", ""))


def read_gpt(path: str | Path) -> Checkpoint:
    """Read a stage-1 GPT checkpoint (``*.ckpt``); keys lose their ``model.`` prefix."""
    path = Path(path)
    data = _read_file(path)
    if data[:2] != b"PK":
        raise CheckpointError(f"{path}: not a GPT checkpoint (a .ckpt is a torch zip starting with PK)")
    weights, config, info = _payload_parts(path, load_pickle_zip(path, data))
    model_cfg = config.get("model")
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"{path}: config has no 'model' section; is this a SoVITS .pth?")
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in weights.items()}
    if "ar_text_embedding.word_embeddings.weight" not in state:
        raise CheckpointError(f"{path}: no GPT weights (ar_text_embedding missing); is this a SoVITS .pth?")
    phones = state["ar_text_embedding.word_embeddings.weight"].shape[0]
    if phones == 322 or model_cfg.get("phoneme_vocab_size") == 512:
        raise CheckpointError(f"{path}: GPT-SoVITS v1 GPT checkpoints are not supported (v2 phone table expected)")
    return Checkpoint(path, "gpt", "v2", state, config, info, hashlib.sha256(data).hexdigest())


def read_state_dict(path: str | Path, flag: str) -> tuple[dict[str, torch.Tensor], str]:
    """A bare state dict saved with ``torch.save`` (e.g. the SV model), and the file's sha256."""
    path = Path(path)
    data = _read_file(path)
    if data[:2] != b"PK":
        legacy = " (the pre-1.6 torch format, not supported)" if data[:1] == b"\x80" else ""
        raise CheckpointError(f"{flag} {path}: not a torch zip checkpoint{legacy}")
    obj = load_pickle_zip(path, data)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = f"keys {sorted(map(str, obj))[:4]}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{flag} {path}: not a bare state dict of tensors (found {found})")
    return {str(k): v for k, v in obj.items()}, hashlib.sha256(data).hexdigest()


def read_sovits(path: str | Path) -> Checkpoint:
    """Read a stage-2 SoVITS checkpoint (``*.pth``) and detect v2 / v2Pro / v2ProPlus."""
    path = Path(path)
    data = _read_file(path)
    head = data[:2]
    if head in UNSUPPORTED_HEADERS:
        raise CheckpointError(f"{path}: {UNSUPPORTED_HEADERS[head]} SoVITS checkpoints are not supported yet")
    if head in HEADER_VERSIONS:
        zipped = b"PK" + data[2:]
    elif head == b"PK":
        zipped = data
    else:
        raise CheckpointError(f"{path}: not a SoVITS checkpoint (starts with {head!r}, expected PK, 05 or 06)")
    weights, config, info = _payload_parts(path, load_pickle_zip(path, zipped))
    if "enc_p.text_embedding.weight" not in weights:
        raise CheckpointError(f"{path}: no SoVITS weights (enc_p.text_embedding missing); is this a GPT .ckpt?")
    if any(k.startswith("cfm.") for k in weights):
        raise CheckpointError(f"{path}: v3/v4 SoVITS checkpoints are not supported yet")
    if weights["enc_p.text_embedding.weight"].shape[0] == 322:
        raise CheckpointError(f"{path}: GPT-SoVITS v1 SoVITS checkpoints are not supported (v2 phone table expected)")
    has_sv = "sv_emb.weight" in weights
    if head in HEADER_VERSIONS:
        version = HEADER_VERSIONS[head]
        if not has_sv:
            raise CheckpointError(f"{path}: header says {version} but the speaker-verification weights are missing")
    elif has_sv:
        declared = str(config.get("model", {}).get("version", "v2Pro"))
        version = declared if declared in ("v2Pro", "v2ProPlus") else "v2Pro"
    else:
        version = "v2"
    state = {k: v for k, v in weights.items() if not k.startswith("enc_q.")}
    return Checkpoint(path, "sovits", version, state, config, info, hashlib.sha256(data).hexdigest(), head.decode("latin-1"))
