"""Random-weight GPT-SoVITS checkpoints in the official on-disk formats, for offline demos and tests.

The key/shape tables are built from the architectures' hyperparameters (the same tables
official pretrained files have: tests compare them with the conformance kit's layouts), the
files are written the way training writes them (float16 weights, ``utils.HParams`` config for
SoVITS, ``05``/``06`` header for v2Pro/v2ProPlus), and read back through the normal reader.
"""
from __future__ import annotations

import copy
import io
import math
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

S1_CONFIG = {
    "train": {"seed": 1234, "epochs": 20, "batch_size": 8, "save_every_n_epoch": 1, "precision": "16-mixed", "gradient_clip": 1.0},
    "optimizer": {"lr": 0.01, "lr_init": 1e-05, "lr_end": 0.0001, "warmup_steps": 2000, "decay_steps": 40000},
    "data": {"max_eval_sample": 8, "max_sec": 54, "num_workers": 4, "pad_val": 1024},
    "model": {"vocab_size": 1025, "phoneme_vocab_size": 732, "embedding_dim": 512, "hidden_dim": 512, "head": 16,
              "linear_units": 2048, "n_layer": 24, "dropout": 0, "EOS": 1024, "random_bert": 0},
    "inference": {"top_k": 15},
}
S1_TINY = {"embedding_dim": 64, "hidden_dim": 64, "head": 4, "linear_units": 256, "n_layer": 2}

S2_CONFIG = {
    "train": {"log_interval": 100, "eval_interval": 500, "seed": 1234, "epochs": 100, "learning_rate": 0.0001,
              "betas": [0.8, 0.99], "eps": 1e-09, "batch_size": 32, "fp16_run": True, "lr_decay": 0.999875,
              "segment_size": 20480, "init_lr_ratio": 1, "warmup_epochs": 0, "c_mel": 45, "c_kl": 1.0,
              "text_low_lr_rate": 0.4, "grad_ckpt": False},
    "data": {"max_wav_value": 32768.0, "sampling_rate": 32000, "filter_length": 2048, "hop_length": 640,
             "win_length": 2048, "n_mel_channels": 128, "mel_fmin": 0.0, "mel_fmax": None, "add_blank": True,
             "n_speakers": 300, "cleaned_text": True},
    "model": {"inter_channels": 192, "hidden_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
              "kernel_size": 3, "p_dropout": 0.1, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
              "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "upsample_rates": [10, 8, 2, 2, 2],
              "upsample_initial_channel": 512, "upsample_kernel_sizes": [16, 16, 8, 2, 2], "n_layers_q": 3,
              "use_spectral_norm": False, "gin_channels": 512, "semantic_frame_rate": "25hz",
              "freeze_quantizer": True, "version": "v2"},
    "s2_ckpt_dir": "logs/s2/big2k1",
    "content_module": "cnhubert",
}
S2_VERSION_MODEL = {
    "v2": {},
    "v2Pro": {"p_dropout": 0.0, "gin_channels": 1024, "version": "v2Pro"},
    "v2ProPlus": {"p_dropout": 0.0, "gin_channels": 1024, "upsample_initial_channel": 768,
                  "upsample_kernel_sizes": [20, 16, 8, 2, 2], "version": "v2ProPlus"},
}
S2_TINY = {"filter_channels": 192, "n_layers": 2, "upsample_initial_channel": 32}
S2_HEADERS = {"v2": b"PK", "v2Pro": b"05", "v2ProPlus": b"06"}
VERSIONS = tuple(S2_HEADERS)


def s1_config(size: str) -> dict:
    cfg = copy.deepcopy(S1_CONFIG)
    if size == "tiny":
        cfg["model"].update(S1_TINY)
    return cfg


def s2_config(version: str, size: str) -> dict:
    cfg = copy.deepcopy(S2_CONFIG)
    cfg["model"].update(S2_VERSION_MODEL[version])
    if size == "tiny":
        cfg["model"].update(S2_TINY)
    return cfg


