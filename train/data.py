"""Films for training: an NIH-layout folder -> train/val/test films, and a one-time film cache.

``load_dataset(data_dir)`` reads Data_Entry (``Data_Entry_2017_v2020.csv`` preferred, else
``Data_Entry_2017.csv``), BBox_List_2017.csv (optional) and the official split lists, and finds
every film by file name anywhere below ``data_dir`` (the real dataset has ``images_001/images/``
… ``images_012/images/``; phantom sets have ``images/``). The split is computed from the metadata
alone, so it is the same whether or not every film is present.

The one-time film cache (``build_cache``, ``FilmCache``) and the torch datasets over it
(``CachedFilms``, ``DecodedFilms``) live in ``train.filmcache`` and are re-exported here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from train.filmcache import CachedFilms, DecodedFilms, FilmCache, build_cache, cache_spec, decode_film
from train.labels import Box, DataError, Entry, Film, read_bboxes, read_data_entry
from train.splits import (
    LeakyInputWarning,
    Task,
    get_task,
    image_split,
    official_split,
    patient_val_split,
    random_image_split,
    select,
    shared_patients,
    targets,
)

__all__ = ["DATA_ENTRY_NAMES", "SPLITS", "CachedFilms", "Dataset", "DecodedFilms", "Film", "FilmCache",
           "MissingFilmsWarning", "build_cache", "cache_spec", "decode_film", "load_dataset", "split_entries"]

DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_NAME = "BBox_List_2017.csv"
SPLIT_LIST_NAMES = ("train_val_list.txt", "test_list.txt")


class MissingFilmsWarning(UserWarning):
    """Films listed in Data_Entry were not found and were left out (``allow_missing=True``)."""


@dataclass
class Dataset:
    """The films of one task, split by patient (or, leakily, by image)."""

    train: list[Film]
    val: list[Film]
    test: list[Film]
    labels: list[str]
    kind: str
    task: str
    boxes: list[Box] = field(default_factory=list)
    data_dir: Path | None = None
    entry_file: Path | None = None
    split: str = "official"
    missing: list[str] = field(default_factory=list)

    @property
    def films(self) -> list[Film]:
        """Every film of train, val and test, sorted by image name: build one cache over these, and it is
        reused whatever the seed or validation fraction (they change the split, not the film set)."""
        return sorted(self.train + self.val + self.test, key=lambda f: f.image)

    def summary(self) -> dict:
        """Plain-data description for a run's config / checkpoint meta."""
        counts = {name: len(part) for name, part in (("train", self.train), ("val", self.val), ("test", self.test))}
        return {"task": self.task, "kind": self.kind, "labels": list(self.labels), "split": self.split,
                "entry_file": self.entry_file.name if self.entry_file else None, "films": counts,
                "missing": len(self.missing), "boxes": len(self.boxes)}


# --- finding files -----------------------------------------------------------------------------------------

