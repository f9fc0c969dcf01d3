"""ERes2NetV2, the speaker-verification network v2Pro/v2ProPlus condition SoVITS on.

Upstream loads 3D-Speaker's ``pretrained_eres2netv2w24s4ep4.ckpt`` (base width 24, scale 4,
expansion 4; a bare state dict) and uses its ``forward3``: the bottom-up fusion of the last two
stages, averaged over time and flattened, 2048 channels x 10 frequency bands = 20480 values per
clip. This module has the same parameter names, so the official file loads with every key
checked, and the same arithmetic; the projection head (``seg_1``) is loaded but not used.

The checkpoint is read with the project's restricted unpickler (tensors and containers only).
A file of another architecture is refused with one line naming the first differences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.checkpoints import read_state_dict
from export.errors import InputError
from export.onnx_io import GraphSpec
from python_backend.speaker_verification import MODEL_TYPE, SV_EMB_DIM
from python_backend.sv_features import NUM_MEL_BINS as FEAT_DIM, SV_RATE

OFFICIAL_FILE = "pretrained_eres2netv2w24s4ep4.ckpt"


@dataclass(frozen=True)
class SVConfig:
    """The official network's sizes (3D-Speaker ERes2NetV2 w24 s4 ep4)."""

    blocks: tuple[int, ...] = (3, 4, 6, 3)
    channels: int = 64  # stem width; stage k has channels * 2**k "planes"
    base_width: int = 24
    scale: int = 4  # Res2Net splits per block
    expansion: int = 4
    feat_dim: int = FEAT_DIM
    embedding_size: int = 192  # seg_1's output (unused by the 20480-d embedding)


class FusionGate(nn.Module):
    """Attentional feature fusion: a learned per-element gate g in (0, 2) mixes x*g + y*(2-g)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        inner = channels // reduction
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inner, 1), nn.BatchNorm2d(inner), nn.SiLU(),
            nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gate = 1.0 + torch.tanh(self.local_att(torch.cat((x, y), dim=1)))
        return x * gate + y * (2.0 - gate)


def _clamp(x: torch.Tensor) -> torch.Tensor:
    """The blocks' activation: ReLU capped at 20 (a Hardtanh(0, 20))."""
    return torch.clamp(x, 0.0, 20.0)


