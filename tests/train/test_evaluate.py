"""Evaluation metrics on hand-checkable inputs, threshold choice, plots, and the train.evaluate CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.evaluate import averaged_curves, choose_thresholds, evaluated_labels, metrics, write_report

LABELS = ["A", "B", "C"]
# Label A: positives score 0.35 and 0.8, negatives 0.1 and 0.4 -> 3 of 4 pairs ranked right: AUROC 0.75.
# Label B: perfectly separated -> AUROC 1.0. Label C: no positive -> undefined, left out of the averages.
Y = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=np.float32)
S = np.array([[0.1, 0.2, 0.3], [0.4, 0.9, 0.1], [0.35, 0.7, 0.2], [0.8, 0.3, 0.6]])
HALF = {name: 0.5 for name in LABELS}


def test_per_label_auroc_and_ap_by_hand():
    m = metrics(Y, S, LABELS, HALF)
    assert m["per_label"]["A"]["auroc"] == pytest.approx(0.75)
    assert m["per_label"]["B"]["auroc"] == pytest.approx(1.0)
    assert m["per_label"]["C"]["auroc"] is None and m["per_label"]["C"]["ap"] is None
    # A ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): precision 1 at recall 1/2, 2/3 at recall 1
    assert m["per_label"]["A"]["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["evaluated_labels"] == ["A", "B"]
    assert m["macro_auroc"] == pytest.approx((0.75 + 1.0) / 2)
    assert m["macro_ap"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 2)


def test_micro_auroc_pools_the_evaluated_labels():
    # pooled A and B: positives 0.35, 0.8, 0.9, 0.7; negatives 0.1, 0.4, 0.2, 0.3 -> 15 of 16 pairs right
    assert metrics(Y, S, LABELS, HALF)["micro_auroc"] == pytest.approx(15 / 16)


def test_f1_at_the_thresholds():
    m = metrics(Y, S, LABELS, HALF)
    # A: predicts film 4 only (1 TP, 1 FN) -> F1 2/3; B: films 2 and 3 -> F1 1; C: nothing predicted -> 0
    assert m["per_label"]["A"]["f1"] == pytest.approx(2 / 3)
    assert m["per_label"]["B"]["f1"] == pytest.approx(1.0)
    assert m["f1"]["macro"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["f1"]["micro"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))  # TP 3, FP 0, FN 1 over A and B
    assert m["f1"]["weighted"] == pytest.approx((2 / 3 * 2 + 1 * 2) / 4)
    # per film over A, B: film 1 no truth, no prediction -> 0; film 2 -> 1; film 3: truth {A,B}, pred {B} -> 2/3;
    # film 4 -> 1
    assert m["f1"]["samples"] == pytest.approx((0 + 1 + 2 / 3 + 1) / 4)


def test_evaluated_labels_present_or_all():
    assert evaluated_labels(Y, LABELS, "present") == [0, 1]
    assert evaluated_labels(Y, LABELS, "all") == [0, 1, 2]
    assert metrics(Y, S, LABELS, HALF, which="all")["macro_auroc"] == pytest.approx(0.875)  # C stays undefined


def test_thresholds_maximise_f1_or_youden():
    f1 = choose_thresholds(Y, S, LABELS, "f1")
    assert f1["A"] == pytest.approx(0.35)  # predicting 0.35 and up: TP 2, FP 1 -> F1 0.8, the best
    assert f1["B"] == pytest.approx(0.7)  # the lowest positive score separates B perfectly
    assert f1["C"] == 0.5  # no positive in the validation data: the default
    youden = choose_thresholds(Y, S, LABELS, "youden")
    assert youden["B"] == pytest.approx(0.7)
    tuned = metrics(Y, S, LABELS, f1)
    assert tuned["per_label"]["A"]["f1"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_thresholds(Y, S, LABELS, "median")


def test_averaged_curves_cover_labels_macro_and_micro():
    curves = averaged_curves(Y, S, LABELS)
    assert set(curves["roc"]) == {"A", "B", "macro", "micro"} and set(curves["pr"]) == set(curves["roc"])
    grid, tpr = curves["roc"]["macro"]
    area = float(np.sum((tpr[1:] + tpr[:-1]) / 2 * np.diff(grid)))
    assert area == pytest.approx(0.875, abs=0.01)  # the mean ROC's area ~ the mean AUROC here
    assert tpr[-1] == pytest.approx(1.0)


def test_write_report_writes_plots_and_json_safe_numbers(tmp_path):
    numbers = write_report(tmp_path, Y, S, LABELS, HALF)
    for name in ("roc.png", "pr.png", "cooccurrence.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(numbers, allow_nan=False)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained 64 px checkpoint over a tiny phantom set (the CLI's plumbing, not its numbers)."""
    from edge.preprocess import PREPROCESS
    from train.checkpoint import save_checkpoint
    from train.labels import LABELS as NIH
    from train.model import build_model
    from train.phantoms import main as phantoms_main

    root = tmp_path_factory.mktemp("eval")
    data = root / "set"
    assert phantoms_main(["--out", str(data), "--patients", "10", "--seed", "5", "--size", "64", "--quiet"]) == 0
    ckpt = root / "run" / "best.safetensors"
    ckpt.parent.mkdir()
    meta = {"task": "multilabel", "labels": list(NIH), "thresholds": {n: 0.5 for n in NIH},
            "preprocess": {**PREPROCESS, "size": 64}, "config": {"eval_labels": "present"},
            "data": {"kind": "phantom", "dir": str(data), "task": "all", "val_fraction": 0.2, "seed": 0,
                     "split": "official"}}
    save_checkpoint(ckpt, build_model(len(NIH)), meta)
    return ckpt, data


def test_evaluate_cli_writes_metrics_and_plots(tiny_checkpoint, capsys):
    from train.evaluate import main

    ckpt, data = tiny_checkpoint
    assert main([str(ckpt), "--data", str(data), "--split", "test", "--batch-size", "4"]) == 0
    out = ckpt.parent / "eval-test"
    numbers = json.loads((out / "metrics.json").read_text())
    assert numbers["split"] == "test" and numbers["films"] == len((data / "test_list.txt").read_text().split())
    assert set(numbers["per_label"]) == set(numbers["labels"])
    assert all((out / name).is_file() for name in ("roc.png", "pr.png", "cooccurrence.png"))
    assert "macro AUROC" in capsys.readouterr().out


def test_evaluate_cli_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    from train.evaluate import main

    _, data = tiny_checkpoint
    assert main([str(tmp_path / "missing.safetensors"), "--data", str(data)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert main([str(bad), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors" in err and err.count("\n") == 1
