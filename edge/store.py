"""The results store: one SQLite row per film per model, committed before the next film starts.

Durability: WAL journal with ``synchronous=FULL``. In WAL mode ``NORMAL`` survives a crash of
the process but a power cut may roll back the last commits; ``FULL`` fsyncs the WAL at every
commit, so "committed" means "on the SD card" (one fsync per film, a few ms against a second of
inference on a Pi). Either way SQLite's atomic commit keeps the file intact; FULL also keeps the
promise that a scored film is never scored twice after a power cut.

Uniqueness: ``UNIQUE(file_sha256, model_hash)``. A film that failed (status ``error``) is tried
again on the next run and its row replaced; an ``ok`` row is final.

Writers: ``OutLock`` takes an exclusive ``flock`` on ``OUT/.scan.lock``: a second scan into the
same folder is refused with the first one's pid. The app (edge.serve) takes it only while it stores
one upload (waiting a few seconds for it), so a scan and the app share a folder: a scan that starts
while the app stores waits a moment, an upload during a scan waits and is then refused with a message.
SQLite's own locking (busy timeout) is the second line of defence, so the database is never
corrupted even without the lock. Files are written whole (edge.fsio's ``atomic_writer``); a writer
killed mid-write leaves its temp file, and the next one to take the lock removes such leftovers of
other pids.

Disk full (``database or disk is full`` / ENOSPC) becomes a ``StoreError`` that says so; what
was committed stays, and the next run resumes after it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Container, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.errors import StoreError
from edge.fsio import output_error, remove_stale_temp_files
from edge.screen import REFUSED

__all__ = ["APP_HOLDER", "DB_NAME", "LOCK_NAME", "OVERLAYS", "FilmResult", "OutLock", "Store"]

DB_NAME = "results.sqlite"
LOCK_NAME = ".scan.lock"
APP_HOLDER = "edge.serve"  # OutLock's holder name for the app; others wait up to _APP_WAIT s for it
_APP_WAIT = 15.0
OVERLAYS = "overlays"  # OUT/overlays/*.png, named in the rows' "overlays" column

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id           INTEGER PRIMARY KEY,
    film_path    TEXT NOT NULL,
    file_sha256  TEXT NOT NULL,
    model_hash   TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error_kind   TEXT,
    error        TEXT,
    labels       TEXT NOT NULL DEFAULT '[]',
    scores       TEXT NOT NULL DEFAULT '{}',
    flagged      TEXT NOT NULL DEFAULT '[]',
    top_label    TEXT,
    top_score    REAL,
    cam          TEXT NOT NULL DEFAULT '[]',
    cam_label    TEXT,
    cam_x        INTEGER,
    cam_y        INTEGER,
    overlays     TEXT NOT NULL DEFAULT '[]',
    film_width   INTEGER,
    film_height  INTEGER,
    decode_ms    REAL,
    invoke_ms    REAL,
    cam_ms       REAL,
    overlay_ms   REAL,
    runtime      TEXT,
    device       TEXT,
    model_kind   TEXT,
    scanned_at   TEXT NOT NULL,
    novelty      REAL,
    in_distribution INTEGER,
    guard        TEXT,
    refusal      TEXT,
    UNIQUE (file_sha256, model_hash)
);
CREATE INDEX IF NOT EXISTS results_by_path ON results (film_path, model_hash);
"""
_JSON_COLUMNS = ("labels", "scores", "flagged", "cam", "overlays")


@dataclass
class FilmResult:
    """One film's outcome under one model. JSON columns hold plain lists/dicts."""

    film_path: str
    file_sha256: str
    model_hash: str
    status: str
    scanned_at: str
    error_kind: str | None = None
    error: str | None = None
    labels: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    flagged: list = field(default_factory=list)
    top_label: str | None = None
    top_score: float | None = None
    cam: list = field(default_factory=list)  # [{"label", "x", "y", "peaks", "overlay"}], top label first; (x, y) is
    # the hottest of "peaks" ([[x, y], ...], hottest first: edge.cam.cam_peaks)
    cam_label: str | None = None
    cam_x: int | None = None
    cam_y: int | None = None
    overlays: list = field(default_factory=list)  # paths relative to OUT
    film_width: int | None = None
    film_height: int | None = None
    decode_ms: float | None = None
    invoke_ms: float | None = None
    cam_ms: float | None = None
    overlay_ms: float | None = None
    runtime: str | None = None
    device: str | None = None
    model_kind: str | None = None
    # the out-of-distribution guard (edge.screen): distance, verdict, "accepted" | "refused" | "scored anyway"
    # (None: the bundle has no guard), and why a film was refused, in plain words
    novelty: float | None = None
    in_distribution: bool | None = None
    guard: str | None = None
    refusal: str | None = None


