"""Evaluation: metrics (pure numpy + scikit-learn), plots, and ``python -m train.evaluate``.

``python -m train.evaluate CKPT --data DIR [--split test|val|train] [--out DIR]`` rebuilds the
split the checkpoint was trained with (task, validation fraction, seed, split rule from its
meta), scores it, and writes ``metrics.json``, ROC and PR curves (per label and averaged) and
the co-occurrence plot of the split's labels.

Definitions (``metrics``):

* per label: AUROC and average precision (undefined, ``null``, where the split has no positive
  or no negative), F1, precision and recall at the label's operating threshold;
* micro averages pool every (film, label) pair of the evaluated labels; macro averages are the
  unweighted means over the evaluated labels;
* evaluated labels: ``"present"`` (default) keeps the labels with both positives and negatives
  in the split, so a phantom set that draws six findings is scored on those six;
* F1 at the thresholds: binary per label, and micro, macro, weighted (by positives) and
  samples (per film) averages, as scikit-learn defines them.

Operating thresholds (``choose_thresholds``) are picked on validation data, never on the test
split: ``"f1"`` maximises the label's F1 (the default: the F1 figures are then the ones the
thresholds were chosen for), ``"youden"`` maximises sensitivity + specificity - 1. A label
without positives in the validation split keeps 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_THRESHOLD", "averaged_curves", "choose_thresholds", "cooccurrence_counts", "evaluated_labels",
           "f1_averages", "main", "metrics", "plot_cooccurrence", "plot_curves", "pyplot", "write_report"]

DEFAULT_THRESHOLD = 0.5
_GRID = np.linspace(0.0, 1.0, 201)


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int((y > 0.5).sum()) < len(y)


def evaluated_labels(y: np.ndarray, labels: Sequence[str], which: str = "present") -> list[int]:
    """Indices of the labels averages are taken over (see the module doc)."""
    if which == "all":
        return list(range(len(labels)))
    return [j for j in range(len(labels)) if _both_classes(y[:, j])]


def _best_f1(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def _best_youden(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y, s)
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


_RULES = {"f1": _best_f1, "youden": _best_youden}


def choose_thresholds(y: np.ndarray, scores: np.ndarray, labels: Sequence[str], rule: str = "f1") -> dict[str, float]:
    """Per-label operating thresholds on validation (y, scores); predictions are ``score >= threshold``."""
    if rule not in _RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; choose one of {sorted(_RULES)}")
    out = {}
    for j, name in enumerate(labels):
        yj = y[:, j] > 0.5
        out[name] = _RULES[rule](yj, scores[:, j]) if yj.any() else DEFAULT_THRESHOLD
    return out


def _optional(fn, *args) -> float | None:
    try:
        value = float(fn(*args))
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _per_label(y: np.ndarray, s: np.ndarray, pred: np.ndarray, labels: Sequence[str],
               thresholds: dict[str, float]) -> dict[str, dict]:
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    out = {}
    for j, name in enumerate(labels):
        yj, sj, pj = y[:, j], s[:, j], pred[:, j]
        defined = _both_classes(yj)
        out[name] = {
            "positives": int(yj.sum()), "threshold": float(thresholds[name]),
            "auroc": _optional(roc_auc_score, yj, sj) if defined else None,
            "ap": _optional(average_precision_score, yj, sj) if yj.any() else None,
            "f1": float(f1_score(yj, pj, zero_division=0)),
            "precision": float(precision_score(yj, pj, zero_division=0)),
            "recall": float(recall_score(yj, pj, zero_division=0)),
        }
    return out


def _f1(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)


def f1_averages(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """F1 over (N, L) 0/1 arrays: micro, macro, weighted (by positives), samples (per film); 0 where undefined,
    as scikit-learn with zero_division=0, also for a single label."""
    y, pred = y.astype(bool), pred.astype(bool)
    tp, fp, fn = (y & pred), (~y & pred), (y & ~pred)
    per_label = _f1(tp.sum(0), fp.sum(0), fn.sum(0))
    support = y.sum(0)
    return {"micro": float(_f1(tp.sum(), fp.sum(), fn.sum())), "macro": float(per_label.mean()),
            "weighted": float((per_label * support).sum() / support.sum()) if support.sum() else 0.0,
            "samples": float(_f1(tp.sum(1), fp.sum(1), fn.sum(1)).mean())}


def metrics(y: np.ndarray, scores: np.ndarray, labels: Sequence[str], thresholds: dict[str, float],
            which: str = "present") -> dict:
    """Every number of the module doc for targets ``y`` (N×L, 0/1) and ``scores`` (N×L, 0-1)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = (np.asarray(y) > 0.5).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    th = np.array([thresholds[name] for name in labels])
    pred = (scores >= th).astype(np.int64)
    per = _per_label(y, scores, pred, labels, thresholds)
    cols = evaluated_labels(y, labels, which)
    names = [labels[j] for j in cols]
    ye, se, pe = y[:, cols], scores[:, cols], pred[:, cols]
    pooled = ye.size > 0 and _both_classes(ye.ravel())
    f1 = f1_averages(ye, pe) if cols else dict.fromkeys(("micro", "macro", "weighted", "samples"))
    return {
        "films": int(len(y)), "labels": list(labels), "evaluated_labels": names, "per_label": per,
        "macro_auroc": _mean([per[n]["auroc"] for n in names]),
        "micro_auroc": _optional(roc_auc_score, ye.ravel(), se.ravel()) if pooled else None,
        "macro_ap": _mean([per[n]["ap"] for n in names]),
        "micro_ap": _optional(average_precision_score, ye.ravel(), se.ravel()) if pooled else None,
        "f1": f1,
    }


