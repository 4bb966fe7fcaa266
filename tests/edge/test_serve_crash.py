"""Killing the app mid-upload (SIGKILL while an overlay is half written) loses no committed result, and the
next writer of the folder leaves no half-written file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from edge.store import DB_NAME, Store
from tests.edge.serve_helpers import api_post, fake_app, film_png, served

ROOT = Path(__file__).resolve().parents[2]

# The app over the fake model in its own process; the second upload's overlay stops half written.
_SERVER = """
import sys, time
from pathlib import Path
from edge.fsio import atomic_writer
from tests.edge.serve_helpers import fake_app
from waitress import create_server
app, engine, code = fake_app(Path(sys.argv[1]))
real, calls = engine.explainer.write_overlay, []
def write_overlay(path, *args):
    calls.append(path)
    if len(calls) == 1:
        return real(path, *args)
    with atomic_writer(path, "wb") as f:
        f.write(b"\\x89PNG half")
        f.flush()
        print("HALF", flush=True)
        time.sleep(600)
engine.explainer.write_overlay = write_overlay
server = create_server(app, host="127.0.0.1", port=0, threads=4)
print(server.effective_port, code, flush=True)
server.run()
"""


def _temp_files(out: Path) -> list[Path]:
    return list(out.rglob(".*.tmp-*"))


def _upload_cut_off(base: str, code: str) -> None:
    try:
        api_post(base, film_png(2), "lost.png", code)
    except OSError:  # the server was killed: no answer
        pass


def test_kill_mid_upload_keeps_committed_results_and_leaves_no_half_file(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port, code = proc.stdout.readline().split()
        base = f"http://127.0.0.1:{port}/"
        assert api_post(base, film_png(1), "kept.png", code)[0] == 201
        threading.Thread(target=_upload_cut_off, args=(base, code), daemon=True).start()
        assert proc.stdout.readline().strip() == "HALF"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert _temp_files(out)  # the kill left a half-written temp file (never under a real name)
    with Store(out / DB_NAME) as store:
        assert store.integrity_check() == "ok"
        assert [r["film_path"] for r in store.rows()] == ["upload/kept.png"]

    app, engine, code = fake_app(out)  # the next writer (another process, as after a restart) tidies up
    with served(app) as base:
        assert api_post(base, film_png(2), "again.png", code)[0] == 201
    engine.flush_exports()  # as at its shutdown: the exports prune the overlay the killed upload left
    assert _temp_files(out) == []
    with Store(out / DB_NAME) as store:
        rows = list(store.rows())
    assert [r["film_path"] for r in rows] == ["upload/kept.png", "upload/again.png"]
    named = {name for r in rows for name in r["overlays"]}
    assert {f"overlays/{p.name}" for p in (out / "overlays").iterdir()} == named
