"""The results store: one row per film per model, resumable, exports that are inert and round-trip."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import StoreError
from edge.exports import csv_safe, export_csv, export_jsonl
from edge.store import FilmResult, OutLock, Store

MODEL = "m" * 64


def result(sha: str, status: str = "ok", path: str = "films/a.png", **kw) -> FilmResult:
    base = dict(film_path=path, file_sha256=sha, model_hash=MODEL, status=status,
                scanned_at="2025-01-01T00:00:00+00:00", labels=["Effusion", "Mass"],
                scores={"Effusion": 0.9, "Mass": 0.1}, flagged=["Effusion"], top_label="Effusion", top_score=0.9)
    if status == "error":
        base.update(error="films/a.png: truncated PNG", error_kind="truncated PNG", scores={}, flagged=[])
    base.update(kw)
    return FilmResult(**base)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "results.sqlite") as s:
        yield s


def test_wal_and_full_sync(store):
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_one_row_per_film_and_model(store):
    assert store.add(result("a" * 64))
    assert not store.add(result("a" * 64, path="elsewhere/copy.png"))  # same bytes, same model: kept once
    assert store.add(result("a" * 64, model_hash="n" * 64))  # another model: its own row
    assert store.count() == 2
    assert store.has_result("a" * 64, MODEL) and not store.has_result("b" * 64, MODEL)
    assert [r["film_path"] for r in store.rows(MODEL)] == ["films/a.png"]


def test_error_row_is_retried_and_replaced_but_ok_is_final(store):
    store.add(result("a" * 64, status="error"))
    assert store.status("a" * 64, MODEL) == "error" and not store.has_result("a" * 64, MODEL)
    assert store.done(MODEL) == set()
    assert store.add(result("a" * 64))
    assert store.count() == 1 and store.has_result("a" * 64, MODEL) and store.done(MODEL) == {"a" * 64}
    assert not store.add(result("a" * 64, status="error"))
    assert store.status("a" * 64, MODEL) == "ok"


def test_resume_after_reopen(tmp_path):
    db = tmp_path / "r.sqlite"
    with Store(db) as s:
        s.add(result("a" * 64))
    with Store(db) as s:
        assert s.has_result("a" * 64, MODEL) and s.count() == 1 and s.integrity_check() == "ok"


def test_done_lookup_asks_for_one_film_as_done_does_for_all(store):
    store.add(result("a" * 64))
    store.add(result("b" * 64, status="error", path="films/b.png"))
    lookup = store.done_lookup(MODEL)
    assert ("a" * 64 in lookup, "b" * 64 in lookup, "c" * 64 in lookup) == (True, False, False)
    assert {"a" * 64} == store.done(MODEL) and "a" * 64 not in store.done_lookup("n" * 64)


def test_a_commit_and_a_lookup_use_indexes_not_a_pass_over_the_table(store):
    """An app's store grows all year: what each upload asks of it must not grow with it."""
    from edge.store import _RETIRE

    def plan(sql: str, args: tuple) -> str:
        return " ".join(str(row[-1]) for row in store._db.execute("EXPLAIN QUERY PLAN " + sql, args))

    assert "USING INDEX" in plan(_RETIRE, ("films/a.png", MODEL, "a" * 64))
    assert "USING INDEX" in plan("SELECT status FROM results WHERE file_sha256=? AND model_hash=?", ("a" * 64, MODEL))


def test_jsonl_round_trip(store, tmp_path):
    store.add(result("a" * 64, path="weird\nname \u00e9.png", cam=[{"label": "Effusion", "x": 3, "y": 4,
                                                                     "overlay": "overlays/x.png"}]))
    store.add(result("b" * 64, status="error"))
    out = tmp_path / "results.jsonl"
    assert export_jsonl(store, out) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == list(store.rows())
    assert json.loads(lines[0])["film_path"] == "weird\nname \u00e9.png"


@pytest.mark.parametrize("text", ["=cmd|' /C calc'!A0", "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"])
def test_csv_formula_cells_made_inert(store, tmp_path, text):
    store.add(result("a" * 64, path=text, error=text))
    out = tmp_path / "results.csv"
    export_csv(store, out)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["film_path"] == "'" + text and rows[0]["error"] == "'" + text
    assert rows[0]["score:Effusion"] == "0.9"  # numbers stay numbers


