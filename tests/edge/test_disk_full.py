"""A full disk mid-scan: a clear error (exit 2), every result committed so far intact, the next run resumes.

Three ways to fill it: SQLite's own "database or disk is full" injected at the N-th commit,
ENOSPC injected into the N-th overlay write, and a real tiny tmpfs (when this user may mount one).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

import edge.store
from tests.edge.test_crash_safety import check_outputs_match_database, db_rows, integrity
from tests.edge.test_scan import FakeExplainer, FakeModel, install_fakes, run, write_film

N_FILMS = 8


@pytest.fixture
def fake(monkeypatch):
    return install_fakes(monkeypatch)


@pytest.fixture
def films(tmp_path) -> Path:
    for i in range(N_FILMS):
        write_film(tmp_path / "films" / f"film{i}.png", seed=i, size=(160, 128))
    return tmp_path / "films"


class FullAfter:
    """A sqlite3 connection whose INSERTs fail with SQLITE_FULL after ``n`` of them succeeded."""

    def __init__(self, con: sqlite3.Connection, n: int):
        self._con, self._left = con, n

    def execute(self, sql: str, *args):
        if sql.lstrip().upper().startswith("INSERT"):
            if self._left <= 0:
                raise sqlite3.OperationalError("database or disk is full")
            self._left -= 1
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._con, name)


def _resume_completes(fake, films: Path, out: Path, done_before: int) -> None:
    assert run(films, out) == 0
    assert fake[-1].calls == N_FILMS - done_before  # only what was not committed is scored again
    assert len(db_rows(out)) == N_FILMS and integrity(out) == "ok"
    check_outputs_match_database(out)


def test_database_full_stops_with_clear_error_and_resumes(fake, films, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real_connect = sqlite3.connect
    monkeypatch.setattr(edge.store.sqlite3, "connect", lambda *a, **k: FullAfter(real_connect(*a, **k), 3))
    assert run(films, out) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "run again to resume" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(edge.store.sqlite3, "connect", real_connect)
    assert len(db_rows(out)) == 3 and integrity(out) == "ok"
    _resume_completes(fake, films, out, done_before=3)


def test_overlay_enospc_stops_with_clear_error_and_resumes(fake, films, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    written = []
    real = FakeExplainer.write_overlay

    def write_overlay(self, path, *args):
        if len(written) >= 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        real(self, path, *args)

    monkeypatch.setattr(FakeExplainer, "write_overlay", write_overlay)
    assert run(films, out, "--top", "1") == 2
    assert "overlays" in (err := capsys.readouterr().err) and "disk is full" in err
    monkeypatch.setattr(FakeExplainer, "write_overlay", real)
    assert len(db_rows(out)) == 4 and integrity(out) == "ok"
    _resume_completes(fake, films, out, done_before=4)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if shutil.which("mount") is None:
        return False
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ok


def _tmpfs(where: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(options), str(where)], check=True, capture_output=True, timeout=30)


def test_real_full_tmpfs(fake, tmp_path, capsys):
    films = tmp_path / "films"
    for i in range(N_FILMS):
        write_film(films / f"film{i}.png", seed=i, size=(900, 800))  # ~600 kB overlays
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (not root); the injected ENOSPC tests cover this")
    try:
        out = disk / "out"
        assert run(films, out, "--cam", "all") == 2
        err = capsys.readouterr().err
        print(f"tmpfs full: {err.strip()}")
        assert "disk is full" in err
        stored = len(db_rows(out))
        assert 0 < stored < N_FILMS and integrity(out) == "ok"
        _tmpfs(disk, "remount", "size=64m")  # space freed
        _resume_completes(fake, films, out, done_before=stored)
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def _fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.parametrize("when", ["before the run", "during the run"])
def test_real_full_tmpfs_database(fake, films, tmp_path, capsys, monkeypatch, when):
    disk, original_predict = tmp_path / "disk", FakeModel.predict
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (not root); the injected SQLITE_FULL test covers this")
    try:
        out = disk / "out"
        assert run([films / "film0.png"], out, "--no-overlays") == 0
        if when == "before the run":
            _fill(disk / "filler")  # every byte taken: the database cannot even open its WAL index
        else:
            def predict(self, x):
                if self.calls == 2:
                    _fill(disk / "filler")  # fills up while the third film is scored
                return original_predict(self, x)

            monkeypatch.setattr(FakeModel, "predict", predict)
        assert run(films, out, "--no-overlays") == 2
        err = capsys.readouterr().err
        print(f"tmpfs full {when}: {err.strip()}")
        assert "disk is full" in err and len(err.strip().splitlines()) == 1
        monkeypatch.setattr(FakeModel, "predict", original_predict)
        (disk / "filler").unlink()  # space freed
        stored = len(db_rows(out))
        assert stored >= 1 and integrity(out) == "ok"
        assert run(films, out, "--no-overlays") == 0
        assert fake[-1].calls == N_FILMS - stored and len(db_rows(out)) == N_FILMS and integrity(out) == "ok"
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)
