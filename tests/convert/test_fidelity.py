"""convert.fidelity on toy arrays: AUROC, differences, decision agreement, limits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from convert.fidelity import LIMITS, auroc, check, compare_float, compare_quantised, report

LABELS = ["A", "B", "C"]


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounded: many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_extremes_and_one_class():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert auroc([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auroc([1, 1, 1], [0.1, 0.2, 0.3]) is None


def test_compare_float_reports_max_and_mean():
    a = np.array([[0.1, 0.2], [0.3, 0.4]])
    b = a + np.array([[0.0, 0.01], [0.03, 0.0]])
    out = compare_float(a, b, np.zeros((2, 2, 2, 4)), np.full((2, 2, 2, 4), 0.5))
    assert out["max_abs_dscore"] == pytest.approx(0.03)
    assert out["mean_abs_dscore"] == pytest.approx(0.01)
    assert out["max_abs_dfeature"] == pytest.approx(0.5)


def test_compare_quantised_counts_auroc_and_agreement():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])  # B: no positives; C: no negatives
    fp = np.array([[0.9, 0.1, 0.6], [0.2, 0.2, 0.4], [0.8, 0.3, 0.7], [0.3, 0.1, 0.9]])
    q = fp.copy()
    q[1, 0] = 0.95  # label A: one negative now ranks above both positives; crosses A's threshold
    out = compare_quantised(q, fp, y, [0.5, 0.5, 0.5], LABELS)
    assert out["auroc_labels"] == 1
    assert out["per_label"]["A"]["auroc_fp32"] == 1.0
    assert out["per_label"]["A"]["auroc_int8"] == pytest.approx(0.5)
    assert out["per_label"]["B"]["dauroc"] is None
    assert out["mean_abs_dauroc"] == pytest.approx(0.5)
    assert out["max_abs_dscore"] == pytest.approx(0.75)
    assert out["decision_agreement"] == pytest.approx(11 / 12)
    assert out["film_agreement"] == pytest.approx(3 / 4)


def _report(q_shift: float = 0.0, onnx_shift: float = 0.0) -> dict:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (40, 3))
    s = np.clip(0.5 * y + 0.5 * rng.random((40, 3)), 0, 1)
    f = rng.random((40, 2, 2, 4))
    return report((s, f), (s + onnx_shift, f), (s, f), (np.clip(s + q_shift, 0, 1), f), y, [0.5] * 3, LABELS,
                  [f"{i}.png" for i in range(40)])


def test_report_keeps_the_int8_models_own_scores_apart():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (30, 3))
    s = rng.random((30, 3))
    f = rng.random((30, 2, 2, 4))
    rep = report((s, f), (s, f), (s, f), (s, f), y, [0.5] * 3, LABELS, list(range(30)), int8_model_scores=1 - s)
    assert rep["int8_vs_fp32"]["mean_abs_dauroc"] == 0.0
    assert rep["int8_model_scores_vs_fp32"]["decision_agreement"] < 1.0
    assert "int8_model_scores_vs_fp32" not in report((s, f), (s, f), (s, f), (s, f), y, [0.5] * 3, LABELS, [])


def test_check_passes_identical_models():
    limits = {name: limit for name, (_, limit) in LIMITS.items()}
    rep = _report()
    assert rep["int8_vs_fp32"]["mean_abs_dauroc"] == 0.0
    assert check(rep, limits) == []


def test_check_names_each_failure():
    limits = {name: limit for name, (_, limit) in LIMITS.items()}
    failures = check(_report(q_shift=0.2, onnx_shift=1e-3), limits)
    assert any("int8_vs_fp32.max_abs_dscore" in f for f in failures)
    assert any("onnx_vs_torch.max_abs_dscore" in f and "exceeds" in f for f in failures)


def test_check_fails_when_auroc_cannot_be_computed():
    y = np.ones((5, 3))
    s = np.full((5, 3), 0.5)
    f = np.zeros((5, 1, 1, 2))
    rep = report((s, f), (s, f), (s, f), (s, f), y, [0.5] * 3, LABELS, list("abcde"))
    assert check(rep, {"mean_abs_dauroc": 0.005}) == [
        "int8_vs_fp32.mean_abs_dauroc cannot be computed (no held-out label has enough films of both classes)"]


def test_auroc_summary_can_require_films_of_each_class():
    y = np.zeros((40, 2), int)
    y[:3, 0] = 1  # label A: 3 positives
    y[:20, 1] = 1  # label B: 20 positives
    fp = np.linspace(0, 1, 40)[:, None].repeat(2, axis=1)
    q = fp.copy()
    q[0, 0] = 0.99  # moves one of A's 3 positives: a large AUROC change on a small sample
    both = compare_quantised(q, fp, y, [0.5, 0.5], ["A", "B"])
    five = compare_quantised(q, fp, y, [0.5, 0.5], ["A", "B"], min_films=5)
    assert both["auroc_labels"] == 2 and five["auroc_labels"] == 1
    assert five["mean_abs_dauroc"] == 0.0 < both["mean_abs_dauroc"] == five["all_labels_mean_abs_dauroc"]


def test_float_checks_may_cover_only_the_first_films():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (30, 3))
    s, f = rng.random((30, 3)), rng.random((30, 2, 2, 4))
    fp32 = (s.copy(), f)
    fp32[0][20:] += 0.5  # beyond the float-check films: must not count in fp32 vs ONNX
    rep = report((s[:8], f[:8]), (s[:8], f[:8]), fp32, (s, f), y, [0.5] * 3, LABELS, list(range(30)))
    assert rep["onnx_vs_torch"]["films"] == rep["fp32_vs_onnx"]["films"] == 8
    assert rep["fp32_vs_onnx"]["max_abs_dscore"] == 0.0 and rep["int8_vs_fp32"]["films"] == 30
    assert rep["int8_vs_fp32"]["max_abs_dscore"] == pytest.approx(0.5)
