"""SIGKILL ``python -m edge.scan`` at seeded random moments and resume: nothing lost, nothing twice.

Kill i waits until about i/20 of the films have results (a target already met means a kill
during start-up), then a seeded random extra moment, so kills land during start-up, decoding,
inference, overlay writing, commits and the final exports whatever the machine's speed. After
every kill the database must pass ``PRAGMA integrity_check`` and still hold every result
committed before. A last run completes the folder; then every film has exactly one row, overlays
and exports match the database, and no temporary file is left. Also: two scans on the same
output folder at once, Ctrl-C, and a crash between overlay and commit.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

import edge.scan
from edge.bundle import sha256_file
from edge.store import OutLock
from tests.edge.test_scan import install_fakes, run, write_film

ROOT = Path(__file__).resolve().parents[2]
SEED = 20251125
KILLS = 20
N_FILMS = 14


def scan_command(films: Path, bundle: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "edge.scan", str(films), "--bundle", str(bundle), "--out", str(out), "--quiet"]


def db_rows(out: Path) -> list[tuple[str, str, str]]:
    """(file_sha256, model_hash, status) of every row; [] before the database exists."""
    db = out / "results.sqlite"
    if not db.exists():
        return []
    with closing(sqlite3.connect(db, timeout=30)) as con:
        try:
            return con.execute("SELECT file_sha256, model_hash, status FROM results").fetchall()
        except sqlite3.OperationalError:  # the schema is not there yet
            return []


def integrity(out: Path) -> str:
    db = out / "results.sqlite"
    if not db.exists():
        return "ok"
    with closing(sqlite3.connect(db, timeout=30)) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def _kill_once(cmd: list[str], out: Path, target: int, extra: float) -> bool:
    """Start a scan, wait until ``target`` rows are committed, then ``extra`` seconds; SIGKILL it.

    True if it was still running when killed.
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and len(db_rows(out)) < target and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(extra)
    alive = proc.poll() is None
    proc.kill()
    proc.wait()
    return alive


def kill_and_resume(films: Path, bundle: Path, out: Path, n_films: int, kills: int = KILLS,
                    seed: int = SEED) -> dict:
    """The kill/resume experiment; returns its figures.

    Kill i waits for about i/kills of the ``n_films`` results to be committed (so the kills are spread over
    the whole scan whatever the machine's speed; a target already met means a kill during start-up), then a
    seeded random 0-0.6 s more (decoding, inference, overlay writing, commit or the final exports).
    """
    rng, cmd = random.Random(seed), scan_command(films, bundle, out)
    committed: set[tuple[str, str]] = set()
    figures = {"runs": 0, "kills_while_running": 0, "lost": 0, "duplicated": 0, "rows_at_kill": [],
               "integrity": []}
    for i in range(kills):
        target = int((i + rng.random()) * n_films / kills)
        figures["kills_while_running"] += _kill_once(cmd, out, target, rng.uniform(0.0, 0.6))
        figures["runs"] += 1
        rows = db_rows(out)
        keys = {(sha, model) for sha, model, _ in rows}
        figures["lost"] += len(committed - keys)
        figures["duplicated"] += len(rows) - len(keys)
        figures["rows_at_kill"].append(len(rows))
        figures["integrity"].append(integrity(out))
        committed |= keys
    final = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    figures["runs"] += 1
    figures["final_exit"], figures["final_stdout"] = final.returncode, final.stdout + final.stderr
    rows = db_rows(out)
    keys = {(sha, model) for sha, model, _ in rows}
    figures["lost"] += len(committed - keys)
    figures["duplicated"] += len(rows) - len(keys)
    return figures


def check_outputs_match_database(out: Path) -> None:
    with closing(sqlite3.connect(out / "results.sqlite")) as con:
        con.row_factory = sqlite3.Row
        rows = [dict(r) for r in con.execute("SELECT * FROM results ORDER BY id")]
    named = {o for r in rows for o in json.loads(r["overlays"])}
    on_disk = {f"overlays/{p.name}" for p in (out / "overlays").iterdir()}
    assert on_disk == named, (on_disk ^ named)
    for rel in named:
        with Image.open(out / rel) as img:
            img.verify()  # a complete PNG, not a torn write
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [(t["file_sha256"], t["status"]) for t in table] == [(r["file_sha256"], r["status"]) for r in rows]
    jsonl = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(j["file_sha256"], j["status"], j["overlays"]) for j in jsonl] == \
        [(r["file_sha256"], r["status"], json.loads(r["overlays"])) for r in rows]
    html = (out / "report.html").read_text(encoding="utf-8")  # the report shows the last model's films
    shown = {o for r in rows if r["model_hash"] == rows[-1]["model_hash"] for o in json.loads(r["overlays"])}
    assert all(f'src="{rel}"' in html for rel in shown)
    leftovers = [p.name for p in [*out.iterdir(), *(out / "overlays").iterdir()] if ".tmp-" in p.name]
    assert not leftovers


