"""edge.films / edge.dicom: every real file in ../shared/data, and each format and rule on tiny made-up films."""

from __future__ import annotations

import errno
import io
import os
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edge.films as films
from edge.decode import to_uint8
from edge.errors import FilmError
from edge.films import is_film_candidate, load_film, sniff
from edge.preprocess import preprocess_gray
from tests.edge.corpus import film, make_dicom, png_with_header

DATA_DIRS = ("nih-images", "dicom", "other-cxr")
TWIN = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
GENUINE_DICOM = (TWIN, "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm",
                 "CR-MONO1-10-chest.dcm", "RG1_J2KI.dcm")
RGBA_NIH = ("00000004_000", "00000100_000", "00001369_000", "00002578_000", "00005224_000")


def _load(path: Path) -> np.ndarray | FilmError:
    try:
        return load_film(path)
    except FilmError as err:
        return err


@pytest.fixture(scope="module")
def real(test_data: Path) -> dict[Path, np.ndarray | FilmError]:
    """Every file under the three real-data folders, loaded once (a film or its FilmError)."""
    paths = sorted(p for d in DATA_DIRS for p in (test_data / d).rglob("*") if p.is_file())
    assert len(paths) >= 59
    return {p: _load(p) for p in paths}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def _central_minus_lungs(f: np.ndarray) -> float:
    """Mediastinum/spine column minus the lung fields: positive when bones are bright."""
    h, w = f.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    centre = f[rows, int(0.45 * w):int(0.55 * w)].mean()
    lungs = (f[rows, int(0.2 * w):int(0.35 * w)].mean() + f[rows, int(0.65 * w):int(0.8 * w)].mean()) / 2
    return float(centre - lungs)


# ---- real data --------------------------------------------------------------------------------------------

def test_every_real_file_loads_or_fails_naming_it(real):
    for path, out in real.items():
        if isinstance(out, FilmError):
            assert out.path == str(path) and str(path) in str(out)
            assert not is_film_candidate(path), f"a real film failed: {out}"
            continue
        assert out.ndim == 2 and out.dtype == np.uint8, path
        assert 256 <= min(out.shape) and max(out.shape) <= 2048, (path, out.shape)
        assert out.std() > 20, path  # a real film, not a blank or a flat wash
    loaded = [p for p, out in real.items() if not isinstance(out, FilmError)]
    assert len(loaded) == 46 + 5 + 7
    assert [p.name for p, out in real.items() if isinstance(out, FilmError)] == ["TBX11K_train.json"]


def test_formats_sniffed_from_content(test_data):
    d = test_data
    assert {sniff(p) for p in (d / "nih-images").glob("*.png")} == {"png"}
    assert {sniff(p) for p in (d / "dicom").glob("*.dcm")} == {"dicom"}
    assert sniff(d / "dicom" / "CR-MONO1-10-chest.dcm") == "dicom"  # legacy: no preamble, no meta
    assert (d / "dicom" / "CR-MONO1-10-chest.dcm").read_bytes()[128:132] != b"DICM"
    for p in (d / "other-cxr" / "montgomery-derived").glob("*.png"):
        assert sniff(p) == "jpeg" and sniff(p.read_bytes()) == "jpeg"
    assert sniff(d / "other-cxr" / "tbx11k" / "annotations" / "json" / "TBX11K_train.json") is None


def test_jpeg_named_png_reads_as_jpeg(test_data):
    path = test_data / "other-cxr" / "montgomery-derived" / "MCUCXR_0001_0.png"
    with Image.open(path) as img:
        assert img.format == "JPEG"
        expected = np.asarray(img.convert("L"))
    assert np.array_equal(load_film(path), expected)


def test_rgba_nih_films_equal_their_luminance(real, test_data):
    for name in RGBA_NIH:
        path = test_data / "nih-images" / f"{name}.png"
        with Image.open(path) as img:
            assert img.mode == "RGBA"
            rgba = np.asarray(img)
        assert np.array_equal(real[path], rgba[..., 0])  # R=G=B: the luminance is the gray itself


def test_monochrome1_comes_out_bone_white(real, test_data):
    nih = [f for p, f in real.items() if p.parent.name == "nih-images"]
    template = np.mean([preprocess_gray(f, 64).astype(float) for f in nih], axis=0)
    for name in GENUINE_DICOM:  # two MONOCHROME1 (CR-MONO1, RG1_J2KI) and two MONOCHROME2
        f = real[test_data / "dicom" / name]
        assert _corr(preprocess_gray(f, 64), template) > 0.5, name
        assert _central_minus_lungs(f) > 40, name
    fake = real[test_data / "dicom" / "Fake_MONOHR1.dcm"]
    assert _corr(preprocess_gray(fake, 64), template) < -0.5
    assert _central_minus_lungs(fake) < -40


