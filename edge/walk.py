"""Finding films: a deterministic recursive walk, and hashing a film file safely.

Folders are walked depth-first with entries sorted by name; symlinked folders are followed once
(a link loop is passed over and counted). Files found in folders are kept when
``edge.films.is_film_candidate`` (magic bytes) says they may be films, or when their name does
(``FILM_SUFFIXES``: an empty ``x.jpg``, a ``notes.png`` holding text or a gzipped ``.dcm`` is then a
failure that names the file and its problem, not a silent skip); everything else is passed over and
counted by reason (the paths kept in ``passed_paths`` when a list is given, for ``--verbose``).
Files named on the command line are always tried. Only regular files are ever opened (a FIFO named
``x.png`` would block a reader forever).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edge.errors import FilmError

__all__ = ["FILM_SUFFIXES", "collect", "hash_film_file", "path_text"]

FILM_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".gif", ".webp",
                           ".jp2", ".j2k", ".heic", ".heif", ".avif", ".dcm", ".dicom", ".dic"})


def collect(paths: Sequence[str | Path], passed_paths: list[Path] | None = None) -> tuple[list[Path], Counter]:
    """Named files (always tried) and films found in named folders; counts of what was passed over
    (and, into ``passed_paths`` when given, the paths)."""
    from edge.films import is_film_candidate

    def is_film(path: Path) -> bool:
        return path.suffix.lower() in FILM_SUFFIXES or is_film_candidate(path)

    films: list[Path] = []
    passed: Counter = Counter()
    for given in map(Path, paths):
        if given.is_dir():
            films.extend(_walk(given, passed, is_film, passed_paths))
        else:
            films.append(given)
    return films, passed


def _walk(root: Path, passed: Counter, is_film: Any, passed_paths: list[Path] | None) -> Iterator[Path]:
    """Depth-first, entries sorted by name, symlinked folders followed once (no loops)."""
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                passed["folder already visited (link loop)"] += 1
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            passed["unreadable folder"] += 1
            continue
        subfolders = []
        for entry in entries:
            kind = _entry_kind(entry, is_film)
            if kind == "folder":
                subfolders.append(Path(entry.path))
            elif kind == "film":
                yield Path(entry.path)
            else:
                passed[kind] += 1
                if passed_paths is not None:
                    passed_paths.append(Path(entry.path))
        stack.extend(reversed(subfolders))


def _entry_kind(entry: os.DirEntry, is_film: Any) -> str:
    try:
        st = os.stat(entry.path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "link loop"
        return "broken link" if entry.is_symlink() else "unreadable entry"
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.access(entry.path, os.R_OK):
        return "film"  # tried, so the scan says it cannot be read
    try:
        return "film" if is_film(Path(entry.path)) else "not a film"
    except OSError:
        return "unreadable entry"


def path_text(path: Path) -> str:
    """The path as text SQLite/CSV/JSON can hold: undecodable bytes become backslash escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _open_problem(path: Path, err: OSError) -> str:
    if err.errno == errno.ENOENT:
        return "broken symbolic link" if os.path.islink(path) else "no such file"
    if err.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of links)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: the file cannot be read"
    return f"cannot open it ({err.strerror or err})"


def hash_film_file(path: Path) -> str:
    """SHA-256 of a regular file's bytes; FilmError when it is missing, unreadable or not a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the scan
    except OSError as err:
        raise FilmError(path, _open_problem(path, err)) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FilmError(path, f"{'a folder' if stat.S_ISDIR(mode) else 'not a regular file'}, not a film")
        h = hashlib.sha256()
        try:
            while block := f.read(1 << 20):
                h.update(block)
        except OSError as err:
            raise FilmError(path, f"cannot read it ({err.strerror or err})") from None
    return h.hexdigest()
