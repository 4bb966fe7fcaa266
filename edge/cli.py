"""The one place where errors become exit codes: every command's ``main`` is ``run_main``.

Exit status: 0 done; what ``run`` returns (1: some films failed); ``XrayError.exit_code`` (2: a
problem the user can act on, one line ``PROG: error: MESSAGE`` on stderr); 2 refused arguments
(argparse's own message); 130 Ctrl-C. Anything that
is not an ``XrayError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from edge.errors import XrayError
from edge.progress import printable

__all__ = ["INTERRUPTED", "positive", "run_main"]

INTERRUPTED = 130


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def run_main(prog: str, parse: Callable[[], argparse.Namespace], run: Callable[[argparse.Namespace], int],
             stopped: str | Callable[[argparse.Namespace], str] = "interrupted",
             check: Callable[[argparse.Namespace], str | None] = lambda args: None) -> int:
    """A command's ``main``: parse, ``check`` (a message refuses the arguments, exit 2), run; an
    XrayError is one line on stderr (``PROG: error: MESSAGE``) and its exit code; Ctrl-C prints
    ``stopped`` and exits 130."""
    try:
        args = parse()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    problem = check(args)
    if problem:
        print(f"{prog}: {problem}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except XrayError as err:
        print(f"{prog}: error: {printable(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: {stopped(args) if callable(stopped) else stopped}", file=sys.stderr)
        return INTERRUPTED
