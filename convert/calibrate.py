"""Calibration and held-out films, read and preprocessed by edge's own code.

The split is the one the checkpoint was trained with: ``train.data.load_dataset`` with the
task, validation fraction, seed and split recorded in the checkpoint's ``meta["data"]``.

* Calibration films come from the **validation** split, chosen to cover every label: for each
  label (rarest first) one film that has it, then the rest at random (seeded), up to N.
* Held-out films for the fidelity report come from the **test** split, never used for
  calibration (and never seen in training).

* Any folder of films without labels (``folder_films``, ``python -m convert --films``): up to N films found
  as edge.scan finds them, chosen at random (seeded) when there are more; their targets are all zero.

Every film goes through ``edge.films.load_film`` and ``edge.preprocess.preprocess``, exactly as
on the Pi. Unreadable films are all named in one error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.errors import ConvertError

__all__ = ["MIN_FILMS", "FilmSet", "folder_films", "load_films", "pick_covering", "split_films", "guard_films"]

MIN_FILMS = 8


@dataclass
class FilmSet:
    """Preprocessed films (N×224×224×3 uint8), their names and targets (N×L)."""

    images: np.ndarray
    names: list[str]
    targets: np.ndarray


def pick_covering(targets: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """Indices of ``n`` rows of a N×L 0/1 target matrix: one positive of every present label first
    (rarest label first), then the rest at random. Sorted, no duplicates."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets) > 0
    n = min(n, len(targets))
    chosen: list[int] = []
    for label in np.argsort(targets.sum(axis=0), kind="stable"):
        if len(chosen) >= n:
            break
        has = np.flatnonzero(targets[:, label])
        if len(has) and not targets[chosen, label].any():
            chosen.append(int(rng.choice(has)))
    rest = np.setdiff1d(np.arange(len(targets)), chosen)
    chosen += [int(i) for i in rng.permutation(rest)[: n - len(chosen)]]
    return sorted(chosen)


def load_films(paths: Sequence[Path]) -> np.ndarray:
    """Read and preprocess films -> N×224×224×3 uint8. ConvertError naming every unreadable one."""
    from edge.errors import FilmError
    from edge.films import load_film
    from edge.preprocess import preprocess

    images, bad = [], []
    for path in paths:
        try:
            images.append(preprocess(load_film(path)))
        except FilmError as err:
            bad.append(str(err))
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ConvertError(f"{len(bad)} calibration/held-out film(s) cannot be read: {shown}")
    return np.stack(images)


def _dataset(data_dir: Path, meta: dict):
    from train.data import load_dataset
    from train.labels import DataError

    data = meta.get("data", {})
    try:
        ds = load_dataset(data_dir, task=data.get("task", "all"), val_fraction=data.get("val_fraction", 0.1),
                          seed=data.get("seed", 0), split=data.get("split", "official"), allow_missing=True)
    except (DataError, ValueError) as err:
        raise ConvertError(f"{data_dir}: cannot read the calibration data ({err})") from None
    if list(ds.labels) != list(meta["labels"]):
        raise ConvertError(f"{data_dir}: the data's labels {list(ds.labels)} are not the checkpoint's "
                           f"{list(meta['labels'])} (another label set; convert with the data it was trained on)")
    return ds


def _subset(films, indices: list[int]) -> FilmSet:
    picked = [films[i] for i in indices]
    return FilmSet(load_films([f.path for f in picked]), [f.image for f in picked],
                   np.stack([f.target for f in picked]).astype(np.float32))


def split_films(data_dir: str | Path, meta: dict, n_calibration: int, n_heldout: int,
                seed: int = 0) -> tuple[FilmSet, FilmSet]:
    """(calibration from validation, held-out from test), preprocessed."""
    import warnings

    data_dir = Path(data_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing films are reported below as too few films
        ds = _dataset(data_dir, meta)
    for what, part, wanted in (("validation", ds.val, n_calibration), ("test", ds.test, n_heldout)):
        if len(part) < MIN_FILMS:
            raise ConvertError(f"{data_dir}: too few films: the {what} split has {len(part)} film(s), at least "
                               f"{MIN_FILMS} are needed (asked for {wanted})")
    if n_calibration < MIN_FILMS:
        raise ConvertError(f"--calibration {n_calibration}: too few calibration films; at least {MIN_FILMS}")
    cal = pick_covering(np.stack([f.target for f in ds.val]), n_calibration, seed)
    held = pick_covering(np.stack([f.target for f in ds.test]), n_heldout, seed + 1)
    return _subset(ds.val, cal), _subset(ds.test, held)


def guard_films(data_dir: str | Path, meta: dict, n: int, seed: int = 0) -> tuple[FilmSet, FilmSet]:
    """(up to ``n`` training films, up to ``n`` validation films), preprocessed, every label covered first: the
    out-of-distribution guard is fitted on the first and its threshold set on the second (convert.novelty)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _dataset(Path(data_dir), meta)
    for what, part in (("training", ds.train), ("validation", ds.val)):
        if len(part) < MIN_FILMS:
            raise ConvertError(f"{data_dir}: too few {what} films for the guard: {len(part)} (at least {MIN_FILMS}); "
                               f"convert with --no-guard to make a bundle without one")
    return tuple(_subset(part, pick_covering(np.stack([f.target for f in part]), n, seed))
                 for part in (ds.train, ds.val))


def folder_films(folder: str | Path, n_labels: int, n: int, seed: int = 0) -> FilmSet:
    """Up to ``n`` films of ``folder`` (found by edge.walk, as edge.scan finds them), preprocessed; no labels
    (targets all zero). ConvertError when there are fewer than MIN_FILMS or any cannot be read."""
    from edge.walk import collect

    folder = Path(folder)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: no such folder of films")
    paths, _ = collect([folder])
    if len(paths) < MIN_FILMS:
        raise ConvertError(f"{folder}: too few films: {len(paths)} found, at least {MIN_FILMS} are needed")
    if len(paths) > n:
        keep = np.random.default_rng(seed).choice(len(paths), n, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    names = [str(p.relative_to(folder)) if p.is_relative_to(folder) else p.name for p in paths]
    return FilmSet(load_films(paths), names, np.zeros((len(paths), n_labels), np.float32))
