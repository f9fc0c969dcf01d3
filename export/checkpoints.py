"""Read GPT-SoVITS checkpoints exactly as training writes them, without running their code.

GPT (stage 1, ``*.ckpt``) and SoVITS (stage 2, ``*.pth``) files are torch zip pickles. SoVITS
v2Pro/v2ProPlus files replace the zip's leading ``PK`` with the version bytes ``05``/``06``
(v3/v4 LoRA files use ``03``/``04``); the version is read from those bytes and the state dict keys.

A pickle is a program that can call any Python callable, so it is never handed to ``pickle``:
``_PickleMachine`` runs the opcodes torch writes (protocols 2-4) itself, running none of the
file's code, and refuses what a hostile file could use:

* any global but torch's storage types, ``_rebuild_tensor_v2``/``_rebuild_parameter``,
  ``collections.OrderedDict`` and ``utils.HParams`` (``os.system``, say). The allowed ones reach
  the pickle as inert tokens, never as the real class or function, and BUILD only fills
  HParams/OrderedDict stand-in *instances*, so a file cannot change a class and, through it,
  a later read; every read starts from nothing but immutable module constants;
* opcodes torch never writes (INST, OBJ, EXT*, out-of-band buffers, ...), lengths running past
  the pickle's end (checked before anything is allocated), more than 500 000 opcodes, data
  nested deeper than 100 levels, and cycles;
* compressed zip members (torch stores members uncompressed; a DEFLATE member of a small file
  can inflate to gigabytes) and a central directory over 2 MiB;
* memory beyond the file: a storage declaring more bytes than its zip member holds, and more
  storage bytes, or more bytes of rebuilt tensors, than the file's size plus 1 MiB;
* tensor views with a negative offset, size or stride, with stride 0 on a dimension longer than
  1 (a one-element storage would expand to any size), or reaching past their storage.

Every failure, whatever its cause, is a ``CheckpointError`` (``UnsafeCheckpointError`` for a
refusal) whose one-line message names the file and the cause.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import pickletools
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

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

_MAX_OPS = 500_000  # a full-size SoVITS or SV checkpoint runs about 35 000
_MAX_DEPTH = 100  # containers inside containers; real configs nest 3 deep
_MAX_DIMS = 64
_MAX_INT_BYTES = 64  # LONG4; checkpoints hold no integer near this size
_MAX_GLOBAL_NAME = 256
_MAX_CENTRAL_DIRECTORY = 2 << 20  # about 20 000 members; a checkpoint has one per tensor
_DECODE_SLACK = 1 << 20  # bytes a file may decode to beyond its own size


# ---------------------------------------------------------------- what the pickle gets

class _Token:
    """An allowed global as the pickle sees it: an immutable marker, not the class or function."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __setattr__(self, key, value):
        raise AttributeError("read-only")

    def __repr__(self) -> str:
        return f"<{self.name}>"


class _StorageType(_Token):
    """``torch.<X>Storage`` as named in a persistent id."""

    __slots__ = ("dtype",)

    def __init__(self, name: str, dtype: torch.dtype):
        super().__init__(f"torch.{name}")
        object.__setattr__(self, "dtype", dtype)


_ORDERED_DICT = _Token("collections.OrderedDict")
_HPARAMS = _Token("utils.HParams")
_REBUILD_TENSOR = _Token("torch._utils._rebuild_tensor_v2")
_REBUILD_PARAMETER = _Token("torch._utils._rebuild_parameter")

_ALLOWED_GLOBALS: dict[tuple[str, str], _Token] = {
    ("collections", "OrderedDict"): _ORDERED_DICT,
    ("utils", "HParams"): _HPARAMS,
    ("GPT_SoVITS.utils", "HParams"): _HPARAMS,
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_TENSOR,
    ("torch._utils", "_rebuild_parameter"): _REBUILD_PARAMETER,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}
_ITEMSIZE = {dtype: torch.empty(0, dtype=dtype).element_size() for dtype in _STORAGE_DTYPES.values()}


class HParams:
    """Stand-in for upstream ``utils.HParams``: an instance's attributes arrive through BUILD and
    are kept in ``_values`` (never set as attributes); the pickle never sees this class."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def to_dict(self) -> dict:
        return _to_plain(self, "HParams")


class _PickledOrderedDict(dict):
    """``collections.OrderedDict`` as the pickle builds it. A module's ``state_dict()`` carries a
    ``_metadata`` attribute (per-module format versions) that arrives through BUILD; it is not
    needed to load weights and is dropped."""

    __slots__ = ()


class _StorageRef:
    """A persistent id's storage: checked against its zip member, read only when a tensor uses it."""

    __slots__ = ("key", "dtype", "numel", "member")

    def __init__(self, key: str, dtype: torch.dtype, numel: int, member: zipfile.ZipInfo):
        self.key, self.dtype, self.numel, self.member = key, dtype, numel, member


_SCALARS = (str, int, float, bool, type(None), bytes)


