"""Checkpoint reading: formats, version detection, and refusal of unsafe or broken files.

The hostile files below are built by hand (pickle opcodes, zip records) the way torch lays a
checkpoint out: ``archive/data.pkl``, ``archive/data/<key>``, persistent ids
``('storage', torch.FloatStorage, key, 'cpu', numel)`` and ``torch._utils._rebuild_tensor_v2``.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from export.checkpoints import read_gpt, read_sovits, read_state_dict
from export.errors import CheckpointError, UnsafeCheckpointError


class _Evil:
    """Pickles as a call to os.system: the classic checkpoint attack."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _save(obj, path: Path, header: bytes = b"PK") -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    path.write_bytes(header + data[2:])
    return path


def test_kit_gpt_reads_as_v2(kit):
    ckpt = read_gpt(kit / "s1_tiny.ckpt")
    assert ckpt.version == "v2"
    assert "ar_predict_layer.weight" in ckpt.state_dict
    assert not any(k.startswith("model.") for k in ckpt.state_dict)
    assert ckpt.config["model"]["EOS"] == 1024


@pytest.mark.parametrize("stem,version", [("s2_v2_tiny", "v2"), ("s2_v2ProPlus_tiny", "v2ProPlus")])
def test_kit_sovits_versions(kit, stem, version):
    ckpt = read_sovits(kit / f"{stem}.pth")
    assert ckpt.version == version
    assert isinstance(ckpt.config, dict) and isinstance(ckpt.config["model"], dict)
    assert not any(k.startswith("enc_q.") for k in ckpt.state_dict)


def test_hparams_as_plain_dict_is_accepted(kit, tmp_path):
    src = read_sovits(kit / "s2_v2_tiny.pth")
    path = _save({"weight": src.state_dict, "config": src.config, "info": "dict config"}, tmp_path / "dict.pth")
    assert read_sovits(path).version == "v2"


