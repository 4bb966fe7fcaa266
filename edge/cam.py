"""CPU Grad-CAM from the model's last feature map, with the head's backward pass in numpy.

A TFLite interpreter gives no gradients, and none are needed: the model also outputs the last
feature map A (H×W×C, after the final ReLU), and the classifier head after it is small. Its
parameters are in the bundle's ``cam_head.npz`` (float32, BatchNorm folded to ``scale*x+shift``
as in eval mode, dropout the identity). For label c:

1. forward the head on A to its logits, keeping each layer's input;
2. backward from d logit_c (the class logit, for sigmoid and softmax tasks alike) to the
   pooled features, then through the pooling to A: average pooling spreads uniformly
   (1/HW per cell), max pooling sends the gradient to the arg-max cell of each channel;
3. channel weights w_k = spatial mean of dA_k; cam = ReLU(Σ_k w_k (A_k - B_k)).

B is the baseline feature map (``cam_head.npz`` array ``baseline``), measured by convert with the
same model on the calibration films: per label (L×H×W×C), B for label c is the mean feature map
of the calibration films *without* c, so the heatmap shows where this film's evidence for c exceeds
that of a film without the finding. One map for all labels (H×W×C, bundles before per-label
baselines: the mean of all calibration films) hides part of a lesion where lesions usually are:
the average film then carries some effusion at the bases, and the peak drifts away from them.
Without any (B = 0, plain Grad-CAM) the map is dominated by what every chest shows (the README
has the measurements). For the CheXNet head this is exactly CAM of logit_c(A) - logit_c(B) (W_c·(A - B) up to
1/HW); a bundle without ``baseline`` gives plain Grad-CAM.

``cam_peak`` maps the peak back to film pixels through ``edge.preprocess.placement`` (cells that
lie only over the padding of a non-square film are ignored). ``PEAKS``: "cell" (centre of the
maximum cell; bilinear upsampling then argmax gives the same point), "parabolic" (default: the
vertex of the parabola through the maximum and its two neighbours, per axis, at most half a cell
from the maximum's centre: the usual sub-cell refinement, which keeps a small lesion's peak in its
cell) or "centroid" (the CAM-weighted centroid of the 3×3 cells around the maximum; it pulls the
peak up to a cell towards strong neighbours, which suits large lesions and misses small ones).
``cam_peaks`` gives every peak of a heatmap, strongest first (the first is ``cam_peak``'s): cells
at least as hot as their eight neighbours and at least ``PEAK_RATIO`` of the hottest, each parted
from every hotter peak by a dip of at least ``PEAK_DIP`` of the hottest (no path of cells stays
above it: a plateau or a ridge is one peak), at most ``MAX_PEAKS``, each refined the same way. A
finding on both sides (bilateral effusions) shows as two peaks; one global maximum can only ever
point at one of them.

A head is plain data: a sequence of layers ``(op, parameter prefix)``, its entry in
``edge.heads.HEADS``; each op has a forward and a backward in ``OPS``. Array names in
``cam_head.npz`` (convert.camhead writes them) are ``<prefix>_<param>``, or ``<param>`` without a
prefix: ``weight`` (L, C) and ``bias`` for the CheXNet head; ``bn1_scale``/``bn1_shift`` (2C),
``fc1_weight`` (Hd, 2C)/``fc1_bias``, ``bn2_scale``/``bn2_shift`` (Hd), ``fc2_weight`` (L, Hd)/
``fc2_bias`` for the paper (fastai) head.
Optional ``baseline`` (L, H, W, C) or (H, W, C): the CAM baseline above. An array convert measured or corrected for the
int8 features also comes as ``exact_<name>``, the value for the fp32 model's features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge.bundle import Bundle
from edge.errors import BundleError
from edge.heads import HEADS
from edge.preprocess import PREPROCESS, placement

__all__ = ["BASELINE", "EXACT_PREFIX", "MAX_PEAKS", "OPS", "PEAKS", "PEAK_RATIO", "Head", "array_name", "cam_peak",
           "cam_peaks", "grad_cam", "grad_cams", "grad_features", "head_logits", "load_head", "make_head", "upsample"]

TASKS = ("multilabel", "one_vs_all")  # both explain the class logit
BASELINE = "baseline"  # cam_head.npz: the CAM baseline feature map(s) (optional)
PEAK_RATIO = 0.5  # cam_peaks: a secondary peak is at least this share of the hottest cell ...
PEAK_DIP = 0.05  # ... with a dip of at least this share of the hottest between it and every hotter peak (int8
# rounding moves a cell of the CAM by ~1-2% of the hottest: a shallower dip is not a separate hot spot)
MAX_PEAKS = 3


# ---------------------------------------------------------------- layers: forward(p, x), backward(p, x, dy)
# x: the layer input (for the pooling ops the feature map H×W×C); dy: (K, out) gradients for K targets.

def _avg_fwd(p: dict, a: np.ndarray) -> np.ndarray:
    return a.mean(axis=(0, 1))


def _avg_bwd(p: dict, a: np.ndarray, dy: np.ndarray) -> np.ndarray:
    h, w, _ = a.shape
    return np.broadcast_to(dy[:, None, None, :] / (h * w), (len(dy), *a.shape))


def _max_fwd(p: dict, a: np.ndarray) -> np.ndarray:
    return a.max(axis=(0, 1))


def _max_bwd(p: dict, a: np.ndarray, dy: np.ndarray) -> np.ndarray:
    h, w, c = a.shape
    cell = a.reshape(h * w, c).argmax(axis=0)  # the first maximum, as PyTorch picks it
    da = np.zeros((len(dy), h * w, c), np.float32)
    da[:, cell, np.arange(c)] = dy
    return da.reshape(len(dy), h, w, c)


def _concat_fwd(p: dict, a: np.ndarray) -> np.ndarray:
    return np.concatenate([_max_fwd(p, a), _avg_fwd(p, a)])  # fastai order: max, then avg


def _concat_bwd(p: dict, a: np.ndarray, dy: np.ndarray) -> np.ndarray:
    c = a.shape[2]
    return _max_bwd(p, a, dy[:, :c]) + _avg_bwd(p, a, dy[:, c:])


def _linear_fwd(p: dict, x: np.ndarray) -> np.ndarray:
    return p["weight"] @ x + p["bias"]


def _linear_bwd(p: dict, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return dy @ p["weight"]


def _affine_fwd(p: dict, x: np.ndarray) -> np.ndarray:
    return p["scale"] * x + p["shift"]


def _affine_bwd(p: dict, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return dy * p["scale"]


def _relu_fwd(p: dict, x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _relu_bwd(p: dict, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return dy * (x > 0)


@dataclass(frozen=True)
class Op:
    forward: Callable[[dict, np.ndarray], np.ndarray]
    backward: Callable[[dict, np.ndarray, np.ndarray], np.ndarray]
    params: tuple[str, ...] = ()


OPS: dict[str, Op] = {
    "avgpool": Op(_avg_fwd, _avg_bwd),
    "concatpool": Op(_concat_fwd, _concat_bwd),
    "linear": Op(_linear_fwd, _linear_bwd, ("weight", "bias")),
    "affine": Op(_affine_fwd, _affine_bwd, ("scale", "shift")),  # eval-mode BatchNorm1d
    "relu": Op(_relu_fwd, _relu_bwd),
}

def array_name(prefix: str, param: str) -> str:
    """The cam_head.npz name of a layer's parameter: ``fc1_weight``, or ``weight`` without a prefix."""
    return f"{prefix}_{param}" if prefix else param