def _describe(obj: Any) -> str:
    if type(obj) is _StorageType:
        return f"the storage type {obj.name}"
    if type(obj) is _Token:
        return f"the global {obj.name} itself (a class or function, not an instance)"
    if type(obj) is _StorageRef:
        return f"the raw storage data/{obj.key}"
    if type(obj) is HParams:
        return "an HParams"
    if type(obj) is _PickledOrderedDict:
        return "an OrderedDict"
    return f"a {type(obj).__name__}"


def _to_plain(root: Any, label: str) -> Any:
    """The unpickled object as dicts, lists, tuples, scalars and tensors; stand-ins become dicts,
    shared parts stay shared; anything else (a token, a raw storage), cycles and deep nesting are
    refused."""
    done: dict[int, Any] = {}
    active: set[int] = set()

    def convert(value: Any, depth: int) -> Any:
        kind = type(value)
        if kind in _SCALARS or kind is torch.Tensor:
            return value
        ident = id(value)
        if ident in done:
            return done[ident]
        if ident in active:
            raise UnsafeCheckpointError(f"{label}: refused: the pickle's data contains itself (a cycle)")
        if depth >= _MAX_DEPTH:
            raise UnsafeCheckpointError(f"{label}: refused: data nested deeper than {_MAX_DEPTH} levels")
        active.add(ident)
        if kind is dict or kind is _PickledOrderedDict:
            out: Any = {k: convert(v, depth + 1) for k, v in value.items()}
        elif kind is HParams:
            out = {k: convert(v, depth + 1) for k, v in value._values.items()}
        elif kind is list:
            out = [convert(v, depth + 1) for v in value]
        elif kind is tuple:
            out = tuple(convert(v, depth + 1) for v in value)
        else:
            raise UnsafeCheckpointError(f"{label}: refused: {_describe(value)} in the data")
        active.discard(ident)
        done[ident] = out
        return out

    return convert(root, 0)


# ---------------------------------------------------------------- the pickle machine

