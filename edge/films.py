"""Film loading: any chest film file -> one 2-D ``uint8`` array, bright = dense (bone white).

The pixel contract (what ``edge.preprocess`` and training rely on):

* 2-D ``uint8``, full resolution, bright = dense. DICOM MONOCHROME1 is inverted (see ``edge.dicom``).
  ``load_film_reduced`` (the scan) decodes a JPEG much larger than needed at 1/2, 1/4 or 1/8 scale (libjpeg
  scales while decoding: a camera photo costs a fraction of its full decode) and says the full size.
* The format is sniffed from the bytes, never the extension (a JPEG named ``.png`` is read as JPEG).
* Colour -> grayscale by ITU-R 601-2 luminance (Pillow's ``convert("L")``). Alpha is ignored, not
  composited: a film's gray values are its content, and transparency has no meaning on an X-ray.
* More than 8 bits (16-bit PNG/TIFF, 32-bit integer, float TIFF, DICOM after its LUTs) -> 8 bits by
  the finite min/max of the data; NaN -> black, +inf -> white. A film whose pixels are all equal
  is refused as blank.
* EXIF/TIFF orientation is applied (``ImageOps.exif_transpose``). TIFF WhiteIsZero is inverted.
* One image per film: JPEG/MPO, TIFF, PNG/APNG and JPEG 2000 give their first (primary) picture;
  animated GIF/WebP and multi-frame DICOM are refused.

Safety, per call (no global Pillow or warnings settings are changed):

* files over ``MAX_FILE_BYTES`` and images over ``MAX_PIXELS`` (decompression bombs) are refused
  from the header, before any pixel is decoded; truncated files are errors (no
  ``LOAD_TRUNCATED_IMAGES``); directories, pipes, devices, broken links and link loops are errors.
  Time per film is bounded because work is linear in the (bounded) file size and pixel count.
* Films smaller than ``MIN_SIDE`` px a side or longer than ``MAX_ASPECT``:1 are refused as not
  a chest film, also from the header.
* Every problem is an ``edge.errors.FilmError(path, problem)``. Exceptions raised inside Pillow
  or pydicom while they parse a file are a property of that file and become a FilmError naming
  the exception; anything else escaping from here is a bug in this module.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge.decode import MAX_PIXELS, bombs_are_errors, check_shape, decoding, palette_to_gray, to_uint8
from edge.errors import FilmError

__all__ = ["FORMATS", "MAX_FILE_BYTES", "is_film_candidate", "load_film", "load_film_reduced", "sniff"]

MAX_FILE_BYTES = 512 * 2**20
HEAD_BYTES = 512

# Image formats by sniffed name: the Pillow plugin that reads it and what to do with several frames,
# or why it is refused. Every key is a film candidate in a folder walk (so refusals are reported).
FORMATS: dict[str, dict] = {
    "png": {"pillow": "PNG", "frames": "first"},          # APNG: the default image
    "jpeg": {"pillow": "JPEG", "frames": "first"},        # MPO from phones: the primary picture
    "tiff": {"pillow": "TIFF", "frames": "first"},        # later pages are usually thumbnails
    "jpeg2000": {"pillow": "JPEG2000", "frames": "first"},
    "bmp": {"pillow": "BMP", "frames": "first"},
    "gif": {"pillow": "GIF", "frames": "refuse"},
    "webp": {"pillow": "WEBP", "frames": "refuse"},
    "dicom": {"pillow": None, "frames": "refuse"},        # edge.dicom
    "heic": {"refused": "unsupported format: a HEIC/HEIF photo; export the picture as JPEG or PNG"},
    "avif": {"refused": "unsupported format: an AVIF picture; export the picture as JPEG or PNG"},
}
# Recognised, but not images at all.
_NOT_IMAGES = {"pdf": "a PDF document", "zip": "a ZIP archive", "gzip": "a gzip-compressed file (decompress it first)"}

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),
    (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"), (b"\xffO\xffQ", "jpeg2000"),
    (b"%PDF-", "pdf"), (b"PK\x03\x04", "zip"), (b"\x1f\x8b", "gzip"),
)
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_FTYP_BRANDS = {b"heic": "heic", b"heix": "heic", b"hevc": "heic", b"heim": "heic", b"heis": "heic",
                b"mif1": "heic", b"msf1": "heic", b"avif": "avif", b"avis": "avif"}
_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US "
                 b"UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_OS_PROBLEMS = {
    errno.ENOENT: "no such file", errno.ELOOP: "symbolic link loop (too many levels of links)",
    errno.EACCES: "permission denied: the file cannot be read",
    errno.EPERM: "permission denied: the file cannot be read",
    errno.EISDIR: "is a directory, not a film", errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENAMETOOLONG: "file name too long",
}


# ---- sniffing --------------------------------------------------------------------------------------------

def _legacy_dicom(head: bytes) -> bool:
    """A DICOM data set with no preamble and no meta (old files): two plausible little-endian tags at 0."""
    if len(head) < 16:
        return False
    group, elem = struct.unpack_from("<HH", head, 0)
    if group not in (0x0002, 0x0008) or elem > 0x0100:
        return False
    vr = head[4:6]
    if vr in _VRS:  # explicit VR
        nxt = 12 + struct.unpack_from("<I", head, 8)[0] if vr in _LONG_VRS else 8 + struct.unpack_from("<H", head, 6)[0]
    else:  # implicit VR
        nxt = 8 + struct.unpack_from("<I", head, 4)[0]
    if nxt + 4 > len(head):
        return False
    group2, elem2 = struct.unpack_from("<HH", head, nxt)
    return group2 % 2 == 0 and (group2, elem2) > (group, elem) and group2 <= 0x0028


def _sniff_head(head: bytes) -> str | None:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_SIZES:
        return "bmp"
    return "dicom" if _legacy_dicom(head) else None


def sniff(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview) -> str | None:
    """The file format from its first bytes ("png", "jpeg", "dicom", ...), or None; never the extension."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return _sniff_head(bytes(path_or_bytes[:HEAD_BYTES]))
    try:
        fd = os.open(path_or_bytes, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError):
        return None
    try:  # never read from a pipe or device (that could block), nor a folder
        return _sniff_head(os.read(fd, HEAD_BYTES)) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def is_film_candidate(path: str | os.PathLike) -> bool:
    """Cheap test for folder walks: a regular file whose first bytes are an image (refused kinds too) or DICOM."""
    return sniff(path) in FORMATS


