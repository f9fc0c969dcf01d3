"""Random-weight GPT-SoVITS v4 files in the official on-disk formats: the base ``s2Gv4.pth``, a
LoRA file on top of it and the vocoder, so v4 runs offline end to end (``gsv-triton demo-voice
--sovits-version v4``).

Formats as upstream writes them (see the conformance kit's v4 READMEs): the base is a plain
``torch.save`` zip of ``{"weight": fp16 state, "config": utils.HParams, "info"}`` without
``enc_q``; the LoRA file is the same pickle with ``lora_rank`` and the header ``04``, holding the
peft-named A/B matrices of every DiT attention projection plus the full tensors of the modules
LoRA training leaves trainable (ref_enc, bridge, wns1, linear_mel) and the buffers upstream saves;
the vocoder is a bare float32 state dict of the Generator after ``remove_weight_norm``. Sizes:
``full`` = upstream's (the key -> shape table of ``layout_s2_v4.json``), ``tiny`` = the kit's.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from export import demo
from export.checkpoints import V4_LORA_TARGETS

ARCH = {
    "full": {"c2": 512, "wns1_layers": 8, "dit": (1024, 22, 16), "vocoder_channels": 512},
    "tiny": {"c2": 128, "wns1_layers": 4, "dit": (128, 2, 2), "vocoder_channels": 128},
}
MEL_DIM = 100
TEXT_CONV_LAYERS = 4
VOC_UPSAMPLE = ((10, 20), (6, 12), (2, 4), (2, 4), (2, 4))  # (stride, kernel), upstream init_vocoder
VOC_RESBLOCKS = (3, 7, 11)
LORA_TRAINABLE = ("ref_enc.", "bridge.", "wns1.", "linear_mel.")
LORA_BUFFERS = ("quantizer.vq.layers.0._codebook.", "cfm.estimator.rotary_embed.inv_freq")


@dataclass(frozen=True)
class V4DemoFiles:
    base: Path
    lora: Path
    vocoder: Path


def s2_v4_config(size: str) -> dict:
    cfg = demo.s2_config("v2", size)
    cfg["model"]["version"] = "v4"
    cfg["model"]["upsample_initial_channel"] = 512  # v2's decoder size, unused by v4; kept as upstream's
    cfg["version"] = "v4"
    return cfg


def s2_v4_layout(model: dict, size: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a v4 base file: the v2 encoder side (no flow/decoder) plus bridge, wns1,
    linear_mel and the CFM's DiT."""
    arch = ARCH[size]
    keys = {k: v for k, v in demo.s2_layout(model).items() if not k.startswith(("dec.", "flow."))}
    c2, layers, gin = arch["c2"], arch["wns1_layers"], model["gin_channels"]
    demo._conv(keys, "bridge.0", c2, model["inter_channels"], 1)
    demo._conv(keys, "wns1.pre", c2, c2, 1)
    for i in range(layers):
        demo._wn_conv(keys, f"wns1.enc.in_layers.{i}", 2 * c2, c2, 5)
        demo._wn_conv(keys, f"wns1.enc.res_skip_layers.{i}", 2 * c2 if i < layers - 1 else c2, c2, 1)
    demo._wn_conv(keys, "wns1.enc.cond_layer", 2 * c2 * layers, gin, 1)
    demo._conv(keys, "wns1.proj", c2, c2, 1)
    demo._conv(keys, "linear_mel", MEL_DIM, c2, 1)
    keys.update(_dit_layout(*arch["dit"], c2))
    return keys


def _linear(keys: dict, name: str, out: int, inp: int) -> None:
    keys[name + ".weight"], keys[name + ".bias"] = (out, inp), (out,)