@dataclass(frozen=True)
class Head:
    """A classifier head: its name, its layers as (op, parameters) and the task."""

    name: str
    layers: tuple[tuple[str, dict], ...]
    task: str = "multilabel"
    baseline: np.ndarray | None = None  # (L, H, W, C) per label or (H, W, C) CAM baseline; None: plain Grad-CAM


def make_head(name: str, arrays: dict[str, np.ndarray], task: str = "multilabel") -> Head:
    """A Head from flat arrays named as ``array_name`` says; KeyError naming an unknown head or missing array."""
    if name not in HEADS:
        raise KeyError(f"unknown CAM head {name!r}; this edge knows {sorted(HEADS)}")
    missing = [array_name(prefix, k) for op, prefix in HEADS[name].layers for k in OPS[op].params
               if array_name(prefix, k) not in arrays]
    if missing:
        raise KeyError(f"missing arrays {missing}")
    layers = tuple((op, {k: np.asarray(arrays[array_name(prefix, k)], np.float32) for k in OPS[op].params})
                   for op, prefix in HEADS[name].layers)
    baseline = np.asarray(arrays[BASELINE], np.float32) if BASELINE in arrays else None
    return Head(name=name, layers=layers, task=task, baseline=baseline)


# ---------------------------------------------------------------- pure numpy: forward, backward, CAM

