"""One exception hierarchy for everything a user can get wrong, in all three stages.

``XrayError`` is the root: train's, convert's and edge's errors all derive from it, and every
command's ``main`` goes through ``edge.cli.run_main``, which turns one into a one-line message and
its ``exit_code``; anything else is a bug and keeps its traceback. The root lives in edge because
edge is the one package the other two may import and that imports neither of them.
``EdgeError`` is the edge stage's own branch (films, bundles, runtimes, the results store).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BundleError", "EdgeError", "FilmError", "RuntimeMissingError", "StoreError", "XrayError"]


class XrayError(Exception):
    """A problem the user can act on. ``str(err)`` is the whole message; ``exit_code`` the command's status."""

    exit_code = 2


class EdgeError(XrayError):
    """A problem of the edge stage (film, bundle, interpreter, camera, results folder)."""


class FilmError(EdgeError):
    """A film could not be read or is not usable. Names the file and the problem.

    ``kind``: a short, stable name for the kind of problem (the scan's error counts and the store's
    ``error_kind`` column); by default the problem's leading words, before any ``:`` or `` (``.
    """

    def __init__(self, path: str | Path, problem: str, kind: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.kind = kind or problem.split(":")[0].split(" (")[0][:40]
        super().__init__(f"{self.path}: {problem}")


class BundleError(EdgeError):
    """A model bundle is missing, damaged, tampered with or of an unknown format."""


class RuntimeMissingError(EdgeError):
    """No TFLite interpreter, Edge TPU delegate or camera library is installed."""


class StoreError(EdgeError):
    """The results store cannot be opened or written (locked, full disk, damaged)."""
