"""A corpus of hostile and awkward film files, generated at test time (no binaries are committed).

``build_corpus(root)`` writes every kind into ``root`` and returns ``Case(name, path, expected)``:
``expected`` is ``"ok"`` (``load_film`` must return a film) or ``"error:<fragment>"`` (it must raise
``FilmError`` whose message contains the fragment, case-insensitive). Every good file has unique
bytes, so a scan over the folder scores each one (a scan skips files whose bytes it has seen).
The DICOM helpers are shared with tests/edge/test_films.py.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

__all__ = ["KINDS", "Case", "build_corpus", "film", "make_dicom", "png_with_header"]

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class Case(NamedTuple):
    name: str
    path: Path
    expected: str  # "ok" or "error:<message fragment>"


def film(seed: int, h: int = 160, w: int = 128) -> np.ndarray:
    """A small chest-like film (dark lungs, bright mediastinum), unique per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1
    lungs = (((np.abs(x - 0.5) - 0.2) / 0.13) ** 2 + ((y - 0.45) / 0.3) ** 2) < 1
    img = 30 + 150 * body - 90 * lungs + 60 * (np.abs(x - 0.5) < 0.06) * body
    return np.clip(img + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)


def _save(arr_or_img, path: Path, fmt: str, **kw) -> None:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, format=fmt, **kw)


