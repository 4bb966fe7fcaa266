"""The one preprocessing of films, shared by training (train imports it) and the Pi.

Contract: a film is a 2-D ``uint8`` array, bright = dense (bone white), as
``edge.films.load_film`` returns it. ``preprocess`` turns it into the network input:

1. Aspect kept by padding, never cropping: the longer side is resized to ``size`` and the
   shorter side is centred on a black canvas, so nothing at the film's edge (a costophrenic
   angle, an apex) is ever cut off. NIH films are square, so for them this is a plain resize.
2. Resampling with Pillow's antialiased BILINEAR filter (``PREPROCESS["resample"]``).
3. The gray channel is repeated to 3 channels (``uint8``, H×W×3) for an ImageNet-shaped body.

Normalisation (``MEAN``/``STD`` on 0-255 pixels) is folded into the exported network, so
the Pi feeds raw ``uint8`` pixels straight into the int8 model and does no float work.
``PREPROCESS`` is written into every model bundle; edge refuses a bundle that expects
another preprocessing.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["MEAN", "PREPROCESS", "STD", "placement", "preprocess", "preprocess_gray", "spec_matches"]

PREPROCESS = {
    "name": "gray-pad-square",
    "version": 1,
    "size": 224,
    "channels": 3,
    "resample": "bilinear",
    "pad": "black-centred",
    "dtype": "uint8",
}

# ImageNet statistics on the 0-255 scale; applied inside the exported network.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR}


def preprocess_gray(film: np.ndarray, size: int = PREPROCESS["size"]) -> np.ndarray:
    """2-D uint8 film -> size×size uint8, aspect kept by black padding."""
    if film.ndim != 2 or film.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 film, got {film.dtype} of shape {film.shape}")
    h, w = film.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = Image.fromarray(film)
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), _RESAMPLE[PREPROCESS["resample"]])
    if (nh, nw) == (size, size):
        return np.asarray(img)
    canvas = np.zeros((size, size), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = np.asarray(img)
    return canvas


def preprocess(film: np.ndarray, size: int = PREPROCESS["size"]) -> np.ndarray:
    """2-D uint8 film -> size×size×3 uint8 network input."""
    gray = preprocess_gray(film, size)
    return np.repeat(gray[:, :, None], PREPROCESS["channels"], axis=2)


def placement(shape: tuple[int, int], size: int = PREPROCESS["size"]) -> tuple[float, int, int]:
    """(scale, top, left) of a film of ``shape`` inside the size×size input, to map back."""
    h, w = shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return scale, (size - nh) // 2, (size - nw) // 2


def spec_matches(spec: dict) -> bool:
    """True when a bundle's preprocessing spec is the one this code implements."""
    return {k: spec.get(k) for k in PREPROCESS} == PREPROCESS
