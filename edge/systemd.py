"""``python -m edge.systemd --bundle DIR --out DIR [--install]``: start the app on boot (and scan a drop folder).

Writes systemd units for this installation (the venv's own python, absolute paths): ``xray-edge.service`` runs
``edge.serve`` as an unprivileged user in a working directory, on the results folder, after the network is
online, restarted on failure (not after exit 2: a bad bundle or folder does not mend itself by restarting).
``--drop-folder DIR`` adds ``xray-edge-scan.service`` (``edge.scan DIR``, oneshot), started by
``xray-edge-scan.path`` when a film lands in DIR and by ``xray-edge-scan.timer`` every ``--every`` as a catch-up
(a film that lands while a scan runs). edge.scan is built for this: films already stored are skipped by their
bytes, a killed scan resumes, and it shares the results folder with the app through the folder's lock.

Without ``--install`` the units are printed. With it (as root) they are written to /etc/systemd/system, then
``systemctl daemon-reload`` and ``systemctl enable --now`` run. Exit status: 0 done, 2 usage or a failed step.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from edge.cli import positive, run_main
from edge.errors import EdgeError

__all__ = ["UNIT_DIR", "main", "quote", "units"]

UNIT_DIR = Path("/etc/systemd/system")
SERVE = "xray-edge.service"
SCAN = "xray-edge-scan"
_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


class UnitError(EdgeError):
    """A unit cannot be written or enabled; says which and why."""


def quote(arg: str) -> str:
    """One ExecStart argument for systemd: ``%`` and ``$`` escaped, quoted when it holds anything unusual."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if _SAFE.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _path(path: Path) -> str:
    """A path as a unit setting's value (WorkingDirectory=, PathChanged=): taken as written, ``%`` escaped."""
    if any(c in str(path) for c in "\n\r\\\""):
        raise UnitError(f"{path}: a path for a systemd unit may not hold a line break, a backslash or a quote")
    return str(path).replace("%", "%%")


def _exec(*args: str | Path) -> str:
    return " ".join(quote(str(a)) for a in args)


def units(*, python: Path, bundle: Path, out: Path, user: str, workdir: Path, host: str, port: int,
          drop: Path | None = None, every: str = "15min") -> dict[str, str]:
    """{file name: text} of the units for these absolute paths."""
    common = (f"User={user}\nWorkingDirectory={_path(workdir)}\nEnvironment=PYTHONUNBUFFERED=1\n"
              "NoNewPrivileges=yes\nPrivateTmp=yes\nProtectSystem=full\n")
    serve = _exec(python, "-m", "edge.serve", "--bundle", bundle, "--out", out, "--host", host, "--port", port)
    found = {SERVE: (
        "[Unit]\nDescription=xray-edge app (edge.serve): chest film findings, offline\n"
        "Wants=network-online.target\nAfter=network-online.target\n\n"
        f"[Service]\nType=simple\n{common}"
        f"ExecStart={serve}\n"
        "Restart=on-failure\nRestartSec=5\nRestartPreventExitStatus=2\nTimeoutStopSec=60\n\n"
        "[Install]\nWantedBy=multi-user.target\n")}
    if drop is not None:
        found[f"{SCAN}.service"] = (
            f"[Unit]\nDescription=xray-edge scan of the drop folder {drop}\n\n"
            f"[Service]\nType=oneshot\n{common}"
            f"ExecStart={_exec(python, '-m', 'edge.scan', drop, '--bundle', bundle, '--out', out, '--quiet')}\n"
            "SuccessExitStatus=1\n")  # 1: some films failed, each said in the results; not a unit failure
        found[f"{SCAN}.path"] = (
            f"[Unit]\nDescription=xray-edge: scan when a film lands in {drop}\n\n"
            f"[Path]\nPathChanged={_path(drop)}\nUnit={SCAN}.service\n\n"
            "[Install]\nWantedBy=multi-user.target\n")
        found[f"{SCAN}.timer"] = (
            f"[Unit]\nDescription=xray-edge: scan {drop} every {every} (films that landed during a scan)\n\n"
            f"[Timer]\nOnBootSec=2min\nOnUnitInactiveSec={every}\nUnit={SCAN}.service\n\n"
            "[Install]\nWantedBy=timers.target\n")
    return found


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.systemd", description="Start the app on boot with systemd "
                                "(and scan a drop folder); prints the units, or installs them with --install.")
    p.add_argument("--bundle", required=True, help="model bundle folder")
    p.add_argument("--out", required=True, help="results folder (made if missing; the user must be able to write it)")
    p.add_argument("--user", default=os.environ.get("SUDO_USER") or getpass.getuser(),
                   help="user the app runs as (default: the user who ran sudo; never root)")
    p.add_argument("--workdir", default=None, help="working directory (default: the results folder)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: phones on the network, "
                                                     "with the access code)")
    p.add_argument("--port", type=positive, default=8080)
    p.add_argument("--drop-folder", default=None, help="also scan this folder when films land in it")
    p.add_argument("--every", default="15min", help="the drop folder's catch-up scan interval (systemd time span)")
    p.add_argument("--install", action="store_true", help="write to /etc/systemd/system and enable --now (root)")
    return p


