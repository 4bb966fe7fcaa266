"""Calibration film selection and loading (convert.calibrate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convert.calibrate import MIN_FILMS, load_films, pick_covering, split_films
from convert.errors import ConvertError
from train.labels import LABELS


def test_pick_covering_takes_every_present_label_even_when_rare():
    rng = np.random.default_rng(3)
    y = (rng.random((500, 6)) < [0.3, 0.2, 0.1, 0.05, 0.0, 0.0]).astype(int)
    y[:, 5] = 0
    y[123, 5] = 1  # one film alone carries label 5
    picked = pick_covering(y, 8, seed=0)
    assert len(picked) == len(set(picked)) == 8
    assert 123 in picked
    covered = y[picked].any(axis=0)
    assert covered[[0, 1, 2, 3, 5]].all()


def test_pick_covering_is_deterministic_and_capped():
    y = np.eye(4, dtype=int).repeat(3, axis=0)
    assert pick_covering(y, 4, seed=5) == pick_covering(y, 4, seed=5)
    assert pick_covering(y, 100) == list(range(12))


def test_load_films_names_every_unreadable_film(tmp_path: Path, test_data: Path):
    good = next((test_data / "nih-images").glob("*.png"))
    bad1, bad2 = tmp_path / "empty.png", tmp_path / "text.png"
    bad1.write_bytes(b"")
    bad2.write_text("not an image")
    with pytest.raises(ConvertError) as err:
        load_films([good, bad1, bad2])
    assert "2 calibration/held-out film(s)" in str(err.value)
    assert "empty.png" in str(err.value) and "text.png" in str(err.value)


def test_load_films_preprocesses_like_edge(test_data: Path):
    from edge.films import load_film
    from edge.preprocess import preprocess

    path = next((test_data / "nih-images").glob("*.png"))
    images = load_films([path])
    assert images.shape == (1, 224, 224, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], preprocess(load_film(path)))


def _meta(val_fraction: float = 0.5) -> dict:
    return {"labels": list(LABELS), "data": {"task": "all", "val_fraction": val_fraction, "seed": 0,
                                             "split": "official"}}


def test_split_films_uses_validation_for_calibration_and_test_for_heldout(nih_small: Path):
    test_names = set((nih_small / "test_list.txt").read_text().split())
    cal, held = split_films(nih_small, _meta(), n_calibration=10, n_heldout=12)
    assert len(cal.names) == 10 and len(held.names) == 12
    assert not set(cal.names) & test_names
    assert set(held.names) <= test_names
    assert cal.images.shape == (10, 224, 224, 3)
    assert cal.targets.shape == (10, len(LABELS))


def test_split_films_refuses_too_few_films(nih_small: Path):
    with pytest.raises(ConvertError, match=f"too few films: the validation split has .* at least {MIN_FILMS}"):
        split_films(nih_small, _meta(val_fraction=0.05), n_calibration=300, n_heldout=10)
    with pytest.raises(ConvertError, match="--calibration 3: too few calibration films"):
        split_films(nih_small, _meta(), n_calibration=3, n_heldout=10)


def test_split_films_refuses_another_label_set(nih_small: Path):
    meta = {**_meta(), "labels": ["Cat", "Dog"]}
    with pytest.raises(ConvertError, match="another label set"):
        split_films(nih_small, meta, n_calibration=10, n_heldout=10)