def _forward(head: Head, a: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(logits, the input of every layer)."""
    inputs, x = [], np.asarray(a, np.float32)
    for op, p in head.layers:
        inputs.append(x)
        x = OPS[op].forward(p, x)
    return x, inputs


def head_logits(head: Head, a: np.ndarray) -> np.ndarray:
    """The head's logits (L,) for the feature map A (H, W, C)."""
    return _forward(head, a)[0]


def grad_features(head: Head, a: np.ndarray, label_indices: Sequence[int]) -> np.ndarray:
    """d logit_c / dA for each c in ``label_indices``: (K, H, W, C) float32."""
    logits, inputs = _forward(head, a)
    dy = np.eye(len(logits), dtype=np.float32)[list(label_indices)]
    for (op, p), x in zip(reversed(head.layers), reversed(inputs), strict=True):
        dy = OPS[op].backward(p, x, dy)
    return np.asarray(dy, np.float32)


def grad_cams(head: Head, a: np.ndarray, label_indices: Sequence[int], task: str | None = None) -> np.ndarray:
    """Grad-CAM maps (K, H, W) float32 ≥ 0 for several labels at once, relative to the head's baseline."""
    task = task or head.task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    a = np.asarray(a, np.float32)
    weights = grad_features(head, a, label_indices).mean(axis=(1, 2))  # (K, C)
    if head.baseline is not None and head.baseline.ndim == 4:  # one baseline per label
        cams = np.einsum("khwc,kc->khw", a[None] - head.baseline[list(label_indices)], weights)
    else:
        cams = np.einsum("hwc,kc->khw", a if head.baseline is None else a - head.baseline, weights)
    return np.maximum(cams, 0).astype(np.float32)


def grad_cam(head: Head, a: np.ndarray, label_index: int, task: str | None = None) -> np.ndarray:
    """Grad-CAM (H, W) float32 ≥ 0 of label ``label_index`` on the feature map A (H, W, C)."""
    return grad_cams(head, a, [label_index], task)[0]


# ---------------------------------------------------------------- back to the film

def _interp_matrix(n_out: int, n_grid: int, start: float, step: float) -> np.ndarray:
    """(n_out, n_grid) bilinear weights: output pixel i sits at grid coordinate start + (i + 0.5) * step - 0.5."""
    g = np.clip(start + (np.arange(n_out) + 0.5) * step - 0.5, 0, n_grid - 1)
    lo = np.minimum(np.floor(g).astype(int), n_grid - 1)
    hi = np.minimum(lo + 1, n_grid - 1)
    frac = (g - lo).astype(np.float32)
    m = np.zeros((n_out, n_grid), np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def upsample(cam: np.ndarray, film_shape: tuple[int, int], size: int | None = None) -> np.ndarray:
    """The grid CAM (h, w) bilinearly spread over a film of ``film_shape`` (padding removed): (H, W) float32.

    ``film_shape`` may be the film's or a scaled copy's (same aspect): an overlay at 1024 px uses the latter.
    """
    size = size or int(PREPROCESS["size"])
    scale, top, left = placement(film_shape, size)
    gh, gw = cam.shape
    rows = _interp_matrix(film_shape[0], gh, top * gh / size, scale * gh / size)
    cols = _interp_matrix(film_shape[1], gw, left * gw / size, scale * gw / size)
    return (rows @ np.asarray(cam, np.float32) @ cols.T).astype(np.float32)


def _film_cells(grid: tuple[int, int], film_shape: tuple[int, int], size: int) -> np.ndarray:
    """(h, w) bool: grid cells that overlap the film inside the padded input."""
    scale, top, left = placement(film_shape, size)
    nh, nw = film_shape[0] * scale, film_shape[1] * scale
    ys = (np.arange(grid[0] + 1) * size / grid[0])
    xs = (np.arange(grid[1] + 1) * size / grid[1])
    rows = (ys[1:] > top) & (ys[:-1] < top + nh)
    cols = (xs[1:] > left) & (xs[:-1] < left + nw)
    return rows[:, None] & cols[None, :]


def _peak_cell(cam: np.ndarray, mask: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """Grid coordinates (row, col) of the peak cell's centre."""
    return r + 0.5, c + 0.5


def _peak_centroid(cam: np.ndarray, mask: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """Grid coordinates of the CAM-weighted centroid of the 3×3 cells around the peak cell."""
    r0, r1, c0, c1 = max(r - 1, 0), min(r + 2, cam.shape[0]), max(c - 1, 0), min(c + 2, cam.shape[1])
    win = np.where(mask, np.maximum(cam, 0), 0)[r0:r1, c0:c1]
    if win.sum() <= 0:
        return r + 0.5, c + 0.5
    ry, cx = np.mgrid[r0:r1, c0:c1] + 0.5
    return float((win * ry).sum() / win.sum()), float((win * cx).sum() / win.sum())


def _peak_parabolic(cam: np.ndarray, mask: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """Grid coordinates of the peak cell refined per axis by the parabola through it and its neighbours."""
    m = np.pad(np.where(mask, cam, np.nan).astype(np.float64), 1, constant_values=np.nan)  # m[r + 1, c + 1] is the peak
    return (r + 0.5 + _vertex(m[r, c + 1], m[r + 1, c + 1], m[r + 2, c + 1]),
            c + 0.5 + _vertex(m[r + 1, c], m[r + 1, c + 1], m[r + 1, c + 2]))


def _vertex(before: float, peak: float, after: float) -> float:
    """Offset in [-0.5, 0.5] of the vertex of the parabola through (-1, before), (0, peak), (1, after);
    0 when a neighbour is missing (grid edge, padding) or the three points are not a maximum."""
    curvature = before - 2 * peak + after
    if not np.isfinite(curvature) or curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5))


PEAKS = {"cell": _peak_cell, "parabolic": _peak_parabolic, "centroid": _peak_centroid}


def _peak_cells(cam: np.ndarray, mask: np.ndarray, min_ratio: float, max_peaks: int) -> list[tuple[int, int]]:
    """(row, col) of the heatmap's peaks, hottest first; always at least the hottest cell over the film."""
    m = np.where(mask, cam, -np.inf)
    first = tuple(int(v) for v in np.unravel_index(np.argmax(m), cam.shape))
    top = float(m[first])
    if not top > 0:
        return [first]
    around = np.pad(m, 1, constant_values=-np.inf)
    neighbours = np.max([around[1 + dr:1 + dr + m.shape[0], 1 + dc:1 + dc + m.shape[1]]
                         for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc], axis=0)
    rows, cols = np.nonzero((m >= neighbours) & (m >= min_ratio * top) & (m > 0))
    order = sorted(zip(rows.tolist(), cols.tolist(), strict=True), key=lambda rc: -m[rc])  # ties: raster order
    kept = [first]
    for r, c in order:
        if len(kept) >= max_peaks:
            break
        if not _connected(m, (r, c), m[r, c] - PEAK_DIP * top, kept):
            kept.append((r, c))
    return kept


def _connected(m: np.ndarray, start: tuple[int, int], level: float, targets: list[tuple[int, int]]) -> bool:
    """Whether a path of 8-connected cells, all at least ``level``, leads from ``start`` to one of ``targets``."""
    seen, todo, goal = {start}, [start], set(targets)
    while todo:
        r, c = todo.pop()
        if (r, c) in goal:
            return True
        for q in ((r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)):
            if q not in seen and 0 <= q[0] < m.shape[0] and 0 <= q[1] < m.shape[1] and m[q] >= level:
                seen.add(q)
                todo.append(q)
    return False


def cam_peaks(cam: np.ndarray, film_shape: tuple[int, int], method: str = "parabolic", size: int | None = None,
              min_ratio: float = PEAK_RATIO, max_peaks: int = MAX_PEAKS) -> list[tuple[int, int]]:
    """(x, y) film pixels of the CAM's peaks, hottest first (see the module doc); cells over the padding
    are ignored. The first is ``cam_peak``'s."""
    size = size or int(PREPROCESS["size"])
    cam = np.asarray(cam, np.float32)
    mask = _film_cells(cam.shape, film_shape, size)
    scale, top, left = placement(film_shape, size)
    out = []
    for r, c in _peak_cells(cam, mask, min_ratio, max(1, max_peaks)):
        gy, gx = PEAKS[method](cam, mask, r, c)
        x = (gx * size / cam.shape[1] - left) / scale
        y = (gy * size / cam.shape[0] - top) / scale
        out.append((int(np.clip(x, 0, film_shape[1] - 1)), int(np.clip(y, 0, film_shape[0] - 1))))
    return out


def cam_peak(cam: np.ndarray, film_shape: tuple[int, int], method: str = "parabolic",
             size: int | None = None) -> tuple[int, int]:
    """(x, y) film pixel of the CAM's peak (its hottest cell, refined by ``method``); cells over the
    padding are ignored."""
    return cam_peaks(cam, film_shape, method, size, max_peaks=1)[0]


# ---------------------------------------------------------------- I/O: the head from the bundle

EXACT_PREFIX = "exact_"


def load_head(bundle: Bundle, exact: bool = False) -> Head:
    """The CAM head described by bundle.json ``cam`` and its parameter file (checksummed by load_bundle).

    convert folds the int8 features' mean offset into the head (convert.camhead, bias correction)
    and measures the CAM baseline on the int8 features, keeping the fp32 model's values as
    ``exact_<name>``: ``exact=True`` gives the head for the fp32 model's features."""
    cam = bundle.spec["cam"]
    path = bundle.path / cam["params"]
    if cam["params"] not in bundle.spec["files"]:
        raise BundleError(f"{path}: CAM parameters have no checksum in bundle.json")
    if "pool" in cam and cam["head"] in HEADS and cam["pool"] != HEADS[cam["head"]].pool:
        raise BundleError(f"{bundle.path / 'bundle.json'}: CAM head {cam['head']!r} with pooling {cam['pool']!r}; "
                          f"this edge implements {HEADS[cam['head']].pool!r}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if exact:
            arrays.update({k[len(EXACT_PREFIX):]: v for k, v in arrays.items() if k.startswith(EXACT_PREFIX)})
        head = make_head(cam["head"], arrays, bundle.task)
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: cannot read the CAM head ({err})") from None
    except KeyError as err:
        raise BundleError(f"{path}: {err.args[0]} for CAM head {cam['head']!r}") from None
    _check_head(head, bundle, path)
    return head


def _check_head(head: Head, bundle: Bundle, path) -> None:
    """The head must take the feature map's channels and give one logit per label."""
    c, n_labels = bundle.spec["cam"]["feature_shape"][-1], len(bundle.labels)
    a = np.zeros((1, 1, c), np.float32)
    try:
        logits = head_logits(head, a)
    except ValueError as err:
        raise BundleError(f"{path}: the CAM head does not fit {c} feature channels ({err})") from None
    if logits.shape != (n_labels,):
        raise BundleError(f"{path}: the CAM head gives {logits.shape} logits for {n_labels} labels")
    shape = tuple(bundle.spec["cam"]["feature_shape"])
    if head.baseline is not None and head.baseline.shape not in (shape, (n_labels, *shape)):
        raise BundleError(f"{path}: the CAM baseline has shape {head.baseline.shape}; expected the features' {shape} "
                          f"or one per label, {(n_labels, *shape)}")
