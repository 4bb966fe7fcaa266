"""What every film decoder shares (edge.films for Pillow's formats, edge.dicom for DICOM): parser
exceptions turned into ``FilmError`` (``decoding``), Pillow's bomb warning as an error
(``bombs_are_errors``), the header checks of a film's shape (``check_shape``) and the pure pixel
compute of the pixel contract (``to_uint8``, ``luminance``, ``gray_from_rgb``, ``palette_to_gray``).
The contract itself is described in edge.films.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from edge.errors import FilmError

__all__ = ["MAX_ASPECT", "MAX_PIXELS", "MIN_SIDE", "bombs_are_errors", "check_shape", "decoding", "gray_from_rgb",
           "luminance", "palette_to_gray", "to_uint8"]

MAX_PIXELS = 64 * 2**20
MIN_SIDE = 64
MAX_ASPECT = 4.0
_WARNINGS_LOCK = threading.Lock()


@contextmanager
def bombs_are_errors() -> Iterator[None]:
    """Pillow's DecompressionBombWarning raised as an error, for this block only (serialised: the
    warnings filters are process-wide). No other warning filter and no Pillow setting is touched."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


@contextmanager
def decoding(path: str | os.PathLike, what: str, context: str = "") -> Iterator[None]:
    """Turn any exception a parser (Pillow, pydicom) raises on this file into a FilmError naming it."""
    try:
        yield
    except FilmError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FilmError(path, f"image too large (possible decompression bomb): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - parsers raise anything on hostile bytes; the file is at fault
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "no detail"
        raise FilmError(path, f"damaged or unsupported {what} ({type(exc).__name__}: {detail}){context}") from None


# ---- checks and pure pixel compute ------------------------------------------------------------------------

def check_shape(path: str | os.PathLike, width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse, from the header, bombs and shapes that cannot be a chest film."""
    if width <= 0 or height <= 0:
        raise FilmError(path, f"image has no pixels ({width}×{height})")
    if width * height > max_pixels:
        raise FilmError(path, f"image too large (possible decompression bomb): {width}×{height} = "
                              f"{width * height / 1e6:.0f} Mpixel, over the {max_pixels / 1e6:.0f} Mpixel limit")
    if min(width, height) < MIN_SIDE:
        raise FilmError(path, f"not a chest film: {width}×{height} px is too small (at least {MIN_SIDE} px a side)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise FilmError(path, f"not a chest film: {width}×{height} px, aspect ratio over {MAX_ASPECT:g}:1")


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """A 2-D numeric array -> uint8 by its finite min/max (uint8 passes through). Constant -> zeros."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.any():
            return np.zeros(arr.shape, np.uint8)
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    else:
        lo, hi = int(arr.min()), int(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    if arr.dtype.kind in "ui" and hi - lo < 2**16:  # a lookup table: no float copy of a big film
        lut = np.round(np.arange(hi - lo + 1, dtype=np.float64) * (255.0 / (hi - lo))).astype(np.uint8)
        return lut[arr.astype(np.int64 if arr.dtype.itemsize > 2 else np.int32) - lo]
    scaled = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 (any numeric dtype) -> H×W float64 by ITU-R 601-2, the weights of Pillow's convert("L")."""
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def gray_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 -> uint8 luminance: 8-bit colour keeps its scale, deeper colour is scaled by min/max."""
    lum = luminance(rgb)
    return np.clip(np.round(lum), 0, 255).astype(np.uint8) if rgb.dtype == np.uint8 else to_uint8(lum)


def palette_to_gray(index: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Palette indices -> uint8 luminance of their colours (missing palette entries are black)."""
    colours = np.zeros((256, 3), np.float64)
    entries = palette[: len(palette) - len(palette) % 3].reshape(-1, 3)[:256]
    colours[: len(entries)] = entries
    return np.clip(np.round(luminance(colours)), 0, 255).astype(np.uint8)[index]