def s1_layout(model: dict) -> dict[str, tuple[int, ...]]:
    d, ffn = model["embedding_dim"], 4 * model["embedding_dim"]  # upstream sizes the FFN 4 * width
    keys = {"model.bert_proj.weight": (d, 1024), "model.bert_proj.bias": (d,),
            "model.ar_text_embedding.word_embeddings.weight": (model["phoneme_vocab_size"], d),
            "model.ar_text_position.alpha": (1,),
            "model.ar_audio_embedding.word_embeddings.weight": (model["vocab_size"], d),
            "model.ar_audio_position.alpha": (1,)}
    for i in range(model["n_layer"]):
        p = f"model.h.layers.{i}."
        keys.update({p + "self_attn.in_proj_weight": (3 * d, d), p + "self_attn.in_proj_bias": (3 * d,),
                     p + "self_attn.out_proj.weight": (d, d), p + "self_attn.out_proj.bias": (d,),
                     p + "linear1.weight": (ffn, d), p + "linear1.bias": (ffn,),
                     p + "linear2.weight": (d, ffn), p + "linear2.bias": (d,),
                     p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "norm2.weight": (d,), p + "norm2.bias": (d,)})
    keys["model.ar_predict_layer.weight"] = (model["vocab_size"], d)
    return keys


def _conv(keys: dict, name: str, out: int, inp: int, k: int, bias: bool = True) -> None:
    keys[name + ".weight"] = (out, inp, k)
    if bias:
        keys[name + ".bias"] = (out,)


def _wn_conv(keys: dict, name: str, out: int, inp: int, k: int, transposed: bool = False) -> None:
    keys[name + ".bias"] = (out,)
    keys[name + ".weight_g"] = (inp if transposed else out, 1, 1)
    keys[name + ".weight_v"] = (inp, out, k) if transposed else (out, inp, k)


