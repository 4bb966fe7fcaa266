"""``make dist-check``: the wheel as a user installs it on x86, in a new venv with only its ``edge`` extra.

Steps (each timed): a venv made from nothing under ``.cache/dist-venv``; ``pip install -c constraints-pi.txt
"WHEEL[edge]"`` without this shell's ``PIP_*`` variables (pip's configuration files, where a machine keeps
its certificates and mirror, still apply); then,
from an empty working folder (so that this checkout's packages cannot be imported by accident), every edge
command's ``--help`` and a check that ``edge`` was imported from the venv and that torch, tensorflow and onnx
are not installed there; then a film scanned there with a bundle (``--bundle DIR``, else the newest one the test
suite made, else the demo's; none: the scan is left out and the summary says so). Exit status: 0 it works, 1 it
does not, 2 cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.pi_check import suite_bundle
from tools.pi_root import CACHE, ROOT_DIR, Timer

VENV = CACHE / "dist-venv"
COMMANDS = ("edge.scan", "edge.capture", "edge.serve", "edge.systemd", "edge.bench")
NOT_INSTALLED = ("torch", "tensorflow", "onnx", "onnx2tf", "onnxruntime")
TIMEOUT = {"venv": 120, "install": 900, "command": 120}
_PROBE = """import importlib.util, json, sys
import edge
import ai_edge_litert.interpreter  # the TFLite runtime loads (edge.runtime imports it only when a model opens)
print(json.dumps({"edge": edge.__file__,
                  "found": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]}))
"""


class CheckError(Exception):
    """A step failed: its message says which and why."""


def _clean_env() -> dict[str, str]:
    """This process's environment without pip's variables or a virtualenv of the caller's. pip's configuration
    files still apply: a machine's CA certificates and package mirror live there, as they would for a user."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("PIP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}


def _run(step: str, cmd: list[str], timeout: float, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_clean_env(),
                              check=False)
    except subprocess.TimeoutExpired:
        raise CheckError(f"{step}: no answer in {timeout:.0f} s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise CheckError(f"{step} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def grey_film(folder: Path) -> Path:
    """A small grey film written with the standard library only (this process may not have Pillow)."""
    import struct
    import zlib

    side = 256
    rows = b"".join(b"\x00" + bytes((40 + (x * 7 + y * 3) % 150) for x in range(side)) for y in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path = folder / "film.png"
    path.write_bytes(png)
    return path


def check(wheel: Path, constraints: Path, bundle: Path | None) -> list[str]:
    timer = Timer("dist-check")
    shutil.rmtree(VENV, ignore_errors=True)
    with timer.step("venv"):
        _run("venv", [sys.executable, "-m", "venv", str(VENV)], TIMEOUT["venv"])
    python = VENV / "bin" / "python"
    with timer.step("pip install", "the wheel and its edge extra"):
        _run("pip install", [str(python), "-m", "pip", "install", "--quiet", "--no-input", "-c", str(constraints),
                             f"{wheel}[edge]"], TIMEOUT["install"])
    lines = []
    with tempfile.TemporaryDirectory(prefix="dist-check-") as tmp, timer.step("commands", "from an empty folder"):
        work = Path(tmp)
        for module in COMMANDS:
            out = _run(f"{module} --help", [str(python), "-m", module, "--help"], TIMEOUT["command"], cwd=work)
            if "usage:" not in out:
                raise CheckError(f"python -m {module} --help printed no usage line:\n{out[-1000:]}")
        probe = json.loads(_run("import check", [str(python), "-c", _PROBE, *NOT_INSTALLED], TIMEOUT["command"],
                                cwd=work).strip().splitlines()[-1])
        if not Path(probe["edge"]).resolve().is_relative_to(VENV.resolve()):
            raise CheckError(f"edge was imported from {probe['edge']}, not from the venv {VENV}")
        if probe["found"]:
            raise CheckError(f"the edge extra installed {', '.join(probe['found'])}: the Pi set must not have them")
        if bundle is not None:
            film = grey_film(work)
            _run("edge.scan", [str(python), "-m", "edge.scan", str(film), "--bundle", str(bundle.resolve()), "--out",
                               str(work / "out"), "--quiet", "--allow-unrecognised"], TIMEOUT["command"], cwd=work)
            if not (work / "out" / "results.csv").is_file():
                raise CheckError("edge.scan in the venv wrote no results.csv")
        installed = _run("pip list", [str(python), "-m", "pip", "list", "--format=freeze"], TIMEOUT["command"])
    lines.append(f"dist-check: PASSED: {wheel.name}[edge] in a new venv on {os.uname().machine}; edge from the venv; "
                 f"not installed: {', '.join(NOT_INSTALLED)}")
    wheels = [p for p in installed.split() if not p.startswith(("pip==", "setuptools=="))]
    lines.append("  installed: " + ", ".join(wheels))
    scanned = f"a film scanned with {bundle}" if bundle else "no film scanned (no bundle: make test or make demo)"
    lines.append("  commands answering --help: " + ", ".join(COMMANDS) + "; " + scanned)
    lines.append("  time: " + timer.text())
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.dist_check", description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, required=True, help="the wheel made by make dist")
    p.add_argument("--constraints", type=Path, default=ROOT_DIR / "constraints-pi.txt")
    p.add_argument("--bundle", type=Path, help="also scan a film with this bundle in the venv")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.bundle is None and (made := suite_bundle() / "bundle.json").is_file():
        args.bundle = made.parent
    hints = {args.wheel: "make dist makes the wheel", args.constraints: "make lock-pi writes it",
             args.bundle: "python -m convert makes a bundle"}
    for path, hint in hints.items():
        if path is not None and not path.exists():
            print(f"dist-check: error: {path} does not exist ({hint})", file=sys.stderr)
            return 2
    try:
        lines = check(args.wheel.resolve(), args.constraints.resolve(), args.bundle)
    except CheckError as err:
        print(f"dist-check: FAILED: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
