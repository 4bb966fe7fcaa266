"""Heatmap overlays: colour map, blending, size, annotations, atomic PNG writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import edge.fsio as fsio_mod
from edge.cam import cam_peak, cam_peaks, upsample
from edge.overlay import jet, overlay, overlay_shape, png_bytes, save_overlay_png


def test_jet_runs_from_blue_through_green_to_red():
    cold, mid, hot = jet(np.array([0.0, 0.5, 1.0]))
    assert cold[2] > 0.4 and cold[0] == 0 and cold[1] == 0
    assert mid[1] == 1 and mid[0] < 1 and mid[2] < 1
    assert hot[0] > 0.4 and hot[1] == 0 and hot[2] == 0
    assert jet(np.zeros((4, 5))).shape == (4, 5, 3)


def test_overlay_shape_caps_the_longer_side():
    assert overlay_shape((3000, 2000)) == (1024, 683)
    assert overlay_shape((500, 400)) == (500, 400)
    assert overlay_shape((20000, 20)) == (1024, 1)


def test_cold_regions_show_the_plain_film_and_the_hottest_point_is_red():
    film = np.full((64, 48), 100, np.uint8)
    cam = np.zeros((64, 48), np.float32)
    cam[10, 20] = 5.0
    rgb = overlay(film, cam)
    assert rgb.shape == (64, 48, 3) and rgb.dtype == np.uint8
    assert np.all(rgb[40, 40] == 100)  # zero heat: untouched grey
    r, g, b = rgb[10, 20].astype(int)
    assert r > 100 and g < 100 and b < 100


def test_an_all_zero_cam_leaves_the_film_unchanged():
    film = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    rgb = overlay(film, np.zeros((30, 40), np.float32))
    assert np.array_equal(rgb, np.repeat(film[:, :, None], 3, axis=2))


def test_a_large_film_is_scaled_down_with_its_heatmap():
    film = np.zeros((2048, 1536), np.uint8)
    cam = upsample(np.eye(7, dtype=np.float32), overlay_shape(film.shape))
    rgb = overlay(film, cam)
    assert rgb.shape == (1024, 768, 3)
    assert rgb[50, 50].max() > 20 and rgb[50, 700].max() == 0  # the diagonal: hot top-left, cold top-right


def test_label_and_peak_marker_are_drawn():
    film = np.full((400, 300), 60, np.uint8)
    cam = np.zeros((7, 7), np.float32)
    cam[5, 1] = 1.0
    peak = cam_peak(cam, film.shape)
    plain = overlay(film, upsample(cam, film.shape))
    marked = overlay(film, upsample(cam, film.shape), label="Nodule 0.91", peak=peak)
    assert marked.shape == plain.shape
    changed = np.argwhere(np.any(marked != plain, axis=2))
    assert changed[:, 0].min() < 20  # the label band at the top
    near = np.abs(changed - [peak[1], peak[0]]).max(axis=1) <= 20
    assert near.any()  # the marker around the peak


def test_further_peaks_get_their_own_smaller_markers():
    film = np.full((448, 448), 60, np.uint8)
    cam = np.zeros((7, 7), np.float32)
    cam[4, 1], cam[4, 5] = 0.8, 1.0
    (main, other), heat = cam_peaks(cam, film.shape), upsample(cam, film.shape)
    one, both = overlay(film, heat, peak=main), overlay(film, heat, peak=main, others=[other])
    changed = np.argwhere(np.any(both != one, axis=2))
    assert len(changed) and (np.abs(changed - [other[1], other[0]]).max(axis=1) <= 20).all()  # only around it
    marks = [np.any(overlay(film, heat) != overlay(film, heat, **kw), axis=2).sum()
             for kw in ({"peak": main}, {"others": [main]})]
    assert 0 < marks[1] < marks[0]  # a secondary peak's circle is smaller than the main cross and circle


def test_overlay_refuses_a_film_that_is_not_2d_uint8():
    with pytest.raises(ValueError, match="2-D uint8"):
        overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))


def test_save_overlay_png_writes_a_png_and_leaves_no_temporary_file(tmp_path):
    film = np.full((100, 80), 128, np.uint8)
    cam = np.random.default_rng(1).uniform(0, 1, (100, 80)).astype(np.float32)
    path = save_overlay_png(tmp_path / "o.png", film, cam, label="Mass")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (80, 100)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 3), (37, 53, 3), (300, 200, 3)])
def test_png_bytes_decode_to_the_same_pixels(shape, tmp_path):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    rgb[::5] = 255 - rgb[::5]  # rows far from the row above: the Up filter must wrap modulo 256
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(rgb))
    with Image.open(path) as img:
        img.load()  # Pillow checks every chunk's CRC
        assert img.format == "PNG" and img.mode == "RGB"
        assert np.array_equal(np.asarray(img), rgb)


def test_png_bytes_refuses_what_is_not_an_rgb_picture():
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="uint8 picture"):
            png_bytes(bad)


def test_a_failed_write_keeps_the_previous_overlay_and_cleans_up(tmp_path, monkeypatch):
    film = np.full((50, 50), 128, np.uint8)
    path = save_overlay_png(tmp_path / "o.png", film, np.zeros((50, 50)))
    before = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fsio_mod.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_overlay_png(path, film, np.ones((50, 50)))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["o.png"]
