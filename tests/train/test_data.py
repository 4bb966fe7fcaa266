"""train.data / train.filmcache on a tiny NIH-layout folder of real films (symlinks into shared/data)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import train.filmcache as filmcache
from edge.errors import FilmError
from train.data import (
    CachedFilms,
    DecodedFilms,
    MissingFilmsWarning,
    build_cache,
    decode_film,
    load_dataset,
)
from train.labels import DataError, multi_hot
from train.splits import TASKS, LeakyInputWarning

TRAIN_VAL = ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000004_000.png", "00000493_000.png",
             "00001968_000.png"]
TEST = ["00000003_000.png", "00001369_000.png", "00008866_000.png"]
NAMES = TRAIN_VAL + TEST


def _filtered(src: Path, dst: Path, names: Sequence[str]) -> None:
    """Copy the header and the rows of ``names``, keeping the file's own line endings."""
    lines = src.read_bytes().splitlines(keepends=True)
    keep = set(names)
    dst.write_bytes(b"".join([lines[0]] + [line for line in lines[1:] if line.split(b",")[0].decode() in keep]))


def make_nih(root: Path, data: Path, names: Sequence[str] = NAMES, *, entry_files=("Data_Entry_2017_v2020.csv",),
             lists: bool = True) -> Path:
    """An NIH-layout folder: images_00N/images/*.png (symlinks), a filtered Data_Entry, lists, boxes."""
    for i, name in enumerate(names):
        folder = root / f"images_{1 + i % 2:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(data / "nih-images" / name, folder / name)
    for entry_file in entry_files:
        _filtered(data / "nih" / entry_file, root / entry_file, NAMES)
    for meta in ("BBox_List_2017.csv",) + (("train_val_list.txt", "test_list.txt") if lists else ()):
        os.symlink(data / "nih" / meta, root / meta)
    return root


@pytest.fixture(scope="module")
def nih_dir(test_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_nih(tmp_path_factory.mktemp("nih"), test_data, entry_files=("Data_Entry_2017_v2020.csv",
                                                                            "Data_Entry_2017.csv"))


@pytest.fixture(scope="module")
def dataset(nih_dir: Path):
    return load_dataset(nih_dir, task="all", val_fraction=0.3, seed=0)


def test_load_dataset_finds_films_in_nested_folders(dataset, nih_dir: Path):
    assert dataset.entry_file.name == "Data_Entry_2017_v2020.csv"  # preferred over the 2017 original
    assert (dataset.task, dataset.kind, dataset.labels) == ("all", "multilabel", list(TASKS["all"].labels))
    assert sorted(f.image for f in dataset.test) == TEST
    assert sorted(f.image for f in dataset.train + dataset.val) == TRAIN_VAL
    assert dataset.val and dataset.train
    parts = [{f.patient for f in part} for part in (dataset.train, dataset.val, dataset.test)]
    assert not (parts[0] & parts[1]) | (parts[0] & parts[2]) | (parts[1] & parts[2])
    for film in dataset.films:
        assert film.path.name == film.image and film.path.is_file() and film.path.parent.name == "images"
        assert film.target.dtype == np.float32 and film.target.shape == (14,)
    by_name = {f.image: f for f in dataset.films}
    assert (by_name["00000001_001.png"].target == multi_hot({"Cardiomegaly", "Emphysema"})).all()
    assert by_name["00000002_000.png"].target.sum() == 0  # No Finding
    assert len(dataset.boxes) == 984
    assert dataset.summary()["films"] == {"train": len(dataset.train), "val": len(dataset.val), "test": 3}


def test_split_is_deterministic(nih_dir: Path, dataset):
    again = load_dataset(nih_dir, task="all", val_fraction=0.3, seed=0)
    assert [f.image for f in again.val] == [f.image for f in dataset.val]
    other = load_dataset(nih_dir, task="all", val_fraction=0.4, seed=1)
    assert [f.image for f in other.films] == [f.image for f in dataset.films] == sorted(NAMES)  # one cache serves all


def test_pneumothorax_task(nih_dir: Path):
    ds = load_dataset(nih_dir, task="pneumothorax", val_fraction=0.0)
    assert (ds.kind, ds.labels) == ("one_vs_all", ["Other finding", "Pneumothorax"])
    assert "00000002_000.png" not in {f.image for f in ds.films}  # No Finding is not in the task
    targets = {f.image: f.target.tolist() for f in ds.films}
    assert targets["00000493_000.png"] == targets["00008866_000.png"] == [0.0, 1.0]
    assert targets["00000003_000.png"] == [1.0, 0.0]
    assert len(ds.films) == 8 and ds.val == []


def test_2017_file_is_used_when_alone(test_data: Path, tmp_path: Path):
    ds = load_dataset(make_nih(tmp_path, test_data, entry_files=("Data_Entry_2017.csv",)), val_fraction=0.0)
    assert ds.entry_file.name == "Data_Entry_2017.csv" and len(ds.films) == 9


def test_missing_films(test_data: Path, tmp_path: Path):
    root = make_nih(tmp_path, test_data, NAMES[:-1])
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert "1 of 9 films" in str(info.value) and NAMES[-1] in str(info.value)
    with pytest.warns(MissingFilmsWarning, match="1 of 9"):
        ds = load_dataset(root, allow_missing=True)
    assert ds.missing == [NAMES[-1]] and len(ds.films) == 8


def test_duplicate_film_is_refused(test_data: Path, tmp_path: Path):
    root = make_nih(tmp_path, test_data)
    os.symlink(test_data / "nih-images" / NAMES[0], root / NAMES[0])
    with pytest.raises(DataError, match=f"{NAMES[0]} is found 2 times"):
        load_dataset(root)


def test_linked_folders_and_link_loops(test_data: Path, tmp_path: Path):
    root = make_nih(tmp_path / "nih", test_data)
    os.symlink(root, root / "images_001" / "loop")  # a link back up the tree must not hang or duplicate films
    assert len(load_dataset(root, val_fraction=0.0).films) == 9


def test_missing_metadata(test_data: Path, tmp_path: Path):
    with pytest.raises(DataError, match="Data_Entry_2017_v2020.csv or Data_Entry_2017.csv"):
        load_dataset(make_nih(tmp_path / "a", test_data, entry_files=()))
    root = make_nih(tmp_path / "b", test_data, lists=False)
    with pytest.raises(DataError, match="train_val_list.txt"):
        load_dataset(root)
    with pytest.warns(LeakyInputWarning):
        ds = load_dataset(root, split="random-images", val_fraction=0.2, test_fraction=0.3)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (5, 1, 3) and ds.split == "random-images"
    with pytest.raises(DataError, match="data folder not found"):
        load_dataset(tmp_path / "nowhere")


# --- the film cache ----------------------------------------------------------------------------------------

def test_cache_holds_the_preprocessed_films(dataset, tmp_path: Path):
    films = dataset.films
    cache = build_cache(films, tmp_path, workers=2, progress=False)
    assert cache.complete and cache.array.shape == (9, 224, 224) and cache.array.dtype == np.uint8
    for film in films:
        pixels = cache[cache.row(film.image)]
        assert (pixels == decode_film(film.path)).all() and pixels.mean() > 20
    cached, decoded = CachedFilms(cache, dataset.test), DecodedFilms(dataset.test)
    assert len(cached) == len(decoded) == 3
    for (x, y), (x2, y2) in zip((cached[i] for i in range(3)), (decoded[i] for i in range(3)), strict=True):
        assert x.shape == (1, 224, 224) and str(x.dtype) == "torch.uint8" and str(y.dtype) == "torch.float32"
        assert (x == x2).all() and (y == y2).all()
    xb, yb = cached.batch([2, 0])
    assert xb.shape == (2, 1, 224, 224) and (xb[0] == cached[2][0]).all() and (yb[1] == cached[0][1]).all()
    clone = pickle.loads(pickle.dumps(cache))  # noqa: S301 - our own object, as DataLoader workers get it
    assert clone._array is None and (clone[0] == cache[0]).all()


_REAL_DECODE = filmcache._decode_row


class Decoder:
    """Stands in for the cache's decoder: counts calls and fails on call number ``fail_at``."""

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, path: str, size: int) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_at:
            raise FilmError(path, "simulated failure")
        return _REAL_DECODE(path, size)