class _PickleMachine:
    """Runs the pickle opcodes torch.save writes, building only allowed objects (see module doc).

    ``budget`` is the file's size plus slack: the most bytes of storages, and separately of
    rebuilt tensors, one read may decode."""

    def __init__(self, label: str, pickle_bytes: bytes, archive: zipfile.ZipFile, prefix: str, budget: int):
        self._label = label
        self._data = pickle_bytes
        self._pos = 0
        self._archive = archive
        self._prefix = prefix
        self._budget = budget
        self._storage_bytes = 0
        self._tensor_bytes = 0
        self._stack: list[Any] = []
        self._marks: list[list[Any]] = []
        self._memo: dict[int, Any] = {}
        self._storages: dict[str, _StorageRef] = {}
        self._storage_data: dict[str, torch.Tensor] = {}
        self._views: dict[tuple, torch.Tensor] = {}

    # errors
    def _damaged(self, cause: str) -> CheckpointError:
        return CheckpointError(f"{self._label}: damaged checkpoint ({cause})")

    def _refused(self, cause: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(f"{self._label}: refused: {cause}")

    # reading the pickle
    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise self._damaged(f"pickle wants {n} bytes at offset {self._pos}, {len(self._data) - self._pos} remain")
        chunk = self._data[self._pos:end]
        self._pos = end
        return chunk

    def _unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _line(self) -> str:
        end = self._data.find(b"\n", self._pos, self._pos + _MAX_GLOBAL_NAME + 1)
        if end < 0:
            raise self._damaged(f"unterminated or overlong name at offset {self._pos}")
        text = self._data[self._pos:end].decode("utf-8")
        self._pos = end + 1
        return text

    def _pop(self) -> Any:
        if not self._stack:
            raise self._damaged("pickle stack underflow")
        return self._stack.pop()

    def _top(self) -> Any:
        if not self._stack:
            raise self._damaged("pickle stack underflow")
        return self._stack[-1]

    def _pop_mark(self) -> list[Any]:
        if not self._marks:
            raise self._damaged("pickle MARK missing")
        items = self._stack
        self._stack = self._marks.pop()
        return items

    def run(self) -> Any:
        ops = _OPS
        for _ in range(_MAX_OPS):
            if self._pos >= len(self._data):
                raise self._damaged("pickle ends before its STOP")
            code = self._take(1)[0]
            if code == 0x2E:  # STOP
                return self._pop()
            handler = ops.get(code)
            if handler is None:
                info = pickletools.code2op.get(chr(code))
                if info is None:
                    raise self._damaged(f"unknown pickle opcode 0x{code:02x} at offset {self._pos - 1}")
                raise self._refused(f"pickle opcode {info.name}, which torch checkpoints never use")
            handler(self)
        raise self._refused(f"the pickle runs more than {_MAX_OPS} opcodes; a checkpoint needs a few tens of thousands")

    # opcodes
    def _proto(self) -> None:
        version = self._take(1)[0]
        if version > 5:
            raise self._damaged(f"pickle protocol {version} unknown")

    def _frame(self) -> None:
        size = self._unpack("<Q")
        if size > len(self._data) - self._pos:
            raise self._damaged(f"pickle frame of {size} bytes runs past the end")

    def _mark(self) -> None:
        self._marks.append(self._stack)
        self._stack = []

    def _long(self, n: int) -> None:
        if n < 0 or n > _MAX_INT_BYTES:
            raise self._refused(f"a {n}-byte integer")
        self._stack.append(int.from_bytes(self._take(n), "little", signed=True))

    def _text(self, n: int) -> None:
        self._stack.append(str(self._take(n), "utf-8", "surrogatepass"))

    def _tuple(self, n: int) -> None:
        if len(self._stack) < n:
            raise self._damaged("pickle stack underflow")
        items = tuple(self._stack[len(self._stack) - n:])
        del self._stack[len(self._stack) - n:]
        self._stack.append(items)

    def _append(self, target: Any, items: list[Any]) -> None:
        if type(target) is not list:
            raise self._refused(f"APPEND to {_describe(target)}; only lists take items")
        target.extend(items)

    def _append_one(self) -> None:
        value = self._pop()
        self._append(self._top(), [value])

    def _set_item(self) -> None:
        value = self._pop()
        key = self._pop()
        self._set_items(self._top(), [key, value])

    def _set_items(self, target: Any, items: list[Any]) -> None:
        if type(target) is not dict and type(target) is not _PickledOrderedDict:
            raise self._refused(f"SETITEM on {_describe(target)}; only dicts take items")
        if len(items) % 2:
            raise self._damaged("odd number of dict items")
        for i in range(0, len(items), 2):
            key = items[i]
            if not (type(key) in _SCALARS or (type(key) is tuple and all(type(k) in _SCALARS for k in key))):
                raise self._refused(f"{_describe(key)} as a dict key")
            target[key] = items[i + 1]

    def _memo_get(self, index: int) -> None:
        if index not in self._memo:
            raise self._damaged(f"pickle memo {index} read before it was written")
        self._stack.append(self._memo[index])

    def _global(self, module: Any, name: Any) -> None:
        if type(module) is not str or type(name) is not str:
            raise self._damaged("a global named by something other than two strings")
        token = _ALLOWED_GLOBALS.get((module, name))
        if token is None:
            raise UnsafeCheckpointError(
                f"{self._label}: refused to unpickle global {module[:100]}.{name[:100]}; a GPT-SoVITS "
                "checkpoint holds only tensors, plain containers and utils.HParams"
            )
        self._stack.append(token)

    def _call(self, callee: Any, args: Any, kwargs: Any, opcode: str) -> None:
        if type(args) is not tuple or type(kwargs) is not dict:
            raise self._damaged(f"{opcode} arguments are {_describe(args)}, not a tuple")
        if kwargs:
            raise self._refused(f"{opcode} with keyword arguments")
        if callee is _ORDERED_DICT or callee is _HPARAMS:
            if args:
                raise self._damaged(f"{callee.name} built from {len(args)} arguments; expected none")
            self._stack.append(_PickledOrderedDict() if callee is _ORDERED_DICT else HParams())
        elif callee is _REBUILD_TENSOR and opcode == "REDUCE":
            self._stack.append(self._rebuild_tensor(args))
        elif callee is _REBUILD_PARAMETER and opcode == "REDUCE":
            if not 1 <= len(args) <= 4 or type(args[0]) is not torch.Tensor:
                raise self._damaged("_rebuild_parameter without a tensor")
            self._stack.append(args[0])
        else:
            raise self._refused(f"{opcode} calls {_describe(callee)}")

    def _reduce(self) -> None:
        args = self._pop()
        self._call(self._pop(), args, {}, "REDUCE")

    def _newobj(self) -> None:
        args = self._pop()
        self._call(self._pop(), args, {}, "NEWOBJ")

    def _newobj_ex(self) -> None:
        kwargs = self._pop()
        args = self._pop()
        self._call(self._pop(), args, kwargs, "NEWOBJ_EX")

    def _build(self) -> None:
        state = self._pop()
        inst = self._top()
        if type(inst) is HParams:
            if type(state) is not dict or not all(type(k) is str for k in state):
                raise self._refused(f"HParams state is {_describe(state)}, not a dict of names")
            inst._values.update(state)
        elif type(inst) is _PickledOrderedDict:
            if state is not None and type(state) is not dict:
                raise self._refused(f"OrderedDict state is {_describe(state)}")
        else:
            raise self._refused(f"BUILD on {_describe(inst)}; only HParams and OrderedDict instances take state")

    def _persistent(self) -> None:
        self._stack.append(self._storage(self._pop()))

    # storages and tensors
    def _storage(self, pid: Any) -> _StorageRef:
        if not (type(pid) is tuple and len(pid) == 5 and type(pid[0]) is str and pid[0] == "storage"):
            raise self._refused(f"persistent id {_describe(pid)} is not a torch storage")
        _, storage_type, key, _location, numel = pid
        if type(storage_type) is not _StorageType:
            raise self._refused(f"storage type {_describe(storage_type)}")
        if type(key) is not str or type(numel) is not int or numel < 0:
            raise self._damaged(f"storage id with key {_describe(key)} and size {_describe(numel)}")
        known = self._storages.get(key)
        if known is not None:
            if known.dtype != storage_type.dtype or known.numel != numel:
                raise self._damaged(f"storage {key[:40]} named with two types or sizes")
            return known
        name = f"{self._prefix}data/{key}"
        try:
            member = self._archive.getinfo(name)
        except KeyError:
            raise self._damaged(f"storage {name[:80]} missing; the file is truncated or damaged") from None
        nbytes = numel * _ITEMSIZE[storage_type.dtype]
        if nbytes > member.file_size:
            raise self._refused(f"storage {name[:80]} declares {nbytes} bytes but its member holds {member.file_size}")
        self._storage_bytes += nbytes
        if self._storage_bytes > self._budget:
            raise self._refused(f"storages add up to more than {self._budget} bytes, more than the file holds")
        ref = _StorageRef(key, storage_type.dtype, numel, member)
        self._storages[key] = ref
        return ref

    def _rebuild_tensor(self, args: tuple) -> torch.Tensor:
        if not 4 <= len(args) <= 7:
            raise self._damaged(f"_rebuild_tensor_v2 with {len(args)} arguments")
        storage, offset, size, stride = args[:4]
        if type(storage) is not _StorageRef:
            raise self._refused(f"a tensor over {_describe(storage)}, not a storage")
        if (type(size) is not tuple or type(stride) is not tuple or len(size) != len(stride)
                or not all(type(v) is int for v in (offset, *size, *stride))):
            raise self._damaged("tensor offset, size and stride are not integers of matching rank")
        if len(size) > _MAX_DIMS:
            raise self._refused(f"a tensor of {len(size)} dimensions")
        if offset < 0 or any(v < 0 for v in size) or any(v < 0 for v in stride):
            raise self._refused(f"tensor view with a negative offset, size or stride ({offset}, {size}, {stride})")
        numel = 1
        for dim in size:
            numel *= dim
        if numel:
            for dim, step in zip(size, stride):
                if dim > 1 and step == 0:
                    raise self._refused(
                        f"tensor of size {list(size)} with stride {list(stride)}: stride 0 would expand "
                        f"{storage.numel} stored elements to {numel}")
            last = offset + sum((dim - 1) * step for dim, step in zip(size, stride))
            if last >= storage.numel:
                raise self._refused(
                    f"tensor view reaches element {last} of storage {storage.key[:40]}, which holds {storage.numel}")
        elif offset > storage.numel:
            raise self._refused(f"empty tensor at offset {offset} of a {storage.numel}-element storage")
        view = (storage.key, offset, size, stride)
        cached = self._views.get(view)
        if cached is not None:  # the same view twice (tied weights) is one tensor
            return cached
        self._tensor_bytes += numel * _ITEMSIZE[storage.dtype]
        if self._tensor_bytes > self._budget:
            raise self._refused(f"tensors add up to more than {self._budget} bytes, more than the file holds")
        base = self._storage_tensor(storage)
        if storage.dtype == torch.bool:  # arbitrary bytes become 0/1
            tensor = torch.as_strided(base, size, stride, offset).ne(0)
        else:
            tensor = torch.as_strided(base, size, stride, offset).clone()
        self._views[view] = tensor
        return tensor

    def _storage_tensor(self, storage: _StorageRef) -> torch.Tensor:
        tensor = self._storage_data.get(storage.key)
        if tensor is None:
            dtype = torch.uint8 if storage.dtype == torch.bool else storage.dtype
            if storage.numel == 0:
                tensor = torch.empty(0, dtype=dtype)
            else:
                buffer = bytearray(self._archive.read(storage.member))
                tensor = torch.frombuffer(buffer, dtype=dtype, count=storage.numel)
            self._storage_data[storage.key] = tensor
        return tensor


def _op_table() -> dict[int, Callable[[_PickleMachine], None]]:
    M = _PickleMachine
    table: dict[str, Callable[[_PickleMachine], None]] = {
        "PROTO": M._proto,
        "FRAME": M._frame,
        "MARK": M._mark,
        "POP": lambda m: m._pop(),
        "POP_MARK": lambda m: m._pop_mark(),
        "DUP": lambda m: m._stack.append(m._top()),
        "NONE": lambda m: m._stack.append(None),
        "NEWTRUE": lambda m: m._stack.append(True),
        "NEWFALSE": lambda m: m._stack.append(False),
        "BININT": lambda m: m._stack.append(m._unpack("<i")),
        "BININT1": lambda m: m._stack.append(m._take(1)[0]),
        "BININT2": lambda m: m._stack.append(m._unpack("<H")),
        "LONG1": lambda m: m._long(m._take(1)[0]),
        "LONG4": lambda m: m._long(m._unpack("<i")),
        "BINFLOAT": lambda m: m._stack.append(m._unpack(">d")),
        "SHORT_BINUNICODE": lambda m: m._text(m._take(1)[0]),
        "BINUNICODE": lambda m: m._text(m._unpack("<I")),
        "BINUNICODE8": lambda m: m._text(m._unpack("<Q")),
        "SHORT_BINBYTES": lambda m: m._stack.append(m._take(m._take(1)[0])),
        "BINBYTES": lambda m: m._stack.append(m._take(m._unpack("<I"))),
        "BINBYTES8": lambda m: m._stack.append(m._take(m._unpack("<Q"))),
        "EMPTY_TUPLE": lambda m: m._stack.append(()),
        "TUPLE": lambda m: (lambda items: m._stack.append(tuple(items)))(m._pop_mark()),
        "TUPLE1": lambda m: m._tuple(1),
        "TUPLE2": lambda m: m._tuple(2),
        "TUPLE3": lambda m: m._tuple(3),
        "EMPTY_LIST": lambda m: m._stack.append([]),
        "LIST": lambda m: (lambda items: m._stack.append(items))(m._pop_mark()),
        "APPEND": M._append_one,
        "APPENDS": lambda m: (lambda items: m._append(m._top(), items))(m._pop_mark()),
        "EMPTY_DICT": lambda m: m._stack.append({}),
        "DICT": lambda m: (lambda items: (m._stack.append({}), m._set_items(m._top(), items)))(m._pop_mark()),
        "SETITEM": M._set_item,
        "SETITEMS": lambda m: (lambda items: m._set_items(m._top(), items))(m._pop_mark()),
        "BINPUT": lambda m: m._memo.__setitem__(m._take(1)[0], m._top()),
        "LONG_BINPUT": lambda m: m._memo.__setitem__(m._unpack("<I"), m._top()),
        "MEMOIZE": lambda m: m._memo.__setitem__(len(m._memo), m._top()),
        "BINGET": lambda m: m._memo_get(m._take(1)[0]),
        "LONG_BINGET": lambda m: m._memo_get(m._unpack("<I")),
        "GLOBAL": lambda m: m._global(m._line(), m._line()),
        "STACK_GLOBAL": lambda m: (lambda name, module: m._global(module, name))(m._pop(), m._pop()),
        "REDUCE": M._reduce,
        "NEWOBJ": M._newobj,
        "NEWOBJ_EX": M._newobj_ex,
        "BUILD": M._build,
        "BINPERSID": M._persistent,
    }
    by_name = {op.name: op.code for op in pickletools.opcodes}
    return {ord(by_name[name]): handler for name, handler in table.items()}


_OPS = _op_table()


# ---------------------------------------------------------------- the zip

def _central_directory_size(data: bytes) -> int | None:
    """The central directory size the zip's end record declares (zip64 when present), found the
    way ``zipfile`` finds it; None when there is no end record (``zipfile`` then says so)."""
    end = len(data) - 22
    if not (end >= 0 and data[end:end + 4] == b"PK\x05\x06" and data[-2:] == b"\0\0"):
        end = data.rfind(b"PK\x05\x06", max(0, len(data) - (1 << 16) - 22))
    if end < 0 or end + 22 > len(data):
        return None
    size = struct.unpack_from("<L", data, end + 12)[0]
    locator = end - 20
    if locator >= 56 and data[locator:locator + 4] == b"PK\x06\x07" and data[locator - 56:locator - 52] == b"PK\x06\x06":
        size = max(size, struct.unpack_from("<Q", data, locator - 56 + 40)[0])
    return size


def _open_zip(label: str, data: bytes) -> zipfile.ZipFile:
    directory = _central_directory_size(data)
    if directory is not None and directory > _MAX_CENTRAL_DIRECTORY:
        raise UnsafeCheckpointError(
            f"{label}: refused: zip central directory of {directory} bytes; a checkpoint's is well under "
            f"{_MAX_CENTRAL_DIRECTORY}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, EOFError, struct.error, ValueError, OSError):
        raise CheckpointError(f"{label}: not a torch zip checkpoint (bad or truncated zip)") from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnsafeCheckpointError(
                f"{label}: refused: zip member {info.filename[:80]} is compressed (method {info.compress_type}); "
                "torch stores members uncompressed, and a compressed one can inflate far beyond the file")
        if info.file_size != info.compress_size or info.file_size > len(data):
            raise CheckpointError(f"{label}: damaged checkpoint (zip member {info.filename[:80]} has inconsistent sizes)")
    return archive


def load_pickle_zip(path: Path, data: bytes) -> Any:
    """Unpickle a torch zip checkpoint held in ``data`` (see the module doc for what is refused);
    returns dicts, lists, tuples, scalars and tensors (``utils.HParams`` become dicts)."""
    label = str(path)
    with _as_checkpoint_errors(label):
        archive = _open_zip(label, data)
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{label}: zip has no data.pkl; not a torch checkpoint")
        if len(pkl) > 1:
            raise CheckpointError(f"{label}: zip has {len(pkl)} data.pkl records; not one torch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.getinfo(f"{prefix}byteorder")
            if order.file_size > 16 or archive.read(order).strip() not in (b"little", b""):
                raise CheckpointError(f"{label}: not a little-endian checkpoint (byteorder record); not supported")
        machine = _PickleMachine(label, archive.read(pkl[0]), archive, prefix, len(data) + _DECODE_SLACK)
        return _to_plain(machine.run(), label)


# ---------------------------------------------------------------- failures as one line

def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.splitlines())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exception_text(exc: BaseException) -> str:
    try:
        detail = str(exc)
    except Exception:  # noqa: BLE001 - an exception's own message may fail (deep repr)
        detail = ""
    return f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__


@contextlib.contextmanager
def _as_checkpoint_errors(label: str) -> Iterator[None]:
    """Whatever goes wrong inside becomes a CheckpointError with a one-line message and no chain."""
    try:
        yield
    except CheckpointError as exc:
        message = str(exc)
        if message != _one_line(message):
            raise type(exc)(_one_line(message)) from None
        raise
    except RecursionError:
        raise CheckpointError(f"{label}: damaged checkpoint (nested too deeply to read)") from None
    except MemoryError:
        raise CheckpointError(f"{label}: too large to read in the memory available") from None
    except zipfile.BadZipFile as exc:
        raise CheckpointError(_one_line(f"{label}: not a torch zip checkpoint (bad or truncated zip: {exc})")) from None
    except Exception as exc:  # noqa: BLE001 - the promise is: no traceback from a bad file
        raise CheckpointError(_one_line(f"{label}: damaged checkpoint ({_exception_text(exc)})")) from None


# ---------------------------------------------------------------- the checkpoints

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


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None


def _payload_parts(path: Path, obj: Any) -> tuple[dict, dict, str]:
    if not isinstance(obj, dict) or "weight" not in obj or "config" not in obj:
        keys = sorted(map(str, obj))[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: not a GPT-SoVITS inference checkpoint (expected keys weight/config, found {keys}); "
            "use the half-weight file training writes to GPT_weights*/SoVITS_weights*"
        )
    weights, config = obj["weight"], obj["config"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(f"{path}: 'weight' is not a state dict of tensors")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: 'config' is {type(config).__name__}, expected a dict or utils.HParams")
    return weights, config, str(obj.get("info", ""))[:1000]


def _embedding_rows(path: Path, weights: dict[str, torch.Tensor], key: str) -> int:
    if weights[key].ndim != 2:
        raise CheckpointError(f"{path}: {key} has shape {list(weights[key].shape)}, expected a 2-d table")
    return weights[key].shape[0]


def read_gpt(path: str | Path) -> Checkpoint:
    """Read a stage-1 GPT checkpoint (``*.ckpt``); keys lose their ``model.`` prefix."""
    with _as_checkpoint_errors(str(path)):
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
        phones = _embedding_rows(path, state, "ar_text_embedding.word_embeddings.weight")
        if phones == 322 or model_cfg.get("phoneme_vocab_size") == 512:
            raise CheckpointError(f"{path}: GPT-SoVITS v1 GPT checkpoints are not supported (v2 phone table expected)")
        return Checkpoint(path, "gpt", "v2", state, config, info, hashlib.sha256(data).hexdigest())


def read_state_dict(path: str | Path, flag: str) -> tuple[dict[str, torch.Tensor], str]:
    """A bare state dict saved with ``torch.save`` (e.g. the SV model), and the file's sha256."""
    with _as_checkpoint_errors(f"{flag} {path}"):
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
    with _as_checkpoint_errors(str(path)):
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
        del zipped
        if "enc_p.text_embedding.weight" not in weights:
            raise CheckpointError(f"{path}: no SoVITS weights (enc_p.text_embedding missing); is this a GPT .ckpt?")
        if any(k.startswith("cfm.") for k in weights):
            raise CheckpointError(f"{path}: v3/v4 SoVITS checkpoints are not supported yet")
        if _embedding_rows(path, weights, "enc_p.text_embedding.weight") == 322:
            raise CheckpointError(f"{path}: GPT-SoVITS v1 SoVITS checkpoints are not supported (v2 phone table expected)")
        has_sv = "sv_emb.weight" in weights
        if head in HEADER_VERSIONS:
            version = HEADER_VERSIONS[head]
            if not has_sv:
                raise CheckpointError(f"{path}: header says {version} but the speaker-verification weights are missing")
        elif has_sv:
            model_cfg = config.get("model")
            declared = str(model_cfg.get("version", "v2Pro")) if isinstance(model_cfg, dict) else "v2Pro"
            version = declared if declared in ("v2Pro", "v2ProPlus") else "v2Pro"
        else:
            version = "v2"
        state = {k: v for k, v in weights.items() if not k.startswith("enc_q.")}
        return Checkpoint(path, "sovits", version, state, config, info, hashlib.sha256(data).hexdigest(),
                          head.decode("latin-1"))


# ---------------------------------------------------------------- v4 (CFM + 48 kHz vocoder)
#
# A v4 voice is three files: the base ``s2Gv4.pth`` (a plain ``PK`` zip; upstream recognises the
# official one only by the hash of its first bytes, so the version is worked out here from the
# ``cfm.*`` keys plus ``config.model.version``), optionally a LoRA file (header ``04``, peft-named
# A/B matrices for the DiT attention projections and full tensors for the other fine-tuned
# modules) merged into the base here, and the vocoder's bare state dict. ``read_sovits`` above
# stays the v2-family reader and keeps refusing these files.

V4_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_PEFT_PREFIX = "cfm.base_model.model."
_V4_LORA_KEY = re.compile(
    r"^cfm\.base_model\.model\.(estimator\.transformer_blocks\.\d+\.attn\.(?:to_q|to_k|to_v|to_out\.0))"
    r"\.lora_([AB])\.default\.weight$")
_V4_TARGET_KEY = re.compile(r"^cfm\.estimator\.transformer_blocks\.\d+\.attn\.(?:to_q|to_k|to_v|to_out\.0)\.weight$")


@dataclass(frozen=True)
class LoraInfo:
    """The LoRA file merged into a v4 base (kept for the manifest: which fine-tune this voice is)."""

    path: Path
    rank: int
    sha256: str
    merged_targets: int  # Linear weights that received B @ A
    replaced: int  # full tensors taken from the LoRA file (non-cfm fine-tuned modules, buffers)


@dataclass
class V4Sovits:
    """A v4 SoVITS model as the graphs carry it: the base's weights with any LoRA merged in
    (merged DiT projections float32, everything else as stored). ``sha256`` is the base file's;
    ``lora`` names the LoRA file, if any."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    config: dict
    info: str
    sha256: str
    lora: LoraInfo | None = None
    version: str = "v4"

    def float_state(self) -> dict[str, torch.Tensor]:
        return {k: (v.float() if v.is_floating_point() else v) for k, v in self.state_dict.items()}


@dataclass
class V4Vocoder:
    """The v4 vocoder's bare state dict (upstream ``vocoder.pth``) and the file's sha256."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    sha256: str


def _declared_version(config: dict) -> str | None:
    model_cfg = config.get("model")
    value = model_cfg.get("version") if isinstance(model_cfg, dict) else None
    return str(value) if value is not None else (str(config["version"]) if "version" in config else None)


# Upstream tells its official pretrained files apart only by the md5 of their first 8192 bytes
# (process_ckpt.hash_pretrained_dict); the official s2Gv4.pth need not say "v4" in its config.
_OFFICIAL_MD5_8K = {"4f26b9476d0c5033e04162c486074374": "v4", "43797be674a37c1c83ee81081941ed0f": "v3"}


def _read_v4_base(path: Path, version_hint: str | None) -> tuple[dict, dict, str, str]:
    data = _read_file(path)
    head = data[:2]
    official = _OFFICIAL_MD5_8K.get(hashlib.md5(data[:8192]).hexdigest())
    if official == "v3" or head == b"02":
        raise CheckpointError(f"{path}: GPT-SoVITS v3 SoVITS files are not supported (v4 only: 48 kHz vocoder)")
    if head in (b"03", b"04"):
        raise CheckpointError(
            f"{path}: is a {UNSUPPORTED_HEADERS[head]} file, not a base model; pass it as the LoRA together with "
            "its base s2Gv4.pth (a LoRA file holds only the fine-tuned part)")
    if head in HEADER_VERSIONS:
        raise CheckpointError(f"{path}: is a {HEADER_VERSIONS[head]} SoVITS file, not a v4 base (s2Gv4.pth)")
    if head != b"PK":
        raise CheckpointError(f"{path}: not a SoVITS checkpoint (starts with {head!r}, a v4 base is a PK zip)")
    weights, config, info = _payload_parts(path, load_pickle_zip(path, data))
    if "enc_p.text_embedding.weight" not in weights:
        raise CheckpointError(f"{path}: no SoVITS weights (enc_p.text_embedding missing); is this a GPT .ckpt?")
    if not any(k.startswith("cfm.") for k in weights):
        raise CheckpointError(
            f"{path}: is a v2-family SoVITS file (no cfm.* weights), not a v4 base; use the v4 base s2Gv4.pth")
    declared = "v4" if official == "v4" else _declared_version(config)
    if declared == "v3" or (declared != "v4" and version_hint == "v3"):
        raise CheckpointError(f"{path}: GPT-SoVITS v3 SoVITS files are not supported (v4 only: 48 kHz vocoder)")
    if declared != "v4" and version_hint != "v4":
        raise CheckpointError(
            f"{path}: has CFM weights but config.model.version is {declared!r}, so v3 and v4 cannot be told apart "
            "(identical keys); say it is v4 explicitly (version_hint='v4') if it is")
    return weights, config, info, hashlib.sha256(data).hexdigest()


def _read_v4_lora(path: Path) -> tuple[dict, dict, str, int, str]:
    data = _read_file(path)
    head = data[:2]
    if head == b"03":
        raise CheckpointError(f"{path}: GPT-SoVITS v3 LoRA files are not supported (v4 only)")
    if head != b"04":
        raise CheckpointError(
            f"{path}: not a v4 LoRA file (starts with {head!r}; upstream writes LoRA files with the header 04)")
    obj = load_pickle_zip(path, b"PK" + data[2:])
    weights, config, info = _payload_parts(path, obj)
    rank = obj.get("lora_rank")
    if type(rank) is not int or rank <= 0:
        raise CheckpointError(f"{path}: lora_rank is {rank!r}; a v4 LoRA file stores a positive integer rank")
    train = config.get("train")
    declared = train.get("lora_rank") if isinstance(train, dict) else None
    if declared is not None and str(declared) != str(rank):
        raise CheckpointError(f"{path}: lora_rank {rank} disagrees with config.train.lora_rank {declared!r}")
    if _declared_version(config) not in (None, "v4"):
        raise CheckpointError(f"{path}: LoRA config says version {_declared_version(config)!r}; v4 expected")
    return weights, config, info, rank, hashlib.sha256(data).hexdigest()


def merge_v4_lora(base: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], rank: int,
                  label: str) -> tuple[dict[str, torch.Tensor], int, int]:
    """Upstream's LoRA load + ``merge_and_unload`` (alpha = rank, so the scale is 1): every targeted
    DiT Linear gets ``W = W_base + B @ A`` in float32; every other tensor in the LoRA file replaces
    the base's (peft names mapped back). Returns the merged state, #merged targets, #replaced."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, value in lora.items():
        m = _V4_LORA_KEY.match(key)
        if m:
            pairs.setdefault(f"cfm.{m.group(1)}.weight", {})[m.group(2)] = value
        elif ".lora_" in key:
            raise CheckpointError(
                f"{label}: LoRA key {key} targets another module; upstream v4 LoRA targets {list(V4_LORA_TARGETS)} "
                "of the DiT attention (mismatched targets)")
        elif key.startswith(_PEFT_PREFIX):
            full["cfm." + key[len(_PEFT_PREFIX):].replace(".base_layer.", ".")] = value
        else:
            full[key] = value
    targets = sorted(k for k in base if _V4_TARGET_KEY.match(k))
    extra = sorted(set(pairs) - set(targets))
    if extra:
        raise CheckpointError(
            f"{label}: LoRA targets {extra[:3]} which the base does not have (base DiT has "
            f"{len(targets) // len(V4_LORA_TARGETS)} blocks): mismatched targets; is this LoRA for another base?")
    missing = [k for k in targets if k not in pairs]
    if missing:
        raise CheckpointError(
            f"{label}: LoRA has no A/B pair for {len(missing)} of {len(targets)} targets (first {missing[0]}): "
            "mismatched targets")
    merged = dict(base)
    for key in targets:
        pair = pairs[key]
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{label}: LoRA for {key} has only lora_{''.join(pair)}; both A and B are needed")
        a, b, w = pair["A"], pair["B"], base[key]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise CheckpointError(
                f"{label}: LoRA for {key} has A {list(a.shape)} and B {list(b.shape)}, not rank {rank} "
                "(lora_rank in the file): mismatched rank")
        if w.ndim != 2 or b.shape[0] != w.shape[0] or a.shape[1] != w.shape[1]:
            raise CheckpointError(
                f"{label}: LoRA for {key} (B {list(b.shape)} @ A {list(a.shape)}) does not fit the base weight "
                f"{list(w.shape)}: mismatched targets; is this LoRA for another base size?")
        merged[key] = w.float() + b.float() @ a.float()
    for key, value in full.items():
        if key not in base:
            raise CheckpointError(f"{label}: LoRA file holds {key}, which the v4 base does not have")
        if tuple(value.shape) != tuple(base[key].shape):
            raise CheckpointError(
                f"{label}: LoRA file's {key} is {list(value.shape)}, the base's {list(base[key].shape)}")
        merged[key] = value
    return merged, len(targets), len(full)


def read_sovits_v4(base: str | Path, lora: str | Path | None = None, version_hint: str | None = None) -> V4Sovits:
    """Read a v4 base (``s2Gv4.pth``) and merge an optional v4 LoRA file into it.

    ``version_hint`` ("v4") vouches for a base whose config does not name its version."""
    label = f"{base}" if lora is None else f"{lora} (base {base})"
    with _as_checkpoint_errors(label):
        base = Path(base)
        weights, config, info, sha = _read_v4_base(base, version_hint)
        state = {k: v for k, v in weights.items() if not k.startswith("enc_q.")}
        if lora is None:
            return V4Sovits(base, state, config, info, sha)
        lora = Path(lora)
        lweights, lconfig, linfo, rank, lsha = _read_v4_lora(lora)
        merged, n_targets, n_full = merge_v4_lora(state, lweights, rank, str(lora))
        return V4Sovits(base, merged, lconfig, linfo, sha, LoraInfo(lora, rank, lsha, n_targets, n_full))


def read_vocoder_v4(path: str | Path, sovits: V4Sovits | None = None) -> V4Vocoder:
    """Read the v4 vocoder's state dict (upstream ``vocoder.pth``: the Generator after
    ``remove_weight_norm``) and check it fits the SoVITS model's mel size."""
    with _as_checkpoint_errors(f"vocoder {path}"):
        path = Path(path)
        state, sha = read_state_dict(path, "vocoder")
        for key in ("conv_pre.weight", "conv_post.weight", "ups.0.weight"):
            if key not in state:
                raise CheckpointError(
                    f"vocoder {path}: no {key}; not a v4 vocoder state dict (upstream gsv-v4-pretrained/vocoder.pth)")
        pre = state["conv_pre.weight"]
        if pre.ndim != 3:
            raise CheckpointError(f"vocoder {path}: conv_pre.weight is {list(pre.shape)}, expected [channels, mels, 7]")
        if sovits is not None:
            mel = sovits.state_dict.get("cfm.estimator.proj_out.weight")
            if mel is not None and mel.shape[0] != pre.shape[1]:
                raise CheckpointError(
                    f"vocoder {path}: takes {pre.shape[1]} mel bins but the SoVITS model makes {mel.shape[0]} "
                    "(wrong vocoder for this model)")
        return V4Vocoder(path, state, sha)
