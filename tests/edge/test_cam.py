"""The numpy Grad-CAM: gradients against finite differences and hand derivations, peaks, upsampling."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edge.bundle import Bundle
from edge.cam import (
    cam_peak,
    cam_peaks,
    grad_cam,
    grad_cams,
    grad_features,
    head_logits,
    load_head,
    make_head,
    upsample,
)
from edge.errors import BundleError
from edge.heads import HEADS

C, HID, L, GRID = 6, 5, 4, 3


def _random_arrays(name: str, rng: np.random.Generator, c: int = C, n_labels: int = L) -> dict[str, np.ndarray]:
    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)
    if name == "chexnet":
        return {"weight": r(n_labels, c), "bias": r(n_labels)}
    return {"bn1_scale": r(2 * c), "bn1_shift": r(2 * c), "fc1_weight": r(HID, 2 * c), "fc1_bias": r(HID),
            "bn2_scale": r(HID), "bn2_shift": r(HID), "fc2_weight": r(n_labels, HID), "fc2_bias": r(n_labels)}


def _features(rng: np.random.Generator, grid: int = GRID, c: int = C) -> np.ndarray:
    """Non-negative features with a clear maximum per channel (no ties within a finite-difference step)."""
    a = rng.uniform(0, 1, size=(grid, grid, c)).astype(np.float32)
    cells = rng.integers(0, grid * grid, size=c)
    a.reshape(-1, c)[cells, np.arange(c)] += 1.0
    return a


def _finite_difference(head, a: np.ndarray, label: int, eps: float = 1e-3) -> np.ndarray:
    grad = np.zeros_like(a, dtype=np.float64)
    for idx in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (head_logits(head, up)[label] - head_logits(head, down)[label]) / (2 * eps)
    return grad


@pytest.mark.parametrize("name", sorted(HEADS))
def test_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(1)
    head = make_head(name, _random_arrays(name, rng))
    a = _features(rng)
    analytic = grad_features(head, a, range(L))
    assert analytic.shape == (L, GRID, GRID, C)
    for label in range(L):
        np.testing.assert_allclose(analytic[label], _finite_difference(head, a, label), atol=2e-2, rtol=1e-2)
    assert np.abs(analytic).max() > 0.1  # the comparison is not between zeros


def test_chexnet_head_forward_is_gap_then_linear():
    rng = np.random.default_rng(2)
    arrays = _random_arrays("chexnet", rng)
    a = _features(rng)
    expected = arrays["weight"] @ a.mean(axis=(0, 1)) + arrays["bias"]
    np.testing.assert_allclose(head_logits(make_head("chexnet", arrays), a), expected, rtol=1e-5, atol=1e-5)


def test_chexnet_grad_cam_is_classic_cam():
    rng = np.random.default_rng(3)
    arrays = _random_arrays("chexnet", rng)
    head = make_head("chexnet", arrays)
    a = _features(rng)
    for label in range(L):
        classic = np.maximum(a @ arrays["weight"][label], 0)
        np.testing.assert_allclose(grad_cam(head, a, label, "multilabel") * GRID * GRID, classic, rtol=1e-5,
                                   atol=1e-5)


def _paper_by_hand(arrays: dict, a: np.ndarray, label: int) -> np.ndarray:
    """Grad-CAM of the paper head derived on paper: dmax goes to one cell, davg everywhere; w = (dmax+davg)/HW."""
    p = np.concatenate([a.max(axis=(0, 1)), a.mean(axis=(0, 1))])
    h1 = arrays["fc1_weight"] @ (arrays["bn1_scale"] * p + arrays["bn1_shift"]) + arrays["fc1_bias"]
    dh1 = arrays["fc2_weight"][label] * arrays["bn2_scale"] * (h1 > 0)
    dp = arrays["bn1_scale"] * (arrays["fc1_weight"].T @ dh1)
    w = (dp[:C] + dp[C:]) / (a.shape[0] * a.shape[1])
    return np.maximum(a @ w, 0)


def test_paper_grad_cam_matches_hand_derivation():
    rng = np.random.default_rng(4)
    arrays = _random_arrays("paper", rng)
    head = make_head("paper", arrays)
    a = _features(rng)
    maps = grad_cams(head, a, range(L), "one_vs_all")
    assert maps.shape == (L, GRID, GRID) and maps.dtype == np.float32 and (maps >= 0).all()
    for label in range(L):
        np.testing.assert_allclose(maps[label], _paper_by_hand(arrays, a, label), rtol=1e-4, atol=1e-5)
    assert maps.max() > 0


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_exported_by_convert_matches_pytorch_autograd(name):
    """convert.camhead's arrays of a real PyTorch head (eval mode) give its logits and its autograd Grad-CAM."""
    torch = pytest.importorskip("torch")
    from convert.camhead import head_arrays
    from train.model import HEADS as TORCH_HEADS

    torch.manual_seed(0)
    net = TORCH_HEADS[name](C, L, 0.5).eval()
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    head = make_head(name, head_arrays(SimpleNamespace(head_name=name, head=net)))
    a = _features(np.random.default_rng(5))
    at = torch.from_numpy(a).permute(2, 0, 1)[None].requires_grad_(True)
    logits = net(at)
    np.testing.assert_allclose(head_logits(head, a), logits[0].detach().numpy(), rtol=1e-4, atol=1e-4)
    refs = []
    for label in range(L):
        (grad,) = torch.autograd.grad(logits[0, label], at, retain_graph=True)
        refs.append(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * at).sum(1))[0].detach().numpy())
    np.testing.assert_allclose(grad_cams(head, a, range(L)), np.stack(refs), rtol=1e-4, atol=1e-5)
    assert max(ref.max() for ref in refs) > 0.01


