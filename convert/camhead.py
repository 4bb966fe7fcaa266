"""The classifier head's float32 parameters in eval form, for edge's CPU Grad-CAM (``cam_head.npz``).

Saved with ``np.savez`` (plain arrays, loadable with ``allow_pickle=False``). BatchNorm layers
are folded to ``y = x * scale + shift`` with ``scale = gamma / sqrt(running_var + eps)`` and
``shift = beta - running_mean * scale``. Linear weights keep PyTorch's ``out × in`` layout
(``y = x @ weight.T + bias``). L = number of labels, C = 1024 feature channels.

``chexnet`` (pool ``"avg"``: global average of A -> Linear)::

    weight  L×C     bias  L

``paper`` (pool ``"concat-max-avg"``: [max over space, mean over space] -> 2C vector, max first)::

    bn1_scale 2C   bn1_shift 2C   fc1_weight H×2C   fc1_bias H   (then ReLU)
    bn2_scale H    bn2_shift H    fc2_weight L×H    fc2_bias L

Scores are sigmoid (``multilabel``) or softmax (``one_vs_all``) of the head's logits, computed by edge's own
code (edge.cam's head, edge.runtime.scores_from_logits), so convert measures what edge reports.

Bias correction for the int8 features (``bias_correct``): the int8 model's features carry a
small systematic per-channel offset (rounding through ~60 requantised layers), worth up to
~0.3 logit and ~0.1 in score on a trained model. Convert measures the mean offset of the pooled
features, int8 minus fp32, on the calibration films and folds it into the head: ``bias -=
weight @ offset`` (chexnet) or ``bn1_shift -= bn1_scale * offset`` (paper). The arrays under the
names above are then the head *for the int8 model's features* (what edge uses); the uncorrected
eval-form values are kept as ``exact_bias`` / ``exact_bn1_shift``. The CAM is unaffected for
the chexnet head (its channel weights do not depend on the bias).

CAM baseline (``per_label_baseline``, ``with_baseline``): for each label, the mean feature map of
the calibration films without that label (all of them for a label every film has), L×H×W×C, as
``baseline`` (the int8 model's, dequantised) and ``exact_baseline`` (the fp32 model's); edge.cam
subtracts the label's map before weighting, so a heatmap shows where a film's evidence for the
label exceeds that of films without it. One mean over all films would hold some of the finding
itself where it usually lies (effusions at the bases) and push the heatmap's peak away from there.
bundle.json ``cam`` records ``head``, ``pool``, ``params`` (this file) and ``arrays`` (the names).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.bundle import TASK_ACTIVATION
from edge.cam import BASELINE, EXACT_PREFIX, OPS, array_name, head_logits, make_head
from edge.heads import HEADS
from edge.runtime import scores_from_logits

__all__ = ["CAM_FILE", "bias_correct", "head_arrays", "head_forward", "head_scores",
           "films_averaged", "per_label_baseline", "pooled", "save_head", "with_baseline"]

CAM_FILE = "cam_head.npz"


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _bn(bn) -> tuple[np.ndarray, np.ndarray]:
    scale = _np(bn.weight) / np.sqrt(_np(bn.running_var) + np.float32(bn.eps))
    return scale.astype(np.float32), (_np(bn.bias) - _np(bn.running_mean) * scale).astype(np.float32)


_PARAMS = {"linear": lambda m: {"weight": _np(m.weight), "bias": _np(m.bias)},
           "affine": lambda m: dict(zip(("scale", "shift"), _bn(m), strict=True))}


def head_arrays(model) -> dict[str, np.ndarray]:
    """The head of ``model`` (a train.model.DenseNet121) as named float32 arrays: for each layer with
    parameters in its edge.heads entry, those of the submodule the entry names."""
    spec = HEADS.get(model.head_name)
    if spec is None:
        raise ValueError(f"no CAM export for head {model.head_name!r}; known: {sorted(HEADS)}")
    out = {}
    for op, prefix in spec.layers:
        if op in _PARAMS:
            module = getattr(model.head, spec.modules[prefix])
            out.update({array_name(prefix, k): v for k, v in _PARAMS[op](module).items()})
    return out


def _corrected(head: str) -> tuple[str, str]:
    """The layer after the pooling, which absorbs the pooled offset: (op, parameter prefix)."""
    return HEADS[head].layers[1]


def pooled(head: str, features: np.ndarray) -> np.ndarray:
    """The head's pooled vector (N×P, float64) of NHWC features: edge.cam's pooling layer of that head."""
    pool = OPS[HEADS[head].layers[0][0]]
    return np.stack([pool.forward({}, f) for f in np.asarray(features, np.float32)]).astype(np.float64)


def bias_correct(head: str, arrays: dict[str, np.ndarray], offset: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays with the pooled-feature ``offset`` (int8 minus fp32, length P) folded in; see the module doc."""
    op, prefix = _corrected(head)
    out = dict(arrays)
    if op == "linear":  # W (x - offset) + b
        name, weight = array_name(prefix, "bias"), arrays[array_name(prefix, "weight")]
        out[name] = (arrays[name] - weight.astype(np.float64) @ offset).astype(np.float32)
    elif op == "affine":  # scale (x - offset) + shift
        name, scale = array_name(prefix, "shift"), arrays[array_name(prefix, "scale")]
        out[name] = (arrays[name] - scale * offset).astype(np.float32)
    else:
        raise ValueError(f"head {head!r}: no bias correction through a {op!r} layer")
    out[f"{EXACT_PREFIX}{name}"] = arrays[name]
    return out


