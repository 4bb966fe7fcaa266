"""The Pi's constraints file: the exact versions of the ``edge`` extra and everything it pulls in, nothing else.

``python -m tools.pi_constraints [--constraints constraints.txt]`` prints it (``make lock-pi`` writes
constraints-pi.txt). Versions come from constraints.txt (the whole lock); which packages belong to the edge
set comes from the installed distributions' metadata, with markers evaluated for a Raspberry Pi (Linux,
aarch64, CPython 3.11), so no torch, tensorflow or onnx line can confuse a Pi user.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

__all__ = ["PI_ENVIRONMENT", "edge_closure", "main", "render"]

PROJECT = "xray-edge"
EXTRA = "edge"
PI_ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.2", "platform_machine": "aarch64",
                  "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython",
                  "platform_release": "", "platform_version": "", "implementation_version": "3.11.2"}
HEADER = ("# The edge extra's exact versions for a Raspberry Pi (aarch64, Python 3.11), nothing else.\n"
          "# pip install -c constraints-pi.txt \"xray_edge-VERSION-py3-none-any.whl[edge]\"\n"
          "# Written by make lock-pi from constraints.txt; do not edit.\n")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(marker: Marker | None, extra: str) -> bool:
    return marker is None or marker.evaluate({**PI_ENVIRONMENT, "extra": extra})


def edge_closure(project: str = PROJECT, extra: str = EXTRA) -> set[str]:
    """Normalised names of every distribution the extra installs on a Pi (from installed metadata)."""
    todo = [Requirement(r) for r in md.requires(project) or []]
    todo = [r for r in todo if r.marker is not None and _applies(r.marker, extra) and not _applies(r.marker, "")]
    found: set[str] = set()
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name in found:
            continue
        found.add(name)
        for dep in md.requires(req.name) or []:
            sub = Requirement(dep)
            if _applies(sub.marker, "") or any(_applies(sub.marker, e) for e in req.extras):
                todo.append(sub)
    return found


def render(constraints: str, names: set[str]) -> str:
    """HEADER plus the lines of ``constraints`` that pin one of ``names``; a name with no pin is an error."""
    pins = {}
    for line in constraints.splitlines():
        if line.strip() and not line.startswith("#"):
            pins[_norm(Requirement(line).name)] = line.strip()
    missing = sorted(names - pins.keys())
    if missing:
        raise SystemExit(f"constraints.txt pins no version of {', '.join(missing)}: run make lock")
    return HEADER + "".join(pins[n] + "\n" for n in sorted(names))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.pi_constraints", description=__doc__.splitlines()[0])
    p.add_argument("--constraints", default="constraints.txt", help="the whole lock (default constraints.txt)")
    args = p.parse_args(argv)
    sys.stdout.write(render(Path(args.constraints).read_text(), edge_closure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
