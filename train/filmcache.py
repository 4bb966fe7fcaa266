"""The one-time film cache: every film decoded and preprocessed once, kept as a uint8 memory map.

Decoding 1024² PNGs every epoch starves a GPU, so ``build_cache`` decodes each film once with
``edge.films.load_film`` + ``edge.preprocess.preprocess_gray`` (the Pi's own preprocessing) into
a uint8 ``.npy`` memory map (N, size, size). A cache lives in ``cache_dir/films-<size>px-<key>/``
where the key hashes the ordered image names and the preprocessing spec (preprocess spec, size,
decoder): a complete cache is reused, another film list or spec gets its own new cache. Source
files are not hashed: replace a film's pixels and you must delete the cache. The build is
resumable: ``done.npy`` records finished rows and is saved (after the pixels are flushed) every
``chunk`` films, so a restart after a crash or Ctrl-C continues where it stopped.

``CachedFilms`` and ``DecodedFilms`` are map-style datasets (torch's DataLoader and
DistributedSampler take them as they are; torch is imported only when an item is read) that
return ``(uint8 tensor 1×H×W, float32 target)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from edge.errors import FilmError
from edge.preprocess import PREPROCESS, preprocess_gray
from train.labels import DataError, Film

__all__ = ["CACHE_VERSION", "CachedFilms", "DecodedFilms", "FilmCache", "build_cache", "cache_spec", "decode_film"]

CACHE_VERSION = 1


# --- decoding ----------------------------------------------------------------------------------------------

def _pillow_gray(path: str | Path) -> np.ndarray:
    """Fallback decoder when edge.films is missing: Pillow, converted to 8-bit gray."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise FilmError(path, f"cannot decode ({err})") from None


def _loader() -> tuple[str, Callable[[str | Path], np.ndarray]]:
    """(name, function) of the film decoder: edge.films.load_film, or Pillow when it is missing."""
    try:
        from edge.films import load_film
    except ModuleNotFoundError as err:
        if err.name != "edge.films":
            raise
        return "pillow-L", _pillow_gray
    return "edge.films.load_film", load_film


def decode_film(path: str | Path, size: int = PREPROCESS["size"]) -> np.ndarray:
    """A film file -> (size, size) uint8, exactly as the Pi preprocesses it (before the gray->RGB repeat)."""
    return preprocess_gray(_loader()[1](path), size)


def cache_spec(size: int = PREPROCESS["size"]) -> dict:
    """What a cache's pixels depend on besides the film list."""
    return {"cache_version": CACHE_VERSION, "preprocess": PREPROCESS, "size": size, "decoder": _loader()[0]}


def _cache_key(images: Sequence[str], spec: dict) -> str:
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    h.update("\n".join(images).encode())
    return h.hexdigest()


# --- the film cache ----------------------------------------------------------------------------------------

class FilmCache:
    """A finished (or partial) cache folder: ``index.json``, ``films.npy`` (N, size, size) uint8, ``done.npy``.

    The memory map opens lazily and is not pickled, so DataLoader workers (fork or spawn) each open their own.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = _read_index(self.folder)
        if index is None:
            raise DataError(self.folder, "not a film cache (index.json missing or unreadable)")
        self.images: list[str] = index["images"]
        self.size: int = index["spec"]["size"]
        self.key: str = index["key"]
        self.spec: dict = index["spec"]
        self._rows = {name: i for i, name in enumerate(self.images)}
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.folder / "films.npy", mmap_mode="r")
        return self._array

    @property
    def complete(self) -> bool:
        return bool(np.load(self.folder / "done.npy").all())

    def row(self, image: str) -> int:
        try:
            return self._rows[image]
        except KeyError:
            raise DataError(self.folder, f"film {image} is not in this cache; build it over the dataset's films")\
                from None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, row: int) -> np.ndarray:
        return np.array(self.array[row])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def _read_index(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_index(folder: Path, index: dict) -> None:
    _write_atomic(folder / "index.json", lambda p: p.write_text(json.dumps(index, indent=1), encoding="utf-8"))


def _save_done(folder: Path, done: np.ndarray) -> None:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, done)
    _write_atomic(folder / "done.npy", write)


def _usable(folder: Path, index: dict | None, key: str, shape: tuple[int, int, int]) -> bool:
    """True when the folder holds a (possibly partial) cache of this key whose files are intact."""
    if index is None or index.get("key") != key:
        return False
    try:
        done = np.load(folder / "done.npy")
        films = np.load(folder / "films.npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    return done.shape == shape[:1] and done.dtype == bool and films.shape == shape and films.dtype == np.uint8


def _create_cache(folder: Path, images: list[str], spec: dict, key: str) -> None:
    """A fresh, empty cache (any half-written one of the same key is overwritten)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").unlink(missing_ok=True)
    size = spec["size"]
    films = np.lib.format.open_memmap(folder / "films.npy", mode="w+", dtype=np.uint8,
                                      shape=(len(images), size, size))
    del films
    _save_done(folder, np.zeros(len(images), dtype=bool))
    _save_index(folder, {"key": key, "spec": spec, "complete": False, "images": images})


