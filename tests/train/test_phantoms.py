"""The phantom generator: determinism, NIH file formats, splits, boxes and that findings are really drawn."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.phantoms import DRAWN_LABELS, film_specs, generate, main, render

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
SIZE = 256
NAME = re.compile(r"^(\d{8})_(\d{3})\.png$")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("phantoms") / "set", patients=14, seed=11, size=SIZE)


def _rows(path: Path) -> tuple[str, list[list[str]]]:
    text = path.read_text()
    return text.splitlines()[0], list(csv.reader(text.splitlines()[1:]))


def _entries(root: Path) -> dict[str, list[str]]:
    return {row[0]: row for row in _rows(root / "Data_Entry_2017.csv")[1]}


def _boxes(root: Path) -> list[tuple[str, str, float, float, float, float]]:
    return [(r[0], r[1], *map(float, r[2:6])) for r in _rows(root / "BBox_List_2017.csv")[1]]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a, b, c = (generate(tmp_path / name, patients=3, seed=seed, size=128) for name, seed in
               (("a", 5), ("b", 5), ("c", 6)))
    files_a = _files(a)
    assert files_a == _files(b)
    assert any(name.endswith(".png") for name in files_a)
    files_c = _files(c)
    shared = set(files_a) & set(files_c)
    assert any(files_a[name] != files_c[name] for name in shared if name.endswith(".png"))


def test_patients_do_not_depend_on_how_many_are_made():
    assert film_specs(3, seed=2) == [f for f in film_specs(5, seed=2) if f.patient <= 3]


def test_data_entry_has_the_nih_v2020_header_and_rows(small_set):
    header, rows = _rows(small_set / "Data_Entry_2017.csv")
    assert header == NIH_HEADER and b"\r" not in (small_set / "Data_Entry_2017.csv").read_bytes()  # LF, as v2020
    assert rows and all(len(row) == 11 for row in rows)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    for name, labels, follow, patient, age, sex, view, width, height, sx, sy in rows:
        m = NAME.match(name)
        assert m and int(m[1]) == int(patient) and int(m[2]) == int(follow)
        parts = labels.split("|")
        assert parts == ["No Finding"] or (parts == sorted(parts) and set(parts) <= set(DRAWN_LABELS))
        assert 0 < int(age) <= 95 and sex in ("M", "F") and view in ("PA", "AP")
        assert (int(width), int(height)) == (SIZE, SIZE) and float(sx) == float(sy) > 0
    patients = {int(r[3]) for r in rows}
    assert patients == set(range(1, 15))
    assert max(Counter(int(r[3]) for r in rows).values()) > 1  # follow-up films exist


def test_headers_match_the_real_nih_files(test_data):
    nih = test_data / "nih"
    assert (nih / "Data_Entry_2017_v2020.csv").open().readline().rstrip("\n") == NIH_HEADER
    assert (nih / "BBox_List_2017.csv").open().readline().rstrip("\n") == NIH_BBOX_HEADER


def test_the_project_reader_reads_the_set(small_set):
    from train.labels import read_bboxes, read_data_entry

    entries = read_data_entry(small_set / "Data_Entry_2017.csv")
    assert {e.image for e in entries} == set(_entries(small_set))
    assert len(read_bboxes(small_set / "BBox_List_2017.csv")) == len(_boxes(small_set))


def test_every_listed_image_is_an_8_bit_gray_film_of_the_size(small_set):
    first = film_specs(1, seed=11)[0]
    with Image.open(small_set / "images" / first.name) as img:
        assert np.array_equal(np.asarray(img), render(first, SIZE)[0])  # the file holds exactly the film
    names = set(_entries(small_set))
    assert {p.name for p in (small_set / "images").iterdir()} == names  # no temporary files left
    for name in names:
        with Image.open(small_set / "images" / name) as img:
            assert img.format == "PNG" and img.mode == "L" and img.size == (SIZE, SIZE)
            assert 20 < np.asarray(img).std()  # a film, not a blank


def test_split_lists_are_disjoint_by_patient_and_cover_every_image(small_set):
    train = (small_set / "train_val_list.txt").read_text().split("\n")
    test = (small_set / "test_list.txt").read_text().split("\n")
    assert train == sorted(train) and test == sorted(test) and all(train) and all(test)
    assert set(train) | set(test) == set(_entries(small_set)) and not set(train) & set(test)
    patients = [{NAME.match(n)[1] for n in part} for part in (train, test)]
    assert not patients[0] & patients[1]
    assert len(patients[1]) == round(0.2 * 14)


def test_boxes_lie_inside_the_film_and_every_finding_has_one(small_set):
    header, _ = _rows(small_set / "BBox_List_2017.csv")
    assert header == NIH_BBOX_HEADER
    boxes, entries = _boxes(small_set), _entries(small_set)
    assert boxes
    for name, label, x, y, w, h in boxes:
        assert label in entries[name][1].split("|")
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE
    boxed = {(name, label) for name, label, *_ in boxes}
    for name, row in entries.items():
        for label in row[1].split("|"):
            assert label == "No Finding" or (name, label) in boxed
    meta = json.loads((small_set / "phantoms.json").read_text())
    assert sum(len(f["lesions"]) for f in meta["films"]) == len(boxes)
    assert meta["seed"] == 11 and meta["size"] == SIZE and meta["counts"]["films"] == len(entries)


def test_label_prevalences_are_plausible():
    films = film_specs(400, seed=1)
    n = len(films)
    assert 0.30 < sum(not f.labels for f in films) / n < 0.45
    assert max(len(f.labels) for f in films) == 2
    for label in DRAWN_LABELS:
        assert 0.08 < sum(label in f.labels for f in films) / n < 0.20, label


def _one_film_per_label(seed: int = 4) -> dict:
    films = film_specs(60, seed=seed)
    return {label: next(f for f in films if f.labels == [label]) for label in DRAWN_LABELS}


@pytest.mark.parametrize("label", DRAWN_LABELS)
def test_each_finding_changes_its_box_and_little_outside(label):
    film = _one_film_per_label()[label]
    with_lesion, lesions = render(film, SIZE)
    without, no_lesions = render(replace(film, findings=()), SIZE)
    assert not no_lesions and lesions and {lab for lab, _ in lesions} == {label}
    diff = np.abs(with_lesion.astype(float) - without.astype(float))
    changed = diff > 12
    for _, (x, y, w, h) in lesions:
        box = diff[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))]
        assert box.mean() > 12  # conspicuous: > 12 gray levels on average over the box
        rows, cols = np.flatnonzero(box.max(axis=1) > 12), np.flatnonzero(box.max(axis=0) > 12)
        if label == "Cardiomegaly":  # the box is the whole heart: wider than 0.55 of the thorax
            assert w / (2 * film.anatomy["T"] * film.pose[2] * SIZE) > 0.55
        else:
            assert rows.size > 0.85 * h and cols.size > 0.85 * w  # tight: what changed spans the box
    if label != "Cardiomegaly":  # the heart moves the aortic knob too
        near = np.zeros(diff.shape, bool)
        for _, (x, y, w, h) in lesions:
            near[max(0, int(y) - 2):int(y + h) + 3, max(0, int(x) - 2):int(x + w) + 3] = True
        assert changed[near].sum() / changed.sum() > 0.99  # the box covers what was drawn


@pytest.mark.parametrize("label", ["Nodule", "Mass", "Consolidation"])
def test_focal_lesions_hold_a_cam_cell_centre(label):
    """The documented placement: a 7x7 cell centre lies inside every focal lesion's box."""
    centres = (np.arange(7) + 0.5) * SIZE / 7
    films = [f for f in film_specs(30, seed=9) if label in f.labels][:6]
    assert films
    for film in films:
        for lab, (x, y, w, h) in render(film, SIZE)[1]:
            if lab == label:
                assert any(x <= c <= x + w for c in centres) and any(y <= c <= y + h for c in centres)


def test_cli_prints_one_line_and_quiet_prints_nothing(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "a"), "--patients", "2", "--seed", "1", "--size", "96"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "films" in out
    assert main(["--out", str(tmp_path / "b"), "--patients", "2", "--seed", "1", "--size", "96", "--quiet"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("problem", ["file", "under_file", "patients", "size"])
def test_cli_refuses_bad_requests_with_one_line(tmp_path, capsys, problem):
    (tmp_path / "file").write_text("not a folder")
    out = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "sub"}.get(problem, tmp_path / "out")
    args = {"patients": ["--patients", "1"], "size": ["--size", "8"]}.get(problem, [])
    assert main(["--out", str(out), "--patients", "2", "--seed", "1", "--size", "64", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.phantoms: error: ") and err.count("\n") == 1 and "Traceback" not in err
