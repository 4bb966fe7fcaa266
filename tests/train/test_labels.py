"""train.labels on the real NIH metadata (both Data_Entry versions, BBox_List) and on small broken files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.labels import LABELS, NO_FINDING, DataError, multi_hot, parse_age, read_bboxes, read_data_entry

V2020_COUNTS = {"Atelectasis": 11559, "Cardiomegaly": 2776, "Consolidation": 4667, "Edema": 2303, "Effusion": 13317,
                "Emphysema": 2516, "Fibrosis": 1686, "Hernia": 227, "Infiltration": 19894, "Mass": 5782,
                "Nodule": 6331, "Pleural_Thickening": 3385, "Pneumonia": 1431, "Pneumothorax": 5302}
V2017_COUNTS = {"Atelectasis": 11535, "Cardiomegaly": 2772, "Consolidation": 4667, "Edema": 2303, "Effusion": 13307,
                "Emphysema": 2516, "Fibrosis": 1686, "Hernia": 227, "Infiltration": 19870, "Mass": 5746,
                "Nodule": 6323, "Pleural_Thickening": 3385, "Pneumonia": 1353, "Pneumothorax": 5298}
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


@pytest.fixture(scope="module")
def nih(test_data: Path) -> Path:
    return test_data / "nih"


@pytest.fixture(scope="module")
def v2020(nih: Path):
    return read_data_entry(nih / "Data_Entry_2017_v2020.csv")


@pytest.fixture(scope="module")
def v2017(nih: Path):
    return read_data_entry(nih / "Data_Entry_2017.csv")


def test_labels_are_nih_order():
    assert LABELS[:4] == ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration")
    assert LABELS[-2:] == ("Pleural_Thickening", "Hernia")
    assert len(LABELS) == len(set(LABELS)) == 14 and NO_FINDING not in LABELS


def test_v2020_counts(v2020):
    assert len(v2020) == 112_120
    assert sum(bool(e.labels) for e in v2020) == 51_759
    assert sum(not e.labels for e in v2020) == 60_361
    assert len({e.patient for e in v2020}) == 30_805
    assert Counter(label for e in v2020 for label in e.labels) == V2020_COUNTS
    assert Counter(e.view for e in v2020) == {"PA": 67_310, "AP": 44_810}
    assert Counter(e.gender for e in v2020) == {"M": 63_340, "F": 48_780}
    assert max(len(e.labels) for e in v2020) == 9
    assert all(isinstance(e.age, int) for e in v2020) and max(e.age for e in v2020) == 95


def test_v2020_first_row(v2020):
    first = v2020[0]
    assert (first.image, first.labels, first.follow_up, first.patient, first.age, first.gender, first.view) == (
        "00000001_000.png", frozenset({"Cardiomegaly"}), 0, 1, 57, "M", "PA")


def test_2017_original_counts_and_ages(v2017, v2020):
    assert len(v2017) == 112_120
    assert sum(bool(e.labels) for e in v2017) == 51_708
    assert sum(not e.labels for e in v2017) == 60_412
    assert Counter(label for e in v2017 for label in e.labels) == V2017_COUNTS
    new = {e.image: e for e in v2020}
    assert {e.image for e in v2017} == new.keys()
    assert sum(e.labels != new[e.image].labels for e in v2017) == 181
    # zero-padded ids parsed; Follow-up # equals the file name's _NNN suffix in the 2017 file
    assert v2017[0].patient == 1 and v2017[0].age == 58
    assert all(e.follow_up == int(e.image[9:12]) for e in v2017)
    fractional = [e.age for e in v2017 if isinstance(e.age, float)]
    assert len(fractional) == 27 and all(0 < age < 2 for age in fractional)  # 26 in months, 1 in days
    assert sum(e.age > 100 for e in v2017) == 16


def test_age_units():
    assert parse_age("058Y") == 58 and parse_age("57") == 57
    assert parse_age("011M") == pytest.approx(11 / 12, abs=1e-3)
    assert parse_age("020D") == pytest.approx(20 / 365.25, abs=1e-3)
    assert parse_age("") is None
    with pytest.raises(ValueError):
        parse_age("5X")


def test_both_formats_parse_alike(tmp_path: Path):
    old = tmp_path / "old.csv"
    old.write_bytes((HEADER + ",\r\n00000001_000.png,Cardiomegaly|Effusion,001,00000001,058Y,M,PA,2682,2749,0.143,"
                     "0.143\r\n00000002_000.png,No Finding,000,00000002,011M,F,AP,2500,2048,0.171,0.171\r\n").encode())
    new = tmp_path / "new.csv"
    new.write_text(HEADER + "\n00000001_000.png,Cardiomegaly|Effusion,1,1,58,M,PA,2682,2749,0.14300000000000002,"
                   "0.14300000000000002\n00000002_000.png,No Finding,0,2,1,F,AP,2500,2048,0.171,0.171\n")
    a, b = read_data_entry(old), read_data_entry(new)
    assert a[0] == b[0] and a[0].labels == {"Cardiomegaly", "Effusion"}
    assert a[1].labels == frozenset() and a[1].age == pytest.approx(0.917) and b[1].age == 1


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("Image Index,Labels\nx.png,Mass\n", 1, "header"),
    (HEADER + "\nx.png,Mass,0,1,40,M,PA,1,1,1,1\ny.png,Mass,0,1,40,M,PA,1,1\n", 3, "expected 11 fields"),
    (HEADER + "\nx.png,Tumour,0,1,40,M,PA,1,1,1,1\n", 2, "Tumour"),
    (HEADER + "\nx.png,Mass,0,abc,40,M,PA,1,1,1,1\n", 2, "abc"),
    (HEADER + "\nx.png,Mass,0,1,forty,M,PA,1,1,1,1\n", 2, "forty"),
    (HEADER + "\nx.png,Mass,0,1,40,M,PA,1,1,1,1\nx.png,Mass,1,1,41,M,PA,1,1,1,1\n", 3, "twice"),
])
def test_malformed_data_entry_names_file_and_line(tmp_path: Path, text: str, line: int, problem: str):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_data_entry(path)
    assert info.value.line == line and problem in str(info.value)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_missing_file_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        read_data_entry(tmp_path / "nope.csv")


def test_bboxes(nih: Path, v2020):
    boxes = read_bboxes(nih / "BBox_List_2017.csv")
    assert len(boxes) == 984 and len({b.image for b in boxes}) == 880
    assert Counter(Counter(b.image for b in boxes).values()) == {1: 787, 2: 83, 3: 9, 4: 1}
    assert Counter(b.label for b in boxes) == {"Atelectasis": 180, "Effusion": 153, "Cardiomegaly": 146,
                                               "Infiltration": 123, "Pneumonia": 120, "Pneumothorax": 98,
                                               "Mass": 85, "Nodule": 79}
    labels = {e.image: e.labels for e in v2020}
    assert all(b.label in labels[b.image] for b in boxes)
    assert all(0 < b.x and 0 < b.y and b.x + b.w <= 1024 and b.y + b.h <= 1024 for b in boxes)


def test_bbox_header_variants_and_errors(tmp_path: Path):
    plain = tmp_path / "plain.csv"
    plain.write_text("Image Index,Finding Label,Bbox [x,y,w,h]\na.png,Infiltrate,1.5,2,3,4\n")
    [box] = read_bboxes(plain)
    assert (box.image, box.label, box.x, box.y, box.w, box.h) == ("a.png", "Infiltration", 1.5, 2.0, 3.0, 4.0)
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,3,4\nb.png,Mass,1,2,-3,4\n")
    with pytest.raises(DataError) as info:
        read_bboxes(bad)
    assert info.value.line == 3
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(HEADER + "\n")
    with pytest.raises(DataError, match="not a BBox_List file"):
        read_bboxes(wrong)


def test_multi_hot():
    y = multi_hot({"Hernia", "Atelectasis", NO_FINDING})
    assert y.dtype == np.float32 and y.shape == (14,)
    assert np.flatnonzero(y).tolist() == [0, 13]
    assert multi_hot(frozenset()).sum() == 0
    assert multi_hot({"Mass"}, ["Mass", "Nodule"]).tolist() == [1.0, 0.0]
