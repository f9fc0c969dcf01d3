"""The decode-side KV cache: caller-owned buffers the ``gpt_step`` graph reads in place.

Layout: ``k``/``v`` are ``[L, B, H, C, hd]`` float32 arrays; ``k[i]`` (one layer, contiguous)
is fed to the graph as ``past_k_<i>`` without a copy. ``C`` is the capacity; columns
``[0, length)`` are in use and every row writes its next key at column ``length`` (rows are
LEFT-padded, as in the server's in-flight batch). ``mask`` is ``[B, C + 1]`` float32: 1 for a
valid key, 0 for padding and unused capacity, and its last column (the new token itself) is
always 1, so it is the graph's ``attn_mask`` as is.

Capacity grows by ``spare`` columns when full: a step reads every column up to ``C``, so
spare columns cost read bandwidth, and regrowing copies the cache, so few large regrowths
cost copies; 32 keeps both small (one copy per 32 steps, at most 31 idle columns).

Device residence (the CUDA decode step, ``GPTRunner`` with I/O binding): :meth:`on_device`
uploads ``k``/``v`` once as onnxruntime ``OrtValue`` buffers of the same shape, and
:meth:`append_on_device` writes each step's new keys into them in place with a small scatter
graph (:func:`append_graph`) whose outputs are bound to its inputs, so only the mask (small,
kept on the host) and the logits cross to and from the device per step. The host arrays are
brought up to date only when the batch changes shape (merge, select, regrowth) or someone
reads ``k``/``v``; the device copy is then dropped and uploaded again at the next step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

SPARE = 32
APPEND_OPSET = 17


def append_graph(n_layer: int) -> bytes:
    """``k_out_<i> = k_<i>`` with ``new_k[i]`` written at column ``col`` (ScatterElements, axis 2),
    the same for ``v``: run with ``k_out_<i>`` bound to the buffer of ``k_<i>`` it updates in place
    (onnxruntime's CPU and CUDA ScatterElements copy data to output only when they are different
    buffers, so the write is one column, not a copy of the cache)."""
    dims = ["batch", "heads", "capacity", "head_dim"]
    new_dims = ["layers", "batch", "heads", 1, "head_dim"]
    inputs = [helper.make_tensor_value_info("col", TensorProto.INT64, []),
              helper.make_tensor_value_info("new_k", TensorProto.FLOAT, new_dims),
              helper.make_tensor_value_info("new_v", TensorProto.FLOAT, new_dims)]
    outputs, nodes, inits = [], [], []
    for i in range(n_layer):
        inits.append(helper.make_tensor(f"layer_{i}", TensorProto.INT64, [], [i]))
        for kv in "kv":
            inputs.append(helper.make_tensor_value_info(f"{kv}_{i}", TensorProto.FLOAT, dims))
            outputs.append(helper.make_tensor_value_info(f"{kv}_out_{i}", TensorProto.FLOAT, dims))
            nodes += [helper.make_node("Gather", [f"new_{kv}", f"layer_{i}"], [f"upd_{kv}_{i}"], axis=0),
                      helper.make_node("Shape", [f"upd_{kv}_{i}"], [f"shape_{kv}_{i}"]),
                      helper.make_node("Expand", ["col", f"shape_{kv}_{i}"], [f"idx_{kv}_{i}"]),
                      helper.make_node("ScatterElements", [f"{kv}_{i}", f"idx_{kv}_{i}", f"upd_{kv}_{i}"],
                                       [f"{kv}_out_{i}"], axis=2)]
    model = helper.make_model(helper.make_graph(nodes, "kv_append", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", APPEND_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass
class DeviceBuffers:
    """One ``OrtValue`` per layer for keys and values, on ``device`` (``cuda`` or ``cpu``)."""

    device: str
    k: list
    v: list

    @classmethod
    def upload(cls, k: np.ndarray, v: np.ndarray, device: str) -> "DeviceBuffers":
        def put(a):
            return ort.OrtValue.ortvalue_from_numpy(np.array(a, copy=True), device, 0)
        return cls(device, [put(k[i]) for i in range(k.shape[0])], [put(v[i]) for i in range(v.shape[0])])


class KVCache:
    def __init__(self, k: np.ndarray, v: np.ndarray, mask: np.ndarray, length: int, spare: int = SPARE):
        self._k, self._v, self.mask, self.length, self.spare = k, v, mask, length, spare
        self._device: DeviceBuffers | None = None
        self._host_stale = False  # the device buffers hold keys the host arrays do not

    # ------------------------------------------------------------ host arrays (synced from the device on read)
    @property
    def k(self) -> np.ndarray:
        self.sync_host()
        return self._k

    @k.setter
    def k(self, value: np.ndarray) -> None:
        self._k = value

    @property
    def v(self) -> np.ndarray:
        self.sync_host()
        return self._v

    @v.setter
    def v(self, value: np.ndarray) -> None:
        self._v = value

    # ------------------------------------------------------------ construction
    @classmethod
    def empty(cls, n_layer: int, batch: int, n_head: int, head_dim: int, length: int, spare: int = SPARE) -> "KVCache":
        """A cache of ``length`` columns, all padding (callers fill rows)."""
        cap = length + spare
        k = np.zeros((n_layer, batch, n_head, cap, head_dim), np.float32)
        mask = np.zeros((batch, cap + 1), np.float32)
        mask[:, cap] = 1.0
        return cls(k, np.zeros_like(k), mask, length, spare)

    @classmethod
    def from_prefill(cls, k: np.ndarray, v: np.ndarray, n_head: int, spare: int = SPARE) -> "KVCache":
        """From the prefill graph's ``[L, B, S, D]`` caches (rows of one prefill have equal S)."""
        n_layer, batch, s, d = k.shape
        cache = cls.empty(n_layer, batch, n_head, d // n_head, s, spare)
        cache.k[:, :, :, :s] = k.reshape(n_layer, batch, s, n_head, d // n_head).transpose(0, 1, 3, 2, 4)
        cache.v[:, :, :, :s] = v.reshape(n_layer, batch, s, n_head, d // n_head).transpose(0, 1, 3, 2, 4)
        cache.mask[:, :s] = 1.0
        return cache

    @classmethod
    def merge(cls, parts: list["KVCache"]) -> "KVCache":
        """Rows of every part, in order, right-aligned at the longest part's length."""
        length = max(p.length for p in parts)
        first = parts[0]
        n_layer, _, n_head, _, head_dim = first.k.shape
        out = cls.empty(n_layer, sum(p.batch for p in parts), n_head, head_dim, length, first.spare)
        row = 0
        for p in parts:
            p.drop_device()
            rows, shift = slice(row, row + p.batch), length - p.length
            out.k[:, rows, :, shift:length] = p.k[:, :, :, : p.length]
            out.v[:, rows, :, shift:length] = p.v[:, :, :, : p.length]
            out.mask[rows, shift:length] = p.mask[:, : p.length]
            row += p.batch
        return out

    # ------------------------------------------------------------ properties
    @property
    def batch(self) -> int:
        return self._k.shape[1]

    @property
    def capacity(self) -> int:
        return self._k.shape[3]

    @property
    def device(self) -> str | None:
        """Where the current buffers live besides the host (None: host only)."""
        return None if self._device is None else self._device.device

    def feeds(self) -> dict[str, np.ndarray]:
        """The step graph's cache inputs: ``attn_mask`` and one ``past_k_<i>``/``past_v_<i>`` per layer."""
        feeds = {"attn_mask": self.mask}
        for i in range(self.k.shape[0]):
            feeds[f"past_k_{i}"] = self.k[i]
            feeds[f"past_v_{i}"] = self.v[i]
        return feeds

    def keys(self, row: int) -> np.ndarray:
        """The valid keys of one row as ``[L, n_valid, D]`` (tests and diagnostics)."""
        cols = np.flatnonzero(self.mask[row, : self.length] > 0.5)
        k = self.k[:, row][:, :, cols]  # [L, H, n, hd]
        return k.transpose(0, 2, 1, 3).reshape(k.shape[0], cols.size, -1)

    # ------------------------------------------------------------ updates
    def append(self, new_k: np.ndarray, new_v: np.ndarray) -> None:
        """Write the step graph's ``new_k``/``new_v`` ``[L, B, H, 1, hd]`` at column ``length``."""
        self.drop_device()
        if self.length == self.capacity:
            self._regrow(0)
        col = self.length
        self.k[:, :, :, col] = new_k[:, :, :, 0]
        self.v[:, :, :, col] = new_v[:, :, :, 0]
        self.mask[:, col] = 1.0
        self.length += 1

    def select(self, rows: list[int]) -> None:
        """Keep ``rows`` (in that order) and drop leading columns that are padding for all of them."""
        self.drop_device()
        mask = self.mask[rows, : self.length]
        valid = mask.any(axis=0)
        first = int(np.argmax(valid)) if valid.any() else self.length
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.mask = self.mask[rows]
        self._regrow(first)

    # ------------------------------------------------------------ device residence
    def on_device(self, device: str) -> DeviceBuffers:
        """The per-layer device buffers, uploaded from the host arrays if not there yet."""
        if self._device is not None and self._device.device != device:
            self.drop_device()
        if self._device is None:
            self._device = DeviceBuffers.upload(self._k, self._v, device)
        return self._device

    def append_on_device(self, appender: ort.InferenceSession, new_k: ort.OrtValue, new_v: ort.OrtValue) -> None:
        """:meth:`append` for a cache on the device: ``new_k``/``new_v`` are the step's bound outputs.
        A full cache regrows on the host first, exactly where :meth:`append` would."""
        if self.length == self.capacity:
            self.append(new_k.numpy(), new_v.numpy())
            return
        bufs = self._device
        io = appender.io_binding()
        io.bind_cpu_input("col", np.array(self.length, np.int64))
        io.bind_ortvalue_input("new_k", new_k)
        io.bind_ortvalue_input("new_v", new_v)
        for i in range(len(bufs.k)):
            for kv, buf in (("k", bufs.k[i]), ("v", bufs.v[i])):
                io.bind_ortvalue_input(f"{kv}_{i}", buf)
                io.bind_ortvalue_output(f"{kv}_out_{i}", buf)
        appender.run_with_iobinding(io)
        self.mask[:, self.length] = 1.0
        self.length += 1
        self._host_stale = True

    def sync_host(self) -> None:
        """Copy the device buffers' keys back into the host arrays if they are newer."""
        if self._host_stale and self._device is not None:
            for i in range(len(self._device.k)):
                self._k[i] = self._device.k[i].numpy()
                self._v[i] = self._device.v[i].numpy()
        self._host_stale = False

    def drop_device(self) -> None:
        """Back to host only (before the batch changes shape)."""
        self.sync_host()
        self._device = None

    def _regrow(self, first: int) -> None:
        """Copy columns ``[first, length)`` into fresh buffers with ``spare`` free columns."""
        keep = self.length - first
        n_layer, batch, n_head, _, head_dim = self.k.shape
        fresh = KVCache.empty(n_layer, batch, n_head, head_dim, keep, self.spare)
        fresh.k[:, :, :, :keep] = self.k[:, :, :, first: self.length]
        fresh.v[:, :, :, :keep] = self.v[:, :, :, first: self.length]
        fresh.mask[:, :keep] = self.mask[:, first: self.length]
        self.k, self.v, self.mask, self.length = fresh.k, fresh.v, fresh.mask, keep
