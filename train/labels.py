"""NIH ChestX-ray14 metadata: the 14 labels, Data_Entry_2017*.csv and BBox_List_2017.csv.

Labels are in CheXNet's (NIH's) order, ``LABELS``, used everywhere. An ``Entry``'s ``labels``
holds its findings only: a "No Finding" image has an empty set (and multi-hot all zeros).

``read_data_entry`` reads both published formats of Data_Entry:

* the 2017 original: CRLF, a trailing comma on the header only, zero-padded ``Follow-up #`` and
  ``Patient ID``, ages with a unit (``058Y`` years, ``011M`` months, ``020D`` days);
* the 2020 re-release (``Data_Entry_2017_v2020.csv``): LF, integer ages in years, float artefacts
  such as ``0.14300000000000002`` in the pixel-spacing columns (not read).

Ages are in years: ``int`` for whole years (``058Y`` and every v2020 age), ``float`` for ages
given in months or days (``011M`` -> 11/12, ``020D`` -> 20/365.25, rounded to 3 decimals);
``None`` when the field is empty. A wrong header or a malformed row raises ``DataError``
naming the file and the line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge.errors import XrayError

__all__ = ["BBOX_ALIASES", "LABELS", "NO_FINDING", "Box", "DataError", "Entry", "Film", "multi_hot", "read_bboxes",
           "read_data_entry"]

LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"

DATA_ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                      "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
                      "OriginalImagePixelSpacing[x", "y]")
BBOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
BBOX_ALIASES = {"Infiltrate": "Infiltration"}  # BBox_List_2017.csv spells it so

_AGE = re.compile(r"^(\d+)([YMD]?)$")
_AGE_UNIT_DAYS = {"M": 365.25 / 12, "D": 1.0}


class DataError(XrayError):
    """A metadata file is missing or malformed. Names the file (and line) and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Film:
    """One film to train or test on. ``target``: multi-hot over the task labels, or one-hot class."""

    image: str
    path: Path
    patient: int
    target: np.ndarray = field(compare=False, repr=False)


@dataclass(frozen=True)
class Entry:
    """One row of Data_Entry. ``labels``: findings only (empty for "No Finding")."""

    image: str
    labels: frozenset[str]
    follow_up: int
    patient: int
    age: int | float | None
    gender: str
    view: str


@dataclass(frozen=True)
class Box:
    """One row of BBox_List_2017.csv, in original-film pixels (1024×1024 for NIH)."""

    image: str
    label: str
    x: float
    y: float
    w: float
    h: float


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a CSV file, CRLF or LF, blank lines skipped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for number, row in enumerate(csv.reader(f), start=1):
                if row and any(field.strip() for field in row):
                    yield number, row
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(path, f"not a readable CSV file ({err})") from None


def _strip_trailing_empty(row: list[str]) -> list[str]:
    end = len(row)
    while end and not row[end - 1].strip():
        end -= 1
    return row[:end]


def parse_age(text: str) -> int | float | None:
    """``58``, ``058Y`` -> 58; ``011M`` -> 0.917; ``020D`` -> 0.055; ``""`` -> None."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if not text:
        return None
    match = _AGE.match(text)
    if match is None:
        raise ValueError(f"age {text!r} is not a number with an optional Y/M/D unit")
    value, unit = int(match[1]), match[2]
    if unit in ("", "Y"):
        return value
    return round(value * _AGE_UNIT_DAYS[unit] / 365.25, 3)


@lru_cache(maxsize=4096)
def parse_labels(text: str) -> frozenset[str]:
    """``"A|B"`` -> {A, B}; ``"No Finding"`` -> {}. Unknown labels raise ValueError."""
    names = [n.strip() for n in text.split("|") if n.strip()]
    if names == [NO_FINDING]:
        return frozenset()
    unknown = sorted(set(names) - set(LABELS))
    if unknown or not names:
        raise ValueError(f"unknown finding label(s) {unknown or [text]} (expected {NO_FINDING!r} or of {LABELS})")
    return frozenset(names)


def _int(text: str) -> int:
    value = float(text) if "." in text else int(text)
    if value != int(value):
        raise ValueError(f"{text!r} is not a whole number")
    return int(value)


def _entry(row: list[str]) -> Entry:
    if len(row) != len(DATA_ENTRY_COLUMNS):
        raise ValueError(f"expected {len(DATA_ENTRY_COLUMNS)} fields, found {len(row)}")
    image, labels, follow_up, patient, age, gender, view = (field.strip() for field in row[:7])
    if not image:
        raise ValueError("empty Image Index")
    return Entry(image=image, labels=parse_labels(labels), follow_up=_int(follow_up), patient=_int(patient),
                 age=parse_age(age), gender=gender, view=view)


def read_data_entry(path: str | Path) -> list[Entry]:
    """All rows of a Data_Entry_2017*.csv (either published format), in file order."""
    path = Path(path)
    rows = _rows(path)
    number, header = next(rows, (1, []))
    if tuple(h.strip() for h in _strip_trailing_empty(header)) != DATA_ENTRY_COLUMNS:
        raise DataError(path, f"not a Data_Entry file: header is {','.join(header)!r}, expected "
                              f"{','.join(DATA_ENTRY_COLUMNS)!r}", number)
    entries, seen = [], set()
    for number, row in rows:
        try:
            entry = _entry(_strip_trailing_empty(row) if len(row) > len(DATA_ENTRY_COLUMNS) else row)
        except ValueError as err:
            raise DataError(path, f"malformed row: {err}", number) from None
        if entry.image in seen:
            raise DataError(path, f"image {entry.image} is listed twice", number)
        seen.add(entry.image)
        entries.append(entry)
    return entries


def _box(row: list[str]) -> Box:
    if len(row) != len(BBOX_COLUMNS):
        raise ValueError(f"expected {len(BBOX_COLUMNS)} fields, found {len(row)}")
    image, label = row[0].strip(), row[1].strip()
    label = BBOX_ALIASES.get(label, label)
    if label not in LABELS:
        raise ValueError(f"unknown box label {row[1]!r}")
    x, y, w, h = (float(v) for v in row[2:6])
    if not all(np.isfinite((x, y, w, h))) or w <= 0 or h <= 0:
        raise ValueError(f"box {x, y, w, h} is not a finite box of positive size")
    return Box(image, label, x, y, w, h)


def read_bboxes(path: str | Path) -> list[Box]:
    """All boxes of a BBox_List_2017.csv (header ``Image Index,Finding Label,Bbox [x,y,w,h],,,``)."""
    path = Path(path)
    rows = _rows(path)
    number, header = next(rows, (1, []))
    if tuple(h.strip() for h in _strip_trailing_empty(header)) != BBOX_COLUMNS:
        raise DataError(path, f"not a BBox_List file: header is {','.join(header)!r}", number)
    boxes = []
    for number, row in rows:
        try:
            boxes.append(_box(_strip_trailing_empty(row)))
        except ValueError as err:
            raise DataError(path, f"malformed box row: {err}", number) from None
    return boxes


def multi_hot(labels: Iterable[str], label_names: Iterable[str] = LABELS) -> np.ndarray:
    """float32 vector over ``label_names``: 1 where the label is in ``labels``. Others are ignored."""
    present = set(labels)
    return np.array([name in present for name in label_names], dtype=np.float32)