def _dit_layout(dim: int, depth: int, heads: int, text_dim: int) -> dict[str, tuple[int, ...]]:
    p, keys = "cfm.estimator.", {}
    for emb in ("time_embed", "d_embed"):
        _linear(keys, p + f"{emb}.time_mlp.0", dim, 256)
        _linear(keys, p + f"{emb}.time_mlp.2", dim, dim)
    for i in range(TEXT_CONV_LAYERS):
        b = p + f"text_embed.text_blocks.{i}."
        keys[b + "dwconv.weight"], keys[b + "dwconv.bias"] = (text_dim, 1, 7), (text_dim,)
        keys[b + "norm.weight"], keys[b + "norm.bias"] = (text_dim,), (text_dim,)
        _linear(keys, b + "pwconv1", 2 * text_dim, text_dim)
        keys[b + "grn.gamma"], keys[b + "grn.beta"] = (1, 1, 2 * text_dim), (1, 1, 2 * text_dim)
        _linear(keys, b + "pwconv2", text_dim, 2 * text_dim)
    _linear(keys, p + "input_embed.proj", dim, 2 * MEL_DIM + text_dim)
    for c in (0, 2):
        demo._conv(keys, p + f"input_embed.conv_pos_embed.conv1d.{c}", dim, dim // 16, 31)
    keys[p + "rotary_embed.inv_freq"] = (32,)
    inner = 64 * heads
    for i in range(depth):
        b = p + f"transformer_blocks.{i}."
        _linear(keys, b + "attn_norm.linear", 6 * dim, dim)
        for proj in ("to_q", "to_k", "to_v"):
            _linear(keys, b + f"attn.{proj}", inner, dim)
        _linear(keys, b + "attn.to_out.0", dim, inner)
        _linear(keys, b + "ff.ff.0.0", 2 * dim, dim)
        _linear(keys, b + "ff.ff.2", dim, 2 * dim)
    _linear(keys, p + "norm_out.linear", 2 * dim, dim)
    _linear(keys, p + "proj_out", MEL_DIM, dim)
    return keys


def vocoder_layout(size: str) -> dict[str, tuple[int, ...]]:
    ch = ARCH[size]["vocoder_channels"]
    keys: dict[str, tuple[int, ...]] = {}
    demo._conv(keys, "conv_pre", ch, MEL_DIM, 7)
    j = 0
    for i, (_u, k) in enumerate(VOC_UPSAMPLE):
        cin, cout = ch // 2**i, ch // 2 ** (i + 1)
        keys[f"ups.{i}.weight"], keys[f"ups.{i}.bias"] = (cin, cout, k), (cout,)
        for rk in VOC_RESBLOCKS:
            for m in range(3):
                demo._conv(keys, f"resblocks.{j}.convs1.{m}", cout, cout, rk)
                demo._conv(keys, f"resblocks.{j}.convs2.{m}", cout, cout, rk)
            j += 1
    demo._conv(keys, "conv_post", 1, ch // 2 ** len(VOC_UPSAMPLE), 7)
    return keys


def _value(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if name.endswith("rotary_embed.inv_freq"):
        return 1.0 / (10000 ** (torch.arange(0, 2 * shape[0], 2).float() / (2 * shape[0])))
    if name.endswith(("norm.weight", "grn.gamma")):
        return torch.ones(shape)
    if name.endswith("grn.beta"):
        return torch.zeros(shape)
    return demo._random_tensor(name, shape, gen)


def random_v4_state(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: _value(k, tuple(s), gen).to(torch.float16) for k, s in layout.items()}


def write_base(path: Path, size: str, seed: int) -> Path:
    cfg = s2_v4_config(size)
    state = random_v4_state(s2_v4_layout(cfg["model"], size), seed + 1)
    demo._save_s2({"weight": state, "config": cfg, "info": "demo_e1_s1 (gsv-triton demo v4)"}, path, b"PK")
    return path


def lora_key(target_weight: str, which: str) -> str:
    """``cfm.estimator.X.weight`` -> the peft name of its LoRA ``which`` ("A" or "B") matrix."""
    module = target_weight[len("cfm."):-len(".weight")]
    return f"cfm.base_model.model.{module}.lora_{which}.default.weight"


def write_lora(path: Path, base_state: dict[str, torch.Tensor], config: dict, rank: int, seed: int,
               ab: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Write a v4 LoRA file for ``base_state`` as upstream's LoRA training saves one. ``ab`` maps a
    target weight key to its (A [r, in], B [out, r]); missing targets get random ones. Returns the
    A/B used (as stored, fp16)."""
    gen = torch.Generator().manual_seed(seed + 100)
    targets = [k for k in base_state if k.startswith("cfm.estimator.transformer_blocks.")
               and k.rsplit(".attn.", 1)[-1][:-len(".weight")] in V4_LORA_TARGETS and ".attn." in k
               and k.endswith(".weight")]
    used, weight = {}, {}
    for key in sorted(targets):
        out, inp = base_state[key].shape
        a, b = (ab or {}).get(key) or (torch.randn(rank, inp, generator=gen) * 0.1,
                                       torch.randn(out, rank, generator=gen) * 0.1)
        used[key] = (a.to(torch.float16), b.to(torch.float16))
        weight[lora_key(key, "A")], weight[lora_key(key, "B")] = used[key]
    for key, value in base_state.items():
        if key.startswith(LORA_TRAINABLE):
            weight[key] = (value.float() + torch.randn(value.shape, generator=gen) * 0.02).to(torch.float16)
        elif key.startswith(LORA_BUFFERS):
            weight[key.replace("cfm.", "cfm.base_model.model.", 1) if key.startswith("cfm.") else key] = value.clone()
    cfg = copy.deepcopy(config)
    cfg.setdefault("train", {})["lora_rank"] = str(rank)
    demo._save_s2({"weight": weight, "config": cfg, "info": "demo_e1_s1 (gsv-triton demo v4 LoRA)",
                   "lora_rank": rank}, path, b"04")
    return used


def vocoder_state(size: str, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 2)
    out = {}
    for key, shape in vocoder_layout(size).items():
        if key.endswith(".bias"):
            out[key] = torch.zeros(shape)
            continue
        fan_in = shape[0] * shape[2] if key.startswith("ups.") else math.prod(shape[1:])
        out[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    return out


def write_vocoder(path: Path, size: str, seed: int) -> Path:
    torch.save(vocoder_state(size, seed), path)
    return path


def write_demo_v4(out: Path, size: str, seed: int, rank: int = 8, lora_name: str = "sovits.pth") -> V4DemoFiles:
    """Base ``s2Gv4.pth``, a LoRA (``lora_name``) on it and ``vocoder.pth`` in ``out``."""
    from export.checkpoints import load_pickle_zip

    base = write_base(out / "s2Gv4.pth", size, seed)
    loaded = load_pickle_zip(base, base.read_bytes())
    write_lora(out / lora_name, loaded["weight"], loaded["config"], rank, seed)
    return V4DemoFiles(base, out / lora_name, write_vocoder(out / "vocoder.pth", size, seed))