def test_fake_monochrome1_is_its_twin_inverted(real, test_data):
    fake, twin = real[test_data / "dicom" / "Fake_MONOHR1.dcm"], real[test_data / "dicom" / TWIN]
    assert _corr(fake, twin) < -0.99
    assert np.array_equal(fake, 255 - twin)


def test_windowed_15_bit_j2k_uses_the_whole_range(real, test_data):
    f = real[test_data / "dicom" / "RG1_J2KI.dcm"]
    assert f.shape == (1955, 1841) and f.min() == 0 and f.max() == 255


# ---- made-up films: formats -----------------------------------------------------------------------------

def _write(tmp_path: Path, name: str, img: Image.Image | np.ndarray, fmt: str, **kw) -> Path:
    path = tmp_path / name
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(path, format=fmt, **kw)
    return path


def test_16_bit_png_is_scaled_by_min_max(tmp_path):
    raw = film(1).astype(np.uint16) * 200 + 1000
    out = load_film(_write(tmp_path, "a.png", raw, "PNG"))
    lo, hi = int(raw.min()), int(raw.max())
    assert np.array_equal(out, np.round((raw - lo) * 255.0 / (hi - lo)).astype(np.uint8))


def test_float_tiff_scaled_by_finite_min_max(tmp_path):
    raw = film(2).astype(np.float32) / 10 - 4
    raw[0, :3] = [np.nan, np.inf, -np.inf]
    out = load_film(_write(tmp_path, "f.tif", Image.fromarray(raw, "F"), "TIFF"))
    assert out.min() == 0 and out.max() == 255 and list(out[0, :3]) == [out[1:].min(), 255, 0]
    assert _corr(out[1:], film(2)[1:]) > 0.999


def test_16_bit_tiff_white_is_zero_is_inverted(tmp_path):
    raw = film(3).astype(np.uint16) * 16
    plain = load_film(_write(tmp_path, "p.tif", raw, "TIFF"))
    inverted = load_film(_write(tmp_path, "w.tif", raw, "TIFF", tiffinfo={262: 0}))
    assert np.array_equal(inverted, 255 - plain)