# --- curves and plots ---------------------------------------------------------------------------------------

def averaged_curves(y: np.ndarray, scores: np.ndarray, labels: Sequence[str], which: str = "present") -> dict:
    """ROC and PR curves per evaluated label, their macro average on a common grid, and the micro curve."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = (np.asarray(y) > 0.5).astype(np.int64)
    cols = evaluated_labels(y, labels, which)
    roc, pr, tprs, precs = {}, {}, [], []
    for j in cols:
        fpr, tpr, _ = roc_curve(y[:, j], scores[:, j])
        precision, recall, _ = precision_recall_curve(y[:, j], scores[:, j])
        roc[labels[j]], pr[labels[j]] = (fpr, tpr), (recall, precision)
        tprs.append(np.interp(_GRID, fpr, tpr))
        # interpolated precision: the best precision at any recall >= r
        best = np.maximum.accumulate(precision[::-1])[::-1]
        precs.append(np.interp(_GRID, recall[::-1], best[::-1]))
    out = {"roc": roc, "pr": pr}
    if cols:
        out["roc"]["macro"] = (_GRID, np.mean(tprs, axis=0))
        out["pr"]["macro"] = (_GRID, np.mean(precs, axis=0))
        ye, se = y[:, cols].ravel(), scores[:, cols].ravel()
        fpr, tpr, _ = roc_curve(ye, se)
        precision, recall, _ = precision_recall_curve(ye, se)
        out["roc"]["micro"], out["pr"]["micro"] = (fpr, tpr), (recall, precision)
    return out


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend (no display on a server or a Pi)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(curves: dict, out_dir: Path, title: str = "") -> list[Path]:
    """roc.png and pr.png: one line per label, the averages drawn thick."""
    plt = pyplot()
    written = []
    for kind, (xlabel, ylabel) in {"roc": ("false positive rate", "true positive rate"),
                                   "pr": ("recall", "precision")}.items():
        fig, ax = plt.subplots(figsize=(7, 6))
        for name, (x, yv) in curves[kind].items():
            thick = name in ("macro", "micro")
            ax.plot(x, yv, lw=2.5 if thick else 1.0, ls="--" if name == "micro" else "-", label=name)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=f"{kind.upper()} {title}".strip())
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
        path = out_dir / f"{kind}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def cooccurrence_counts(y: np.ndarray) -> np.ndarray:
    """L×L films carrying both labels (diagonal: each label's count)."""
    from train.splits import cooccurrence

    return cooccurrence(np.asarray(y))


def plot_cooccurrence(counts: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(np.log1p(counts), cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=5, color="white")
    fig.colorbar(image, ax=ax, label="log(1 + films)")
    ax.set_title(f"label co-occurrence {title}".strip())
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(out_dir: Path, y: np.ndarray, scores: np.ndarray, labels: Sequence[str],
                 thresholds: dict[str, float], which: str = "present", name: str = "test") -> dict:
    """metrics + roc.png, pr.png, cooccurrence.png into ``out_dir``; returns the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = metrics(y, scores, labels, thresholds, which)
    plot_curves(averaged_curves(y, scores, labels, which), out_dir, title=f"({name})")
    plot_cooccurrence(cooccurrence_counts(y), labels, out_dir / "cooccurrence.png", title=f"({name})")
    return numbers


# --- command line -------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a train checkpoint (*.safetensors)")
    p.add_argument("--data", type=Path, required=True, help="the NIH-layout folder it was trained on")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument("--out", type=Path, help="where to write (default: CKPT's folder / eval-SPLIT)")
    p.add_argument("--cache", type=Path, help="film cache folder (default: the run's, CKPT's folder / cache)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p


def _evaluate(args: argparse.Namespace) -> dict:
    from train.checkpoint import model_from_checkpoint
    from train.engine import predict_films

    model, meta = model_from_checkpoint(args.checkpoint)
    out = args.out or args.checkpoint.parent / f"eval-{args.split}"
    data = meta["data"]
    y, scores = predict_films(model, meta["task"], args.data, data, args.split,
                              cache_dir=args.cache or args.checkpoint.parent / "cache", size=meta["preprocess"]["size"],
                              batch_size=args.batch_size, device=args.device)
    which = meta["config"].get("eval_labels", "present")
    numbers = write_report(out, y, scores, meta["labels"], meta["thresholds"], which, name=args.split)
    numbers = {"checkpoint": str(args.checkpoint), "split": args.split, **numbers}
    from edge.fsio import atomic_write_bytes
    atomic_write_bytes(out / "metrics.json", json.dumps(numbers, indent=2).encode())
    print(f"{args.split}: {numbers['films']} films, macro AUROC {_fmt(numbers['macro_auroc'])} over "
          f"{len(numbers['evaluated_labels'])} labels, micro AUROC {_fmt(numbers['micro_auroc'])}, "
          f"macro F1 {_fmt(numbers['f1']['macro'])}; written to {out}")
    return numbers


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _run(args: argparse.Namespace) -> int:
    _evaluate(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    from edge.cli import run_main

    return run_main("train.evaluate", lambda: _parser().parse_args(argv), _run)


if __name__ == "__main__":
    sys.exit(main())
