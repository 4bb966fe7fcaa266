"""DICOM films through pydicom (imported only when a DICOM file is met): one frame -> 2-D uint8, bright = dense.

The grayscale pipeline follows PS3.3 C.11: stored values (pydicom respects BitsStored: unused high
bits are masked, signed values sign-extended) -> Modality LUT or Rescale Slope/Intercept -> VOI LUT
or Window Center/Width -> 8 bits by the min/max of the result -> MONOCHROME1 inverted.

* MONOCHROME1 is inverted because in MONOCHROME1 the lowest value is displayed white, so bone (which
  stops the most X-rays) has the lowest values; inverted, it is bright like MONOCHROME2 and every PNG film.
  (A DX Presentation LUT Shape of INVERSE only restates this for MONOCHROME1 and is not applied twice.)
* A window or VOI LUT that cannot be applied (width < 1, unparsable, or one that maps every pixel to
  the same value) is ignored and the full range of the data is used: a bogus window must not blank a film.
* Colour (RGB, YBR_* which pydicom converts to RGB, PALETTE COLOR through its LUT) -> luminance.
* Legacy files with no preamble and no file meta are read with ``force=True``; their transfer syntax
  is set from the encoding pydicom found (implicit/explicit VR, endianness) before the pixels are read.
* Refused with a clear message: multi-frame images (a film is one image, not the first of a series),
  no pixel data (structured reports, presentation states, DICOMDIR ...), float pixel data, the
  deflated transfer syntaxes (the whole data set would be inflated before any size check: a zip-bomb
  risk), a transfer syntax no installed decoder reads (named in the message), and images over the
  pixel limit, too small or too elongated (checked from Rows/Columns before decoding).
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import numpy as np

from edge.decode import bombs_are_errors, check_shape, decoding, gray_from_rgb, to_uint8
from edge.errors import FilmError

__all__ = ["DEFLATED_SYNTAXES", "load_dicom"]

DEFLATED_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"})
_PHOTOMETRIC = {"MONOCHROME1": "mono1", "MONOCHROME2": "mono2", "RGB": "colour", "YBR_FULL": "colour",
                "YBR_FULL_422": "colour", "YBR_ICT": "colour", "YBR_RCT": "colour", "YBR_PARTIAL_420": "colour",
                "PALETTE COLOR": "palette"}
_META_MAX_ELEMENTS = 64


def _import_pydicom(path: str | os.PathLike):
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:
        raise FilmError(path, "reading DICOM needs pydicom: pip install pydicom") from None
    return pydicom


def _meta_transfer_syntax(f: BinaryIO) -> str | None:
    """The (0002,0010) value from a file meta group (always explicit VR little endian), reading nothing else.

    A meta group that goes on and on is refused (ValueError): past it pydicom could inflate a deflated data set.
    """
    f.seek(132)
    for _ in range(_META_MAX_ELEMENTS):
        raw = f.read(8)
        if len(raw) < 8:
            return None
        group, elem, vr = *struct.unpack_from("<HH", raw), raw[4:6]
        if group != 0x0002:
            return None
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            extra = f.read(4)
            length = struct.unpack("<I", extra)[0] if len(extra) == 4 else 0
        else:
            length = struct.unpack_from("<H", raw, 6)[0]
        if elem == 0x0010:
            return f.read(min(length, 128)).decode("ascii", "replace").strip("\x00 ")
        f.seek(length, os.SEEK_CUR)
    raise ValueError(f"over {_META_MAX_ELEMENTS} file meta elements and no transfer syntax among them")


def _read_dataset(f: BinaryIO, path: str | os.PathLike, head: bytes):
    pydicom = _import_pydicom(path)
    if head[128:132] == b"DICM":
        with decoding(path, "DICOM file meta"):
            syntax = _meta_transfer_syntax(f)
            f.seek(0)
        if syntax in DEFLATED_SYNTAXES:
            raise FilmError(path, f"unsupported DICOM transfer syntax: {syntax} (deflated; the whole file would be "
                                  "inflated unchecked); save the film uncompressed or JPEG-compressed")
    with decoding(path, "DICOM file"):
        ds = pydicom.dcmread(f, force=True)
        if getattr(ds, "file_meta", None) is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        if "TransferSyntaxUID" not in ds.file_meta:  # a legacy file: no meta group
            implicit, little = ds.original_encoding
            uid = pydicom.uid
            ds.file_meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit in (True, None)
                                              else uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
    return ds


def _not_an_image(ds) -> str:
    if not any(tag.group != 0x0002 for tag in ds.keys()):
        return "damaged DICOM file: no data set could be read after the file meta (cut short?)"
    sop = ds.get("SOPClassUID")
    name = str(getattr(sop, "name", sop or "")).strip()
    if not name:
        return "DICOM file has no pixel data: it is not an image"
    if " SR " in f" {name} ":
        return f"DICOM file has no pixel data: it is a structured report ({name}), not an image"
    return f"DICOM file has no pixel data ({name})"


def _check_image(ds, path: str | os.PathLike, max_pixels: int) -> None:
    """Refuse non-images, series and oversized or odd shapes from the header, before any decoding."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise FilmError(path, "DICOM float pixel data (a parametric map) is not a film")
        with decoding(path, "DICOM header"):  # pydicom converts elements lazily: any access may raise
            problem = _not_an_image(ds)
        raise FilmError(path, problem)
    with decoding(path, "DICOM image header"):
        missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) in (None, "")]
        if missing:
            raise FilmError(path, f"DICOM image lacks {', '.join(missing)}")
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise FilmError(path, f"multi-frame DICOM: {frames} frames; a film is one image")
    check_shape(path, cols, rows, max_pixels)


