"""The app's locks on the door: the access code, CSRF tokens, slowing down wrong codes, response headers.

- Access code: made at first start, kept in ``OUT/.access-code`` readable by its owner only (0600), asked
  for on every address but loopback. A browser enters it once (the session remembers); a program sends it
  in the ``X-Access-Code`` header.
- CSRF: every state-changing request carries the session's token (form field ``csrf_token`` or header
  ``X-CSRF-Token``), or the access code header (a custom header cannot be sent from another site's page).
- Wrong codes: after ``FREE_TRIES`` wrong codes from one address, each further try must wait twice as
  long as the last (2 s, 4 s, … at most ``MAX_WAIT``); a right code clears it.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.errors import StoreError

__all__ = ["ACCESS_CODE_FILE", "CSP", "FREE_TRIES", "MAX_WAIT", "Throttle", "access_code", "code_matches",
           "is_loopback", "new_token", "security_headers"]

ACCESS_CODE_FILE = ".access-code"
FREE_TRIES = 3
MAX_WAIT = 300.0
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud and typed on a phone
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": only this machine can reach it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _new_code() -> str:
    chars = [secrets.choice(_ALPHABET) for _ in range(10)]
    return "".join(chars[:5]) + "-" + "".join(chars[5:])


def access_code(out_dir: Path) -> str:
    """The folder's access code: read from ``OUT/.access-code`` (made 0600 if looser), or made there at first start."""
    path = Path(out_dir) / ACCESS_CODE_FILE
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            code = path.read_text(encoding="ascii").strip()
            if code:
                return code
            path.unlink()
            return access_code(out_dir)
        code = _new_code()
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(code + "\n")
        return code
    except (OSError, UnicodeDecodeError) as err:
        raise StoreError(f"{path}: cannot read or make the access code ({err})") from None


def _normal(code: str) -> str:
    return "".join(c for c in code.lower() if c.isalnum())


def code_matches(given: str | None, code: str) -> bool:
    """Constant-time comparison, ignoring case, spaces and dashes."""
    return bool(given) and hmac.compare_digest(_normal(given).encode(), _normal(code).encode())


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Throttle:
    """Wrong access codes per client address; ``wait(addr)`` > 0 means refuse for that many seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock, self._lock = clock, threading.Lock()
        self._wrong: dict[str, tuple[int, float]] = {}  # addr -> (wrong codes, not before)

    def wait(self, addr: str) -> float:
        with self._lock:
            _, until = self._wrong.get(addr, (0, 0.0))
            return max(0.0, until - self._clock())

    def wrong(self, addr: str) -> None:
        with self._lock:
            count, _ = self._wrong.get(addr, (0, 0.0))
            count += 1
            delay = 0.0 if count < FREE_TRIES else min(MAX_WAIT, 2.0 ** (count - FREE_TRIES + 1))
            self._wrong[addr] = (count, self._clock() + delay)
            if len(self._wrong) > 10_000:  # bounded memory under a flood of addresses
                self._wrong.pop(next(iter(self._wrong)))

    def right(self, addr: str) -> None:
        with self._lock:
            self._wrong.pop(addr, None)


def security_headers(headers: dict | object, csp: str = CSP) -> None:
    """Headers every response carries: the CSP (no inline script), no sniffing, no framing, no referrer."""
    headers.setdefault("Content-Security-Policy", csp)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cache-Control", "no-store")