def _check(args: argparse.Namespace) -> str | None:
    if args.user == "root":
        return "--user: the app must not run as root; name the user who owns the results folder (e.g. --user pi)"
    if args.install and os.geteuid() != 0:
        return "--install writes /etc/systemd/system: run it with sudo (or leave --install out to see the units)"
    return None


def _systemctl(*args: str) -> None:
    cmd = [shutil.which("systemctl") or "systemctl", *args]
    try:
        done = subprocess.run(cmd, check=False)
    except OSError as err:
        raise UnitError(f"cannot run systemctl: {err}") from None
    if done.returncode != 0:
        raise UnitError(f"`{' '.join(cmd)}` failed (exit {done.returncode})")


def _run(args: argparse.Namespace) -> int:
    if not (Path(args.bundle) / "bundle.json").is_file():
        raise UnitError(f"--bundle {args.bundle}: no bundle.json there (a bundle folder is made by python -m convert)")
    if args.drop_folder is not None and not Path(args.drop_folder).is_dir():
        raise UnitError(f"--drop-folder {args.drop_folder}: not a folder")
    out = Path(args.out).absolute()
    found = units(python=Path(sys.executable).absolute(), bundle=Path(args.bundle).resolve(), out=out,
                  user=args.user, workdir=Path(args.workdir).resolve() if args.workdir else out, host=args.host,
                  port=args.port, drop=Path(args.drop_folder).resolve() if args.drop_folder else None,
                  every=args.every)
    if not args.install:
        for name, text in found.items():
            print(f"# {UNIT_DIR / name}\n{text}")
        return 0
    if not out.exists():  # made for the app's user; an existing folder keeps its owner
        try:
            out.mkdir(parents=True)
            shutil.chown(out, user=args.user, group=None)
        except (OSError, LookupError) as err:
            raise UnitError(f"cannot make {out} for user {args.user}: {err}") from None
    for name, text in found.items():
        try:
            (UNIT_DIR / name).write_text(text)
        except OSError as err:
            raise UnitError(f"cannot write {UNIT_DIR / name}: {err.strerror}") from None
        print(f"wrote {UNIT_DIR / name}")
    _systemctl("daemon-reload")
    enable = [n for n in found if not n.endswith(".service") or n == SERVE]
    _systemctl("enable", "--now", *enable)
    print(f"enabled and started: {', '.join(enable)}; see `systemctl status {SERVE}` and `journalctl -u {SERVE}`")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("edge.systemd", lambda: _parser().parse_args(argv), _run, "stopped", _check)


if __name__ == "__main__":
    sys.exit(main())
