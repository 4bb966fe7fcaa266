"""Issue 3 acceptance: a short CPU run of the real DenseNet-121 ('test' preset) learns the phantom findings."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

MIN_MACRO_AUROC = 0.85


def test_macro_auroc_on_held_out_phantom_patients(trained_run, phantom_set, record_property):
    from train.phantoms import DRAWN_LABELS

    metrics = json.loads((trained_run / "metrics.json").read_text())
    test = metrics["test"]
    # Scored over the drawn findings (the labels with positives among the held-out patients' films).
    assert set(test["evaluated_labels"]) == set(DRAWN_LABELS)
    record_property("train_seconds", metrics["seconds"])
    record_property("train_steps", metrics["steps"])
    record_property("test_macro_auroc", test["macro_auroc"])
    per_label = {name: round(test["per_label"][name]["auroc"], 3) for name in test["evaluated_labels"]}
    print(f"\ntest preset: {metrics['steps']} steps, {metrics['epochs_run']} epochs, {metrics['seconds']:.0f} s; "
          f"test macro AUROC {test['macro_auroc']:.3f}; per label {per_label}")
    assert test["macro_auroc"] >= MIN_MACRO_AUROC, per_label


def test_held_out_patients_are_unseen(trained_run, phantom_set):
    from train.checkpoint import load_checkpoint
    from train.data import load_dataset

    _, meta = load_checkpoint(trained_run / "best.safetensors")
    data = meta["data"]
    ds = load_dataset(phantom_set, task=data["task"], val_fraction=data["val_fraction"], seed=data["seed"],
                      split=data["split"])
    train, val, test = ({f.patient for f in part} for part in (ds.train, ds.val, ds.test))
    assert not (train & test) and not (val & test) and not (train & val)
    assert meta["metrics"]["test"]["films"] == len(ds.test)