def _check_decoder(ds, path: str | os.PathLike) -> str:
    """Name the transfer syntax, and refuse it clearly when no installed decoder reads it."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    with decoding(path, "DICOM transfer syntax"):
        syntax = UID(str(ds.file_meta.TransferSyntaxUID).strip("\x00 "))
        label = f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else f"'{syntax}'"
    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError):
        raise FilmError(path, f"unsupported DICOM transfer syntax: {label}; no decoder exists for it") from None
    if not decoder.is_available:
        needs = " or ".join(decoder.missing_dependencies) or "a plugin"
        raise FilmError(path, f"unsupported DICOM compression: {label}; no installed decoder reads it "
                              f"(it needs {needs})")
    return label


def _voi(values: np.ndarray, ds) -> np.ndarray:
    """Apply the VOI LUT or window; a bogus one is ignored (the data's full range is used instead)."""
    if not any(k in ds for k in ("VOILUTSequence", "WindowCenter", "WindowWidth")):
        return values
    from pydicom.pixels import apply_voi_lut

    try:
        out = apply_voi_lut(values, ds, prefer_lut=True)
    except Exception:  # noqa: BLE001 - an unusable window in the file: fall back to the full range
        return values
    if out.shape != values.shape or (out.dtype.kind == "f" and not np.isfinite(out).all()) or out.min() == out.max():
        return values
    return out


def _grayscale(arr: np.ndarray, ds, path: str | os.PathLike) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    with decoding(path, "DICOM header"):
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    kind = _PHOTOMETRIC.get(photometric)
    if kind is None:
        raise FilmError(path, f"unsupported DICOM photometric interpretation: {photometric!r}")
    if kind == "palette" and arr.ndim == 2:
        with decoding(path, "DICOM palette"):
            arr = apply_color_lut(arr, ds)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return gray_from_rgb(arr)
    if arr.ndim != 2:
        raise FilmError(path, f"unexpected DICOM pixel data: decoded to shape {arr.shape}, not one image")
    with decoding(path, "DICOM Modality LUT / rescale"):
        values = apply_modality_lut(arr, ds)
    film = to_uint8(_voi(values, ds))
    return 255 - film if kind == "mono1" else film


def load_dicom(f: BinaryIO, path: str | os.PathLike, head: bytes, max_pixels: int) -> np.ndarray:
    """An open DICOM file -> 2-D uint8 film, bright = dense. Raises FilmError for every problem."""
    ds = _read_dataset(f, path, head)
    _check_image(ds, path, max_pixels)
    label = _check_decoder(ds, path)
    # Pillow decodes the JPEG and JPEG 2000 syntaxes: its bomb warning is an error here too
    with decoding(path, "DICOM pixel data", f"; transfer syntax {label}"), bombs_are_errors():
        arr = ds.pixel_array
    return _grayscale(arr, ds, path)
