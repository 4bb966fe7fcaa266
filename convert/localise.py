"""Where the heatmaps point: the int8 CPU Grad-CAM against drawn lesion boxes and PyTorch's Grad-CAM.

On held-out phantom films with drawn lesions (``BBox_List_2017.csv`` and ``test_list.txt`` of a
phantom set), for one checkpoint and its bundle:

* ``per_lesion``: a finding with k boxes on a film is matched one to one with the k hottest of
  its heatmap's peaks (``edge.cam.cam_peaks``, what the scan stores and marks); the share of boxes hit.
* ``pointing_game``: per film and finding, a hit when the hottest peak lies in one of its boxes.
* ``inside``: the hottest peak alone, per box, for each peak method (``parabolic`` is the default).
* ``mean_corr`` / ``min_corr``: Pearson correlation with PyTorch autograd Grad-CAM on the fp32
  model, both relative to the bundle's baselines (the PyTorch one uses the fp32 model's).
* ``extra_peaks_per_cam``: peaks beyond a finding's drawn lesions, per heatmap.

The test suite asserts its bars on these figures for the session model; ``convert.spread``
reports them over training seeds.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np

from convert.errors import ConvertError

__all__ = ["BARS", "Box", "cam_figures", "held_out_lesions", "inside", "matched", "pearson", "torch_features",
           "torch_grad_cam"]

Box = tuple[float, float, float, float]  # x, y, w, h in film pixels

# The targets the suite asserts on the session model (tests/edge/test_cam_fidelity.py).
BARS = {"per_lesion": 0.8, "pointing_game": 0.8, "inside": 0.75, "mean_corr": 0.9}


def held_out_lesions(phantom_set: Path, limit: int | None = None) -> dict[str, list[tuple[str, Box]]]:
    """Held-out film name -> [(label, (x, y, w, h))] from BBox_List_2017.csv, sorted by name."""
    held_out = set((phantom_set / "test_list.txt").read_text().split())
    boxes: dict[str, list] = {}
    with open(phantom_set / "BBox_List_2017.csv", newline="") as f:
        rows = csv.reader(f)
        next(rows)
        for row in rows:
            if row and row[0] in held_out:
                boxes.setdefault(row[0], []).append((row[1], tuple(float(v) for v in row[2:6])))
    return dict(sorted(boxes.items())[:limit])


def torch_features(model, x: np.ndarray):
    """The fp32 PyTorch model's last feature map for the 224×224×3 uint8 input, with the training normalisation
    (no autograd: Grad-CAM needs only the head's gradient with respect to it)."""
    import torch

    from edge.preprocess import MEAN, STD

    t = torch.from_numpy(x).permute(2, 0, 1)[None].float()
    t = (t - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.forward_features(t)


def torch_grad_cam(model, x: np.ndarray, label: int, baseline: np.ndarray | None = None, features=None) -> np.ndarray:
    """Autograd Grad-CAM (7×7) of the fp32 PyTorch model on the 224×224×3 uint8 input, with the training
    normalisation: channel weights are the spatial mean of d logit / dA, cam = ReLU(Σ w (A - B)) for the
    baseline feature map B (L×H×W×C per label, or H×W×C; none: B = 0). ``features``: ``torch_features(model, x)``
    when already computed (one body pass per film, however many labels)."""
    import torch

    a = (torch_features(model, x) if features is None else features).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.forward_head(a)[0, label], a)
    if baseline is not None and baseline.ndim == 4:
        baseline = baseline[label]
    b = 0 if baseline is None else torch.from_numpy(baseline).permute(2, 0, 1)[None]
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * (a - b)).sum(1))[0].detach().numpy()


def pearson(u: np.ndarray, v: np.ndarray) -> float | None:
    """Correlation of two maps; None when both are flat (nothing to compare), 0 when only one is."""
    su, sv = u.std(), v.std()
    if su == 0 and sv == 0:
        return None
    if su == 0 or sv == 0:
        return 0.0
    return float(np.corrcoef(u.ravel(), v.ravel())[0, 1])


def inside(point: tuple[int, int], box: Box) -> bool:
    x, y, w, h = box
    return x <= point[0] <= x + w and y <= point[1] <= y + h


