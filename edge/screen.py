"""Films the model must not answer for: checks before the model (the file says what it is) and after it
(edge.novelty's distance says the film is unlike the training films), and what a refusal does to a result.

Before the model (``screen_file``, cheap, from the file itself):

* DICOM: a Modality that is not a projection radiograph (CT, MR, US, NM, PT, SEG, RTDOSE, ...) or a
  BodyPartExamined that names another part (KNEE, HEAD, ...) is refused from the header, the tag's value in
  the message. No Modality, or a secondary capture (OT, SC: a digitised film may be stored so) goes on to
  the model and its guard.
* Colour: a chest film is gray; photographed on a lightbox it takes the light's tint, which scales every
  pixel's colour alike. ``colour_spread`` measures how much the pixels' chromaticity (r, g, b)/(r + g + b)
  varies around its median (0 for a gray or uniformly tinted picture); above ``MAX_COLOUR_SPREAD`` the
  picture is a photograph or drawing of something else.

A check that cannot read the file says nothing: edge.films then names the file's problem.

After the model (``judge_result``): with a guard in the bundle every result carries its novelty and
whether the film is in distribution. A refused film keeps its scores for audit but gets no flagged
findings and no heatmaps, unless the scan was asked to score unrecognised films anyway
(``allow=True``), when it is scored as before and marked so.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from edge.novelty import Guard, judge

__all__ = ["ACCEPTED", "ALLOWED", "GUARD_STATES", "MAX_COLOUR_SPREAD", "NOT_RECOGNISED", "RADIOGRAPHY", "REFUSED",
           "colour_spread", "dicom_header_problem", "guard_notes", "judge_result", "refuse_unscored", "screen_file"]

NOT_RECOGNISED = "not recognised as a chest film like the training films"
ACCEPTED, REFUSED, ALLOWED = "accepted", "refused", "scored anyway"  # FilmResult.guard; None: no guard
GUARD_STATES = (ACCEPTED, REFUSED, ALLOWED)
RADIOGRAPHY = frozenset({"CR", "DX", "RG", "OT", "SC", ""})  # projection radiographs, and unknown captures
CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "LUNG", "CXR", "PECHO", "BRUST")
MAX_COLOUR_SPREAD = 0.05
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})
_SMALL = 128  # px: the colour check looks at a copy this size
_DARK = 40.0  # gray level under which a pixel's colour is mostly sensor noise


def colour_spread(rgb: np.ndarray) -> float:
    """Mean L1 distance of the pixels' chromaticity from its median (H×W×3, any scale); dark pixels ignored."""
    a = np.asarray(rgb, np.float64).reshape(-1, 3)
    total = a.sum(axis=1)
    bright = a[total > 3 * _DARK * (a.max() / 255 if a.max() > 255 else 1)]
    if len(bright) < 16:
        return 0.0
    chroma = bright / bright.sum(axis=1, keepdims=True)
    return float(np.abs(chroma - np.median(chroma, axis=0)).sum(axis=1).mean())


def _colour_problem(spread: float) -> str | None:
    if spread <= MAX_COLOUR_SPREAD:
        return None
    return (f"{NOT_RECOGNISED}: a strongly coloured picture (colour spread {spread:.2f}; a gray film, even under a "
            f"tinted lightbox, stays under {MAX_COLOUR_SPREAD:.2f}), a photograph or drawing of something else")


def _pillow_colour(path: str | os.PathLike) -> str | None:
    with Image.open(path) as img:
        if img.mode not in _COLOUR_MODES:
            return None
        img.draft("RGB", (_SMALL * 2, _SMALL * 2))  # JPEG: decode at reduced size
        small = img.convert("RGB")
        small.thumbnail((_SMALL, _SMALL), Image.Resampling.BOX)
        return _colour_problem(colour_spread(np.asarray(small)))


def dicom_header_problem(ds: Any) -> str | None:
    """Why a DICOM data set (its header) is not a chest radiograph, or None."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in RADIOGRAPHY:
        return (f"{NOT_RECOGNISED}: DICOM Modality is {modality!r}, not a projection radiograph (CR, DX); "
                f"this edge reads chest X-ray films only")
    part = str(ds.get("BodyPartExamined", "") or "").strip()
    if part and not any(word in part.upper() for word in CHEST_WORDS):
        return f"{NOT_RECOGNISED}: DICOM BodyPartExamined is {part!r}, not the chest"
    return None


def _dicom_colour(ds: Any) -> str | None:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if not photometric.startswith(("RGB", "YBR", "PALETTE")):
        return None
    from pydicom.pixels import apply_color_lut

    arr = ds.pixel_array
    if photometric.startswith("PALETTE"):
        arr = apply_color_lut(arr, ds)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        return None
    step = max(1, max(arr.shape[:2]) // _SMALL)
    return _colour_problem(colour_spread(arr[::step, ::step]))


def _dicom(path: str | os.PathLike) -> str | None:
    import pydicom

    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    problem = dicom_header_problem(ds)
    if problem is None and str(ds.get("PhotometricInterpretation", "")).strip().upper()[:3] in ("RGB", "YBR", "PAL"):
        problem = _dicom_colour(pydicom.dcmread(path, force=True))
    return problem


def screen_file(path: str | os.PathLike) -> str | None:
    """Why this (readable) film file is not a chest film, from its header or its colour; None: go on."""
    from edge.films import sniff

    try:
        kind = sniff(path)
        if kind == "dicom":
            return _dicom(path)
        return _pillow_colour(path) if kind is not None else None
    except Exception:  # noqa: BLE001 - an unreadable file is edge.films' to explain, not this check's
        return None


def guard_notes(guard: Guard | dict | None) -> tuple[str, ...]:
    """What a caller says once about the bundle's guard (or bundle.json's ``novelty``): nothing when it has one."""
    if guard is not None:
        return ()
    return ("this bundle has no out-of-distribution guard (it was converted before the guard existed): films unlike "
            "the training films are scored like any other; convert the model again to have one",)


def refuse_unscored(result: Any, reason: str) -> None:
    """A film refused before the model: a final result with the reason, no scores."""
    result.status, result.guard, result.in_distribution, result.refusal = "ok", REFUSED, False, reason


def judge_result(result: Any, guard: Guard | None, features: np.ndarray, reason: str | None, allow: bool) -> bool:
    """Set the result's novelty, in_distribution, guard and refusal; True when findings may be shown.

    ``reason``: the refusal of ``screen_file`` (this film was scored because ``allow``), or None.
    """
    if guard is not None:
        verdict = judge(guard, features)
        result.novelty, result.in_distribution = round(verdict.novelty, 4), verdict.in_distribution
        if reason is None and not verdict.in_distribution:
            reason = (f"{NOT_RECOGNISED}: its features are {verdict.novelty:.2f} from the training films' "
                      f"(novelty), over the threshold {verdict.threshold:.2f}")
    if reason is None:
        result.guard = ACCEPTED if guard is not None else None
        return True
    result.in_distribution, result.refusal = False, reason
    result.guard = ALLOWED if allow else REFUSED
    return allow
