"""python -m edge.systemd: the units that start the app on boot and scan a drop folder (text; nothing installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import systemd


def _units(tmp_path: Path, **kw) -> dict[str, str]:
    args = dict(python=Path("/home/pi/xray/.venv/bin/python"), bundle=Path("/home/pi/xray/bundle"),
                out=Path("/home/pi/xray/results"), user="pi", workdir=Path("/home/pi/xray"), host="0.0.0.0",
                port=8080)
    return systemd.units(**{**args, **kw})


def _settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_the_app_unit_runs_serve_as_the_user_after_the_network_and_restarts_on_failure(tmp_path):
    found = _units(tmp_path)
    assert list(found) == ["xray-edge.service"]
    unit = _settings(found["xray-edge.service"])
    assert unit["ExecStart"] == ("/home/pi/xray/.venv/bin/python -m edge.serve --bundle /home/pi/xray/bundle "
                                 "--out /home/pi/xray/results --host 0.0.0.0 --port 8080")
    assert (unit["User"], unit["WorkingDirectory"]) == ("pi", "/home/pi/xray")
    assert unit["After"] == unit["Wants"] == "network-online.target"
    assert (unit["Restart"], unit["RestartPreventExitStatus"]) == ("on-failure", "2")
    assert unit["WantedBy"] == "multi-user.target"


def test_a_drop_folder_adds_a_scan_started_by_a_path_unit_and_a_timer(tmp_path):
    found = _units(tmp_path, drop=Path("/media/usb/films"), every="10min")
    scan = _settings(found["xray-edge-scan.service"])
    assert scan["ExecStart"].split()[1:4] == ["-m", "edge.scan", "/media/usb/films"]
    assert (scan["Type"], scan["SuccessExitStatus"]) == ("oneshot", "1")
    assert _settings(found["xray-edge-scan.path"])["PathChanged"] == "/media/usb/films"
    timer = _settings(found["xray-edge-scan.timer"])
    assert (timer["OnUnitInactiveSec"], timer["Unit"]) == ("10min", "xray-edge-scan.service")


def test_unusual_paths_are_quoted_and_escaped_for_systemd(tmp_path):
    assert systemd.quote("/plain/path-1.txt") == "/plain/path-1.txt"
    assert systemd.quote('/my films/50% "best"') == '"/my films/50%% \\"best\\""'
    assert systemd.quote("$HOME") == '"$$HOME"'
    unit = _settings(_units(tmp_path, out=Path("/home/pi/my results"))["xray-edge.service"])
    assert '--out "/home/pi/my results"' in unit["ExecStart"]
    with pytest.raises(systemd.UnitError, match="line break"):
        _units(tmp_path, workdir=Path("/home/pi/x\ny"))


def test_the_command_prints_the_units_and_refuses_root_or_a_missing_bundle(tmp_path, capsys):
    (tmp_path / "bundle").mkdir()
    assert systemd.main(["--bundle", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"), "--user", "pi"]) == 2
    assert "no bundle.json" in capsys.readouterr().err
    (tmp_path / "bundle" / "bundle.json").write_text("{}")
    assert systemd.main(["--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path), "--user", "root"]) == 2
    assert "must not run as root" in capsys.readouterr().err
    assert systemd.main(["--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "out"), "--user", "pi"]) == 0
    printed = capsys.readouterr().out
    assert "# /etc/systemd/system/xray-edge.service" in printed and f"--out {tmp_path / 'out'}" in printed
    assert not (tmp_path / "out").exists()  # printing installs nothing


def test_install_without_root_says_to_use_sudo(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(systemd.os, "geteuid", lambda: 1000)
    (tmp_path / "bundle.json").write_text("{}")
    assert systemd.main(["--bundle", str(tmp_path), "--out", str(tmp_path), "--user", "pi", "--install"]) == 2
    assert "sudo" in capsys.readouterr().err


def test_install_writes_the_units_then_reloads_and_enables_the_app_and_the_drop_folder_triggers(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(systemd.os, "geteuid", lambda: 0)
    monkeypatch.setattr(systemd, "UNIT_DIR", tmp_path / "units")
    monkeypatch.setattr(systemd, "_systemctl", lambda *args: calls.append(args))
    (tmp_path / "units").mkdir()
    (tmp_path / "bundle.json").write_text("{}")
    argv = ["--bundle", str(tmp_path), "--out", str(tmp_path), "--user", "pi", "--drop-folder", str(tmp_path)]
    assert systemd.main([*argv, "--install"]) == 0
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == [
        "xray-edge-scan.path", "xray-edge-scan.service", "xray-edge-scan.timer", "xray-edge.service"]
    assert calls == [("daemon-reload",),
                     ("enable", "--now", "xray-edge.service", "xray-edge-scan.path", "xray-edge-scan.timer")]
