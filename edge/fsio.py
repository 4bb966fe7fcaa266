"""File-system helpers every stage writes with: whole files or none (``atomic_writer``), durable
renames (``fsync_dir``), a full disk told apart from other write errors (``output_error``), and
numpy values in JSON (``json_default``).

``atomic_writer`` writes ``.NAME.tmp-PID`` beside the target, fsyncs it, renames it over the
target and fsyncs the folder: readers see the old file or the new one, never half. A writer
killed mid-write leaves its temp file; ``remove_stale_temp_files`` (called under edge.store's
OutLock) removes those of other pids.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import StoreError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_writer", "fsync_dir", "is_disk_full", "json_default",
           "output_error", "remove_stale_temp_files"]

_LOW_SPACE = 64 * 1024  # bytes free below which a write error is taken for a full disk
_TEMP = re.compile(r"^\..+\.tmp-(\d+)$")  # atomic_writer's temp names


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """A file to write that appears at ``path`` only when complete (temp file, fsync, rename, dir fsync).

    Readers see the old file or the new one, never half; a crash or an error leaves no temp file behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
    try:
        with open(tmp, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in the folder ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(*folders: Path) -> None:
    """Remove the temp files of killed writers (``.NAME.tmp-PID`` of another pid) in ``folders``; call it
    holding the OutLock, so no other writer is alive. Errors are ignored."""
    for folder in folders:
        try:
            names = [p for p in folder.iterdir() if (m := _TEMP.match(p.name)) and int(m[1]) != os.getpid()]
        except OSError:
            continue
        for path in names:
            try:
                path.unlink()
            except OSError:
                pass


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, or SQLite's "database or disk is full"."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, sqlite3.OperationalError) and "full" in str(err).lower()


def _no_space_left(path: Path) -> bool:
    """SQLite reports some ENOSPC cases (its -shm file) as a plain "disk I/O error": ask the file system."""
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize < _LOW_SPACE
    return False


def output_error(path: Path, err: BaseException, doing: str) -> StoreError:
    """A StoreError for a failed write of results (database, export, overlay), saying when the disk is full."""
    if is_disk_full(err) or _no_space_left(path):
        return StoreError(f"{path}: the disk is full ({doing}); every result committed so far is kept: "
                          f"free some space and run again to resume")
    return StoreError(f"{path}: cannot {doing} ({err})")