# ---- opening ---------------------------------------------------------------------------------------------

def _os_problem(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            return f"broken symbolic link (points to {os.readlink(path)!r}, which does not exist)"
        except OSError:
            return "broken symbolic link"
    return _OS_PROBLEMS.get(exc.errno, f"cannot open the file: {exc.strerror or exc}")


@contextmanager
def _open_film(path: str | os.PathLike, max_bytes: int) -> Iterator[BinaryIO]:
    """Open once (non-blocking, so a named pipe cannot hang us) and check what was opened."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise FilmError(path, _os_problem(name, exc)) from None
    except ValueError as exc:  # e.g. a NUL byte in the name
        raise FilmError(path, f"invalid file name: {exc}") from None
    try:
        problem = _stat_problem(os.fstat(fd), max_bytes)
    except OSError as exc:
        problem = _os_problem(name, exc)
    if problem:
        os.close(fd)
        raise FilmError(path, problem)
    with os.fdopen(fd, "rb") as f:
        f.raw.name = name  # not the fd number: pydicom builds messages from it (and fails on an int)
        yield f


def _stat_problem(st: os.stat_result, max_bytes: int) -> str | None:
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a film"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device), not a film"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    if st.st_size > max_bytes:
        return f"file too large: {st.st_size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit"
    return None


# ---- Pillow formats --------------------------------------------------------------------------------------

def _open_pillow(f: BinaryIO, path: str | os.PathLike, fmt: str) -> Image.Image:
    """Parse the header only; Pillow's own bomb warning becomes an error for this call only."""
    with decoding(path, f"{fmt.upper()} image"), bombs_are_errors():
        try:
            return Image.open(f, formats=[FORMATS[fmt]["pillow"]])
        except UnidentifiedImageError:
            raise FilmError(path, f"damaged {fmt.upper()} image: its header cannot be read") from None


def _white_is_zero(img: Image.Image) -> bool:
    """A TIFF whose photometric interpretation is WhiteIsZero and which Pillow did not invert (over 8 bits)."""
    return img.format == "TIFF" and img.mode not in ("1", "L") and img.tag_v2.get(262) == 0


def _pillow_pixels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Decoded image -> (2-D array, palette or None), colour reduced to luminance, alpha ignored. Pillow calls only."""
    if img.mode in ("1", "L", "I", "F") or img.mode.startswith("I;16"):
        return np.asarray(img), None
    if img.mode in ("P", "PA"):
        index = np.asarray(img)
        return (index[..., 0] if index.ndim == 3 else index), np.asarray(img.getpalette("RGB") or [], np.float64)
    if img.mode in ("LA", "La"):
        return np.asarray(img.getchannel(0)), None
    if img.mode not in ("RGB", "RGBA", "RGBX", "RGBa"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    return np.asarray(img.convert("L")), None


def _draft(img: Image.Image, side: int | None) -> None:
    """A JPEG over twice ``side`` px on its longer side: decode at the smallest DCT scale (1/2, 1/4, 1/8) that
    keeps its longer side at least ``side`` (libjpeg scales while it decodes: a camera photo costs a fraction)."""
    if side is None or img.format != "JPEG" or max(img.size) < 2 * side:
        return
    w, h = img.size
    k = side / max(w, h)
    img.draft(img.mode, (max(1, math.ceil(w * k)), max(1, math.ceil(h * k))))


def _load_pillow(f: BinaryIO, path: str | os.PathLike, fmt: str, max_pixels: int,
                 side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    img = _open_pillow(f, path, fmt)
    with img:
        check_shape(path, *img.size, max_pixels)
        full = img.size
        with decoding(path, f"{fmt.upper()} image"):
            if FORMATS[fmt]["frames"] == "refuse" and getattr(img, "is_animated", False):
                raise FilmError(path, f"animated image: a {fmt.upper()} of {img.n_frames} frames; a film is one "
                                      "still image")
            _draft(img, side)
            img.load()
            invert = _white_is_zero(img)
            ImageOps.exif_transpose(img, in_place=True)  # no copy when the film is already upright
            arr, palette = _pillow_pixels(img)
    film = to_uint8(arr) if palette is None else palette_to_gray(arr, palette)
    turned = (arr.shape[0] > arr.shape[1]) != (full[1] > full[0])  # EXIF turned it a quarter
    return 255 - film if invert else film, (full[0], full[1]) if turned else (full[1], full[0])


# ---- the entry point -------------------------------------------------------------------------------------

def _decode(f: BinaryIO, path: str | os.PathLike, max_pixels: int,
            side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    with decoding(path, "file"):
        head = f.read(HEAD_BYTES)
        f.seek(0)
    fmt = _sniff_head(head)
    if fmt is None:
        known = ", ".join(k.upper() for k in FORMATS if "refused" not in FORMATS[k])
        raise FilmError(path, f"not an image: the content is none of {known} (whatever the file name says)")
    if fmt in _NOT_IMAGES:
        raise FilmError(path, f"not an image: the file is {_NOT_IMAGES[fmt]}")
    if "refused" in FORMATS[fmt]:
        raise FilmError(path, FORMATS[fmt]["refused"])
    if fmt == "dicom":
        from edge.dicom import load_dicom  # pydicom is imported only when a DICOM file is met

        film = load_dicom(f, path, head, max_pixels)
        return film, film.shape
    return _load_pillow(f, path, fmt, max_pixels, side)


def load_film_reduced(path: str | os.PathLike, side: int | None, *, max_pixels: int = MAX_PIXELS,
                      max_bytes: int = MAX_FILE_BYTES) -> tuple[np.ndarray, tuple[int, int]]:
    """``load_film``, except that a JPEG over twice ``side`` px on its longer side is decoded at a reduced
    scale (Pillow's ``draft``: 1/2, 1/4 or 1/8) that keeps its longer side at least ``side``; other formats
    as ``load_film``. Returns the pixels and the film's full (H, W), upright, as its header gives it."""
    with _open_film(path, max_bytes) as f:
        film, full = _decode(f, path, max_pixels, side)
    if film.ndim != 2 or film.dtype != np.uint8:
        raise FilmError(path, f"decoded to an unexpected array ({film.dtype}, shape {film.shape}), not a film")
    check_shape(path, film.shape[1], film.shape[0], max_pixels)
    if film.min() == film.max():
        raise FilmError(path, f"blank image: every pixel has the value {int(film.flat[0])}")
    return np.ascontiguousarray(film), (int(full[0]), int(full[1]))


def load_film(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """Read one film file -> 2-D uint8, bright = dense, full resolution. Raises FilmError for every problem."""
    return load_film_reduced(path, None, max_pixels=max_pixels, max_bytes=max_bytes)[0]