class Res2Block(nn.Module):
    """Bottleneck with ``scale`` hierarchical 3x3 branches; each branch sees the previous branch's
    output added to (or, when ``fused``, gated with) its own slice of the input."""

    def __init__(self, in_ch: int, planes: int, stride: int, fused: bool, cfg: SVConfig):
        super().__init__()
        width = int(math.floor(planes * cfg.base_width / 64.0))
        out_ch = planes * cfg.expansion
        self.width = width
        self.conv1 = nn.Conv2d(in_ch, width * cfg.scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * cfg.scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(cfg.scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(cfg.scale))
        self.fuse_models = nn.ModuleList(FusionGate(width) for _ in range(cfg.scale - 1)) if fused else None
        self.conv3 = nn.Conv2d(width * cfg.scale, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slices = torch.split(_clamp(self.bn1(self.conv1(x))), self.width, dim=1)
        branches: list[torch.Tensor] = []
        for i, part in enumerate(slices):
            if branches:
                prev = branches[-1]
                part = self.fuse_models[i - 1](prev, part) if self.fuse_models is not None else prev + part
            branches.append(_clamp(self.bns[i](self.convs[i](part))))
        return _clamp(self.bn3(self.conv3(torch.cat(branches, dim=1))) + self.shortcut(x))


class ERes2NetV2(nn.Module):
    """fbank [B, T, 80] -> speaker embedding [B, 20480] (upstream's ``forward3``)."""

    def __init__(self, cfg: SVConfig = SVConfig()):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        in_ch = c
        for stage, count in enumerate(cfg.blocks):
            planes, blocks = c * 2**stage, []
            for j in range(count):
                stride = 2 if stage > 0 and j == 0 else 1
                blocks.append(Res2Block(in_ch, planes, stride, fused=stage >= 2, cfg=cfg))
                in_ch = planes * cfg.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.layer3_ds = nn.Conv2d(c * 4 * cfg.expansion, c * 8 * cfg.expansion, 3, stride=2, padding=1, bias=False)
        self.fuse34 = FusionGate(c * 8 * cfg.expansion)
        stats = (cfg.feat_dim // 8) * c * 8 * cfg.expansion
        self.seg_1 = nn.Linear(2 * stats, cfg.embedding_size)  # mean+std head of the classifier; kept for the keys

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(fbank.transpose(1, 2).unsqueeze(1))))
        out3 = self.layer3(self.layer2(self.layer1(x)))
        fused = self.fuse34(self.layer4(out3), self.layer3_ds(out3))  # [B, 2048, 10, T/8]
        return fused.mean(dim=-1).flatten(1)  # time average per (channel, band); static width in the graph


def expected_layout(cfg: SVConfig = SVConfig()) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of the official state dict, in order."""
    with torch.device("meta"):
        model = ERes2NetV2(cfg)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_layout(path: Path, state: dict[str, torch.Tensor], cfg: SVConfig = SVConfig()) -> None:
    """Refuse a state dict that is not the official architecture, naming the first differences."""
    layout = expected_layout(cfg)
    missing = [k for k in layout if k not in state]
    extra = [k for k in state if k not in layout]
    shapes = [f"{k} {list(state[k].shape)} (expected {list(layout[k][0])})"
              for k in layout if k in state and tuple(state[k].shape) != layout[k][0]]
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise InputError(f"--sv-model {path}: not ERes2NetV2 w24 s4 ep4 (upstream's pretrained_models/sv/{OFFICIAL_FILE}); "
                         + "; ".join(problems))


def read_sv_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The checked state dict of an official-format SV checkpoint, and the file's sha256."""
    state, digest = read_state_dict(path, "--sv-model")
    check_layout(path, state)
    return state, digest


def load_sv(path: str | Path) -> tuple[ERes2NetV2, str]:
    """The float32 network from an official-format SV checkpoint, and the file's sha256."""
    state, digest = read_sv_state(Path(path))
    return from_state(state), digest


def from_state(state: dict[str, torch.Tensor]) -> ERes2NetV2:
    """The float32 network holding ``state`` (built without a throwaway random init)."""
    with torch.device("meta"):
        model = ERes2NetV2()
    floats = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(floats, strict=True, assign=True)
    return model.eval()


def sv_spec(model: ERes2NetV2, frames: int = 64) -> GraphSpec:
    """The ``sv`` graph: fbank [B, T, 80] -> sv_emb [B, 20480] (T dynamic)."""
    example = torch.randn(1, frames, model.cfg.feat_dim, generator=torch.Generator().manual_seed(0)) * 3.0
    return GraphSpec(
        name="sv", module=model, args=(example,), input_names=["fbank"], output_names=["sv_emb"],
        dynamic_axes={"fbank": {0: "batch", 1: "frames"}, "sv_emb": {0: "batch"}},
        metadata={"model_type": MODEL_TYPE, "sample_rate": SV_RATE, "num_mel_bins": model.cfg.feat_dim,
                  "dim": SV_EMB_DIM, "architecture": "ERes2NetV2 w24 s4 ep4 forward3"},
    )


def verify_graph(spec: GraphSpec, path: Path, rtol: float = 1e-3) -> float:
    """Largest ONNX-vs-torch difference on the export example, relative to the embedding's scale;
    refuses the graph beyond ``rtol`` (the kit's tolerance)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["sv_emb"], {"fbank": spec.args[0].numpy()})[0]
    with torch.no_grad():
        want = spec.module(*spec.args).numpy()
    err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
    if not err <= rtol:
        raise InputError(f"{path.name}: the exported SV graph differs from torch by {err:.2e} of its scale (limit {rtol:g})")
    return err
