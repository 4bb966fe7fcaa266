"""The whole chain on phantom films: real DenseNet-121 -> real int8 TFLite -> edge.scan (issue 2)."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.bundle import load_bundle
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_trained_checkpoint_is_densenet121(checkpoint):
    from train.checkpoint import model_from_checkpoint

    model, meta = model_from_checkpoint(checkpoint)
    assert meta["arch"] == "densenet121"
    assert sum(p.numel() for p in model.features.parameters()) == 6_953_856  # DenseNet-121's body


def test_bundle_runs_a_real_int8_densenet(bundle_dir):
    from ai_edge_litert.interpreter import Interpreter

    bundle = load_bundle(bundle_dir)
    interpreter = Interpreter(model_path=str(bundle.model_path("int8")))
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert ops.count("CONV_2D") >= 120  # 120 convolutions in DenseNet-121
    inp = interpreter.get_input_details()[0]
    assert inp["dtype"].__name__ == "uint8" and list(inp["shape"]) == [1, 224, 224, 3]


def test_scan_writes_one_score_row_per_film(bundle_dir, phantom_set, tmp_path):
    test_names = (phantom_set / "test_list.txt").read_text().split()[:4]
    films = tmp_path / "films"
    films.mkdir()
    for name in test_names:
        shutil.copy(phantom_set / "images" / name, films / name)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "edge.scan", str(films), "--bundle", str(bundle_dir),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["film_path"]).name for r in rows) == sorted(test_names)
    labels = load_bundle(bundle_dir).labels
    for row in rows:
        assert row["status"] == "ok"
        scores = [float(row[f"score:{label}"]) for label in labels]
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert row["top_label"] in labels
