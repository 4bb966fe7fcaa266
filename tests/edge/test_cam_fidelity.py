"""Issue 5 acceptance: the int8 CPU Grad-CAM against PyTorch autograd Grad-CAM on the fp32 model.

On held-out phantom films with drawn lesions (the session's briefly trained model and its bundle):
the mean Pearson correlation of the two CAMs is at least 0.9, and the int8 CAM's peak lies inside
the drawn lesion box for at least 80% of lesions. Per lesion, a finding with k boxes on a film is
matched one to one with the k hottest of its heatmap's peaks (edge.cam.cam_peaks, what the scan
stores and marks): a film with effusions on both sides has two boxes and, when the model sees both,
two peaks. Also scored: the pointing game (per film and finding: a hit when the hottest peak lies in
one of that finding's boxes; target 80%) and the hottest peak alone per box (guarded at 75%: it can
only ever hit one of two boxes). Measured on the session model: 81.6% per lesion, 78.5% with the
hottest peak alone. Both CAMs are relative to the bundle's per-label baselines (the calibration
films without the label; the PyTorch one uses the fp32 model's). Also: a bundle whose label list does
not match the model's outputs is refused before any film is scored.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.cam import PEAKS, cam_peak, cam_peaks, grad_cam, load_head
from edge.errors import BundleError
from edge.films import load_film
from edge.preprocess import MEAN, STD, preprocess
from edge.runtime import open_model
from edge.store import DB_NAME

pytestmark = pytest.mark.slow

MAX_FILMS = 1000  # every held-out film with a box (~120 films, ~160 boxes in the session's phantom set)
MIN_CORRELATION = 0.9
MIN_INSIDE = 0.8
MIN_INSIDE_PER_BOX = 0.75
MAX_EXTRA_PEAKS = 0.3  # peaks beyond a finding's drawn lesions, per heatmap (measured 0.15)


def _lesions(phantom_set: Path) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """Held-out film name -> [(label, (x, y, w, h))] from BBox_List_2017.csv."""
    held_out = set((phantom_set / "test_list.txt").read_text().split())
    boxes: dict[str, list] = {}
    with open(phantom_set / "BBox_List_2017.csv", newline="") as f:
        rows = csv.reader(f)
        next(rows)
        for row in rows:
            if row and row[0] in held_out:
                boxes.setdefault(row[0], []).append((row[1], tuple(float(v) for v in row[2:6])))
    return dict(sorted(boxes.items())[:MAX_FILMS])


def _torch_grad_cam(model, x: np.ndarray, label: int, baseline: np.ndarray | None = None) -> np.ndarray:
    """Autograd Grad-CAM (7×7) of the fp32 PyTorch model on the 224×224×3 uint8 input, with the training
    normalisation: channel weights are the spatial mean of d logit / dA, cam = ReLU(Σ w (A - B)) for the
    baseline feature map B (L×H×W×C per label, or H×W×C; none: B = 0)."""
    import torch

    t = torch.from_numpy(x).permute(2, 0, 1)[None].float()
    t = (t - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    a = model.forward_features(t)
    (grad,) = torch.autograd.grad(model.forward_head(a)[0, label], a)
    if baseline is not None and baseline.ndim == 4:
        baseline = baseline[label]
    b = 0 if baseline is None else torch.from_numpy(baseline).permute(2, 0, 1)[None]
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * (a - b)).sum(1))[0].detach().numpy()


def _pearson(u: np.ndarray, v: np.ndarray) -> float | None:
    """Correlation of two maps; None when both are flat (nothing to compare), 0 when only one is."""
    su, sv = u.std(), v.std()
    if su == 0 and sv == 0:
        return None
    if su == 0 or sv == 0:
        return 0.0
    return float(np.corrcoef(u.ravel(), v.ravel())[0, 1])


def _inside(point: tuple[int, int], box: tuple[float, float, float, float]) -> bool:
    x, y, w, h = box
    return x <= point[0] <= x + w and y <= point[1] <= y + h


def _matched(peaks: list[tuple[int, int]], boxes: list) -> int:
    """Boxes hit when each of ``peaks`` may stand for one box only (the best one-to-one assignment)."""
    k = min(len(peaks), len(boxes))
    return max(sum(_inside(peaks[j], boxes[b]) for j, b in enumerate(order))
               for order in itertools.permutations(range(len(boxes)), k))


def test_matching_gives_each_peak_one_box():
    left, right = (0, 0, 10, 10), (20, 0, 10, 10)
    assert _matched([(5, 5)], [left, right]) == 1
    assert _matched([(5, 5), (6, 6)], [left, right]) == 1  # two peaks in one box hit it once
    assert _matched([(25, 5), (5, 5)], [left, right]) == 2
    assert _matched([(50, 50)], [left]) == 0


@pytest.fixture(scope="module")
def cam_figures(checkpoint, bundle_dir, phantom_set) -> dict:
    """int8 CPU Grad-CAM vs PyTorch fp32 Grad-CAM on every held-out lesion, and where the peaks fall."""
    from train.checkpoint import model_from_checkpoint

    torch_model, _ = model_from_checkpoint(checkpoint)
    model = open_model(bundle_dir, device="cpu")
    head, labels = load_head(model.bundle), model.bundle.labels
    baseline = load_head(model.bundle, exact=True).baseline  # the fp32 model's, for the PyTorch CAM
    assert head.baseline is not None and baseline is not None, "the bundle has no CAM baseline"
    lesions = _lesions(phantom_set)
    assert len(lesions) >= 100, f"too few held-out films with lesion boxes: {len(lesions)}"
    corr, flat, inside, inside_fp32, per_label, pointing = [], 0, {m: 0 for m in PEAKS}, 0, {}, 0
    lesions_hit, extra = 0, 0
    n = 0
    for name, boxes in lesions.items():
        film = load_film(next(phantom_set.rglob(name)))
        x = preprocess(film)
        features = model.predict(x).features
        for label in sorted({label for label, _ in boxes}):  # one CAM per film and label, its peaks
            assert label in labels, f"{name}: box label {label!r} is not a model label"
            c = labels.index(label)
            cam, ref = grad_cam(head, features, c, model.bundle.task), _torch_grad_cam(torch_model, x, c, baseline)
            r = _pearson(cam, ref)
            flat += r is None
            corr += [] if r is None else [r]
            peaks = {method: cam_peak(cam, film.shape, method=method) for method in PEAKS}
            found, ref_peak = cam_peaks(cam, film.shape), cam_peak(ref, film.shape)  # the default method
            peak = found[0]
            assert peak == peaks["parabolic"]  # cam_peak's default method: cam_peaks' hottest is its peak
            label_boxes = [box for lab, box in boxes if lab == label]
            pointing += any(_inside(peak, box) for box in label_boxes)
            hits = _matched(found[:len(label_boxes)], label_boxes)
            lesions_hit += hits
            extra += max(0, len(found) - len(label_boxes))  # peaks beyond the drawn lesions: marked, not scored
            for box in label_boxes:
                for method, p in peaks.items():
                    inside[method] += _inside(p, box)
                inside_fp32 += _inside(ref_peak, box)
                n += 1
            per_label[label] = [a + b for a, b in zip(per_label.get(label, [0, 0]), (hits, len(label_boxes)),
                                                      strict=True)]
    figures = {"films": len(lesions), "lesions": n, "cams": len(corr) + flat, "flat": flat,
               "mean_corr": float(np.mean(corr)), "min_corr": float(min(corr)),
               "pointing_game": pointing / (len(corr) + flat), "per_lesion": lesions_hit / n,
               "extra_peaks_per_cam": extra / (len(corr) + flat),
               "inside": {m: k / n for m, k in inside.items()}, "inside_fp32": inside_fp32 / n,
               "inside_per_label": {label: f"{k}/{m}" for label, (k, m) in sorted(per_label.items())}}
    print(f"\nCAM figures: {figures}")
    return figures


def test_int8_cpu_grad_cam_agrees_with_pytorch_grad_cam(cam_figures):
    assert cam_figures["flat"] <= cam_figures["cams"] // 10, "too many CAM pairs are flat in both models"
    assert cam_figures["mean_corr"] >= MIN_CORRELATION


def test_int8_cam_peak_lies_inside_the_lesion_box_per_film_and_finding(cam_figures):
    assert cam_figures["cams"] >= 140
    assert cam_figures["pointing_game"] >= MIN_INSIDE


def test_int8_cam_peaks_lie_inside_the_lesion_boxes_per_lesion(cam_figures):
    assert cam_figures["lesions"] >= 150
    assert cam_figures["per_lesion"] >= MIN_INSIDE
    assert cam_figures["extra_peaks_per_cam"] <= MAX_EXTRA_PEAKS  # not bought with a marker on every hot spot


def test_int8_cam_hottest_peak_alone_lies_inside_most_lesion_boxes(cam_figures):
    assert cam_figures["inside"]["parabolic"] >= MIN_INSIDE_PER_BOX  # cam_peak's default method


def test_a_bundle_whose_labels_do_not_match_the_model_is_refused_before_any_film(bundle_dir, phantom_set, tmp_path,
                                                                                   capsys):
    from edge.scan import main as scan_main

    bad = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bad)
    spec = json.loads((bad / "bundle.json").read_text())
    dropped = spec["labels"].pop()
    del spec["thresholds"][dropped]
    (bad / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match=f"{len(spec['labels']) + 1} scores but bundle.json lists"):
        open_model(bad, device="cpu")
    out = tmp_path / "results"
    film = next(iter(sorted((phantom_set / "images").glob("*.png"))))
    assert scan_main([str(film), "--bundle", str(bad), "--out", str(out), "--quiet"]) == 2
    assert "labels" in capsys.readouterr().err
    assert not (out / DB_NAME).exists()
