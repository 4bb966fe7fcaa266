"""Mutation fuzzing of the film loader: only FilmError may escape ``load_film``, and what loads is a film.

Seeds are the real films in ../shared/data (small and quick ones) and small re-encodings of a real
film in every format and DICOM flavour the loader reads. Each iteration takes one seed, applies 1-3
mutations (bit flips, interesting bytes, truncation, inserted/deleted/repeated ranges, splices from
another seed, PNG chunk shuffles with valid CRCs, PNG IHDR / JPEG SOF / TIFF header field edits, DICOM
element edits through pydicom) and loads the result. Iteration i uses ``random.Random(f"{seed}-{i}")``,
so a finding replays exactly. FUZZ_ITERATIONS (default 3000, ``make fuzz`` 20000) and FUZZ_SEED (0) set
the run; counts of outcomes are printed (see them with ``pytest -s``).
"""

from __future__ import annotations

import io
import os
import random
import re
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.decode import MAX_ASPECT, MIN_SIDE
from edge.errors import FilmError
from edge.films import load_film
from tests.edge.corpus import make_dicom

ITERATIONS = int(os.environ.get("FUZZ_ITERATIONS", "3000"))
SEED = int(os.environ.get("FUZZ_SEED", "0"))
REAL_FILES = ("other-cxr/montgomery-derived/MCUCXR_0001_0.png", "other-cxr/nih-512px/00027426_000.png",
              "other-cxr/tbx11k/imgs/health/h0001.png", "nih-images/00000004_000.png",
              "dicom/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm", "dicom/CR-MONO1-10-chest.dcm",
              "dicom/1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm")
REAL_SHARE = 0.15  # of the iterations; the rest mutate the small re-encodings (faster, reach more code)
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x40, 0x10)


# ---- seeds --------------------------------------------------------------------------------------------------

def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _image_seeds(gray: np.ndarray) -> dict[str, bytes]:
    img, exif = Image.fromarray(gray), Image.Exif()
    exif[0x0112] = 8
    return {
        "png-L": _enc(img, "PNG"), "png-16": _enc(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
        "png-RGBA": _enc(img.convert("RGBA"), "PNG"), "png-P": _enc(img.convert("RGB").quantize(16), "PNG"),
        "jpeg": _enc(img, "JPEG"), "jpeg-progressive": _enc(img, "JPEG", progressive=True),
        "jpeg-CMYK": _enc(img.convert("CMYK"), "JPEG"), "jpeg-exif": _enc(img, "JPEG", exif=exif.tobytes()),
        "tiff-8": _enc(img, "TIFF"), "tiff-16-lzw": _enc(Image.fromarray(gray.astype(np.uint16)), "TIFF",
                                                         compression="tiff_lzw"),
        "tiff-float": _enc(Image.fromarray(gray.astype(np.float32)), "TIFF"), "gif": _enc(img, "GIF"),
        "bmp": _enc(img, "BMP"), "webp": _enc(img, "WEBP"), "jp2": _enc(img, "JPEG2000"),
        "j2k": _enc(img, "JPEG2000", no_jp2=True),
    }


def _dicom_seeds(gray: np.ndarray, tmp: Path) -> dict[str, bytes]:
    from pydicom.uid import JPEG2000, JPEGBaseline8Bit, RLELossless

    img = Image.fromarray(gray)
    kinds: dict[str, dict] = {
        "dcm-mono2": {}, "dcm-legacy": {"legacy": True},
        "dcm-mono1-window": {"pixels": gray.astype(np.uint16) * 16, "photometric": "MONOCHROME1", "BitsStored": 12,
                             "HighBit": 11, "WindowCenter": 2000, "WindowWidth": 3000, "RescaleSlope": 1,
                             "RescaleIntercept": -10},
        "dcm-rgb": {"pixels": np.stack([gray] * 3, axis=-1), "photometric": "RGB"},
        "dcm-jpeg": {"syntax": JPEGBaseline8Bit, "encapsulated": _enc(img, "JPEG")},
        "dcm-j2k": {"syntax": JPEG2000, "encapsulated": _enc(img, "JPEG2000", no_jp2=True)},
    }
    seeds = {}
    for name, kw in kinds.items():
        seeds[name] = make_dicom(tmp / f"{name}.dcm", kw.pop("pixels", gray), **kw).read_bytes()
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(seeds["dcm-mono2"]))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    seeds["dcm-rle"] = buf.getvalue()
    return seeds


