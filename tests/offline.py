"""Run a stage's module as ``python -m`` would, with every network attempt refused and logged.

    python tests/offline.py LOG_FILE MODULE [ARGS...]

An audit hook (PEP 578) sees each connection, datagram and name lookup that Python code makes
towards another host; each is appended to LOG_FILE and refused with an OSError. Tests that use it also run
it inside a fresh network namespace (``unshare -n``) where the machine allows, so native code
that bypasses Python's socket module has no network either.
"""

from __future__ import annotations

import os
import runpy
import sys

_LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}
_LOCAL_HOSTS = {"localhost", "::1", "0.0.0.0", "::", ""}


def _is_loopback(host: object) -> bool:
    if host is None:
        return True
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
    return name in _LOCAL_HOSTS or name.startswith("127.")


def _network_use(event: str, args: tuple) -> bool:
    """A connection or datagram to, or a name lookup of, anything but this machine.

    Creating or binding a socket is not network use (urllib3 probes IPv6 support on import by
    binding to ::1); reaching another host is.
    """
    if event in _LOOKUPS:
        return not _is_loopback(args[0])
    if event in ("socket.connect", "socket.sendto") and isinstance(args[1], tuple):
        return not _is_loopback(args[1][0])
    return False


def _install(log_path: str) -> None:
    def hook(event: str, args: tuple) -> None:
        if _network_use(event, args):
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"{event} {args!r}\n")
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
