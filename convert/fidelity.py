"""Fidelity report: does the converted model still say what the PyTorch model says? Pure numpy.

Computed on held-out films never used for calibration (convert.calibrate):

* ``int8_vs_fp32``: int8 TFLite against fp32 TFLite: per-label AUROC of each, mean and max
  |ΔAUROC| over the labels with both classes present (``min_films`` 1, the default) or with at
  least ``min_films`` films of each class (an AUROC on 3 positives moves by 1/(3·negatives) per
  swapped pair, so one label can dominate the mean), max and mean |Δscore|, agreement of the
  above-threshold labels (checkpoint thresholds; fraction of film×label decisions that agree,
  and of films whose whole positive-label set agrees), max |Δfeature|.
* ``onnx_vs_torch`` and ``fp32_vs_onnx``: max and mean |Δ| of scores and features, on the first
  ``films`` held-out films (``--float-check-films``, default 32: float against float agrees to
  ~1e-6 on any film; the int8 comparison is the one that needs every held-out film).
* ``int8_model_scores_vs_fp32`` (when the bundle scores from the features, bundle.json
  ``scoring.from == "features"``): the same block for the int8 model's own score output, for
  comparison; ``int8_vs_fp32`` then holds the scores edge reports (the float head on the int8
  features).

``check`` compares a report with ``LIMITS`` (overridable on the command line) and returns the
failures; convert refuses to write a bundle when there are any. Films without labels (``python -m convert
--films``): the AUROC figures cannot be computed and are not checked; ``checks`` in the report says which
ran (score and decision agreement always do).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LIMITS", "auroc", "check", "compare_float", "compare_quantised", "report", "summary_lines"]

# name -> (path in the report, limit): the value at the path must be <= the limit.
LIMITS = {
    "mean_abs_dauroc": (("int8_vs_fp32", "mean_abs_dauroc"), 0.005),
    "max_abs_dscore": (("int8_vs_fp32", "max_abs_dscore"), 0.05),
    "onnx_vs_torch": (("onnx_vs_torch", "max_abs_dscore"), 1e-4),
}


def auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count half); None without both classes."""
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average rank of tied values
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return {"max": float(d.max()) if d.size else 0.0, "mean": float(d.mean()) if d.size else 0.0}


def compare_float(scores_a, scores_b, feats_a=None, feats_b=None) -> dict:
    """max / mean |Δ| of scores (and features when given) between two float models."""
    s = _diff(scores_a, scores_b)
    out = {"max_abs_dscore": s["max"], "mean_abs_dscore": s["mean"]}
    if feats_a is not None and feats_b is not None:
        f = _diff(feats_a, feats_b)
        out.update(max_abs_dfeature=f["max"], mean_abs_dfeature=f["mean"])
    return out


def compare_quantised(q_scores, f_scores, targets, thresholds, labels, q_feats=None, f_feats=None,
                      min_films: int = 1) -> dict:
    """The int8-vs-fp32 block: AUROC differences, score differences, decision agreement.
    The AUROC summary uses the labels with at least ``min_films`` positive and negative films
    (1: both classes present); ``all_labels_mean_abs_dauroc`` is over every label with both."""
    q_scores, f_scores, targets = (np.asarray(x, np.float64) for x in (q_scores, f_scores, targets))
    per_label, deltas, every = {}, [], []
    for j, label in enumerate(labels):
        a_q, a_f = auroc(targets[:, j], q_scores[:, j]), auroc(targets[:, j], f_scores[:, j])
        positives = int((targets[:, j] > 0.5).sum())
        per_label[label] = {"auroc_int8": a_q, "auroc_fp32": a_f, "dauroc": None if a_q is None else a_q - a_f,
                            "positives": positives, "negatives": len(targets) - positives}
        if a_q is not None:
            every.append(abs(a_q - a_f))
            if min(positives, len(targets) - positives) >= min_films:
                deltas.append(abs(a_q - a_f))
    th = np.asarray(thresholds, np.float64)[None, :]
    agree = (q_scores >= th) == (f_scores >= th)
    out = {"films": len(q_scores), "auroc_min_films": min_films, "auroc_labels": len(deltas),
           "mean_abs_dauroc": float(np.mean(deltas)) if deltas else None,
           "max_abs_dauroc": float(np.max(deltas)) if deltas else None,
           "all_labels_mean_abs_dauroc": float(np.mean(every)) if every else None,
           "all_labels_max_abs_dauroc": float(np.max(every)) if every else None,
           **compare_float(q_scores, f_scores, q_feats, f_feats),
           "decision_agreement": float(agree.mean()) if agree.size else 1.0,
           "film_agreement": float(agree.all(axis=1).mean()) if agree.size else 1.0,
           "per_label": per_label}
    return out


