"""Fit the out-of-distribution guard and choose its threshold (edge.novelty applies it).

* Descriptor: the int8 model's dequantised last feature map averaged over space (edge.novelty.pooled_features).
* Fit (``fit_ledoit_wolf``): the mean and the Ledoit–Wolf shrunk covariance of the validation films'
  descriptors, stored as its eigen-decomposition (the sample covariance has rank ≤ n−1 < C, so the
  shrunk matrix is (1−α)·S + α·m·I: the sample components with shrunk variances, and α·m for every
  other direction). ``fit_pca`` (the top components and the mean residual variance) and ``knn_novelty``
  (cosine distance to the k-th nearest fitting film) are the alternatives measured against it.
* What it is fitted on, and where the threshold is set (``fit_guard``): fitted on the **training** films,
  the threshold set on the **validation** films, which the statistics never saw and the model was never
  trained on, so their distances are what a new in-distribution film's will be. The threshold is the
  (1 − rate) quantile of those distances, and at least the same quantile of a log-normal fitted to them
  (with a few hundred films the empirical 99th percentile rests on two or three films; the log-normal
  tail steadies it).
* Measured and not chosen (convert.guardcheck): fitting on the validation films alone with a cross-fitted
  threshold (``crossfit_guard``: each fold scored by a guard fitted on the other folds, a patient's films
  kept in one fold). On the test session's 72 validation films it refused 8.9% of the held-out films: 72
  films in 1,024 dimensions are too few for the covariance; the training films give it hundreds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

from edge.novelty import Guard, distances

__all__ = ["DEFAULT_FALSE_REFUSAL", "FOLDS", "choose_threshold", "crossfit_guard", "fit_guard", "fit_ledoit_wolf",
           "fit_pca", "fold_parts", "knn_novelty", "ledoit_wolf_shrinkage"]

DEFAULT_FALSE_REFUSAL = 0.01
FOLDS = 5
_TINY = 1e-12


def ledoit_wolf_shrinkage(x: np.ndarray) -> tuple[float, float]:
    """(α, m) of Ledoit & Wolf (2004) for centred rows ``x`` (n×C): the covariance estimate is
    (1−α)·S + α·m·I with S = xᵀx/n and m = trace(S)/C. Computed from n×n products only."""
    x = np.asarray(x, np.float64)
    n, c = x.shape
    sq = (x * x).sum(axis=1)                       # |x_i|²
    m = sq.sum() / n / c
    gram = x @ x.T if n <= c else x.T @ x          # the smaller product: |x xᵀ|_F = |xᵀ x|_F
    s_fro2 = (gram * gram).sum() / n**2            # |S|_F²
    delta = (s_fro2 - 2 * m * sq.sum() / n + c * m * m) / c   # |S − mI|_F² / C
    beta = ((sq * sq).sum() / n - s_fro2) / (n * c)            # estimation error of S
    beta = min(max(beta, 0.0), delta)
    return (beta / delta if delta > 0 else 1.0), float(m)


def _eigen(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues e, components k×C) of the sample covariance of centred rows x, non-zero ones only."""
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    e = s * s / len(x)
    keep = e > _TINY * max(float(e.max(initial=0.0)), _TINY)
    return e[keep], vt[keep]


def fit_ledoit_wolf(pooled: np.ndarray, threshold: float = np.inf) -> Guard:
    """The Mahalanobis guard under the Ledoit–Wolf covariance of ``pooled`` (n×C), exactly (edge.novelty)."""
    x64 = np.asarray(pooled, np.float64)
    mean = x64.mean(axis=0)
    x = x64 - mean
    alpha, m = ledoit_wolf_shrinkage(x)
    e, comps = _eigen(x)
    floor = max(alpha * m, _TINY * max(m, _TINY))
    return Guard(mean=mean.astype(np.float32), components=comps.astype(np.float32),
                 variances=(1 - alpha) * e + floor, residual_variance=floor, threshold=threshold,
                 method="mahalanobis-ledoit-wolf")


def fit_pca(pooled: np.ndarray, explained: float = 0.95, threshold: float = np.inf) -> Guard:
    """PCA whitening of the components that explain ``explained`` of the variance, plus the residual
    scaled by its mean variance per remaining dimension."""
    x64 = np.asarray(pooled, np.float64)
    mean = x64.mean(axis=0)
    e, comps = _eigen(x64 - mean)
    k = int(np.searchsorted(np.cumsum(e) / e.sum(), explained) + 1)
    c = x64.shape[1]
    residual = max(float(e[k:].sum()) / max(c - k, 1), _TINY * float(e[0]))
    return Guard(mean=mean.astype(np.float32), components=comps[:k].astype(np.float32), variances=e[:k],
                 residual_variance=residual, threshold=threshold, method=f"pca{explained:g}-residual")


