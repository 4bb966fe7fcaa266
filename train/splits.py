"""Tasks, splits and label statistics over Data_Entry rows (numpy only, no torch).

Tasks (``TASKS``, plain data):

* ``all``: multi-label over the 14 ``LABELS`` on every image; "No Finding" is all zeros.
* ``findings``: multi-label over the 14 labels on images with at least one finding (the paper's
  51,759 with the v2020 file).
* ``pneumothorax``: one-vs-all on images with at least one finding, classes
  ``["Other finding", "Pneumothorax"]`` (5,302 Pneumothorax vs 46,457 other with v2020).

Splits are by patient: the official ``train_val_list.txt``/``test_list.txt``, and a seeded
patient-wise validation split out of train_val. ``random_image_split`` is the paper's 80/20 split
of images at random; it leaks patients between the parts, so it warns (``LeakyInputWarning``).

Weights for zero counts: a class (or label) with no samples in the set passed never contributes a
term to the loss, so its weight does not matter; it gets the neutral 1.0 instead of inf/nan.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.labels import LABELS, DataError, Entry

__all__ = ["TASKS", "LeakyInputWarning", "Task", "class_weights", "cooccurrence", "get_task", "image_split",
           "official_split", "patient_val_split", "pos_weight", "random_image_split", "select", "shared_patients",
           "targets"]


class LeakyInputWarning(UserWarning):
    """A split puts images of the same patient on both sides."""


@dataclass(frozen=True)
class Task:
    """What to train: which images (``select``), the output ``labels`` and their ``kind``."""

    name: str
    kind: str  # "multilabel" | "one_vs_all"
    labels: tuple[str, ...]
    select: str  # "all" | "findings"
    positive: str | None = None  # one_vs_all: the finding that makes class 1


TASKS: dict[str, Task] = {
    "all": Task("all", "multilabel", LABELS, "all"),
    "findings": Task("findings", "multilabel", LABELS, "findings"),
    "pneumothorax": Task("pneumothorax", "one_vs_all", ("Other finding", "Pneumothorax"), "findings",
                         positive="Pneumothorax"),
}

_SELECT = {"all": lambda e: True, "findings": lambda e: bool(e.labels)}


def get_task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def select(entries: Iterable[Entry], task: str | Task) -> list[Entry]:
    """The entries a task trains on, in their original order."""
    keep = _SELECT[get_task(task).select]
    return [e for e in entries if keep(e)]


def _multi_hot_rows(entries: Sequence[Entry], label_names: Sequence[str]) -> np.ndarray:
    """float32 (N, L) multi-hot; labels outside ``label_names`` are ignored (as in ``multi_hot``)."""
    column = {name: j for j, name in enumerate(label_names)}
    y = np.zeros((len(entries), len(label_names)), np.float32)
    rows, cols = [], []
    for i, e in enumerate(entries):
        for label in e.labels:
            if label in column:
                rows.append(i)
                cols.append(column[label])
    y[rows, cols] = 1.0
    return y


def targets(entries: Sequence[Entry], task: str | Task) -> np.ndarray:
    """float32 (N, len(labels)): multi-hot (multilabel) or one-hot class (one_vs_all)."""
    t = get_task(task)
    if t.kind == "one_vs_all":
        pos = np.array([t.positive in e.labels for e in entries], dtype=np.float32).reshape(-1)
        return np.stack([1.0 - pos, pos], axis=1)
    return _multi_hot_rows(entries, t.labels)


def _read_list(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(path, "split list not found") from None
    if len(set(names)) != len(names):
        raise DataError(path, f"{len(names) - len(set(names))} image names are listed more than once")
    return names


def official_split(source: str | Path | tuple[str | Path, str | Path]) -> tuple[list[str], list[str]]:
    """(train_val names, test names) from a folder holding train_val_list.txt and test_list.txt,
    or from the two files given as a pair. The lists must not share an image."""
    if isinstance(source, (str, Path)):
        train_val_path, test_path = Path(source) / "train_val_list.txt", Path(source) / "test_list.txt"
    else:
        train_val_path, test_path = (Path(p) for p in source)
    train_val, test = _read_list(train_val_path), _read_list(test_path)
    both = set(train_val) & set(test)
    if both:
        raise DataError(test_path, f"{len(both)} images are also in {train_val_path.name}, e.g. {sorted(both)[:3]}")
    return train_val, test


def shared_patients(a: Iterable[Entry], b: Iterable[Entry]) -> set[int]:
    """Patients with images on both sides."""
    return {e.patient for e in a} & {e.patient for e in b}


class _PatientTally:
    """Images per patient, labelled images per (patient, label), and each label's patients."""

    def __init__(self, entries: Sequence[Entry]):
        self.images: Counter[int] = Counter(e.patient for e in entries)
        self.labels: dict[int, dict[str, int]] = {}
        self.carriers: dict[str, set[int]] = {}
        for e in entries:
            mine = self.labels.setdefault(e.patient, {})
            for label in e.labels:
                mine[label] = mine.get(label, 0) + 1
                self.carriers.setdefault(label, set()).add(e.patient)
        self.totals: Counter[str] = Counter(label for e in entries for label in e.labels)