def test_v2pro_header_detected(kit, tmp_path):
    src = read_sovits(kit / "s2_v2ProPlus_tiny.pth")
    path = _save({"weight": src.state_dict, "config": src.config, "info": ""}, tmp_path / "pro.pth", header=b"05")
    assert read_sovits(path).version == "v2Pro"


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _save({"weight": {}, "config": _Evil(marker), "info": ""}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        read_gpt(path)
    with pytest.raises(UnsafeCheckpointError):
        read_sovits(path)
    assert not marker.exists()


@pytest.mark.parametrize("header,needle", [(b"03", "v3 LoRA"), (b"04", "v4 LoRA")])
def test_lora_headers_refused(tmp_path, header, needle):
    path = _save({"weight": {}, "config": {}}, tmp_path / "lora.pth", header=header)
    with pytest.raises(CheckpointError, match=f"{needle}.*not supported yet"):
        read_sovits(path)


def test_truncated_zip(kit, tmp_path):
    data = (kit / "s2_v2_tiny.pth").read_bytes()
    path = tmp_path / "trunc.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|damaged|bad"):
        read_sovits(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a SoVITS checkpoint"):
        read_sovits(path)
    with pytest.raises(CheckpointError, match="not a GPT checkpoint"):
        read_gpt(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        read_gpt(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_sovits(tmp_path)


def test_swapped_roles(kit):
    with pytest.raises(CheckpointError, match="SoVITS"):
        read_gpt(kit / "s2_v2_tiny.pth")
    with pytest.raises(CheckpointError, match="GPT"):
        read_sovits(kit / "s1_tiny.ckpt")


def test_v1_refused(kit, tmp_path):
    src = read_sovits(kit / "s2_v2_tiny.pth")
    weights = dict(src.state_dict)
    weights["enc_p.text_embedding.weight"] = torch.zeros(322, 192, dtype=torch.float16)
    path = _save({"weight": weights, "config": src.config}, tmp_path / "v1.pth")
    with pytest.raises(CheckpointError, match="v1"):
        read_sovits(path)


def test_zip_without_pickle(tmp_path):
    path = tmp_path / "empty.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/version", "3")
    with pytest.raises(CheckpointError, match="no data.pkl"):
        read_gpt(path)


# ---------------------------------------------------------------- hand-built hostile checkpoints

MiB = 1 << 20


def _g(module: str, name: str) -> bytes:
    """GLOBAL: push ``module.name``."""
    return b"c" + f"{module}\n{name}\n".encode()


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _i(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _t(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _d(*items: tuple[str, bytes]) -> bytes:
    return b"}(" + b"".join(_s(k) + v for k, v in items) + b"u"


def _tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple, storage: str = "FloatStorage") -> bytes:
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`` as torch pickles it."""
    pid = _t(_s("storage"), _g("torch", storage), _s(key), _s("cpu"), _i(numel)) + b"Q"
    hooks = _g("collections", "OrderedDict") + b")R"
    return _g("torch._utils", "_rebuild_tensor_v2") + _t(pid, _i(offset), _t(*map(_i, size)), _t(*map(_i, stride)),
                                                        b"\x89", hooks) + b"R"


def _payload(weights: bytes = b"}", config: bytes | None = None, prelude: bytes = b"") -> bytes:
    """A GPT checkpoint's top level ``{"weight": ..., "config": ..., "info": ""}`` as a pickle program."""
    config = _d(("model", _d())) if config is None else config
    return b"\x80\x02" + prelude + _d(("weight", weights), ("config", config), ("info", _s(""))) + b"."


def _gpt(tensors: list[bytes]) -> bytes:
    return _payload(b"}(" + b"".join(_s(f"model.w{n}") + t for n, t in enumerate(tensors)) + b"u")


def _member(name: str, data: bytes) -> tuple:
    return (name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))


def _local(name: str, method: int = 0, crc: int = 0, csize: int = 0, size: int = 0, extra: int = 0) -> bytes:
    raw = name.encode()
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, csize, size, len(raw), extra) + raw \
        + bytes(extra)


def _central(name: str, method: int, crc: int, csize: int, size: int, offset: int) -> bytes:
    raw = name.encode()
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, csize, size, len(raw),
                       0, 0, 0, 0, 0, offset) + raw


def _end(count: int, directory: bytes, offset: int) -> bytes:
    return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), offset, 0)


def _zip(members: list[tuple]) -> bytes:
    """Zip records written by hand, so a test can lie in them: (name, stored, method, crc, size) each."""
    body, directory, offset = [], [], 0
    for name, stored, method, crc, size in members:
        local = _local(name, method, crc, len(stored), size)
        directory.append(_central(name, method, crc, len(stored), size, offset))
        body += [local, stored]
        offset += len(local) + len(stored)
    cd = b"".join(directory)
    return b"".join(body) + cd + _end(len(members), cd, offset)


def _checkpoint(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None, extra: tuple = ()) -> Path:
    """A torch zip checkpoint laid out as torch writes one, every member STORED unless ``extra`` says."""
    members = [_member("archive/data.pkl", pkl), _member("archive/byteorder", b"little")]
    members += [_member(f"archive/data/{k}", v) for k, v in (storages or {}).items()] + list(extra)
    path.write_bytes(_zip(members + [_member("archive/version", b"3\n")]))
    return path


def _stride0(path: Path) -> Path:
    """A (16384, 8192) float32 view with stride (0, 0) of a 1-element storage: 512 MiB on clone."""
    return _checkpoint(path, _gpt([_tensor("0", 1, 0, (16384, 8192), (0, 0))]), {"0": bytes(4)})


def _out_of_bounds(path: Path) -> Path:
    """A 2**27-element view of a 16-element storage."""
    return _checkpoint(path, _gpt([_tensor("0", 16, 0, (1 << 27,), (1,))]), {"0": bytes(64)})