def matched(peaks: list[tuple[int, int]], boxes: list[Box]) -> int:
    """Boxes hit when each of ``peaks`` may stand for one box only (the best one-to-one assignment)."""
    k = min(len(peaks), len(boxes))
    return max(sum(inside(peaks[j], boxes[b]) for j, b in enumerate(order))
               for order in itertools.permutations(range(len(boxes)), k))


class _Tally:
    """Running counts over every (film, finding) heatmap and every box."""

    def __init__(self, methods: tuple[str, ...]):
        self.corr: list[float] = []
        self.flat = self.pointing = self.lesions_hit = self.extra = self.boxes = self.inside_fp32 = 0
        self.not_default = 0  # heatmaps whose hottest cam_peaks peak is not cam_peak's default peak
        self.inside = {m: 0 for m in methods}
        self.per_label: dict[str, list[int]] = {}

    def add(self, label: str, r: float | None, found: list, peaks: dict, ref_peak, label_boxes: list[Box]) -> None:
        self.flat += r is None
        self.corr += [] if r is None else [r]
        self.pointing += any(inside(found[0], box) for box in label_boxes)
        self.not_default += found[0] != peaks["parabolic"]
        hits = matched(found[:len(label_boxes)], label_boxes)
        self.lesions_hit += hits
        self.extra += max(0, len(found) - len(label_boxes))  # peaks beyond the drawn lesions: marked, not scored
        for box in label_boxes:
            for method, p in peaks.items():
                self.inside[method] += inside(p, box)
            self.inside_fp32 += inside(ref_peak, box)
            self.boxes += 1
        k, m = self.per_label.get(label, [0, 0])
        self.per_label[label] = [k + hits, m + len(label_boxes)]

    def figures(self, films: int) -> dict:
        cams, n = len(self.corr) + self.flat, max(self.boxes, 1)
        return {"films": films, "lesions": self.boxes, "cams": cams, "flat": self.flat,
                "mean_corr": float(np.mean(self.corr)) if self.corr else None,
                "min_corr": float(min(self.corr)) if self.corr else None,
                "pointing_game": self.pointing / max(cams, 1), "per_lesion": self.lesions_hit / n,
                "extra_peaks_per_cam": self.extra / max(cams, 1), "hottest_not_default_peak": self.not_default,
                "inside": {m: k / n for m, k in self.inside.items()}, "inside_fp32": self.inside_fp32 / n,
                "inside_per_label": {label: f"{k}/{m}" for label, (k, m) in sorted(self.per_label.items())}}


def cam_figures(checkpoint: Path, bundle_dir: Path, phantom_set: Path, limit: int | None = None) -> dict:
    """The figures of the module doc for every held-out film with a lesion box (at most ``limit`` films)."""
    from edge.cam import PEAKS, cam_peak, cam_peaks, grad_cam, load_head
    from edge.films import load_film
    from edge.preprocess import preprocess
    from edge.runtime import open_model
    from train.checkpoint import model_from_checkpoint

    torch_model, _ = model_from_checkpoint(checkpoint)
    model = open_model(bundle_dir, device="cpu")
    head, labels = load_head(model.bundle), model.bundle.labels
    baseline = load_head(model.bundle, exact=True).baseline  # the fp32 model's, for the PyTorch CAM
    if head.baseline is None or baseline is None:
        raise ConvertError(f"{bundle_dir}: the bundle has no CAM baseline")
    lesions = held_out_lesions(phantom_set, limit)
    tally = _Tally(tuple(PEAKS))
    for name, boxes in lesions.items():
        film = load_film(next(phantom_set.rglob(name)))
        x = preprocess(film)
        features, torch_a = model.predict(x).features, torch_features(torch_model, x)
        for label in sorted({label for label, _ in boxes}):  # one CAM per film and label, its peaks
            if label not in labels:
                raise ConvertError(f"{name}: box label {label!r} is not a model label")
            c = labels.index(label)
            cam = grad_cam(head, features, c, model.bundle.task)
            ref = torch_grad_cam(torch_model, x, c, baseline, torch_a)
            peaks = {method: cam_peak(cam, film.shape, method=method) for method in PEAKS}
            tally.add(label, pearson(cam, ref), cam_peaks(cam, film.shape), peaks, cam_peak(ref, film.shape),
                      [box for lab, box in boxes if lab == label])
    return tally.figures(len(lesions))
