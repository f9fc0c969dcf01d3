"""A random-weight G2PW model in upstream's ``G2PWModel`` layout, for the offline demo.

Upstream GPT-SoVITS reads Chinese polyphones with G2PW (``GPT_SoVITS/text/G2PWModel``, a
download).  The demo writes a stand-in with the same files and the same ONNX interface, so
the whole path (tokenizing, context windows, label masks, argmax, phrase corrections) runs
offline; its readings are arbitrary among each character's own readings.

Dictionaries: ``char_bopomofo_dict.json`` and ``bopomofo_to_pinyin_wo_tune_dict.json`` are
the ones the ``g2pw`` package ships (read from its installed folder as data); characters
with two or more readings become ``POLYPHONIC_CHARS.txt``, the others
``MONOPHONIC_CHARS.txt``, leaving out readings the v2 phone table cannot voice.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import InputError

CONFIG = """# G2PWModel config.py (gsv-triton demo stand-in; random weights)
model_source = 'bert-base-chinese'
window_size = 32
use_mask = True
use_conditional = True
use_char_phoneme = False
"""
VOCAB_SIZE = 21128


def _g2pw_package_dir() -> Path:
    spec = importlib.util.find_spec("g2pw")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the demo G2PW needs the g2pw package's dictionaries: pip install g2pw==0.1.2")
    return Path(list(spec.submodule_search_locations)[0])


def _voiceable(bopomofo: str, to_pinyin: dict[str, str]) -> bool:
    from python_backend.text.pinyin_phones import syllable_phones

    if not bopomofo or bopomofo[-1] not in "12345":
        return False
    pinyin = to_pinyin.get(bopomofo[:-1])
    if pinyin is None:
        return False
    try:
        syllable_phones(pinyin)
    except (KeyError, ValueError):
        return False
    return True


def _graph(n_chars: int, n_labels: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((n_chars, n_labels)).astype(np.float32), "char_logits"),
        numpy_helper.from_array((rng.standard_normal((VOCAB_SIZE, 1)) * 0.1).astype(np.float32), "token_bias"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        numpy_helper.from_array(np.array([1e4], np.float32), "big"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["char_logits", "char_ids"], ["per_char"], axis=0),          # [n, L]
        helper.make_node("Gather", ["token_bias", "input_ids"], ["tok"], axis=0),              # [b, s, 1]
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),         # [b, s]
        helper.make_node("Unsqueeze", ["mask_f", "axis_last"], ["mask_3"]),                     # [b, s, 1]
        helper.make_node("Mul", ["tok", "mask_3"], ["tok_masked"]),
        helper.make_node("ReduceSum", ["tok_masked", "axis1"], ["ctx"], keepdims=0),            # [b, 1]
        helper.make_node("Add", ["per_char", "ctx"], ["logits"]),                               # [n, L]
        helper.make_node("Sub", ["phoneme_mask", "one"], ["off"]),
        helper.make_node("Mul", ["off", "big"], ["penalty"]),
        helper.make_node("Add", ["logits", "penalty"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=1),
    ]
    weights.append(numpy_helper.from_array(np.array([2], np.int64), "axis_last"))
    graph = helper.make_graph(
        nodes, "g2pw_demo",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"]),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
                helper.make_tensor_value_info("phoneme_mask", TensorProto.FLOAT, ["n", n_labels]),
                helper.make_tensor_value_info("char_ids", TensorProto.INT64, ["n"]),
                helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["n"])],
        outputs=[helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", n_labels])],
        initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def write_demo_g2pw(out_dir: Path, seed: int = 0) -> Path:
    """Write ``out_dir/G2PWModel`` (random weights, real dictionaries); returns the folder."""
    src = _g2pw_package_dir()
    folder = Path(out_dir) / "G2PWModel"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("char_bopomofo_dict.json", "bopomofo_to_pinyin_wo_tune_dict.json"):
        shutil.copy2(src / name, folder / name)
    readings = json.loads((src / "char_bopomofo_dict.json").read_text(encoding="utf-8"))
    to_pinyin = json.loads((src / "bopomofo_to_pinyin_wo_tune_dict.json").read_text(encoding="utf-8"))
    poly, mono = [], []
    for char, options in readings.items():
        kept = [b for b in options if _voiceable(b, to_pinyin)]
        if len(kept) >= 2:
            poly.extend((char, b) for b in kept)
        elif kept:
            mono.append((char, kept[0]))
    (folder / "POLYPHONIC_CHARS.txt").write_text("".join(f"{c}\t{b}\n" for c, b in poly), encoding="utf-8")
    (folder / "MONOPHONIC_CHARS.txt").write_text("".join(f"{c}\t{b}\n" for c, b in mono), encoding="utf-8")
    (folder / "config.py").write_text(CONFIG, encoding="utf-8")
    (folder / "version").write_text("1.1\n")
    n_chars = len({c for c, _ in poly})
    n_labels = len({b for _, b in poly})
    onnx.save(_graph(n_chars, n_labels, seed), str(folder / "g2pW.onnx"))
    return folder