def report(torch_out, onnx_out, fp32_out, int8_out, targets, thresholds, labels, heldout_names,
           int8_model_scores=None, min_films: int = 1, labelled: bool = True, split: str = "test") -> dict:
    """The whole report; each ``*_out`` is (scores N×L, features N×H×W×C) on the same films.
    ``int8_out[0]`` are the int8 scores edge reports; ``int8_model_scores`` the model's own, if different.
    ``torch_out`` and ``onnx_out`` may cover only the first n films (a float-equivalence check
    needs few); fp32 TFLite is compared with ONNX on those n."""
    n = len(onnx_out[0])
    rep = {"heldout": {"films": len(targets), "split": split, "names": list(heldout_names)},
           "checks": {"auroc": labelled, "score_agreement": True, "decision_agreement": True,
                      "float_paths": True},
           "int8_vs_fp32": compare_quantised(int8_out[0], fp32_out[0], targets, thresholds, labels,
                                             int8_out[1], fp32_out[1], min_films),
           "onnx_vs_torch": {"films": n, **compare_float(onnx_out[0], torch_out[0], onnx_out[1], torch_out[1])},
           "fp32_vs_onnx": {"films": n, **compare_float(fp32_out[0][:n], onnx_out[0], fp32_out[1][:n],
                                                        onnx_out[1])}}
    if int8_model_scores is not None:
        rep["int8_model_scores_vs_fp32"] = compare_quantised(int8_model_scores, fp32_out[0], targets, thresholds,
                                                             labels, min_films=min_films)
    return rep


def check(rep: dict, limits: dict[str, float]) -> list[str]:
    """Failures of ``rep`` against ``limits`` (name -> limit; names as in LIMITS), one line each.
    A value that cannot be computed (no label with both classes) is a failure too."""
    failures = []
    for name, limit in limits.items():
        (block, key), _ = LIMITS[name]
        if "dauroc" in key and not rep.get("checks", {}).get("auroc", True):
            continue  # films without labels: no AUROC to check (the report's ``checks`` says so)
        value = rep[block][key]
        if value is None:
            failures.append(f"{block}.{key} cannot be computed (no held-out label has enough films of both classes)")
        elif not value <= limit:
            failures.append(f"{block}.{key} = {value:.6g} exceeds the limit {limit:g}")
    return failures


def summary_lines(rep: dict) -> str:
    """The report in a few lines for the terminal: which checks ran, and their figures."""
    q, o, f = rep["int8_vs_fp32"], rep["onnx_vs_torch"], rep["fp32_vs_onnx"]
    m = rep.get("int8_model_scores_vs_fp32")
    raw = "" if m is None else (f"\n   (the int8 model's own score output: mean |dAUROC| "
                                f"{m['mean_abs_dauroc'] or 0:.4f}, max |dscore| {m['max_abs_dscore']:.4f}; "
                                f"edge scores from the features)")
    if not rep.get("checks", {}).get("auroc", True):
        auroc, raw = "AUROC not checked (films without labels)", ""
    else:
        mean_d = "n/a" if q["mean_abs_dauroc"] is None else f"{q['mean_abs_dauroc']:.4f}"
        max_d = "n/a" if q["max_abs_dauroc"] is None else f"{q['max_abs_dauroc']:.4f}"
        every = "" if q["auroc_min_films"] <= 1 or q["all_labels_mean_abs_dauroc"] is None else (
            f"; every label with both classes: {q['all_labels_mean_abs_dauroc']:.4f}")
        auroc = (f"mean |dAUROC| {mean_d} (max {max_d}, {q['auroc_labels']} labels with >= {q['auroc_min_films']} "
                 f"films of each class{every})")
    return (f"   int8 vs fp32 on {q['films']} {rep['heldout']['split']} films: {auroc}, "
            f"max |dscore| {q['max_abs_dscore']:.4f} (mean {q['mean_abs_dscore']:.4f}), "
            f"decisions agree {100 * q['decision_agreement']:.1f}%\n"
            f"   on {o['films']} of them, ONNX vs PyTorch: max |dscore| {o['max_abs_dscore']:.2e}, "
            f"max |dfeature| {o['max_abs_dfeature']:.2e}; "
            f"fp32 TFLite vs ONNX: max |dscore| {f['max_abs_dscore']:.2e}{raw}")