@pytest.mark.parametrize("name", sorted(HEADS))
def test_grad_cam_with_a_baseline_weights_the_difference_from_it(name):
    rng = np.random.default_rng(4)
    arrays = _random_arrays(name, rng)
    a, baseline = _features(rng), _features(rng)
    plain, relative = make_head(name, arrays), make_head(name, {**arrays, "baseline": baseline})
    assert plain.baseline is None and relative.baseline.shape == a.shape
    for label in range(L):
        weights = grad_features(plain, a, [label])[0].mean(axis=(0, 1))  # the gradient is taken at A, as before
        expected = np.maximum((a - baseline) @ weights, 0)
        np.testing.assert_allclose(grad_cam(relative, a, label), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(grad_cam(plain, a, label), expected)
    np.testing.assert_allclose(grad_cams(relative, baseline, range(L)), 0, atol=1e-6)  # the average film: no heat


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_per_label_baseline_gives_each_label_its_own_map(name):
    rng = np.random.default_rng(5)
    arrays = _random_arrays(name, rng)
    a, per_label = _features(rng), np.stack([_features(rng) for _ in range(L)])
    head = make_head(name, {**arrays, "baseline": per_label})
    assert head.baseline.shape == (L, *a.shape)
    cams = grad_cams(head, a, [2, 0])
    for cam, label in zip(cams, [2, 0], strict=True):
        single = make_head(name, {**arrays, "baseline": per_label[label]})  # that label's map alone
        np.testing.assert_allclose(cam, grad_cam(single, a, label), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad_cam(head, a, label), cam, rtol=1e-5, atol=1e-6)
    assert not np.allclose(cams[0], grad_cam(make_head(name, {**arrays, "baseline": per_label[0]}), a, 2))
    np.testing.assert_allclose(grad_cam(head, per_label[1], 1), 0, atol=1e-6)  # that label's baseline film: no heat


def test_grad_cam_refuses_unknown_task():
    head = make_head("chexnet", _random_arrays("chexnet", np.random.default_rng(0)))
    with pytest.raises(ValueError, match="task"):
        grad_cam(head, np.ones((GRID, GRID, C), np.float32), 0, "regression")


# ---------------------------------------------------------------- peaks and upsampling

def _hot(cells: dict[tuple[int, int], float], grid: int = 7) -> np.ndarray:
    cam = np.zeros((grid, grid), np.float32)
    for cell, value in cells.items():
        cam[cell] = value
    return cam


@pytest.mark.parametrize("method", ["cell", "parabolic", "centroid"])
def test_peak_of_a_single_hot_cell_is_its_centre_on_a_square_film(method):
    x, y = cam_peak(_hot({(2, 5): 1.0}), (1024, 1024), method=method)
    assert (x, y) == (int(5.5 * 1024 / 7), int(2.5 * 1024 / 7))


def test_peak_mapping_removes_the_padding_of_a_tall_film():
    # 700×350 film: scale 0.32, drawn 112 px wide from x=56 in the 224 input; columns 0 and 6 are padding.
    cam = _hot({(3, 0): 9.0, (3, 6): 9.0, (3, 3): 1.0})
    x, y = cam_peak(cam, (700, 350), method="cell")
    assert abs(x - 175) <= 1 and abs(y - 350) <= 1


def test_peak_mapping_removes_the_padding_of_a_wide_film():
    # 300×900 film: drawn 75 px high from y=74, so grid rows 0, 1, 5, 6 are padding; cell (2, 1) is at (48, 80).
    cam = _hot({(0, 1): 9.0, (6, 1): 9.0, (2, 1): 1.0})
    x, y = cam_peak(cam, (300, 900), method="cell")
    scale, top = 224 / 900, 74
    assert abs(x - 48 / scale) <= 1 and abs(y - (80 - top) / scale) <= 1


def test_centroid_peak_falls_between_two_equal_cells():
    x, y = cam_peak(_hot({(3, 3): 1.0, (3, 4): 1.0}), (700, 700), method="centroid")
    assert abs(x - 400) <= 1 and abs(y - 350) <= 1  # the shared edge of columns 3 and 4 is at x = 4/7 * 700


def test_parabolic_peak_moves_towards_the_stronger_neighbour_by_at_most_half_a_cell():
    cell = 1024 / 7
    x, y = cam_peak(_hot({(3, 3): 1.0, (3, 2): 0.5, (3, 4): 0.5, (2, 3): 0.2, (4, 3): 0.2}), (1024, 1024))
    assert (x, y) == (int(3.5 * cell), int(3.5 * cell))  # symmetric neighbours: the cell centre
    x, y = cam_peak(_hot({(3, 3): 1.0, (3, 4): 0.6, (2, 3): 0.5}), (1024, 1024))  # parabolic is the default
    assert x == int((3.5 + 0.6 / (2 * 1.4)) * cell) and y == int((3.5 - 0.5 / (2 * 1.5)) * cell)
    x, _ = cam_peak(_hot({(3, 3): 1.0, (3, 4): 1.0}), (1024, 1024))
    assert x == int(4.0 * cell)  # two equal cells: their shared edge, no further
    x, y = cam_peak(_hot({(0, 6): 1.0, (0, 5): 0.9, (1, 6): 0.9}), (1024, 1024))
    assert (x, y) == (int(6.5 * cell), int(0.5 * cell))  # a corner cell lacks a neighbour on each axis: not refined


def test_cam_peaks_lists_every_separate_hot_spot_hottest_first_from_cam_peaks_own():
    cell = 1024 / 7
    cam = _hot({(4, 1): 0.8, (4, 5): 1.0, (4, 2): 0.3, (1, 3): 0.45, (6, 6): 0.6, (6, 5): 0.55})
    peaks = cam_peaks(cam, (1024, 1024), method="cell")
    assert peaks[0] == cam_peak(cam, (1024, 1024), method="cell") == (int(5.5 * cell), int(4.5 * cell))
    assert peaks == [peaks[0], (int(1.5 * cell), int(4.5 * cell)), (int(6.5 * cell), int(6.5 * cell))]
    assert cam_peaks(cam, (1024, 1024), method="cell", max_peaks=2) == peaks[:2]
    assert len(cam_peaks(cam, (1024, 1024), method="cell", min_ratio=0.4)) == 3  # (1, 3) is a peak, 4th: over max
    assert len(cam_peaks(cam, (1024, 1024), method="cell", min_ratio=0.4, max_peaks=4)) == 4
    assert cam_peaks(cam, (1024, 1024), method="cell", min_ratio=0.9) == peaks[:1]
    # a slope is not a peak; neither is the rest of a plateau or a ridge, nor a hot cell over the padding
    assert len(cam_peaks(_hot({(3, 3): 1.0, (3, 4): 0.9, (3, 5): 0.8}), (1024, 1024))) == 1
    assert len(cam_peaks(_hot({(3, 3): 1.0, (3, 4): 1.0}), (1024, 1024))) == 1
    assert len(cam_peaks(_hot({(3, c): 1.0 for c in range(1, 6)}), (1024, 1024))) == 1
    assert len(cam_peaks(np.ones((7, 7), np.float32), (1024, 1024))) == 1
    assert len(cam_peaks(_hot({(3, 1): 1.0, (3, 2): 0.97, (3, 3): 1.0}), (1024, 1024))) == 1  # a dip under 5%
    assert len(cam_peaks(_hot({(3, 1): 1.0, (3, 2): 0.85, (3, 3): 0.95}), (1024, 1024))) == 2  # a dip over 5%
    assert len(cam_peaks(_hot({(3, 1): 1.0, (4, 2): 0.62, (5, 3): 0.65}), (1024, 1024))) == 1  # a shoulder
    assert cam_peaks(_hot({(3, 0): 9.0, (3, 3): 1.0}), (700, 350), method="cell") == [(175, 350)]
    # a cold map still has its one peak, where cam_peak puts it; refinement applies to every peak
    assert cam_peaks(np.zeros((7, 7), np.float32), (1024, 1024)) == [cam_peak(np.zeros((7, 7)), (1024, 1024))]
    two = _hot({(2, 1): 1.0, (2, 2): 0.5, (2, 5): 0.9, (2, 4): 0.45})
    (x1, _), (x2, _) = cam_peaks(two, (1024, 1024))
    assert x1 > int(1.5 * cell) and x2 < int(5.5 * cell)  # each pulled towards its stronger neighbour


def test_upsample_is_constant_for_a_constant_cam_and_peaks_at_the_hot_cell():
    flat = upsample(np.full((7, 7), 2.0, np.float32), (500, 300))
    assert flat.shape == (500, 300) and flat.dtype == np.float32
    np.testing.assert_allclose(flat, 2.0, rtol=1e-6)
    cam = _hot({(1, 3): 1.0})
    up = upsample(cam, (700, 350))
    y, x = np.unravel_index(np.argmax(up), up.shape)
    px, py = cam_peak(cam, (700, 350), method="cell")
    assert abs(x - px) <= 3 and abs(y - py) <= 3
    assert up.max() == pytest.approx(1.0, abs=0.02)


# ---------------------------------------------------------------- loading from a bundle

def _bundle(tmp_path, name: str, arrays: dict, labels=("A", "B", "C", "D"), listed: bool = True) -> Bundle:
    np.savez(tmp_path / "cam_head.npz", **arrays)
    spec = {"task": "multilabel", "labels": list(labels), "thresholds": dict.fromkeys(labels, 0.5),
            "cam": {"head": name, "params": "cam_head.npz", "feature_shape": [7, 7, C]},
            "files": {"cam_head.npz": "0" * 64} if listed else {}}
    return Bundle(path=tmp_path, spec=spec)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_load_head_reads_the_bundle_head(tmp_path, name):
    arrays = _random_arrays(name, np.random.default_rng(6))
    head = load_head(_bundle(tmp_path, name, arrays))
    a = _features(np.random.default_rng(7))
    np.testing.assert_allclose(head_logits(head, a), head_logits(make_head(name, arrays), a))
    assert head.name == name and head.task == "multilabel"


def test_load_head_reads_the_baseline_and_its_exact_twin_and_checks_its_shape(tmp_path):
    arrays = _random_arrays("chexnet", np.random.default_rng(0))
    int8, fp32 = np.full((7, 7, C), 1.0, np.float32), np.full((7, 7, C), 2.0, np.float32)
    bundle = _bundle(tmp_path, "chexnet", {**arrays, "baseline": int8, "exact_baseline": fp32})
    np.testing.assert_array_equal(load_head(bundle).baseline, int8)
    np.testing.assert_array_equal(load_head(bundle, exact=True).baseline, fp32)
    with pytest.raises(BundleError, match="baseline has shape"):
        load_head(_bundle(tmp_path, "chexnet", {**arrays, "baseline": np.ones((3, 3, C), np.float32)}))
    per_label = np.stack([np.full((7, 7, C), float(k), np.float32) for k in range(4)])  # the bundle's 4 labels
    np.testing.assert_array_equal(load_head(_bundle(tmp_path, "chexnet", {**arrays, "baseline": per_label})).baseline,
                                  per_label)
    with pytest.raises(BundleError, match="one per label"):
        load_head(_bundle(tmp_path, "chexnet", {**arrays, "baseline": per_label[:3]}))


def test_load_head_names_a_missing_array(tmp_path):
    arrays = _random_arrays("paper", np.random.default_rng(0))
    del arrays["bn2_shift"]
    with pytest.raises(BundleError, match="bn2_shift"):
        load_head(_bundle(tmp_path, "paper", arrays))


def test_load_head_refuses_a_head_of_another_label_count(tmp_path):
    arrays = _random_arrays("chexnet", np.random.default_rng(0), n_labels=3)
    with pytest.raises(BundleError, match="4 labels"):
        load_head(_bundle(tmp_path, "chexnet", arrays))


def test_load_head_refuses_unknown_head_unlisted_file_and_pickles(tmp_path):
    arrays = _random_arrays("chexnet", np.random.default_rng(0))
    with pytest.raises(BundleError, match="unknown CAM head"):
        load_head(_bundle(tmp_path, "resnet", arrays))
    with pytest.raises(BundleError, match="checksum"):
        load_head(_bundle(tmp_path, "chexnet", arrays, listed=False))
    arrays["weight"] = np.array([{"evil": 1}], dtype=object)
    with pytest.raises(BundleError, match="cannot read"):
        load_head(_bundle(tmp_path, "chexnet", arrays))
