"""Shared fixtures: the conformance kit folder, and a stub of triton_python_backend_utils."""
from __future__ import annotations

import os
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
