"""The results store as files for people and other programs: CSV (a spreadsheet) and JSON Lines.

Both are streamed from the store and written atomically (edge.fsio), so they always match it;
``edge.report.export_all`` writes them with report.html at the end of every scan.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from edge.fsio import atomic_writer, output_error
from edge.store import Store

__all__ = ["CSV_FIELDS", "csv_safe", "export_csv", "export_jsonl"]

CSV_FIELDS = ("film_path", "status", "error_kind", "error", "flagged", "top_label", "top_score", "cam_label",
              "cam_x", "cam_y", "overlays", "film_width", "film_height", "file_sha256", "model_hash", "runtime",
              "device", "model_kind", "decode_ms", "invoke_ms", "cam_ms", "overlay_ms", "scanned_at",
              "novelty", "in_distribution", "guard", "refusal")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: object) -> object:
    """Text a spreadsheet would run as a formula (= + - @ tab CR first) gets a leading apostrophe."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_fields(row: dict) -> list:
    return [";".join(row[k]) if k in ("flagged", "overlays") else row[k] for k in CSV_FIELDS]


@contextmanager
def _export(path: str | Path) -> Iterator[TextIO]:
    try:
        with atomic_writer(path) as f:
            yield f
    except OSError as err:
        raise output_error(Path(path), err, "write the export") from None


def export_csv(store: Store, path: str | Path) -> int:
    """All results as CSV (one score column per label); formula-like text cells made inert. Streamed."""
    labels, n = store.labels(), 0
    with _export(path) as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        writer.writerow(csv_safe(c) for c in (*CSV_FIELDS, *(f"score:{label}" for label in labels)))
        for r in store.rows():
            writer.writerow(csv_safe(c) for c in (*_csv_fields(r), *(r["scores"].get(lb, "") for lb in labels)))
            n += 1
    return n


def export_jsonl(store: Store, path: str | Path) -> int:
    """All results as JSON Lines (one JSON object per film, exactly the stored values). Streamed."""
    n = 0
    with _export(path) as f:
        for r in store.rows():
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n
