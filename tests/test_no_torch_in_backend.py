"""Serving code runs exported graphs only: nothing under python_backend/ may import torch."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import python_backend

BLOCKER = """
import sys, importlib, pkgutil
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "transformers":
            raise ImportError(f"python_backend imported {name}")
sys.meta_path.insert(0, Block())
import python_backend
for mod in pkgutil.walk_packages(python_backend.__path__, "python_backend."):
    if not mod.name.startswith("python_backend.triton_"):  # Triton adapters need triton_python_backend_utils
        importlib.import_module(mod.name)
print("ok")
"""


def test_python_backend_imports_without_torch():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_no_torch_import_statements():
    root = Path(python_backend.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if any(
        line.strip().startswith(("import torch", "from torch")) for line in p.read_text(encoding="utf-8").splitlines())]
    assert not offenders
    assert list(pkgutil.walk_packages(python_backend.__path__))  # the walk above saw the modules