@pytest.fixture
def kill_folder(phantom_set, tmp_path) -> Path:
    films = tmp_path / "films"
    films.mkdir()
    for src in sorted((phantom_set / "images").glob("*.png"))[:N_FILMS]:
        shutil.copy(src, films / src.name)
    (films / "broken.png").write_bytes((films / src.name).read_bytes()[:3000])  # a truncated film: an error row
    (films / "README.txt").write_text("not a film")
    return films


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(bundle_dir, kill_folder, tmp_path):
    out = tmp_path / "out"
    figures = kill_and_resume(kill_folder, bundle_dir, out, N_FILMS + 1)
    print(f"\nkill/resume: runs {figures['runs']}, kills while running {figures['kills_while_running']}, "
          f"lost {figures['lost']}, duplicated {figures['duplicated']}, rows at each kill {figures['rows_at_kill']}")
    assert figures["lost"] == 0 and figures["duplicated"] == 0
    assert set(figures["integrity"]) == {"ok"} and integrity(out) == "ok"
    assert figures["final_exit"] == 1, figures["final_stdout"]  # broken.png fails, everything else scored
    films = [p for p in kill_folder.iterdir() if p.suffix == ".png"]
    rows = db_rows(out)
    assert sorted(sha for sha, _, _ in rows) == sorted(sha256_file(p) for p in films)
    assert sum(status == "error" for _, _, status in rows) == 1
    check_outputs_match_database(out)


@pytest.mark.slow
def test_two_scans_at_once_never_corrupt(bundle_dir, kill_folder, tmp_path):
    out = tmp_path / "out"
    cmd = scan_command(kill_folder, bundle_dir, out)
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    if codes == [1, 2]:  # refused: the second said so and exited 2
        assert any("another scan is writing to" in err for code, err in results if code == 2)
    else:  # serialised: the second ran after the first and found everything done
        assert codes == [1, 1], results
    rows = db_rows(out)
    assert len(rows) == len({sha for sha, _, _ in rows}) == N_FILMS + 1
    assert integrity(out) == "ok"


def test_scan_refused_while_out_is_locked(monkeypatch, tmp_path, capsys):
    install_fakes(monkeypatch)
    films = tmp_path / "films"
    write_film(films / "a.png", seed=1)
    out = tmp_path / "out"
    with OutLock(out):
        assert run(films, out) == 2
    assert "another scan is writing to" in capsys.readouterr().err
    assert not (out / "results.sqlite").exists()
    assert run(films, out) == 0  # the lock is gone with its holder


def test_kill_between_overlay_and_commit_is_redone(monkeypatch, tmp_path):
    """A crash after the overlays but before the commit: the next run redoes that film, once."""
    install_fakes(monkeypatch)
    films = tmp_path / "films"
    for i in range(3):
        write_film(films / f"f{i}.png", seed=i)
    out = tmp_path / "out"
    real_finish, calls = edge.scan.finish, []

    def finish_then_die(scored, ctx):
        calls.append(scored.item.path.name)
        if len(calls) == 2:
            ctx.store.add = _die  # the overlays of the 2nd film are written, its commit never happens
        return real_finish(scored, ctx)

    monkeypatch.setattr(edge.scan, "finish", finish_then_die)
    with pytest.raises(SystemExit):
        run(films, out, "--top", "1")
    assert len(db_rows(out)) == 1 and len(list((out / "overlays").iterdir())) == 2
    monkeypatch.setattr(edge.scan, "finish", real_finish)
    assert run(films, out, "--top", "1") == 0
    assert len(db_rows(out)) == 3
    check_outputs_match_database(out)


def _die(result):
    raise SystemExit("killed")


_FAKE_SCAN = """
import sys, time
import edge.runtime, edge.scan
from tests.edge.test_scan import FakeExplainer, FakeModel, fake_bundle

class SlowModel(FakeModel):
    def predict(self, x):
        print("scoring", flush=True)
        time.sleep(0.3)
        return super().predict(x)

edge.runtime.open_model = lambda path, **kw: SlowModel(fake_bundle(edge.scan.Path(path)))
edge.scan.CamExplainer = lambda bundle, head=None: FakeExplainer()
sys.exit(edge.scan.main(sys.argv[1:]))
"""


def test_ctrl_c_stops_after_the_current_film_exit_130(tmp_path):
    import signal

    films = tmp_path / "films"
    for i in range(8):
        write_film(films / f"f{i}.png", seed=i)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _FAKE_SCAN, str(films), "--bundle", str(tmp_path), "--out",
                             str(out), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "scoring\n"  # the first film is being scored
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "stopping after the current film" in stderr and "Stopped:" in stdout
    assert 1 <= len(db_rows(out)) < 8 and integrity(out) == "ok"
    check_outputs_match_database(out)  # exported on the way out
