"""Shared fixtures: the conformance kit folder, and a stub of triton_python_backend_utils."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def kit_dir() -> Path:
    return Path(os.environ.get("GSV_CONFORMANCE_DIR", ROOT.parent / "shared" / "gpt-sovits-conformance"))


def kit_files(pattern: str) -> list[Path]:
    folder = kit_dir()
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


@pytest.fixture(scope="session")
def kit() -> Path:
    folder = kit_dir()
    if not folder.is_dir():
        pytest.skip(f"conformance kit not found at {folder} (set GSV_CONFORMANCE_DIR)")
    return folder


@dataclass(frozen=True)
class SVBuild:
    ckpt: Path  # official-format SV checkpoint
    repo: Path  # a repository holding gsv_sv exported from it
    graph: Path  # repo/gsv_sv/<N>/sv.onnx


@pytest.fixture(scope="session")
def sv_build(tmp_path_factory):
    """``get(seed, ckpt=None) -> SVBuild``: gsv_sv exported from ``ckpt``, or from the checkpoint the
    kit's rule gives for ``seed``; once per session per source (one SV export takes ~15 s on 2 cores)."""
    built: dict[str, SVBuild] = {}

    def get(seed: int, ckpt: Path | None = None) -> SVBuild:
        key = str(ckpt) if ckpt is not None else f"seed{seed}"
        if key not in built:
            from export import demo
            from export.shared_models import ensure_sv

            root = tmp_path_factory.mktemp(f"sv_{key.replace('/', '_')[-40:]}")
            if ckpt is None:
                ckpt = demo.write_sv(root / f"sv_seed{seed}.ckpt", seed)
            (root / "repo").mkdir()
            built[key] = SVBuild(ckpt=ckpt, repo=root / "repo", graph=ensure_sv(root / "repo", ckpt))
        return built[key]

    return get


@pytest.fixture(scope="session")
def demo_triton(tmp_path_factory):
    """``(triton, root)``: a tritonserver serving two tiny demo voices, ``alpha`` and ``beta``
    (``root/repo``; their sources at ``root/alpha``, ``root/beta``), and ``root/refs``
    (``tests.gateway_fixtures.reference_folder``). One per session: the gateway and console
    tests start their own gateways on it."""
    from tests.gateway_fixtures import demo_repo, reference_folder
    from tests.triton_fixtures import require_tritonserver, start_server

    require_tritonserver()
    root = tmp_path_factory.mktemp("demo_triton")
    repo = demo_repo(root)
    reference_folder(root)
    triton = start_server(repo, log_dir=root)
    yield triton, root
    triton.stop()