def knn_novelty(fit: np.ndarray, pooled: np.ndarray, k: int = 5) -> np.ndarray:
    """Cosine distance of each row of ``pooled`` to its k-th nearest row of ``fit`` (measured, not shipped)."""
    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), _TINY)
    sims = unit(pooled) @ unit(fit).T
    k = min(k, sims.shape[1])
    return 1.0 - np.sort(sims, axis=1)[:, -k]


Fitter = Callable[[np.ndarray], Guard]


def fold_parts(groups: Sequence[str], folds: int, seed: int) -> list[np.ndarray]:
    """Film indices in ``folds`` parts, every group (a patient: the films of one person look alike) whole in one."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[i]: k % folds for k, i in enumerate(order)}
    parts = [np.flatnonzero([fold_of[g] == k for g in groups]) for k in range(folds)]
    return [p for p in parts if len(p)]


def _out_of_fold(pooled: np.ndarray, fitter: Fitter, parts: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(pooled))
    for part in parts:
        rest = np.setdiff1d(np.arange(len(pooled)), part)
        out[part] = distances(fitter(pooled[rest]), pooled[part])
    return out


def choose_threshold(novelty: np.ndarray, rate: float) -> dict:
    """The threshold for a false-refusal ``rate`` from cross-fitted novelties (see the module doc)."""
    novelty = np.asarray(novelty, np.float64)
    empirical = float(np.quantile(novelty, 1 - rate))
    logs = np.log(np.maximum(novelty, _TINY))
    lognormal = float(np.exp(logs.mean() + NormalDist().inv_cdf(1 - rate) * logs.std(ddof=1)))
    return {"threshold": max(empirical, lognormal), "empirical_quantile": empirical, "lognormal_quantile": lognormal,
            "false_refusal_on_fitting_films": float((novelty > max(empirical, lognormal)).mean())}


def fit_guard(fit: np.ndarray, check: np.ndarray, rate: float = DEFAULT_FALSE_REFUSAL,
              fitter: Fitter = fit_ledoit_wolf) -> tuple[Guard, dict]:
    """(the guard fitted on ``fit`` with its threshold set on ``check``, how it was chosen); n×C each."""
    if not 0 < rate < 0.5:
        raise ValueError(f"the false-refusal rate must be between 0 and 0.5, got {rate}")
    fitted = fitter(np.asarray(fit, np.float64))
    novelty = distances(fitted, np.asarray(check, np.float64))
    chosen = choose_threshold(novelty, rate)
    how = {"false_refusal_rate": rate, "films": len(novelty),
           "rule": "max of the empirical and the log-normal (1 - rate) quantile of the novelty of films the "
                   "guard was not fitted on",
           **{k: v for k, v in chosen.items() if k != "threshold"},
           "novelty_median": float(np.median(novelty)), "novelty_max": float(novelty.max())}
    return _with_threshold(fitted, chosen["threshold"]), how


def _with_threshold(guard: Guard, threshold: float) -> Guard:
    return Guard(mean=guard.mean, components=guard.components, variances=guard.variances,
                 residual_variance=guard.residual_variance, threshold=threshold, method=guard.method)


def crossfit_guard(pooled: np.ndarray, rate: float = DEFAULT_FALSE_REFUSAL, folds: int = FOLDS, seed: int = 0,
                   fitter: Fitter = fit_ledoit_wolf, groups: Sequence[str] | None = None) -> tuple[Guard, dict]:
    """(the guard fitted on every film with its threshold, how the threshold was chosen) for ``pooled`` (n×C);
    ``groups``: the patient of each film (folds keep a patient's films together), default one film each."""
    pooled = np.asarray(pooled, np.float64)
    if not 0 < rate < 0.5:
        raise ValueError(f"the false-refusal rate must be between 0 and 0.5, got {rate}")
    groups = [str(i) for i in range(len(pooled))] if groups is None else list(groups)
    folds = max(2, min(folds, len(set(groups)), len(pooled) // 4))
    oof = _out_of_fold(pooled, fitter, fold_parts(groups, folds, seed))
    chosen = choose_threshold(oof, rate)
    guard = _with_threshold(fitter(pooled), chosen["threshold"])
    how = {"false_refusal_rate": rate, "folds": folds, "films": len(pooled),
           "rule": "max of the empirical and the log-normal (1 - rate) quantile of cross-fitted novelties "
                   "(each fold scored by a guard fitted on the other folds)",
           **{k: v for k, v in chosen.items() if k != "threshold"},
           "novelty_median": float(np.median(oof)), "novelty_max": float(oof.max())}
    return guard, how