def _stratified_pick(tally: _PatientTally, order: list[int], val_fraction: float, quota: int) -> list[int]:
    """Rarest label first: patients carrying it join val until val holds its share of that label's
    images (at least one image), never taking a label's last training patient, while under the quota."""
    chosen: list[int] = []
    taken: set[int] = set()
    in_val: Counter[str] = Counter()
    n_images = 0
    for label in sorted(tally.totals, key=lambda name: (tally.totals[name], name)):
        carriers = [p for p in order if p in tally.carriers[label]]
        left_in_train = sum(p not in taken for p in carriers)
        for p in carriers:
            if n_images >= quota or in_val[label] >= max(1, math.ceil(val_fraction * tally.totals[label])):
                break
            if p in taken or left_in_train <= 1:
                continue
            chosen.append(p)
            taken.add(p)
            left_in_train -= 1
            in_val.update(tally.labels[p])
            n_images += tally.images[p]
    return chosen


def patient_val_split(entries: Sequence[Entry], val_fraction: float, seed: int,
                      stratify: bool = True) -> tuple[list[Entry], list[Entry]]:
    """(train, val) by patient, ``val_fraction`` of the images (a little more: whole patients) in val.

    Patients are taken in a seeded random order. With ``stratify`` (default) every label first gets its
    share of val images, rarest label first (so a rare finding is in val whenever two or more patients
    carry it); then random patients fill the quota. At least one patient always stays in training.
    Deterministic for a given entry list and seed; the entries' order is kept in both parts."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tally = _PatientTally(entries)
    quota = math.ceil(val_fraction * len(entries))
    if quota == 0 or len(tally.images) < 2:
        return list(entries), []
    order = np.random.default_rng(seed).permutation(np.array(sorted(tally.images), dtype=np.int64)).tolist()
    chosen = _stratified_pick(tally, order, val_fraction, quota) if stratify else []
    n_images = sum(tally.images[p] for p in chosen)
    taken = set(chosen)
    for p in order:
        if n_images >= quota or len(taken) == len(order) - 1:
            break
        if p not in taken:
            taken.add(p)
            n_images += tally.images[p]
    return [e for e in entries if e.patient not in taken], [e for e in entries if e.patient in taken]


def image_split(entries: Sequence[Entry], fraction: float, seed: int) -> tuple[list[Entry], list[Entry]]:
    """(rest, part) with ``fraction`` of the images drawn at random, ignoring patients (no warning)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n_part = round(fraction * len(entries))
    chosen = set(np.random.default_rng(seed).permutation(len(entries))[:n_part].tolist())
    return ([e for i, e in enumerate(entries) if i not in chosen], [e for i, e in enumerate(entries) if i in chosen])


def random_image_split(entries: Sequence[Entry], test_fraction: float = 0.2,
                       seed: int = 0) -> tuple[list[Entry], list[Entry]]:
    """The paper's split: (train, test) images at random. Leaks patients; warns with how many."""
    train, test = image_split(entries, test_fraction, seed)
    crossing = shared_patients(train, test)
    total = len({e.patient for e in entries})
    warnings.warn(f"random image split: {len(crossing)} of {total} patients have images in both train and test; "
                  "test scores will be optimistic (use the official patient split for honest numbers)",
                  LeakyInputWarning, stacklevel=2)
    return train, test


def cooccurrence(entries: Iterable[Entry] | np.ndarray, label_names: Sequence[str] = LABELS) -> np.ndarray:
    """int64 (L, L): images carrying both labels; the diagonal holds each label's count (paper Fig. 3).
    ``entries`` may also be a multi-hot (N, L) array over ``label_names``."""
    y = entries if isinstance(entries, np.ndarray) else _multi_hot_rows(list(entries), label_names)
    y = (np.asarray(y) > 0.5).astype(np.int64)
    return y.T @ y


def _class_counts(y: np.ndarray, n_classes: int | None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:
        return (y > 0.5).sum(axis=0).astype(np.float64)
    if y.ndim == 1:
        n = n_classes if n_classes is not None else int(y.max()) + 1 if y.size else 0
        return np.bincount(y.astype(np.int64), minlength=n).astype(np.float64)
    raise ValueError(f"expected class indices (N,) or one-hot (N, C), got shape {y.shape}")


def class_weights(y: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """float32 per class: n_samples / (n_classes · n_c), for a weighted CrossEntropyLoss.
    ``y``: one-hot (N, C) or class indices (N,). A class with n_c = 0 gets 1.0."""
    counts = _class_counts(y, n_classes)
    n, c = counts.sum(), len(counts)
    weights = np.ones(c, np.float64)
    present = counts > 0
    weights[present] = n / (c * counts[present])
    return weights.astype(np.float32)


def pos_weight(y: np.ndarray) -> np.ndarray:
    """float32 per label: negatives / positives, for BCEWithLogitsLoss. ``y``: multi-hot (N, L).
    A label with no positives, or no negatives, gets 1.0."""
    y = np.asarray(y) > 0.5
    if y.ndim != 2:
        raise ValueError(f"expected multi-hot (N, L), got shape {y.shape}")
    pos = y.sum(axis=0).astype(np.float64)
    neg = y.shape[0] - pos
    weights = np.ones(y.shape[1], np.float64)
    ok = (pos > 0) & (neg > 0)
    weights[ok] = neg[ok] / pos[ok]
    return weights.astype(np.float32)

