"""python -m edge.serve as a command: prints where it listens (and the access code off loopback), serves the
real bundle, stops on SIGTERM keeping every result; bad arguments and bundles are one-line errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from edge.serve import main

ROOT = Path(__file__).resolve().parents[2]


def test_serves_on_loopback_and_stops_on_sigterm(bundle_dir, tmp_path):
    cmd = [sys.executable, "-m", "edge.serve", "--bundle", str(bundle_dir), "--out", str(tmp_path / "out"),
           "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        url = re.search(r"Serving on (http://127\.0\.0\.1:\d+/)", first).group(1)
        with urllib.request.urlopen(url + "api/results", timeout=60) as resp:
            assert json.loads(resp.read())["total"] == 0
        assert "Only this machine" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert code == 0 and "every stored result is kept" in proc.stderr.read()


def test_off_loopback_prints_the_access_code(bundle_dir, tmp_path, monkeypatch, capsys):
    import waitress

    class Server:
        effective_port = 8080

        def run(self):  # waitress returns from run() on Ctrl-C
            return None

    monkeypatch.setattr(waitress, "create_server", lambda app, **kw: Server())
    out = tmp_path / "out"
    assert main(["--bundle", str(bundle_dir), "--out", str(out), "--host", "0.0.0.0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"Access code: {(out / '.access-code').read_text().strip()}" in printed


def test_bad_port_and_missing_bundle_are_one_line_errors(tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--port", "70000"]) == 2
    assert main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--port must be 0 to 65535" in err and "edge.serve: error:" in err and "Traceback" not in err