def films_averaged(targets: np.ndarray) -> np.ndarray:
    """(L,) int: how many films each label's baseline averages (targets N×L, multi-hot or one-hot): the
    films without the label, or all N when every film has it or none does (the mean of all)."""
    has = np.asarray(targets) > 0
    without = (~has).sum(axis=0)
    return np.where(without == 0, len(has), without)


def per_label_baseline(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(L, H, W, C) float32: per label, the mean of the feature maps (N×H×W×C) of the films whose
    targets (N×L, multi-hot or one-hot) lack it; the mean of all films for a label that every film has."""
    features, has = np.asarray(features, np.float32), np.asarray(targets) > 0
    if has.ndim != 2 or len(has) != len(features):
        raise ValueError(f"expected N×L targets for {len(features)} feature maps, got shape {has.shape}")
    total = features.sum(axis=0, dtype=np.float64)
    out = np.empty((has.shape[1], *features.shape[1:]), np.float32)
    for label, n in enumerate(films_averaged(has)):
        if n == len(features):  # the mean of all
            out[label] = total / n
        else:
            out[label] = (total - features[has[:, label]].sum(axis=0, dtype=np.float64)) / n
    return out


def with_baseline(arrays: dict[str, np.ndarray], int8: np.ndarray, fp32: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays with the CAM baseline feature maps (L×H×W×C, or one H×W×C map) for the int8 and the fp32
    model's features."""
    return {**arrays, BASELINE: np.asarray(int8, np.float32), f"{EXACT_PREFIX}{BASELINE}": np.asarray(fp32, np.float32)}


def head_forward(head: str, arrays: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """Logits (N×L, float64) from NHWC features (N×H×W×C) with the saved arrays, by edge.cam's head."""
    net = make_head(head, arrays)
    return np.stack([head_logits(net, f) for f in features]).astype(np.float64)


def head_scores(head: str, task: str, arrays: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """Scores exactly as edge computes them from the (dequantised) features: edge.runtime's
    activation of edge.cam's head, so the fidelity report measures what edge reports."""
    return np.stack([scores_from_logits(z, TASK_ACTIVATION[task]) for z in head_forward(head, arrays, features)])


def save_head(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
