"""How unlike the model's training films a film is: the one implementation of the guard's distance.

Pure numpy. Convert fits the statistics (convert.novelty) and measures its threshold with these very
functions; edge applies them to every film after the model has run, so the number a scan stores is the
number the threshold was chosen on.

The film's descriptor is the int8 model's last feature map, dequantised (what edge already has for the
scores and the Grad-CAM), averaged over space: one value per channel (C = 1024 for DenseNet-121).

The distance is a Mahalanobis distance in a principal subspace plus an isotropic residual::

    r  = pooled - mean
    p  = components @ r                       (k projections, components: k×C orthonormal rows)
    d² = Σ p²/variances + (|r|² - Σ p²) / residual_variance

With every sample component and variances = (1-α)·eigenvalues + α·m, residual_variance = α·m (m the
mean eigenvalue over all C dimensions, α the Ledoit–Wolf shrinkage), d is exactly the Mahalanobis
distance under the Ledoit–Wolf covariance, computed in O(k·C) without a C×C matrix. With the top
components only and the mean residual variance it is "PCA whitening plus the residual". ``novelty``
is d / √C, the root-mean-square z-score per channel, so thresholds read the same for any C.

``novelty.npz`` (bundle file, plain float arrays, no pickle): ``mean`` (C), ``components`` (k×C),
``variances`` (k), ``residual_variance`` (scalar). bundle.json ``novelty`` holds the method, the
threshold, how it was chosen and the file's name (edge.bundle documents the keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.errors import BundleError

__all__ = ["ARRAYS", "NOVELTY_FILE", "Guard", "Verdict", "distances", "judge", "load_guard", "pooled_features"]

NOVELTY_FILE = "novelty.npz"
ARRAYS = ("mean", "components", "variances", "residual_variance")


@dataclass(frozen=True)
class Guard:
    """The fitted statistics and the threshold (novelty above it: not like the training films)."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    threshold: float
    method: str = "mahalanobis-ledoit-wolf"

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], threshold: float, method: str) -> Guard:
        comps = np.asarray(arrays["components"], np.float32).reshape(-1, np.asarray(arrays["mean"]).size)
        return cls(mean=np.asarray(arrays["mean"], np.float32).reshape(-1), components=comps,
                   variances=np.asarray(arrays["variances"], np.float64).reshape(-1),
                   residual_variance=float(np.asarray(arrays["residual_variance"]).reshape(())),
                   threshold=float(threshold), method=method)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean.astype(np.float32), "components": self.components.astype(np.float32),
                "variances": self.variances.astype(np.float64),
                "residual_variance": np.asarray(self.residual_variance, np.float64)}


@dataclass(frozen=True)
class Verdict:
    novelty: float
    threshold: float

    @property
    def in_distribution(self) -> bool:
        return bool(self.novelty <= self.threshold)


def pooled_features(features: np.ndarray) -> np.ndarray:
    """Feature maps (H×W×C, or N×H×W×C) -> their spatial mean (C, or N×C), float32."""
    f = np.asarray(features, np.float32)
    return f.mean(axis=(-3, -2), dtype=np.float32)


def distances(guard: Guard, pooled: np.ndarray) -> np.ndarray:
    """Novelty (d / √C; see the module doc) of pooled descriptors (C or N×C) -> scalar array or (N,)."""
    x = np.asarray(pooled, np.float32)
    r = x - guard.mean
    p = (r @ guard.components.T).astype(np.float64)
    total = np.einsum("...c,...c->...", r, r, dtype=np.float64)
    residual = np.maximum(total - (p * p).sum(axis=-1), 0.0)
    d2 = (p * p / guard.variances).sum(axis=-1) + residual / guard.residual_variance
    return np.sqrt(d2 / guard.mean.size)


def judge(guard: Guard, features: np.ndarray) -> Verdict:
    """The verdict for one film's feature map (H×W×C, dequantised)."""
    return Verdict(novelty=float(distances(guard, pooled_features(features))), threshold=guard.threshold)


def load_guard(bundle: Any) -> Guard | None:
    """The bundle's guard (its files already checksummed by edge.bundle.load_bundle), or None for a bundle
    made before the guard existed (format version 1 or 2)."""
    spec = bundle.spec.get("novelty")
    if not spec:
        return None
    path = bundle.path / spec.get("params", NOVELTY_FILE)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ARRAYS}
        guard = Guard.from_arrays(arrays, float(spec["threshold"]), str(spec.get("method", "")))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise BundleError(f"{path}: the out-of-distribution guard cannot be read ({err})") from None
    if guard.components.shape[0] != guard.variances.size or not (guard.variances > 0).all() \
            or not guard.residual_variance > 0:
        raise BundleError(f"{path}: the out-of-distribution guard's arrays do not fit together")
    return guard