_GUARD_COLUMNS = {"novelty": "REAL", "in_distribution": "INTEGER", "guard": "TEXT", "refusal": "TEXT"}
_COLUMNS = tuple(FilmResult.__dataclass_fields__)
_UPSERT = (f"INSERT INTO results ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
           f"ON CONFLICT (file_sha256, model_hash) DO UPDATE SET "
           f"{', '.join(f'{c}=excluded.{c}' for c in _COLUMNS)} WHERE results.status='error'")
_RETIRE = "DELETE FROM results WHERE film_path=? AND model_hash=? AND status='error' AND file_sha256<>?"


class _DoneLookup:
    def __init__(self, store: Store, model_hash: str):
        self.store, self.model_hash = store, model_hash

    def __contains__(self, sha: object) -> bool:
        return isinstance(sha, str) and self.store.has_result(sha, self.model_hash)


class Store:
    """The SQLite results database. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path, *, timeout: float = 10.0):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread off: scan's writer thread commits; never two threads at once (the scan is sequential)
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._add_guard_columns()
        except (sqlite3.Error, OSError) as err:
            raise output_error(self.path, err, "open the results database") from None

    def _add_guard_columns(self) -> None:
        """A database made before the guard existed gains its columns (empty for the old rows)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
        for name, kind in _GUARD_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def status(self, sha256: str, model_hash: str) -> str | None:
        """'ok', 'error' or None (never scored with this model)."""
        row = self._db.execute("SELECT status FROM results WHERE file_sha256=? AND model_hash=?",
                               (sha256, model_hash)).fetchone()
        return row[0] if row else None

    def has_result(self, sha256: str, model_hash: str) -> bool:
        """True when this film already has a final (``ok``) result from this model."""
        return self.status(sha256, model_hash) == "ok"

    def done_lookup(self, model_hash: str) -> Container[str]:
        """``sha in done_lookup(model)`` asks the store for one film (``done`` reads every hash: a scan's start,
        not each upload of an app whose store grows all year)."""
        return _DoneLookup(self, model_hash)

    def done(self, model_hash: str) -> set[str]:
        """File hashes with a final result from this model (what a resumed scan skips)."""
        rows = self._db.execute("SELECT file_sha256 FROM results WHERE model_hash=? AND status='ok'", (model_hash,))
        return {r[0] for r in rows}

    def add(self, result: FilmResult) -> bool:
        """Commit one result in one transaction. False if an ok row for this film and model was already there.

        An earlier error row of the same film is replaced; an ok result also retires error rows left by
        earlier versions of the same path (a truncated copy since fixed, a file that could not be read).
        """
        values = [json.dumps(v) if k in _JSON_COLUMNS else v for k, v in asdict(result).items()]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                added = self._db.execute(_UPSERT, values).rowcount == 1
                if added and result.status == "ok":
                    self._db.execute(_RETIRE, (result.film_path, result.model_hash, result.file_sha256))
                self._db.execute("COMMIT")  # fsynced before returning (synchronous=FULL)
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (e.g. disk full)
                    self._db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as err:
            raise output_error(self.path, err, f"store the result of {result.film_path!r}") from None
        return added

    def rows(self, model_hash: str | None = None) -> Iterator[dict]:
        """Every result as a dict (JSON columns decoded), in the order films were first stored."""
        where, args = ("WHERE model_hash=?", (model_hash,)) if model_hash else ("", ())
        cur = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM results {where} ORDER BY id", args)
        for row in cur:
            item = dict(zip(_COLUMNS, row, strict=True))
            for k in _JSON_COLUMNS:
                item[k] = json.loads(item[k])
            if item["in_distribution"] is not None:
                item["in_distribution"] = bool(item["in_distribution"])
            yield item

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM results WHERE status=?", (status,)).fetchone()[0]

    def count_model(self, model_hash: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results WHERE model_hash=?", (model_hash,)).fetchone()[0]

    def integrity_check(self) -> str:
        return "; ".join(r[0] for r in self._db.execute("PRAGMA integrity_check"))

    def labels(self) -> list[str]:
        """Every label any stored result has, in first-seen order (the CSV's score columns)."""
        seen: dict[str, None] = {}
        for (labels,) in self._db.execute("SELECT DISTINCT labels FROM results"):
            seen.update(dict.fromkeys(json.loads(labels)))
        return list(seen)

    # ---- reads by id, for the app (edge.web): newest first, filtered, paged

    def result(self, row_id: int) -> dict | None:
        """One result by its row id (with ``id``), or None."""
        return next(self._select("WHERE id=?", (int(row_id),)), None)

    def result_id(self, sha256: str, model_hash: str) -> int | None:
        row = self._db.execute("SELECT id FROM results WHERE file_sha256=? AND model_hash=?",
                               (sha256, model_hash)).fetchone()
        return row[0] if row else None

    def page(self, show: str = "all", name: str = "", limit: int = 20, offset: int = 0) -> tuple[list[dict], int]:
        """(results newest first, how many match): ``show`` all | flagged | refused | failed | ok; ``name`` a
        part of the film's name (case-insensitive, taken literally)."""
        where, args = [_SHOW.get(show, "1=1")], []
        if name:
            where.append("film_path LIKE ? ESCAPE '\\'")
            args.append("%" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        clause = "WHERE " + " AND ".join(where)
        total = self._db.execute(f"SELECT COUNT(*) FROM results {clause}", args).fetchone()[0]
        return list(self._select(f"{clause} ORDER BY id DESC LIMIT ? OFFSET ?", (*args, limit, offset))), total

    def _select(self, clause: str, args: tuple | list) -> Iterator[dict]:
        for row in self._db.execute(f"SELECT id, {', '.join(_COLUMNS)} FROM results {clause}", args):
            item = dict(zip(("id", *_COLUMNS), row, strict=True))
            for k in _JSON_COLUMNS:
                item[k] = json.loads(item[k])
            yield item


_SHOW = {"all": "1=1", "ok": "status='ok'", "failed": "status='error'", "flagged": "status='ok' AND flagged<>'[]'",
         "refused": f"guard='{REFUSED}'"}  # every store has the guard column (added to older ones on opening)


class OutLock:
    """Exclusive ``flock`` on ``OUT/.scan.lock`` held for a whole scan; released by the kernel if killed."""

    def __init__(self, out_dir: str | Path, *, wait: float = 0.0, holder: str = ""):
        """``wait``: seconds to wait for a holder to let go before refusing; ``holder``: who this is (the
        message a refused writer prints names it; the app, edge.serve, holds the lock only while storing)."""
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.wait, self.holder = wait, holder
        self._fd: int | None = None

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise output_error(self.out_dir, err, "create the output folder") from None
        if not self._flock(fd, self.wait):
            pid, _, prog = os.pread(fd, 64, 0).decode("ascii", "replace").strip().partition("\n")
            app = prog.strip() == APP_HOLDER  # the app lets go within moments: wait for it
            if not (app and self._flock(fd, max(self.wait, _APP_WAIT))):
                os.close(fd)
                raise self._refusal(pid, app) from None
        self._fd = fd
        try:  # the pid is only for the message a second scan prints; a full disk must not stop this one
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{self.holder}\n".encode("ascii", "replace"), 0)
        except OSError:
            pass
        remove_stale_temp_files(self.out_dir, self.out_dir / OVERLAYS)

    def _refusal(self, pid: str, app: bool) -> StoreError:
        if app:
            return StoreError(f"the app (python -m edge.serve, pid {pid or 'unknown'}) is storing a film in "
                              f"{self.out_dir}; try again in a moment")
        return StoreError(f"another scan is writing to {self.out_dir} (pid {pid or 'unknown'}); wait for it to "
                          f"finish or choose another --out")

    @staticmethod
    def _flock(fd: int, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
