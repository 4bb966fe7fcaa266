"""No stage opens a socket: train, convert and edge all run offline (issue 6).

The session artefacts are built by tests/conftest.py under tests/offline.py, which refuses and
logs every Internet socket, connect and name lookup; here we read those logs, and run the
edge scan the same way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_offline


def _attempts(log: Path) -> str:
    assert log.is_file(), f"{log} missing: the stage did not run under tests/offline.py"
    return log.read_text()


def test_guard_catches_a_network_attempt(tmp_path):
    (tmp_path / "dialer.py").write_text("import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=1)\n")
    log = tmp_path / "net.log"
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "offline.py"), str(log), "dialer"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "socket" in log.read_text()


@pytest.mark.slow
def test_phantoms_and_training_opened_no_socket(phantom_set, trained_run):
    assert _attempts(phantom_set / "network.log") == ""
    assert _attempts(trained_run / "network.log") == ""


@pytest.mark.slow
def test_conversion_opened_no_socket(bundle_dir):
    assert _attempts(bundle_dir.parent / "network.log") == ""


@pytest.mark.slow
def test_scan_opens_no_socket(bundle_dir, few_films, tmp_path):
    films = few_films
    log = tmp_path / "net.log"
    proc = run_offline("edge.scan", [str(films), "--bundle", str(bundle_dir), "--out", str(tmp_path / "out")], log,
                       timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _attempts(log) == ""

