"""Run a stage's module as ``python -m`` would, with every network attempt refused and logged.

    python tests/offline.py LOG_FILE MODULE [ARGS...]

An audit hook (PEP 578) sees each Internet socket, connect and name lookup that Python code
makes; each is appended to LOG_FILE and refused with an OSError. Tests that use it also run
it inside a fresh network namespace (``unshare -n``) where the machine allows, so native code
that bypasses Python's socket module has no network either.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys

_INET = {socket.AF_INET, socket.AF_INET6}
_LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}


def _install(log_path: str) -> None:
    def hook(event: str, args: tuple) -> None:
        bad = (event == "socket.__new__" and len(args) > 1 and args[1] in _INET) or event in _LOOKUPS or (
            event in ("socket.connect", "socket.sendto") and isinstance(args[1], tuple))
        if bad:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"{event} {args[1:]!r}\n")
            raise OSError(f"network use refused in an offline test: {event}")
    sys.addaudithook(hook)


def main() -> None:
    log_path, module, *rest = sys.argv[1:]
    open(log_path, "a").close()
    _install(log_path)
    sys.argv = [module, *rest]
    sys.path[0] = os.getcwd()  # as python -m does
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