def _bytes(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    _save(arr, buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int, payload: bytes = b"\x00" * 64) -> bytes:
    """A hand-made PNG (8-bit gray) declaring width×height, valid CRCs, with a tiny compressed stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(payload, 9))
            + _chunk(b"IEND", b""))


def make_dicom(path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2",
               syntax: str = "1.2.840.10008.1.2.1", sop: str = "1.2.840.10008.5.1.4.1.1.1", frames: int = 1,
               encapsulated: bytes | None = None, legacy: bool = False, **elements) -> Path:
    """Write a DICOM file with pydicom: uncompressed pixels, a given encapsulated frame, or none.

    ``legacy`` writes an implicit VR data set with no preamble and no file meta (old files).
    ``elements`` are extra data elements by keyword (WindowCenter=..., BitsStored=...).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop, generate_uid(), "CR"
    ds.PatientName, ds.PatientID = "Corpus^Test", "0"
    if pixels is not None:
        colour = pixels.ndim == 3 and frames == 1
        rows, cols = pixels.shape[:2] if colour else pixels.shape[-2:]
        ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
        ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(pixels.dtype.kind == "i")
        if ds.SamplesPerPixel == 3:
            ds.PlanarConfiguration = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    if encapsulated is not None:
        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    if legacy:
        ds.save_as(path, implicit_vr=True, little_endian=True)
    else:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        private = not ds.file_meta.TransferSyntaxUID.is_transfer_syntax
        ds.save_as(path, enforce_file_format=True, **({"implicit_vr": False, "little_endian": True} if private else {}))
    return path


# ---- the kinds ------------------------------------------------------------------------------------------

def _exif_jpeg(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return _bytes(film(seed, 128, 160), "JPEG", exif=exif.tobytes(), quality=95)


def _animated_gif(seed: int) -> bytes:
    frames = [Image.fromarray(film(seed + i)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _float_tiff(seed: int) -> bytes:
    arr = film(seed).astype(np.float32) / 7.0 - 3.0
    arr[0, :5] = [np.nan, np.inf, -np.inf, np.nan, np.nan]
    return _bytes(Image.fromarray(arr, "F"), "TIFF")


def _dicom_bytes(tmp: Path, seed: int, **kw) -> bytes:
    path = make_dicom(tmp / f".dicom-{seed}.tmp", kw.pop("pixels", film(seed)), **kw)
    data = path.read_bytes()
    path.unlink()
    return data


# name -> (file name, maker(seed, tmp) -> bytes, expected). File-system oddities are made in _special().
_FILES: dict[str, tuple[str, Callable[[int, Path], bytes], str]] = {
    "zero-byte file": ("empty.png", lambda s, t: b"", "error:empty file"),
    "PNG cut in its header": ("cut-header.png", lambda s, t: _bytes(film(s), "PNG")[:20], "error:PNG"),
    "PNG cut in its data": ("cut-half.png", lambda s, t: _cut(_bytes(film(s), "PNG"), 0.5), "error:PNG"),
    "PNG cut before IEND": ("cut-end.png", lambda s, t: _bytes(film(s), "PNG")[:-12], "ok"),
    "PNG with a bad CRC": ("bad-crc.png", lambda s, t: _flip_crc(_bytes(film(s), "PNG")), "error:PNG"),
    "JPEG cut in its header": ("cut-header.jpg", lambda s, t: _bytes(film(s), "JPEG")[:40], "error:JPEG"),
    "JPEG cut in its data": ("cut-half.jpg", lambda s, t: _cut(_bytes(film(s), "JPEG"), 0.5), "error:truncated"),
    "DICOM cut in its preamble": ("cut-preamble.dcm", lambda s, t: _dicom_bytes(t, s)[:100], "error:not an image"),
    "DICOM cut in its meta": ("cut-meta.dcm", lambda s, t: _dicom_bytes(t, s)[:200], "error:DICOM"),
    "DICOM cut in its pixels": ("cut-pixels.dcm", lambda s, t: _cut(_dicom_bytes(t, s), 0.8), "error:DICOM"),
    "random bytes named .png": ("random.png", lambda s, t: np.random.default_rng(s).bytes(5000), "error:not an image"),
    "random bytes named .dcm": ("random.dcm", lambda s, t: np.random.default_rng(s).bytes(5000), "error:not an image"),
    "text named .png": ("notes.png", lambda s, t: b"patient notes, not a film\n" * 20, "error:not an image"),
    "gzip-compressed PNG": ("film.png.gz", lambda s, t: _gzip(_bytes(film(s), "PNG")), "error:gzip"),
    "HEIC photo": ("phone.heic", lambda s, t: b"\x00\x00\x00\x18ftypheic" + bytes(200), "error:HEIC"),
    "PNG named .jpg": ("really-png.jpg", lambda s, t: _bytes(film(s), "PNG"), "ok"),
    "JPEG named .dcm": ("really-jpeg.dcm", lambda s, t: _bytes(film(s), "JPEG"), "ok"),
    "DICOM named .png": ("really-dicom.png", lambda s, t: _dicom_bytes(t, s), "ok"),
    "PNG bomb (100000×100000 declared)": ("bomb.png", lambda s, t: png_with_header(100_000, 100_000),
                                          "error:decompression bomb"),
    "PNG over the pixel limit (9000×9000)": ("big.png", lambda s, t: png_with_header(9000, 9000),
                                             "error:decompression bomb"),
    "1×1 film": ("one-pixel.png", lambda s, t: _bytes(np.full((1, 1), 7, np.uint8), "PNG"), "error:not a chest film"),
    "20000×20 film": ("strip.png", lambda s, t: _bytes(np.tile(film(s)[:20, :100], (1, 200)), "PNG"),
                      "error:not a chest film"),
    "blank film": ("blank.png", lambda s, t: _bytes(np.full((128, 128), 90, np.uint8), "PNG"), "error:blank"),
    "16-bit PNG": ("16bit.png", lambda s, t: _bytes(film(s).astype(np.uint16) * 200 + 1000, "PNG"), "ok"),
    "16-bit TIFF": ("16bit.tif", lambda s, t: _bytes(film(s).astype(np.uint16) * 16, "TIFF"), "ok"),
    "float32 TIFF with NaN and inf": ("float.tif", lambda s, t: _float_tiff(s), "ok"),
    "multi-page TIFF": ("pages.tif", lambda s, t: _pages(s), "ok"),
    "palette PNG": ("palette.png", lambda s, t: _bytes(Image.fromarray(film(s)).convert("RGB").quantize(64), "PNG"),
                    "ok"),
    "RGBA PNG": ("rgba.png", lambda s, t: _bytes(Image.fromarray(film(s)).convert("RGBA"), "PNG"), "ok"),
    "LA PNG": ("gray-alpha.png", lambda s, t: _bytes(Image.fromarray(film(s)).convert("LA"), "PNG"), "ok"),
    "CMYK JPEG": ("cmyk.jpg", lambda s, t: _bytes(Image.fromarray(film(s)).convert("CMYK"), "JPEG"), "ok"),
    "EXIF-rotated JPEG": ("rotated.jpg", lambda s, t: _exif_jpeg(s), "ok"),
    "BMP": ("film.bmp", lambda s, t: _bytes(film(s), "BMP"), "ok"),
    "still GIF": ("still.gif", lambda s, t: _bytes(film(s), "GIF"), "ok"),
    "lossless WebP": ("film.webp", lambda s, t: _bytes(film(s), "WEBP", lossless=True), "ok"),
    "JPEG 2000": ("film.jp2", lambda s, t: _bytes(film(s), "JPEG2000"), "ok"),
    "animated GIF": ("animated.gif", lambda s, t: _animated_gif(s), "error:animated"),
    "DICOM MONOCHROME1": ("mono1.dcm", lambda s, t: _dicom_bytes(t, s, photometric="MONOCHROME1"), "ok"),
    "DICOM 12-bit with a window": ("window.dcm", lambda s, t: _dicom_bytes(
        t, s, pixels=film(s).astype(np.uint16) * 16, BitsStored=12, HighBit=11, WindowCenter=2000,
        WindowWidth=3000), "ok"),
    "DICOM with a bogus window": ("bogus-window.dcm", lambda s, t: _dicom_bytes(
        t, s, WindowCenter=-5000, WindowWidth=0), "ok"),
    "DICOM legacy, no preamble or meta": ("legacy.dcm", lambda s, t: _dicom_bytes(t, s, legacy=True), "ok"),
    "DICOM without pixel data": ("no-pixels.dcm", lambda s, t: _dicom_bytes(t, s, pixels=None), "error:no pixel data"),
    "DICOM structured report": ("report.dcm", lambda s, t: _dicom_bytes(
        t, s, pixels=None, sop="1.2.840.10008.5.1.4.1.1.88.33"), "error:structured report"),
    "DICOM JPEG-LS (no installed decoder)": ("jpegls.dcm", lambda s, t: _dicom_bytes(
        t, s, syntax="1.2.840.10008.1.2.4.80", encapsulated=b"\xff\xd8\xff\xf7" + bytes(64)),
        "error:JPEG-LS"),
    "DICOM made-up transfer syntax": ("made-up-syntax.dcm", lambda s, t: _dicom_bytes(
        t, s, syntax="1.2.3.4.5.6.7", encapsulated=bytes(64)), "error:transfer syntax"),
    "DICOM deflated": ("deflated.dcm", lambda s, t: _dicom_bytes(t, s, syntax="1.2.840.10008.1.2.1.99"),
                       "error:deflated"),
    "DICOM multi-frame": ("multiframe.dcm", lambda s, t: _dicom_bytes(
        t, s, pixels=np.stack([film(s), film(s + 1), film(s + 2)]), frames=3), "error:multi-frame"),
    "DICOM declaring 60000×60000": ("dicom-bomb.dcm", lambda s, t: _dicom_bytes(
        t, s, Rows=60000, Columns=60000), "error:decompression bomb"),
    "name with spaces": ("chest film 01 (PA).png", lambda s, t: _bytes(film(s), "PNG"), "ok"),
    "unicode name": ("胸部レントゲン_é_ß.png", lambda s, t: _bytes(film(s), "PNG"), "ok"),
    "name with a newline": ("two\nlines.png", lambda s, t: _bytes(film(s), "PNG"), "ok"),
    "shell metacharacters": ("a;b&c|d$(id)`id`'q\"*?[x]!#~.png", lambda s, t: _bytes(film(s), "PNG"), "ok"),
    "HTML in the name": ("<script>alert(1)<\\script>.png", lambda s, t: _bytes(film(s), "PNG"), "ok"),
    "formula in the name": ("=cmd|' C calc'!A0.png", lambda s, t: _bytes(film(s), "PNG"), "ok"),
    "leading dash": ("-rf.png", lambda s, t: _bytes(film(s), "PNG"), "ok"),
}


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _flip_crc(data: bytes) -> bytes:
    at = 8 + 8 + 13  # signature, IHDR length+type, IHDR data: the IHDR CRC
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + 4]) + data[at + 4:]


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def _pages(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(film(seed)).save(buf, format="TIFF", save_all=True,
                                     append_images=[Image.fromarray(film(seed + 1)[::2, ::2])])
    return buf.getvalue()


SPECIAL_KINDS = ("directory named like a film", "symlink loop", "broken symlink", "named pipe (FIFO)",
                 "unreadable file (mode 000)")


def _special(root: Path, seed: int) -> list[Case]:
    """File-system oddities: a folder named like a film, links, a pipe, an unreadable file."""
    folder, loop, broken, fifo, locked = (root / n for n in ("folder-named.png", "loop.png", "broken-link.png",
                                                             "pipe.png", "unreadable.png"))
    folder.mkdir()
    loop.symlink_to("loop.png")
    broken.symlink_to("does-not-exist.png")
    os.mkfifo(fifo)
    locked.write_bytes(_bytes(film(seed), "PNG"))
    locked.chmod(0)
    # root reads any file whatever its mode: then the correct result is a film, not an error
    expected = ("error:directory", "error:symbolic link loop", "error:broken symbolic link",
                "error:not a regular file", "ok" if IS_ROOT else "error:permission denied")
    return [Case(*c) for c in zip(SPECIAL_KINDS, (folder, loop, broken, fifo, locked), expected, strict=True)]


KINDS = (*_FILES, *SPECIAL_KINDS)


def build_corpus(root: str | os.PathLike) -> list[Case]:
    """Write every kind into ``root`` (created if missing) and return the cases in a stable order."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed, (name, (file_name, make, expected)) in enumerate(_FILES.items(), start=1000):
        path = root / file_name
        path.write_bytes(make(seed, root))
        cases.append(Case(name, path, expected))
    return cases + _special(root, seed=999)