def test_csv_quotes_separators_and_newlines(store, tmp_path):
    store.add(result("a" * 64, path='a,b"c\nd.png'))
    out = tmp_path / "results.csv"
    export_csv(store, out)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["film_path"] == 'a,b"c\nd.png' and rows[0]["flagged"] == "Effusion"


def test_csv_safe_leaves_plain_values():
    assert csv_safe("chest.png") == "chest.png" and csv_safe(0.5) == 0.5 and csv_safe(None) == ""


def test_exports_replace_atomically(store, tmp_path):
    out = tmp_path / "results.csv"
    out.write_text("old")
    store.add(result("a" * 64))
    export_csv(store, out)
    assert "films/a.png" in out.read_text() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_disk_full_is_a_clear_store_error_and_keeps_rows(store):
    store.add(result("a" * 64))

    class Full:
        def execute(self, *a):
            raise sqlite3.OperationalError("database or disk is full")

    real, store._db = store._db, Full()
    with pytest.raises(StoreError, match="disk is full.*run again to resume"):
        store.add(result("b" * 64))
    store._db = real
    assert store.count() == 1 and store.integrity_check() == "ok"


def test_unopenable_database_is_a_store_error(tmp_path):
    (tmp_path / "db").mkdir()
    with pytest.raises(StoreError, match="cannot open the results database"):
        Store(tmp_path / "db")


def test_second_lock_is_refused_with_pid(tmp_path):
    with OutLock(tmp_path):
        code = ("import sys; from edge.store import OutLock; from edge.errors import StoreError\n"
                "try:\n OutLock(sys.argv[1]).acquire()\nexcept StoreError as e:\n print(e); sys.exit(3)")
        run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[2])
        assert run.returncode == 3, run.stderr
        assert f"another scan is writing to {tmp_path} (pid {os.getpid()})" in run.stdout
    with OutLock(tmp_path):  # released: can be taken again
        pass


_WRITER = """
import sys
from edge.store import FilmResult, Store
with Store(sys.argv[1]) as s:
    for i in range(40):
        s.add(FilmResult(film_path=f"{sys.argv[2]}{i}.png", file_sha256=f"{sys.argv[2]}{i:062d}", model_hash="m",
                         status="ok", scanned_at="2025-01-01T00:00:00+00:00"))
"""


def test_taking_the_lock_removes_temp_files_of_killed_writers_and_nothing_else(tmp_path):
    (tmp_path / "overlays").mkdir()
    stale = [tmp_path / ".results.csv.tmp-99999999", tmp_path / "overlays" / ".a-1-2-Mass.png.tmp-4242"]
    kept = [tmp_path / "results.csv", tmp_path / ".notes.tmp-draft", tmp_path / "x.png.tmp-12",
            tmp_path / f".results.jsonl.tmp-{os.getpid()}"]  # this process's own temp file is not stale
    for path in stale + kept:
        path.write_text("x")
    with OutLock(tmp_path):
        assert [p for p in stale if p.exists()] == []
        assert all(p.exists() for p in kept)


def test_two_writers_without_the_lock_never_corrupt(tmp_path):
    """SQLite's own locking is the second line of defence: interleaved commits, all kept, file intact."""
    db = tmp_path / "r.sqlite"
    Store(db).close()
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), tag], cwd=root) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with Store(db) as s:
        assert s.count() == 80 and s.integrity_check() == "ok"


def test_ok_result_retires_error_rows_of_the_same_path(store):
    store.add(result("path:" + "0" * 59, status="error"))  # could not even be read
    store.add(result("t" * 64, status="error"))  # a truncated copy
    store.add(result("x" * 64, path="films/other.png", status="error"))
    assert store.count() == 3
    store.add(result("a" * 64))  # the complete file, at the same path
    assert [(r["film_path"], r["status"]) for r in store.rows()] == [("films/other.png", "error"),
                                                                    ("films/a.png", "ok")]


def test_the_refused_filter_lists_what_the_guard_refused_not_what_it_let_through(store):
    store.add(result("a" * 64, path="films/accepted.png", guard="accepted", in_distribution=True))
    store.add(result("b" * 64, path="films/refused.png", guard="refused", in_distribution=False, flagged=[],
                     refusal="not recognised as a chest film like the training films"))
    store.add(result("c" * 64, path="films/anyway.png", guard="scored anyway", in_distribution=False,
                     refusal="a strongly coloured picture"))
    rows, total = store.page("refused", "", 20, 0)
    assert total == 1 and [r["film_path"] for r in rows] == ["films/refused.png"]
