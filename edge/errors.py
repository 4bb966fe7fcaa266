"""One exception hierarchy for everything a user can get wrong.

The command-line entry points catch ``EdgeError`` in one place and turn it into a
one-line message and an exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BundleError", "EdgeError", "FilmError", "RuntimeMissingError", "StoreError"]


class EdgeError(Exception):
    """A problem the user can act on. ``str(err)`` is the whole message."""

    exit_code = 2


class FilmError(EdgeError):
    """A film could not be read or is not usable. Names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class BundleError(EdgeError):
    """A model bundle is missing, damaged, tampered with or of an unknown format."""


class RuntimeMissingError(EdgeError):
    """No TFLite interpreter, Edge TPU delegate or camera library is installed."""


class StoreError(EdgeError):
    """The results store cannot be opened or written (locked, full disk, damaged)."""