@pytest.fixture(scope="module")
def seeds(test_data: Path, tmp_path_factory) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(real files, small re-encodings of a real film): name -> bytes."""
    real = {name: (test_data / name).read_bytes() for name in REAL_FILES}
    with Image.open(test_data / "nih-images" / "00000001_000.png") as img:
        gray = np.asarray(img.convert("L").resize((72, 88), Image.Resampling.BILINEAR))
    small = _image_seeds(gray) | _dicom_seeds(gray, tmp_path_factory.mktemp("fuzz-seeds"))
    return real, small


# ---- mutations ----------------------------------------------------------------------------------------------

def _flip_bits(d: bytearray, r: random.Random, _: bytes) -> None:
    for _i in range(r.randint(1, 8)):
        d[r.randrange(len(d))] ^= 1 << r.randrange(8)


def _interesting_bytes(d: bytearray, r: random.Random, _: bytes) -> None:
    for _i in range(r.randint(1, 4)):
        at = r.randrange(min(len(d), 600)) if r.random() < 0.7 else r.randrange(len(d))  # headers mostly
        d[at] = r.choice(INTERESTING)


def _truncate(d: bytearray, r: random.Random, _: bytes) -> None:
    del d[r.randrange(1, len(d)) if len(d) > 1 else 0:]


def _delete_range(d: bytearray, r: random.Random, _: bytes) -> None:
    at = r.randrange(len(d))
    del d[at:at + r.randint(1, 64)]


def _insert_or_repeat(d: bytearray, r: random.Random, _: bytes) -> None:
    at, n = r.randrange(len(d)), r.randint(1, 64)
    d[at:at] = d[at:at + n] if r.random() < 0.5 else bytes(r.getrandbits(8) for _i in range(n))


def _splice(d: bytearray, r: random.Random, other: bytes) -> None:
    at, src = r.randrange(len(d)), r.randrange(len(other))
    d[at:at + r.randint(1, 256)] = other[src:src + r.randint(1, 256)]


def _png_chunks(d: bytes) -> list[bytes] | None:
    if not d.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    chunks, at = [], 8
    while at + 12 <= len(d):
        n = struct.unpack_from(">I", d, at)[0]
        chunks.append(d[at + 4:at + 8] + d[at + 8:at + 8 + n])  # type + data
        at += 12 + n
    return chunks


def _png_join(chunks: list[bytes]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c))
                                           for c in chunks)


def _png_structure(d: bytearray, r: random.Random, _: bytes) -> None:
    """PNG chunk shuffles and IHDR field edits, written back with valid CRCs so they reach the decoder."""
    chunks = _png_chunks(bytes(d))
    if not chunks:
        return _flip_bits(d, r, _)
    i = r.randrange(len(chunks))
    op = r.choice(("dup", "drop", "swap", "ihdr", "ihdr", "mutate"))
    if op == "dup":
        chunks.insert(i, chunks[i])
    elif op == "drop":
        chunks.pop(i)
    elif op == "swap":
        j = r.randrange(len(chunks))
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif op == "ihdr" and chunks[0][:4] == b"IHDR" and len(chunks[0]) >= 17:
        fields = list(struct.unpack_from(">IIBBBBB", chunks[0], 4))
        k = r.randrange(7)
        fields[k] = r.choice((0, 1, 63, 64, 65, 2**16, 2**31 - 1, fields[k] * 2)) if k < 2 else r.randrange(256)
        if k >= 2 and r.random() < 0.7:
            fields[k] = r.choice({2: (1, 2, 4, 8, 16), 3: (0, 2, 3, 4, 6)}.get(k, (0, 1)))
        chunks[0] = b"IHDR" + struct.pack(">IIBBBBB", *(min(f, 2**32 - 1) for f in fields))
    else:
        c = bytearray(chunks[i])
        if len(c) > 4:
            c[r.randrange(4, len(c))] = r.getrandbits(8)
        chunks[i] = bytes(c)
    d[:] = _png_join(chunks)


def _jpeg_sof(d: bytearray, r: random.Random, _: bytes) -> None:
    """Edit the frame header (precision, height, width, components) of a JPEG, wherever it is."""
    at = next((i for i in range(len(d) - 9) if d[i] == 0xFF and d[i + 1] in (0xC0, 0xC1, 0xC2)), None)
    if at is None:
        return _flip_bits(d, r, _)
    field = r.choice(((4, "B"), (5, ">H"), (7, ">H"), (9, "B")))
    value = r.choice((0, 1, 3, 12, 16, 63, 64, 255, 4096, 65535))
    struct.pack_into(field[1], d, at + field[0], value & (0xFF if field[1] == "B" else 0xFFFF))


def _tiff_header(d: bytearray, r: random.Random, _: bytes) -> None:
    """Overwrite a 2- or 4-byte value in the TIFF header/IFD area with a boundary value."""
    if d[:2] not in (b"II", b"MM") or len(d) < 16:
        return _flip_bits(d, r, _)
    end, at = "<" if d[:2] == b"II" else ">", r.randrange(2, min(len(d) - 4, 300))
    if r.random() < 0.5:
        struct.pack_into(end + "H", d, at, r.choice((0, 1, 2, 3, 4, 8, 16, 32, 262, 0xFFFF)))
    else:
        struct.pack_into(end + "I", d, at, r.choice((0, 1, 8, len(d), len(d) + 1, 2**31, 2**32 - 1)))


_DICOM_EDITS = {
    "Rows": (0, 1, 63, 64, 65535), "Columns": (0, 1, 64, 40000), "BitsAllocated": (0, 1, 8, 12, 16, 32, 64),
    "BitsStored": (0, 1, 7, 8, 12, 16, 17, 33), "HighBit": (0, 7, 15, 31), "PixelRepresentation": (0, 1, 2),
    "SamplesPerPixel": (0, 1, 2, 3, 4), "PhotometricInterpretation": ("MONOCHROME1", "RGB", "PALETTE COLOR",
                                                                      "YBR_FULL_422", "", "BOGUS"),
    "NumberOfFrames": ("0", "1", "2", "-1", "x"), "WindowCenter": ("0", "-1e308", "nan", "1\\2"),
    "WindowWidth": ("0", "-5", "1e-300", "inf"), "RescaleSlope": ("0", "-1", "nan", "1e308"),
    "RescaleIntercept": ("nan", "-1e308", "7"), "PlanarConfiguration": (0, 1, 2),
    "VOILUTFunction": ("SIGMOID", "LINEAR_EXACT", "BOGUS"),
}


def _dicom_elements(d: bytearray, r: random.Random, _: bytes) -> None:
    """Set an image-pixel element to an awkward value through pydicom (structure-aware)."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(bytes(d)), force=True)
            key = r.choice(sorted(_DICOM_EDITS))
            setattr(ds, key, r.choice(_DICOM_EDITS[key]))
            if r.random() < 0.2:
                ds.file_meta.TransferSyntaxUID = r.choice(("1.2.840.10008.1.2", "1.2.840.10008.1.2.2",
                                                           "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"))
            buf = io.BytesIO()
            ds.save_as(buf, implicit_vr=False, little_endian=True)
    except Exception:  # noqa: BLE001 - pydicom would not write this variant: fall back to raw bytes
        return _flip_bits(d, r, _)
    d[:] = buf.getvalue()