def _decode_row(path: str, size: int) -> np.ndarray:
    return decode_film(path, size)


def _executor(workers: int, pool: str) -> Executor:
    kinds = {"thread": ThreadPoolExecutor, "process": ProcessPoolExecutor}
    if pool not in kinds:
        raise ValueError(f"unknown pool {pool!r}; choose one of {sorted(kinds)}")
    return kinds[pool](max_workers=workers)


def _fill(folder: Path, paths: list[str], done: np.ndarray, size: int, *, workers: int, pool: str,
          progress: bool, chunk: int) -> None:
    """Decode every row not yet done; pixels are flushed, then ``done.npy`` saved, after each chunk."""
    from tqdm import tqdm

    pending = np.flatnonzero(~done)
    films = np.load(folder / "films.npy", mmap_mode="r+")
    decode = partial(_decode_row, size=size)
    with _executor(workers, pool) as executor, tqdm(total=len(done), initial=int(done.sum()), unit="film",
                                                   desc="caching films", disable=not progress) as bar:
        for start in range(0, len(pending), chunk):
            rows = pending[start:start + chunk]
            written: list[int] = []
            try:
                for row, pixels in zip(rows, executor.map(decode, [paths[r] for r in rows]), strict=True):
                    films[row] = pixels
                    written.append(int(row))
                    bar.update(1)
            finally:
                films.flush()
                done[written] = True
                _save_done(folder, done)


def build_cache(films: Sequence[Film], cache_dir: str | Path, size: int = PREPROCESS["size"],
                workers: int | None = None, progress: bool = True, *, pool: str = "thread",
                chunk: int = 256) -> FilmCache:
    """Decode ``films`` once into ``cache_dir/films-<size>px-<key>/`` (reused when complete, resumed when not).

    ``workers``: decoding threads (``pool="thread"``, Pillow and numpy release the GIL) or processes
    (``pool="process"``); default: the CPU count. A film that cannot be decoded raises its FilmError after
    every film decoded so far is saved.
    """
    images = [f.image for f in films]
    if len(set(images)) != len(images):
        raise ValueError("build_cache: the film list names an image more than once")
    spec = cache_spec(size)
    key = _cache_key(images, spec)
    folder = Path(cache_dir) / f"films-{size}px-{key[:16]}"
    index = _read_index(folder)
    if not _usable(folder, index, key, (len(images), size, size)):
        _create_cache(folder, images, spec, key)
        index = _read_index(folder)
    if not index["complete"]:
        done = np.load(folder / "done.npy")
        if not done.all():
            _fill(folder, [str(f.path) for f in films], done, size, workers=workers or os.cpu_count() or 1,
                  pool=pool, progress=progress, chunk=chunk)
        _save_index(folder, {**index, "complete": True})
    return FilmCache(folder)


# --- torch datasets ----------------------------------------------------------------------------------------

def _targets(films: Sequence[Film]) -> np.ndarray:
    if not films:
        return np.zeros((0, 0), np.float32)
    return np.stack([f.target for f in films]).astype(np.float32)


class CachedFilms:
    """Films from a ``FilmCache``: item i -> (uint8 tensor 1×size×size, float32 target tensor)."""

    def __init__(self, cache: FilmCache, films: Sequence[Film]):
        self.cache = cache
        self.films = list(films)
        self.rows = np.array([cache.row(f.image) for f in self.films], dtype=np.int64)
        self.targets = _targets(self.films)

    def __len__(self) -> int:
        return len(self.films)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self.cache[int(self.rows[i])])[None], torch.from_numpy(self.targets[i])

    def batch(self, indices: Sequence[int]):
        """(uint8 N×1×H×W, float32 N×C) for many items at once (one fancy-indexed read of the memmap)."""
        import torch

        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(self.cache.array[self.rows[idx]])[:, None], torch.from_numpy(self.targets[idx])

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All pixels (N, H, W) uint8 in RAM and targets (N, C): to keep a whole split on a GPU."""
        return self.cache.array[self.rows], self.targets


class DecodedFilms:
    """The no-cache path: each item decoded from its file on the fly (same output as ``CachedFilms``)."""

    def __init__(self, films: Sequence[Film], size: int = PREPROCESS["size"]):
        self.films = list(films)
        self.size = size
        self.targets = _targets(self.films)

    def __len__(self) -> int:
        return len(self.films)

    def __getitem__(self, i: int):
        import torch

        pixels = np.array(decode_film(self.films[i].path, self.size))  # a writable copy
        return torch.from_numpy(pixels)[None], torch.from_numpy(self.targets[i])
