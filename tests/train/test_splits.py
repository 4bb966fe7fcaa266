"""train.splits (and train.data.split_entries) on the real NIH metadata: tasks, patient splits, weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.data import split_entries
from train.labels import LABELS, DataError, Entry, multi_hot, read_data_entry
from train.splits import (
    TASKS,
    LeakyInputWarning,
    class_weights,
    cooccurrence,
    official_split,
    patient_val_split,
    pos_weight,
    random_image_split,
    select,
    shared_patients,
    targets,
)


@pytest.fixture(scope="module")
def nih(test_data: Path) -> Path:
    return test_data / "nih"


@pytest.fixture(scope="module")
def entries(nih: Path) -> list[Entry]:
    return read_data_entry(nih / "Data_Entry_2017_v2020.csv")


@pytest.fixture(scope="module")
def lists(nih: Path) -> tuple[Path, Path]:
    return nih / "train_val_list.txt", nih / "test_list.txt"


def _entry(image: str, patient: int, *labels: str) -> Entry:
    return Entry(image, frozenset(labels), 0, patient, 40, "M", "PA")


def test_tasks_registry():
    assert TASKS["all"].kind == TASKS["findings"].kind == "multilabel"
    assert TASKS["all"].labels == TASKS["findings"].labels == LABELS
    assert TASKS["pneumothorax"].kind == "one_vs_all"
    assert TASKS["pneumothorax"].labels == ("Other finding", "Pneumothorax")


def test_task_selections(entries):
    assert len(select(entries, "all")) == 112_120
    findings = select(entries, "findings")
    assert len(findings) == 51_759
    y = targets(select(entries, "pneumothorax"), "pneumothorax")
    assert y.shape == (51_759, 2) and y.dtype == np.float32
    assert y.sum(axis=0).tolist() == [46_457, 5_302]
    assert (y.sum(axis=1) == 1).all()
    multi = targets(findings, "findings")
    assert multi.shape == (51_759, 14) and (multi.sum(axis=1) >= 1).all()
    assert targets(select(entries, "all"), "all").sum(axis=1).tolist().count(0) == 60_361


def test_official_split(entries, lists, nih):
    train_val, test = official_split(nih)
    assert (len(train_val), len(test)) == (86_524, 25_596)
    assert official_split(lists) == (train_val, test)
    assert not set(train_val) & set(test)
    assert set(train_val) | set(test) == {e.image for e in entries}
    in_test = set(test)
    tv_patients = {e.patient for e in entries if e.image not in in_test}
    test_patients = {e.patient for e in entries if e.image in in_test}
    assert (len(tv_patients), len(test_patients), len(tv_patients & test_patients)) == (28_008, 2_797, 0)


def test_official_split_refuses_overlapping_or_duplicate_lists(tmp_path: Path):
    (tmp_path / "train_val_list.txt").write_text("a.png\nb.png\n")
    (tmp_path / "test_list.txt").write_text("b.png\nc.png")
    with pytest.raises(DataError, match="1 images are also in train_val_list.txt"):
        official_split(tmp_path)
    (tmp_path / "test_list.txt").write_text("c.png\nc.png\n")
    with pytest.raises(DataError, match="more than once"):
        official_split(tmp_path)


@pytest.mark.parametrize("task", ["all", "pneumothorax"])
def test_patient_splits_share_no_patient(entries, lists, task):
    train, val, test = split_entries(select(entries, task), "official", lists=lists, val_fraction=0.1, seed=0)
    assert len(train) + len(val) == {"all": 86_524, "pneumothorax": 51_759 - len(test)}[task]
    assert len(test) == {"all": 25_596}.get(task, len(test))
    assert not shared_patients(train, val) | shared_patients(train, test) | shared_patients(val, test)
    assert 0.1 <= len(val) / (len(train) + len(val)) < 0.103
    assert sum(e.labels == {"Pneumothorax"} for e in val) > 0


def test_patient_val_split_is_seeded_and_keeps_order(entries):
    part = entries[:20_000]
    a_train, a_val = patient_val_split(part, 0.2, seed=3)
    b_train, b_val = patient_val_split(part, 0.2, seed=3)
    c_train, c_val = patient_val_split(part, 0.2, seed=4)
    assert [e.image for e in a_val] == [e.image for e in b_val] and a_train == b_train
    assert {e.image for e in a_val} != {e.image for e in c_val}
    position = {e.image: i for i, e in enumerate(part)}
    assert [position[e.image] for e in a_val] == sorted(position[e.image] for e in a_val)
    assert sorted(position[e.image] for e in a_train + a_val) == list(range(len(part)))
    assert not shared_patients(a_train, a_val)


def test_validation_split_is_stratified(entries, lists):
    train_val = split_entries(entries, "official", lists=lists, val_fraction=0.0)[0]
    val = patient_val_split(train_val, 0.1, seed=5)[1]
    for label in LABELS:
        share = sum(label in e.labels for e in val) / sum(label in e.labels for e in train_val)
        assert 0.09 <= share <= 0.13, label
    rare = [_entry(f"{i}.png", i, "Hernia") for i in range(2)] + [_entry(f"n{i}.png", 100 + i) for i in range(40)]
    for seed in range(5):
        train, val = patient_val_split(rare, 0.1, seed)
        assert [e.labels for e in val].count({"Hernia"}) == 1 == [e.labels for e in train].count({"Hernia"})
        assert len(val) == 5
        unstratified = patient_val_split(rare, 0.1, seed, stratify=False)[1]
        assert len(unstratified) == 5


def test_patient_val_split_edges():
    few = [_entry(f"{i}.png", i // 3) for i in range(9)]
    assert patient_val_split(few, 0.0, 0) == (few, [])
    train, val = patient_val_split(few, 0.95, 0)
    assert len({e.patient for e in train}) == 1 and len(val) == 6  # one patient always kept for training
    with pytest.raises(ValueError):
        patient_val_split(few, 1.0, 0)


def test_random_image_split_warns_and_leaks(entries):
    with pytest.warns(LeakyInputWarning) as record:
        train, test = random_image_split(entries, 0.2, seed=0)
    assert len(test) == round(0.2 * len(entries)) and len(train) + len(test) == len(entries)
    crossing = shared_patients(train, test)
    assert len(crossing) > 1000
    assert f"{len(crossing)} of 30805 patients" in str(record[0].message)


def test_random_images_option_of_split_entries_warns(entries):
    with pytest.warns(LeakyInputWarning):
        train, val, test = split_entries(entries[:5000], "random-images", val_fraction=0.1, seed=1, test_fraction=0.2)
    assert (len(train), len(val), len(test)) == (3600, 400, 1000)
    with pytest.raises(ValueError, match="unknown split"):
        split_entries(entries[:10], "by-coin")


def test_cooccurrence(entries):
    c = cooccurrence(entries, LABELS)
    assert c.shape == (14, 14) and np.issubdtype(c.dtype, np.integer)
    assert (c == c.T).all()
    counts = Counter(label for e in entries for label in e.labels)
    assert np.diag(c).tolist() == [counts[label] for label in LABELS]
    ate, eff = LABELS.index("Atelectasis"), LABELS.index("Effusion")
    assert c[ate, eff] == sum({"Atelectasis", "Effusion"} <= e.labels for e in entries) > 0
    small = entries[:500]
    assert (cooccurrence(np.stack([multi_hot(e.labels) for e in small])) == cooccurrence(small)).all()


def test_class_weights_formula(entries):
    y = targets(select(entries, "pneumothorax"), "pneumothorax")
    w = class_weights(y)
    assert w.dtype == np.float32
    assert w.tolist() == pytest.approx([51_759 / (2 * 46_457), 51_759 / (2 * 5_302)])
    assert class_weights(y.argmax(axis=1)).tolist() == pytest.approx(w.tolist())
    absent = class_weights(np.array([0, 0, 2, 2]), n_classes=3)  # class 1 has no sample: neutral 1.0
    assert absent.tolist() == pytest.approx([4 / 6, 1.0, 4 / 6]) and np.isfinite(absent).all()


def test_pos_weight(entries):
    y = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]], np.float32)
    w = pos_weight(y)
    assert w.dtype == np.float32 and np.isfinite(w).all()
    assert w.tolist() == [3.0, 1.0, 1.0, 1.0]  # no positives / no negatives -> neutral 1.0
    real = pos_weight(targets(select(entries, "findings"), "findings"))
    assert real[LABELS.index("Hernia")] == pytest.approx((51_759 - 227) / 227)
    assert real[LABELS.index("Infiltration")] == pytest.approx((51_759 - 19_894) / 19_894)