_GENERIC: tuple[Callable, ...] = (_flip_bits, _interesting_bytes, _truncate, _delete_range, _insert_or_repeat, _splice)
_BY_KIND: dict[str, tuple[Callable, ...]] = {"png": (_png_structure,), "jpe": (_jpeg_sof,), "tif": (_tiff_header,),
                                             "dcm": (_dicom_elements,), "dic": (_dicom_elements,)}


def _mutate(name: str, data: bytes, other: bytes, r: random.Random) -> tuple[bytes, list[str]]:
    d, used = bytearray(data), []
    special = next((v for k, v in _BY_KIND.items() if name.startswith(k) or name.endswith(k[:3])), ())
    for _i in range(r.choice((1, 1, 2, 3))):
        op = r.choice(special) if special and r.random() < 0.4 else r.choice(_GENERIC)
        if d:
            op(d, r, other)
        used.append(op.__name__.strip("_"))
    return bytes(d), used


# ---- the run ------------------------------------------------------------------------------------------------

def _check_film(out: np.ndarray) -> str | None:
    if out.ndim != 2 or out.dtype != np.uint8:
        return f"bad film {out.dtype} {out.shape}"
    h, w = out.shape
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_ASPECT * min(h, w) or out.min() == out.max():
        return f"film breaks the contract: {w}×{h}, min {out.min()} max {out.max()}"
    return None


def _outcome(problem: str) -> str:
    """The kind of a FilmError, with the parser's exception type when a parser raised it."""
    caught = re.search(r"\((\w+): ", problem) if problem.startswith("damaged or unsupported") else None
    kind = problem.split(":")[0].split(" (")[0][:40]
    return f"FilmError: {kind}" + (f" <- {caught.group(1)}" if caught else "")


def test_only_film_errors_escape(seeds, tmp_path):
    real, small = seeds
    pool = list(real.items()) + list(small.items())
    target, outcomes, findings = tmp_path / "case", Counter(), {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom and Pillow warn a lot about damaged files
        for i in range(ITERATIONS):
            r = random.Random(f"{SEED}-{i}")
            name, data = r.choice(list(real.items())) if r.random() < REAL_SHARE else r.choice(list(small.items()))
            name = name.rsplit(".", 1)[-1] if "/" in name else name
            mutated, used = _mutate(name, data, r.choice(pool)[1], r)
            target.write_bytes(mutated)
            try:
                problem = _check_film(load_film(target))
                outcomes["loaded"] += 1
            except FilmError as err:
                problem = None
                outcomes[_outcome(err.problem)] += 1
            except Exception as exc:  # noqa: BLE001 - exactly what this test hunts
                problem = f"{type(exc).__name__}: {str(exc)[:120]}"
            if problem:
                outcomes["FINDING"] += 1
                key = problem.split(":")[0]
                if key not in findings:
                    keep = tmp_path / f"finding-{i}.bin"
                    keep.write_bytes(mutated)
                    findings[key] = f"iteration {i} ({name}; {', '.join(used)}): {problem} -> {keep}"
    print(f"\nfuzz: {ITERATIONS} iterations, seed {SEED}, {len(small)} small + {len(real)} real seeds")
    for outcome, n in outcomes.most_common():
        print(f"  {n:6d}  {outcome}")
    assert not findings, "\n".join(findings.values())
    assert outcomes["loaded"] > 0 and sum(n for k, n in outcomes.items() if k.startswith("FilmError")) > 0