def _compressed(path: Path) -> Path:
    """A DEFLATE member of 531 KB that inflates to 512 MiB of zeros, declared as a 512 MiB storage."""
    chunk, deflate = bytes(MiB), zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every MiB
    stream, crc = block * 512 + deflate.flush(), 0
    for _ in range(512):
        crc = zlib.crc32(chunk, crc)
    member = ("archive/data/0", stream, zipfile.ZIP_DEFLATED, crc, 512 * MiB)
    return _checkpoint(path, _gpt([_tensor("0", 128 * MiB, 0, (128 * MiB,), (1,))]), extra=(member,))


def _numel_beyond_member(path: Path) -> Path:
    """A storage that declares 2**27 floats (512 MiB) over a 4-byte member."""
    return _checkpoint(path, _gpt([_tensor("0", 128 * MiB, 0, (128 * MiB,), (1,))]), {"0": bytes(4)})


def _views_bomb(path: Path) -> Path:
    """512 distinct in-bounds views of one 1 MiB storage: 512 MiB of rebuilt tensors from a 1 MiB file."""
    numel = MiB // 4
    return _checkpoint(path, _gpt([_tensor("0", numel, k, (numel - 512,), (1,)) for k in range(512)]),
                       {"0": bytes(MiB)})


def _overlapping_storages(path: Path) -> Path:
    """256 storages whose zip members overlap: the local headers come first and each member's data
    runs over the later headers to one shared 1 MiB of zeros. 256 MiB of storages (512 MiB with
    their tensors) from a 1.06 MB file."""
    n, numel = 256, MiB // 4
    head = [_member("archive/data.pkl", _gpt([_tensor(str(k), numel, 0, (numel,), (1,)) for k in range(n)])),
            _member("archive/byteorder", b"little")]
    parts, directory, offset = [], [], 0
    for name, stored, method, crc, size in head:
        parts += [_local(name, method, crc, len(stored), size), stored]
        directory.append(_central(name, method, crc, len(stored), size, offset))
        offset += len(parts[-2]) + len(stored)
    padding = (-offset) % 4
    parts.append(bytes(padding))  # from here on every record starts, and every member's data ends, 4-aligned
    offset += padding
    headers = [_local(f"archive/data/{k}", extra=(-(30 + len(f"archive/data/{k}"))) % 4) for k in range(n)]
    offsets = []
    for header in headers:  # sizes and CRCs live in the central directory; zipfile reads them from there
        offsets.append(offset)
        offset += len(header)
    blob = b"".join(parts + headers) + bytes(MiB)
    for k in range(n):
        start = offsets[k] + len(headers[k])
        size = len(blob) - start
        directory.append(_central(f"archive/data/{k}", 0, zlib.crc32(memoryview(blob)[start:]), size, size, offsets[k]))
    cd = b"".join(directory)
    path.write_bytes(blob + cd + _end(len(directory), cd, len(blob)))
    return path


def _object_bomb(path: Path) -> Path:
    """4 million EMPTY_LIST opcodes (4 MB of pickle): about 250 MiB of lists if all were built."""
    return _checkpoint(path, b"\x80\x02" + b"]" * 4_000_000 + b".")


def _huge_length(path: Path) -> Path:
    """BINBYTES8 announcing 2**40 bytes in a pickle of about a hundred."""
    return _checkpoint(path, b"\x80\x02\x8e" + struct.pack("<Q", 1 << 40) + b"x" * 100 + b".")


_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from export import checkpoints
from export.errors import CheckpointError


def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


checkpoints.read_state_dict(sys.argv[4], "--warm-up")  # imports done, torch's allocator warm
baseline = peak_kib()
try:
    checkpoints.read_state_dict(sys.argv[3], "--sv-model") if sys.argv[2] == "state" else checkpoints.read_gpt(sys.argv[3])
    result = {"error": None, "message": ""}
except CheckpointError as exc:
    result = {"error": type(exc).__name__, "message": str(exc)}