def _index_files(data_dir: Path) -> dict[str, list[Path]]:
    """File name -> every path below ``data_dir`` with that name (hidden folders skipped)."""
    index: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for root, dirs, files in os.walk(data_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a linked folder seen before (or a link loop): its films are already indexed
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            index.setdefault(name, []).append(Path(root) / name)
    return index


def _find_meta(files: dict[str, list[Path]], names: Sequence[str]) -> Path | None:
    """The shallowest file with the first of ``names`` that exists."""
    for name in names:
        if name in files:
            return min(files[name], key=lambda p: (len(p.parts), str(p)))
    return None


def _find_lists(files: dict[str, list[Path]], data_dir: Path, split: str) -> tuple[Path, Path] | None:
    train_val, test = (_find_meta(files, [name]) for name in SPLIT_LIST_NAMES)
    if train_val is None or test is None:
        if split == "official":
            raise DataError(data_dir, f"no {' and '.join(SPLIT_LIST_NAMES)} found below it (needed by the official "
                                      "split; split='random-images' is the paper's leaky alternative)")
        return None
    return train_val, test


# --- splits ------------------------------------------------------------------------------------------------

Parts = tuple[list[Entry], list[Entry], list[Entry]]


def _official_parts(entries: Sequence[Entry], lists: tuple[Path, Path] | None, *, val_fraction: float, seed: int,
                    test_fraction: float) -> Parts:
    if lists is None:
        raise ValueError("the official split needs the train_val_list.txt and test_list.txt files")
    train_val_names, test_names = official_split(lists)
    in_tv, in_test = set(train_val_names), set(test_names)
    neither = [e.image for e in entries if e.image not in in_tv and e.image not in in_test]
    if neither:
        raise DataError(lists[1], f"{len(neither)} images of Data_Entry are in neither split list, "
                                  f"e.g. {', '.join(neither[:5])}")
    train_val = [e for e in entries if e.image in in_tv]
    test = [e for e in entries if e.image in in_test]
    crossing = shared_patients(train_val, test)
    if crossing:
        warnings.warn(f"the split lists put {len(crossing)} patients in both train_val and test, "
                      f"e.g. {sorted(crossing)[:5]}", LeakyInputWarning, stacklevel=4)
    train, val = patient_val_split(train_val, val_fraction, seed)
    return train, val, test


def _random_image_parts(entries: Sequence[Entry], lists: tuple[Path, Path] | None, *, val_fraction: float,
                        seed: int, test_fraction: float) -> Parts:
    """The paper's recipe: test and validation images drawn at random (patients leak; warns)."""
    rest, test = random_image_split(entries, test_fraction, seed)
    train, val = image_split(rest, val_fraction, seed + 1)
    return train, val, test


SPLITS: dict[str, Callable[..., Parts]] = {"official": _official_parts, "random-images": _random_image_parts}


def split_entries(entries: Sequence[Entry], split: str = "official", *, lists: tuple[Path, Path] | None = None,
                  val_fraction: float = 0.1, seed: int = 0, test_fraction: float = 0.2) -> Parts:
    """(train, val, test) entries, from the metadata alone. ``lists``: (train_val_list, test_list) files,
    needed by ``split="official"``; ``test_fraction`` is used by ``split="random-images"`` only."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    return SPLITS[split](entries, lists, val_fraction=val_fraction, seed=seed, test_fraction=test_fraction)


# --- films -------------------------------------------------------------------------------------------------

def _films(part: list[Entry], task: Task, files: dict[str, list[Path]]) -> tuple[list[Film], list[str]]:
    y = targets(part, task)
    films, missing = [], []
    for entry, target in zip(part, y, strict=True):
        paths = files.get(entry.image)
        if not paths:
            missing.append(entry.image)
            continue
        if len(paths) > 1:
            raise DataError(paths[0].parent, f"film {entry.image} is found {len(paths)} times below the data "
                                             f"folder: {', '.join(map(str, paths[:3]))}; keep one")
        films.append(Film(entry.image, paths[0], entry.patient, target))
    return films, missing


def _report_missing(missing: list[str], total: int, data_dir: Path, allow_missing: bool) -> None:
    if not missing:
        return
    what = f"{len(missing)} of {total} films listed in Data_Entry were not found below {data_dir}"
    if not allow_missing:
        raise DataError(data_dir, f"{what}, e.g. {', '.join(missing[:5])} (allow_missing=True trains on the rest)")
    warnings.warn(f"{what}; left out", MissingFilmsWarning, stacklevel=3)


def load_dataset(data_dir: str | Path, task: str = "all", val_fraction: float = 0.1, seed: int = 0,
                 split: str = "official", *, test_fraction: float = 0.2, allow_missing: bool = False) -> Dataset:
    """Films of ``task`` (see ``train.splits.TASKS``) below ``data_dir``, split into train/val/test.

    ``split="official"``: NIH's train_val/test lists, validation split by patient out of train_val.
    ``split="random-images"``: the paper's leaky split of images at random (warns).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data folder not found")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    t = get_task(task)
    files = _index_files(data_dir)
    entry_file = _find_meta(files, DATA_ENTRY_NAMES)
    if entry_file is None:
        raise DataError(data_dir, f"no {' or '.join(DATA_ENTRY_NAMES)} found below it")
    entries = select(read_data_entry(entry_file), t)
    parts = split_entries(entries, split, lists=_find_lists(files, data_dir, split), val_fraction=val_fraction,
                          seed=seed, test_fraction=test_fraction)
    found = [_films(part, t, files) for part in parts]
    missing = [name for _, m in found for name in m]
    _report_missing(missing, len(entries), data_dir, allow_missing)
    bbox_file = _find_meta(files, [BBOX_NAME])
    return Dataset(train=found[0][0], val=found[1][0], test=found[2][0], labels=list(t.labels), kind=t.kind,
                   task=t.name, boxes=read_bboxes(bbox_file) if bbox_file else [], data_dir=data_dir,
                   entry_file=entry_file, split=split, missing=missing)
