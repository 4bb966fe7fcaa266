"""edge runs on the Pi: importing it, or any of its modules, must pull in no heavy framework."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edge

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "tensorflow", "tf_keras", "keras", "onnx", "onnxruntime", "onnx2tf", "sklearn", "matplotlib")
EDGE_MODULES = sorted(m.name for m in pkgutil.walk_packages(edge.__path__, "edge."))

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in {forbidden!r} if m in sys.modules)))
"""


def _loaded_heavy(module: str) -> list[str]:
    code = _PROBE.format(forbidden=FORBIDDEN)
    out = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, check=False)
    assert out.returncode == 0, f"importing {module} failed:\n{out.stderr[-2000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_edge_has_the_runtime_modules():
    # The walk must see the real package, or the parametrised check below proves nothing.
    assert {"edge.preprocess", "edge.bundle", "edge.errors"} <= set(EDGE_MODULES)


@pytest.mark.parametrize("module", ["edge", *EDGE_MODULES])
def test_edge_module_imports_no_heavy_framework(module):
    assert _loaded_heavy(module) == []


def test_probe_detects_a_heavy_import():
    # The same probe on a module known to import torch must report it.
    assert "torch" in _loaded_heavy("train.model")