def test_interrupted_cache_build_resumes(dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    films = dataset.films
    failing = Decoder(fail_at=4)
    monkeypatch.setattr(filmcache, "_decode_row", failing)
    with pytest.raises(FilmError, match="simulated failure"):
        build_cache(films, tmp_path, workers=1, progress=False, chunk=2)
    [folder] = tmp_path.iterdir()
    assert np.load(folder / "done.npy").tolist() == [True] * 3 + [False] * 6  # kept what was decoded
    resuming = Decoder()
    monkeypatch.setattr(filmcache, "_decode_row", resuming)
    cache = build_cache(films, tmp_path, workers=1, progress=False, chunk=2)
    assert resuming.calls == 6 and cache.complete and cache.folder == folder
    assert all((cache[i] == decode_film(f.path)).all() for i, f in enumerate(films))


def test_complete_cache_is_reused_and_rebuilt_on_change(dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    films = dataset.films
    first = build_cache(films, tmp_path, workers=2, progress=False)
    monkeypatch.setattr(filmcache, "_decode_row", Decoder(fail_at=1))  # any decoding would fail
    assert build_cache(films, tmp_path, workers=2, progress=False).folder == first.folder
    counting = Decoder()
    monkeypatch.setattr(filmcache, "_decode_row", counting)
    other = build_cache(films[::-1], tmp_path, workers=2, progress=False)  # another film order: another cache
    assert other.folder != first.folder and counting.calls == 9 and (other[0] == first[8]).all()
    small = build_cache(films[:2], tmp_path, size=64, workers=2, progress=False)
    assert small.array.shape == (2, 64, 64) and counting.calls == 11
    (first.folder / "done.npy").write_bytes(b"damaged")
    build_cache(films, tmp_path, workers=2, progress=False)  # a damaged cache is rebuilt, not trusted
    assert counting.calls == 20


def test_cache_with_process_pool(dataset, tmp_path: Path):
    cache = build_cache(dataset.test, tmp_path, workers=2, progress=False, pool="process")
    assert all((cache[i] == decode_film(f.path)).all() for i, f in enumerate(dataset.test))


def test_cache_refuses_duplicate_names(dataset, tmp_path: Path):
    with pytest.raises(ValueError, match="more than once"):
        build_cache(dataset.test + dataset.test[:1], tmp_path, progress=False)