def _encoder(keys: dict, prefix: str, n: int, h: int, f: int, heads: int, k: int, window: int = 4) -> None:
    for i in range(n):
        a = f"{prefix}.attn_layers.{i}."
        keys[a + "emb_rel_k"] = (1, 2 * window + 1, h // heads)
        keys[a + "emb_rel_v"] = (1, 2 * window + 1, h // heads)
        for c in "qkvo":
            _conv(keys, a + f"conv_{c}", h, h, 1)
        keys[f"{prefix}.norm_layers_1.{i}.gamma"] = (h,)
        keys[f"{prefix}.norm_layers_1.{i}.beta"] = (h,)
        _conv(keys, f"{prefix}.ffn_layers.{i}.conv_1", f, h, k)
        _conv(keys, f"{prefix}.ffn_layers.{i}.conv_2", h, f, k)
        keys[f"{prefix}.norm_layers_2.{i}.gamma"] = (h,)
        keys[f"{prefix}.norm_layers_2.{i}.beta"] = (h,)


def s2_layout(model: dict, phones: int = 732) -> dict[str, tuple[int, ...]]:
    h, f, heads, n, k = (model[x] for x in ("hidden_channels", "filter_channels", "n_heads", "n_layers", "kernel_size"))
    inter, gin, pro = model["inter_channels"], model["gin_channels"], model["version"] in ("v2Pro", "v2ProPlus")
    keys: dict[str, tuple[int, ...]] = {}
    _conv(keys, "enc_p.ssl_proj", h, 768, 1)
    _encoder(keys, "enc_p.encoder_ssl", n // 2, h, f, heads, k)
    _encoder(keys, "enc_p.encoder_text", n, h, f, heads, k)
    keys["enc_p.text_embedding.weight"] = (phones, h)
    for c in "qkvo":
        _conv(keys, f"enc_p.mrte.cross_attention.conv_{c}", 512, 512, 1)
    _conv(keys, "enc_p.mrte.c_pre", 512, h, 1)
    _conv(keys, "enc_p.mrte.text_pre", 512, h, 1)
    _conv(keys, "enc_p.mrte.c_post", h, 512, 1)
    _encoder(keys, "enc_p.encoder2", n // 2, h, f, heads, k)
    _conv(keys, "enc_p.proj", 2 * inter, h, 1)
    ch = model["upsample_initial_channel"]
    _conv(keys, "dec.conv_pre", ch, inter, 7)
    for i, ks in enumerate(model["upsample_kernel_sizes"]):
        _wn_conv(keys, f"dec.ups.{i}", ch // 2 ** (i + 1), ch // 2**i, ks, transposed=True)
    j = 0
    for i in range(len(model["upsample_rates"])):
        c = ch // 2 ** (i + 1)
        for rk, dil in zip(model["resblock_kernel_sizes"], model["resblock_dilation_sizes"]):
            for m in range(len(dil)):
                _wn_conv(keys, f"dec.resblocks.{j}.convs1.{m}", c, c, rk)
                _wn_conv(keys, f"dec.resblocks.{j}.convs2.{m}", c, c, rk)
            j += 1
    keys["dec.conv_post.weight"] = (1, ch // 2 ** len(model["upsample_rates"]), 7)
    _conv(keys, "dec.cond", ch, gin, 1)
    for fl in (0, 2, 4, 6):
        p = f"flow.flows.{fl}."
        _conv(keys, p + "pre", h, inter // 2, 1)
        for layer in range(4):
            _wn_conv(keys, p + f"enc.in_layers.{layer}", 2 * h, h, 5)
            _wn_conv(keys, p + f"enc.res_skip_layers.{layer}", 2 * h if layer < 3 else h, h, 1)
        _wn_conv(keys, p + "enc.cond_layer", 2 * h * 4, gin, 1)
        _conv(keys, p + "post", inter // 2, h, 1)
    keys.update({"ref_enc.spectral.0.fc.weight": (128, 704), "ref_enc.spectral.0.fc.bias": (128,),
                 "ref_enc.spectral.3.fc.weight": (128, 128), "ref_enc.spectral.3.fc.bias": (128,)})
    for t in (0, 1):
        keys[f"ref_enc.temporal.{t}.conv1.conv.weight"] = (256, 128, 5)
        keys[f"ref_enc.temporal.{t}.conv1.conv.bias"] = (256,)
    for w in ("w_qs", "w_ks", "w_vs", "fc"):
        keys[f"ref_enc.slf_attn.{w}.weight"] = (128, 128)
        keys[f"ref_enc.slf_attn.{w}.bias"] = (128,)
    keys["ref_enc.fc.fc.weight"], keys["ref_enc.fc.fc.bias"] = (gin, 128), (gin,)
    _conv(keys, "ssl_proj", 768, 768, 2)
    cb = "quantizer.vq.layers.0._codebook."
    keys.update({cb + "inited": (1,), cb + "cluster_size": (1024,), cb + "embed": (1024, 768), cb + "embed_avg": (1024, 768)})
    if pro:
        keys.update({"sv_emb.weight": (gin, 20480), "sv_emb.bias": (gin,), "ge_to512.weight": (512, gin),
                     "ge_to512.bias": (512,), "prelu.weight": (gin,)})
    return keys


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Values of the scale trained weights have, so random voices give finite, bounded audio."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("bias", "beta"):
        return torch.zeros(shape)
    if leaf in ("gamma", "alpha") or name.endswith(("norm1.weight", "norm2.weight")):
        return torch.ones(shape)
    if leaf == "inited":
        return torch.ones(shape)
    if leaf == "cluster_size":
        return torch.ones(shape)
    if leaf == "weight" and name.startswith("prelu"):
        return torch.full(shape, 0.25)
    if "embedding" in name or leaf in ("embed", "embed_avg", "emb_rel_k", "emb_rel_v"):
        return torch.randn(shape, generator=gen) * (shape[-1] ** -0.5 if leaf.startswith("emb_rel") else 1.0)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    if leaf == "weight_g":
        return torch.full(shape, 1.0)
    if leaf == "weight_v":
        fan_in = shape[0] * shape[2] if ".ups." in name else fan_in
    return torch.randn(shape, generator=gen) * fan_in**-0.5


def random_state(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: _random_tensor(k, tuple(s), gen).to(torch.float16) for k, s in layout.items()}


def _hparams(value):
    """Nested dicts as objects of class ``utils.HParams`` (what s2 training pickles)."""
    module = sys.modules.get("utils")
    if module is None or not hasattr(module, "HParams"):
        raise RuntimeError("utils.HParams stand-in not registered")
    if isinstance(value, dict):
        obj = module.HParams()
        obj.__dict__.update({k: _hparams(v) for k, v in value.items()})
        return obj
    return value


def _save_s2(payload: dict, path: Path, header: bytes) -> None:
    """torch.save with the config pickled as utils.HParams, then the version header."""
    stand_in = types.ModuleType("utils")
    stand_in.HParams = type("HParams", (), {"__module__": "utils"})
    previous = sys.modules.get("utils")
    sys.modules["utils"] = stand_in
    try:
        payload = {**payload, "config": _hparams(payload["config"])}
        buf = io.BytesIO()
        torch.save(payload, buf)
    finally:
        if previous is None:
            del sys.modules["utils"]
        else:
            sys.modules["utils"] = previous
    data = buf.getvalue()
    path.write_bytes(header + data[2:])


def write_gpt(path: Path, size: str, seed: int) -> Path:
    cfg = s1_config(size)
    torch.save({"weight": random_state(s1_layout(cfg["model"]), seed), "config": cfg, "info": "GPT-e1 (gsv-triton demo)"}, path)
    return path


def write_sovits(path: Path, version: str, size: str, seed: int) -> Path:
    cfg = s2_config(version, size)
    state = random_state(s2_layout(cfg["model"]), seed + 1)
    _save_s2({"weight": state, "config": cfg, "info": "demo_e1_s1 (gsv-triton demo)"}, path, S2_HEADERS[version])
    return path


def write_reference(path: Path, seed: int, seconds: float = 4.0, rate: int = 32000) -> Path:
    """A voiced-sounding clip (harmonics with a moving pitch and syllable envelope), no speech data needed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t) + rng.uniform(-5, 5)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 3.0 * t)) * np.minimum(1, t * 10) * np.minimum(1, (seconds - t) * 10)
    audio = 0.25 * wave * envelope + 0.003 * rng.standard_normal(t.size)
    sf.write(str(path), (audio / np.abs(audio).max() * 0.6).astype(np.float32), rate, subtype="PCM_16")
    return path


DEMO_TEXT = "你好，欢迎使用语音合成服务。"


def sv_random_state(seed: int) -> dict[str, torch.Tensor]:
    """Random ERes2NetV2 weights by the conformance kit's rule, so a kit of seed S can be rebuilt.

    Each key draws from its own generator seeded with (seed, crc32(key)): batch-norm statistics
    near identity, matrices scaled by 1/sqrt(fan-in), 1-D weights near 1, biases near 0.
    """
    from export.sv_model import expected_layout

    state = {}
    for key, (shape, dtype) in expected_layout().items():
        gen = np.random.default_rng([seed, zlib.crc32(key.encode())])
        if key.endswith("num_batches_tracked"):
            value = np.zeros(shape)
        elif key.endswith("running_var"):
            value = gen.uniform(0.8, 1.2, shape)
        elif key.endswith("running_mean"):
            value = gen.normal(0.0, 0.05, shape)
        elif len(shape) >= 2:
            value = gen.normal(0.0, 1.0, shape) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            value = gen.uniform(0.8, 1.2, shape)
        else:
            value = gen.normal(0.0, 0.05, shape)
        state[key] = torch.from_numpy(np.asarray(value)).to(dtype)
    return state


def write_sv(path: Path, seed: int) -> Path:
    """A random-weight SV checkpoint in the official format (a bare state dict, torch.save)."""
    torch.save(sv_random_state(seed), path)
    return path
