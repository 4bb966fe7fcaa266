"""The conversion stage's one error class: a problem the user can act on, turned into exit code 2."""

from __future__ import annotations

from edge.errors import XrayError

__all__ = ["ConvertError"]


class ConvertError(XrayError):
    """Conversion cannot go on. ``str(err)`` is the whole one-line message (it names the file)."""