def test_exif_orientation_is_applied(tmp_path):
    raw = np.full((128, 192), 30, np.uint8)
    raw[:40, :40] = 250  # a bright block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: the block ends top-right
    out = load_film(_write(tmp_path, "r.jpg", raw, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (192, 128)
    assert out[:40, -40:].mean() > 200 and out[:40, :40].mean() < 60


def test_cmyk_jpeg_reads_as_gray_the_right_way_round(tmp_path):
    raw = film(4)
    path = _write(tmp_path, "c.jpg", Image.fromarray(raw).convert("CMYK"), "JPEG", quality=95)
    out = load_film(path)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
    assert _corr(out, raw) > 0.98


def test_palette_la_and_bilevel(tmp_path):
    raw = film(5)
    pal = Image.fromarray(raw).convert("RGB").quantize(32)
    lum = np.asarray(pal.convert("RGB").convert("L")).astype(int)
    assert np.abs(load_film(_write(tmp_path, "p.png", pal, "PNG")).astype(int) - lum).max() <= 1
    assert np.array_equal(load_film(_write(tmp_path, "la.png", Image.fromarray(raw).convert("LA"), "PNG")), raw)
    bilevel = load_film(_write(tmp_path, "b.png", Image.fromarray(raw > 100), "PNG"))
    assert set(np.unique(bilevel)) == {0, 255}


def test_other_still_formats_read(tmp_path):
    raw = film(6)
    for name, fmt, kw in (("a.bmp", "BMP", {}), ("a.gif", "GIF", {}), ("a.webp", "WEBP", {"lossless": True}),
                          ("a.jp2", "JPEG2000", {})):
        out = load_film(_write(tmp_path, name, raw, fmt, **kw))
        assert out.shape == raw.shape and _corr(out, raw) > 0.99, name


def test_animated_gif_refused_and_multipage_tiff_first_page(tmp_path):
    a, b = Image.fromarray(film(7)), Image.fromarray(film(8))
    gif = _write(tmp_path, "a.gif", a, "GIF", save_all=True, append_images=[b])
    with pytest.raises(FilmError, match="animated image"):
        load_film(gif)
    tif = _write(tmp_path, "t.tif", a, "TIFF", save_all=True, append_images=[b])
    assert np.array_equal(load_film(tif), film(7))


def test_shape_and_size_limits(tmp_path):
    with pytest.raises(FilmError, match="too small"):
        load_film(_write(tmp_path, "s.png", film(9, 40, 40), "PNG"))
    with pytest.raises(FilmError, match="aspect ratio over 4:1"):
        load_film(_write(tmp_path, "l.png", film(9, 64, 300), "PNG"))
    ok = _write(tmp_path, "ok.png", film(9), "PNG")
    with pytest.raises(FilmError, match="possible decompression bomb"):
        load_film(ok, max_pixels=100 * 100)
    with pytest.raises(FilmError, match="file too large"):
        load_film(ok, max_bytes=100)
    with pytest.raises(FilmError, match="blank image"):
        load_film(_write(tmp_path, "blank.png", np.full((80, 80), 3, np.uint8), "PNG"))


def test_bomb_refused_without_global_side_effects(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_header(50_000, 50_000))
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(FilmError, match="decompression bomb"):
            load_film(path)
        path.write_bytes(png_with_header(10_000, 10_000))  # over Pillow's warning size, under its error size
        with pytest.raises(FilmError, match="decompression bomb"):
            load_film(path)
    assert not seen
    assert Image.MAX_IMAGE_PIXELS == limit and warnings.filters == filters


def test_to_uint8():
    assert np.array_equal(to_uint8(np.array([[0, 1000, 4000]], np.uint16)), [[0, 64, 255]])
    assert np.array_equal(to_uint8(np.array([[-5, 0, 5]], np.int32)), [[0, 128, 255]])
    assert np.array_equal(to_uint8(np.array([[-2**40, 0, 2**40]], np.int64)), [[0, 128, 255]])
    assert np.array_equal(to_uint8(np.array([[np.nan, 1.0, 3.0, np.inf]])), [[0, 0, 255, 255]])
    assert not to_uint8(np.full((2, 2), 7, np.uint16)).any()
    assert not to_uint8(np.full((2, 2), np.nan)).any()


# ---- made-up DICOM ----------------------------------------------------------------------------------------

def _dcm(tmp_path: Path, name: str, pixels: np.ndarray | None, **kw) -> Path:
    return make_dicom(tmp_path / name, pixels, **kw)


def test_dicom_window_applied_and_bogus_windows_ignored(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (128, 1))  # 128×256, 0..4080
    plain = load_film(_dcm(tmp_path, "p.dcm", ramp, BitsStored=12, HighBit=11))
    assert np.array_equal(plain, to_uint8(ramp))
    win = load_film(_dcm(tmp_path, "w.dcm", ramp, BitsStored=12, HighBit=11, WindowCenter=2048, WindowWidth=1024))
    assert (win[:, ramp[0] < 1530] == 0).all() and (win[:, ramp[0] > 2570] == 255).all()
    for center, width in ((2048, 0), (-9000, 100), (90000, 10)):  # width < 1; windows that miss every pixel
        out = load_film(_dcm(tmp_path, "b.dcm", ramp, BitsStored=12, HighBit=11, WindowCenter=center,
                             WindowWidth=width))
        assert np.array_equal(out, plain), (center, width)


def test_dicom_bits_stored_masks_high_bits(tmp_path):
    raw = film(10).astype(np.uint16) * 16
    clean = load_film(_dcm(tmp_path, "c.dcm", raw, BitsStored=12, HighBit=11))
    dirty = load_film(_dcm(tmp_path, "d.dcm", raw | 0xF000, BitsStored=12, HighBit=11))  # overlay bits set
    assert np.array_equal(clean, dirty)


def test_dicom_rescale_and_monochrome1(tmp_path):
    raw = film(11)
    mono2 = load_film(_dcm(tmp_path, "m2.dcm", raw))
    assert np.array_equal(mono2, to_uint8(raw))
    assert np.array_equal(load_film(_dcm(tmp_path, "m1.dcm", raw, photometric="MONOCHROME1")), 255 - mono2)
    negative = load_film(_dcm(tmp_path, "n.dcm", raw, RescaleSlope=-2, RescaleIntercept=100))
    stretched = to_uint8(raw.astype(np.int16))  # rescaled values are no longer 8-bit: min/max applies
    assert np.abs(negative.astype(int) - (255 - stretched)).max() <= 1


def test_dicom_rgb_to_luminance_and_legacy_file(tmp_path):
    raw = film(12)
    rgb = np.stack([raw, raw // 2, 255 - raw], axis=-1)
    out = load_film(_dcm(tmp_path, "rgb.dcm", rgb, photometric="RGB"))
    expected = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    assert np.abs(out.astype(int) - expected).max() <= 1
    legacy = _dcm(tmp_path, "legacy.dcm", raw, legacy=True)
    assert legacy.read_bytes()[128:132] != b"DICM" and sniff(legacy) == "dicom"
    assert np.array_equal(load_film(legacy), load_film(_dcm(tmp_path, "meta.dcm", raw)))


def test_dicom_without_pydicom_gives_an_install_hint(tmp_path, monkeypatch):
    path = _dcm(tmp_path, "a.dcm", film(13))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(FilmError, match="pip install pydicom"):
        load_film(path)


# ---- paths, errors, sniffing ------------------------------------------------------------------------------

def test_open_errors_are_film_errors(tmp_path, monkeypatch):
    path = _write(tmp_path, "a.png", film(14), "PNG")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(films.os, "open", denied)  # root reads anything, so simulate the refusal
    with pytest.raises(FilmError, match="permission denied") as info:
        load_film(path)
    assert info.value.path == str(path)


def test_parser_exceptions_become_film_errors(tmp_path, monkeypatch):
    path = _write(tmp_path, "a.png", film(15), "PNG")

    def broken(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(films.Image, "open", broken)
    with pytest.raises(FilmError, match=r"damaged or unsupported PNG image \(error: unpack") as info:
        load_film(path)
    assert str(path) in str(info.value)


def test_film_candidates(tmp_path):
    png = _write(tmp_path, "a.png", film(16), "PNG")
    (tmp_path / "notes.png").write_text("not a film")
    (tmp_path / "dir.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")  # must not block
    assert [is_film_candidate(tmp_path / n) for n in ("a.png", "notes.png", "dir.png", "pipe.png", "gone.png")] == \
        [True, False, False, False, False]
    assert sniff(png) == "png" and sniff(tmp_path / "pipe.png") is None


@pytest.mark.parametrize(("head", "fmt"), [
    (b"\x89PNG\r\n\x1a\n" + bytes(8), "png"), (b"\xff\xd8\xff\xe0", "jpeg"), (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"), (b"GIF89a", "gif"), (b"BM" + bytes(12) + struct.pack("<I", 40), "bmp"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"), (bytes(128) + b"DICM", "dicom"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"), (b"\x00\x00\x00\x18ftypheic", "heic"),
    (b"%PDF-1.7", "pdf"), (b"BMI report", None), (b"", None), (bytes(600), None),
])
def test_sniff_bytes(head, fmt):
    assert sniff(head) == fmt


def test_image_io_buffer_sniff():
    buf = io.BytesIO()
    Image.fromarray(film(17)).save(buf, format="PNG")
    assert sniff(buf.getvalue()) == "png" and sniff(bytearray(buf.getvalue())) == "png"


def test_dicom_element_pydicom_cannot_convert_is_a_film_error(tmp_path):
    """Fuzz finding: pydicom converts elements lazily, so reading the SOP class (or any element) can raise."""
    for tag_vr, name in ((b"\x08\x00\x16\x00UI", "sop.dcm"), (b"\x28\x00\x04\x00CS", "photometric.dcm")):
        path = _dcm(tmp_path, name, film(18) if name == "photometric.dcm" else None)
        data = path.read_bytes()
        assert data.count(tag_vr) == 1
        path.write_bytes(data.replace(tag_vr, tag_vr[:4] + b"UH"))  # an unknown value representation
        with pytest.raises(FilmError, match=r"damaged or unsupported DICOM .*Unknown Value Representation"):
            load_film(path)


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_dicom_cut_inside_encapsulated_pixels_names_the_real_problem(tmp_path):
    """Fuzz finding: pydicom formats its EOF warning with the file object's name; an fd number raised TypeError."""
    jpeg = io.BytesIO()
    Image.fromarray(film(19)).save(jpeg, format="JPEG")
    path = _dcm(tmp_path, "cut.dcm", film(19), syntax="1.2.840.10008.1.2.4.50", encapsulated=jpeg.getvalue())
    path.write_bytes(path.read_bytes()[:-20])  # no sequence delimiter, last fragment short
    with pytest.raises(FilmError, match="damaged DICOM file") as info:
        load_film(path)
    assert "TypeError" not in info.value.problem


def test_dicom_endless_file_meta_refused(tmp_path):
    """Past an endless meta group pydicom could inflate a deflated data set unchecked: refused up front."""
    element = b"\x02\x00\x02\x00UI" + struct.pack("<H", 4) + b"1.2\x00"
    path = tmp_path / "meta.dcm"
    path.write_bytes(bytes(128) + b"DICM" + element * 100 + b"\x08\x00\x16\x00UI\x02\x001\x00")
    with pytest.raises(FilmError, match="file meta elements"):
        load_film(path)