result["growth_mib"] = (peak_kib() - baseline) / 1024
print(json.dumps(result))
"""


def _read_in_child(path: Path, tmp_path: Path, reader: str = "gpt") -> dict:
    """Read ``path`` in a fresh interpreter: the outcome, and its peak RSS growth over the baseline
    taken after imports and a small warm-up read. The peak is the process's VmHWM, not
    ``getrusage().ru_maxrss``: Linux carries ru_maxrss over fork and exec, so a child of this
    (large) pytest process would start with the parent's RSS as its peak and hide growth below it."""
    warm = tmp_path / "warm.ckpt"
    torch.save({"w": torch.zeros(16)}, warm)
    repo = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", _CHILD, repo, reader, str(path), str(warm)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("build,needle", [
    (_stride0, "stride 0"),
    (_out_of_bounds, "reaches element 134217727"),
    (_compressed, "is compressed"),
    (_numel_beyond_member, "declares 536870912 bytes"),
    (_views_bomb, "tensors add up"),
    (_overlapping_storages, "storages add up"),
    (_object_bomb, "more than 500000 opcodes"),
    (_huge_length, "pickle wants 1099511627776 bytes"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_hostile_checkpoint_refused_within_memory_bound(tmp_path, build, needle):
    """Each file is refused with a one-line CheckpointError while the reading process's peak RSS
    grows by less than 64 MiB. Measured (growth in MiB, this reader / the reader before these
    checks, same child, same meter): stride 0, 0.0 / 512 (the clone); compressed member,
    0.5 / 1025 (inflated, then copied); views bomb, 3.8 / 513; overlapping storages, 5.1 / 517;
    object bomb, 43.5 / 284 (its first 500 000 opcodes are allowed to run). The out-of-bounds
    view, the storage declaring more than its member and the huge length cost 0-4 MiB there too,
    but escaped as RuntimeError / MemoryError tracebacks instead of a CheckpointError."""
    path = build(tmp_path / "hostile.ckpt")
    result = _read_in_child(path, tmp_path)
    assert result["error"] in ("CheckpointError", "UnsafeCheckpointError"), result
    assert needle in result["message"] and str(path) in result["message"], result
    assert "\n" not in result["message"]
    assert result["growth_mib"] < 64, result


def test_memory_meter_sees_a_real_read(tmp_path):
    """The child's meter is not blind: reading a legitimate 96 MiB tensor grows the peak by at least that."""
    path = tmp_path / "big.ckpt"
    torch.save({"w": torch.ones(24 * MiB)}, path)
    result = _read_in_child(path, tmp_path, reader="state")
    assert result["error"] is None and result["growth_mib"] >= 96, result


# ---------------------------------------------------------------- one read cannot change another

def _build_on(target: bytes, state: bytes) -> bytes:
    """Push ``target``, BUILD it with ``state``, drop it: what a file does to set attributes on a global."""
    return target + state + b"b0"


@pytest.fixture(scope="module")
def good_sovits(kit):
    return read_sovits(kit / "s2_v2_tiny.pth")


_SLOTSTATE_POISON = b"N" + _d(("to_dict", _g("collections", "OrderedDict"))) + b"\x86"  # (None, {...})


@pytest.mark.parametrize("prelude", [
    _build_on(_g("utils", "HParams"), _SLOTSTATE_POISON),  # unguarded: every later HParams config read as {}
    _build_on(_g("utils", "HParams"), _d(("to_dict", b"N"))),
    _build_on(_g("GPT_SoVITS.utils", "HParams"), _SLOTSTATE_POISON),
    _build_on(_g("collections", "OrderedDict"), b"N" + _d(("__setstate__", b"N")) + b"\x86"),
    _build_on(_g("torch._utils", "_rebuild_tensor_v2"), b"N" + _d(("__defaults__", _t(b"\x88"))) + b"\x86"),
    _build_on(_g("torch", "HalfStorage"), b"N" + _d(("dtype", b"N")) + b"\x86"),
], ids=["hparams-slotstate", "hparams-dict", "gpt_sovits-hparams", "ordereddict", "rebuild-tensor", "storage-type"])
def test_refused_file_cannot_poison_a_later_read(kit, good_sovits, tmp_path, prelude):
    good, before = kit / "s2_v2_tiny.pth", good_sovits
    path = _checkpoint(tmp_path / "poison.ckpt", _payload(prelude=prelude))
    with pytest.raises(UnsafeCheckpointError, match="BUILD on the (global|storage type)") as info:
        read_gpt(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    after = read_sovits(good)
    assert after.config == before.config and isinstance(after.config["model"], dict) and after.config["model"]
    assert after.sha256 == before.sha256 and all(torch.equal(after.state_dict[k], v) for k, v in before.state_dict.items())


def test_hparams_state_cannot_smuggle_globals(kit, tmp_path):
    """An HParams *instance* takes its state, but only as data: a global inside it is refused."""
    hparams = _g("utils", "HParams") + b")\x81" + _d(("model", _d()), ("__class__", _g("utils", "HParams"))) + b"b"
    path = _checkpoint(tmp_path / "smuggle.ckpt", _payload(config=hparams))
    with pytest.raises(UnsafeCheckpointError, match="the global utils.HParams itself"):
        read_gpt(path)
    assert read_sovits(kit / "s2_v2_tiny.pth").config["model"]


# ---------------------------------------------------------------- every failure is one CheckpointError line

def _assert_one_line(info, path: Path) -> None:
    exc = info.value
    assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


_BAD_PICKLES = {
    # what the reader before these checks let escape, and from where
    "size-not-ints": _gpt([_tensor("0", 4, 0, (4,), (1,)).replace(_t(_i(4)), _t(_s("abc")), 1)]),  # TypeError, as_strided
    "ordereddict-args": _payload(_g("collections", "OrderedDict") + _t(_i(1)) + b"R"),  # TypeError, dict(1)
    "hparams-newobj-args": _payload(config=_g("utils", "HParams") + _t(_i(1)) + b"\x81"),  # TypeError, object()
    "int-weight-keys": _payload(b"}(" + _i(7) + _tensor("0", 4, 0, (4,), (1,)) + b"u"),  # AttributeError, startswith
    "mixed-top-keys": b"\x80\x02}(" + _i(1) + _i(1) + _s("a") + _i(2) + b"u.",  # TypeError, sorted
    "list-as-key": _payload(config=b"}(]" + _i(1) + b"u"),  # TypeError, unhashable
    "append-to-dict": _payload(config=b"}" + _i(1) + b"a"),  # AttributeError
    "string-persistent-id": _payload(config=_s("storage") + b"Q"),
    "stack-global-ints": b"\x80\x04" + _i(1) + _i(2) + b"\x93.",  # UnpicklingError
    "no-stop": b"\x80\x02}",  # EOFError
    "unknown-opcode": b"\x80\x02\xff.",  # UnpicklingError
    "huge-long4": b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b".",
    "huge-binunicode": b"\x80\x02X" + struct.pack("<I", 2**32 - 1) + b"abc.",
    "memo-miss": b"\x80\x02h\x07.",  # KeyError
    "tuple-without-mark": b"\x80\x02t.",
    "pop-empty": b"\x80\x020.",
    "inst-opcode": b"(X\x02\x00\x00\x00idios\nsystem\n.",  # protocol 0's INST: a call, refused as an opcode
    "ext-opcode": b"\x80\x02\x82\x01.",
    "bad-utf8": b"\x80\x02X\x02\x00\x00\x00\xff\xfe.",
    "not-a-pickle": b"hello world",
    "rebuild-with-three-args": _payload(b"}(" + _s("w") + _g("torch._utils", "_rebuild_tensor_v2") + _t(_i(1), _i(2), _i(3))
                                        + b"Ru"),
    "float-storage-numel": _payload(b"}(" + _s("w") + _tensor("0", 4, 0, (4,), (1,)).replace(_i(4), b"G" + bytes(8), 1)
                                    + b"u"),
    "tensor-as-text-embedding": _payload(b"}(" + _s("model.ar_text_embedding.word_embeddings.weight")
                                         + _tensor("0", 4, 0, (), ()) + b"u"),  # IndexError, shape[0]
}


@pytest.mark.parametrize("name", sorted(_BAD_PICKLES))
def test_malformed_pickles_are_one_line_checkpoint_errors(tmp_path, name):
    path = _checkpoint(tmp_path / f"{name}.ckpt", _BAD_PICKLES[name], {"0": bytes(16)})
    with pytest.raises(CheckpointError) as info:
        read_gpt(path)
    _assert_one_line(info, path)
    with pytest.raises(CheckpointError) as info:
        read_sovits(path)
    _assert_one_line(info, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path, "--sv-model")
    _assert_one_line(info, path)


def test_deep_nesting_is_a_checkpoint_error(tmp_path):
    """200 000 nested lists: the reader before this recursed into them (RecursionError)."""
    depth = 200_000
    nested = b"]" * depth + b"a" * (depth - 1)
    path = _checkpoint(tmp_path / "deep.ckpt", _payload(config=_d(("model", nested))))
    with pytest.raises(UnsafeCheckpointError, match="nested deeper than 100 levels") as info:
        read_gpt(path)
    _assert_one_line(info, path)


def test_cycle_is_a_checkpoint_error(tmp_path):
    path = _checkpoint(tmp_path / "cycle.ckpt", _payload(config=_d(("model", b"]q\x01h\x01a"))))
    with pytest.raises(UnsafeCheckpointError, match="cycle") as info:
        read_gpt(path)
    _assert_one_line(info, path)


def test_shared_structure_is_not_walked_exponentially(tmp_path):
    """90 levels of ``(x, x)`` over one list (2**90 paths through 91 objects) read in moments."""
    program = b"]q\x00"
    for n in range(90):
        program += b"0h" + bytes([n]) + b"h" + bytes([n]) + b"\x86q" + bytes([n + 1])  # pop x, push (x, x)
    path = _checkpoint(tmp_path / "dag.ckpt", _payload(config=_d(("model", _d()), ("x", program))))
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="no GPT weights"):
        read_gpt(path)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("numel,offset,size,stride,needle", [
    (16, 16, (1,), (1,), "reaches element 16"),
    (16, 0, (17,), (1,), "reaches element 16"),
    (16, 0, (4, 4), (5, 1), "reaches element 18"),
    (16, 3, (4,), (-1,), "negative"),
    (16, -1, (4,), (1,), "negative"),
    (16, 0, (-4,), (1,), "negative"),
    (16, 0, (2,), (0,), "stride 0"),
    (16, 17, (0,), (1,), "empty tensor at offset 17"),
])
def test_views_outside_their_storage_are_refused(tmp_path, numel, offset, size, stride, needle):
    path = _checkpoint(tmp_path / "view.ckpt", _gpt([_tensor("0", numel, offset, size, stride)]), {"0": bytes(4 * numel)})
    with pytest.raises(UnsafeCheckpointError, match=needle) as info:
        read_gpt(path)
    _assert_one_line(info, path)


def test_legitimate_views_and_tied_weights_read_as_torch_saved_them(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {"full": base, "t": base.t(), "slice": base[1:, ::2], "row": base[2], "scalar": base[3, 4],
             "one": base[:1], "empty": base[:0], "flag": torch.tensor([True, False, True]), "tied": base}
    torch.save(saved, tmp_path / "views.ckpt")
    state, _ = read_state_dict(tmp_path / "views.ckpt", "--sv-model")
    assert list(state) == list(saved)
    for key, value in saved.items():
        assert state[key].shape == value.shape and state[key].dtype == value.dtype and torch.equal(state[key], value), key
    assert state["tied"] is state["full"]


def test_protocol_4_and_frames_read(tmp_path):
    saved = {"a": torch.randn(3, 5), "b": torch.arange(7)}
    torch.save(saved, tmp_path / "p4.ckpt", pickle_protocol=4)
    state, _ = read_state_dict(tmp_path / "p4.ckpt", "--sv-model")
    assert all(torch.equal(state[k], v) for k, v in saved.items())
