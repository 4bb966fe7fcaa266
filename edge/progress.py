"""The terminal side of a long run: a tiny progress bar with films/s (no tqdm on the Pi), safe
one-line printing of file names, and Ctrl-C that stops cleanly after the current film."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TextIO

__all__ = ["Progress", "StopOnSignal", "printable"]


def printable(text: str) -> str:
    """One line, whatever a file name holds: control characters and stray surrogates escaped."""
    out = []
    for ch in text:
        if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


class Progress:
    """``[#####-----] 12/40  2.3 films/s  ETA 12s`` redrawn in place on a terminal.

    Off a terminal (a log file) it prints a plain line every ``every`` films; ``enabled=False`` is silent.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True, width: int = 24,
                 every: int = 25):
        self.total, self.width, self.every = total, width, every
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.done = 0
        self.scored = 0
        self.start = time.monotonic()
        self._drawn = False

    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.scored / elapsed if elapsed > 0 else 0.0

    def update(self, *, scored: bool) -> None:
        """One more path handled (``scored``: it went through the model, counts for films/s)."""
        self.done += 1
        self.scored += int(scored)
        if self.tty:
            self._draw()
        elif self.enabled and (self.done % self.every == 0 or self.done == self.total):
            self.stream.write(f"{self._text()}\n")
            self.stream.flush()

    def message(self, line: str) -> None:
        """Print one line above the bar (the bar is redrawn after it)."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
        self.stream.write(printable(line) + "\n")
        if self.tty and self._drawn:
            self._draw()
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _text(self) -> str:
        rate = self.rate()
        left = self.total - self.done
        eta = f"ETA {left / rate:.0f}s" if rate > 0 and left else ""
        return f"{self.done}/{self.total} films  {rate:.2f} films/s  {eta}".rstrip()

    def _draw(self) -> None:
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r\x1b[K[{bar}] {self._text()}")
        self.stream.flush()
        self._drawn = True


class StopOnSignal:
    """SIGINT/SIGTERM: the first sets ``event`` (stop after the current film), the second stops at once.

    ``signum`` tells which arrived (exit status 128 + signum). Installed only from the main thread.
    """

    def __init__(self, stream: TextIO | None = None):
        self.event, self.signum, self.stream, self._old = threading.Event(), 0, stream or sys.stderr, {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handler(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()
        self.stream.write("\nstopping after the current film (press Ctrl-C again to stop at once)\n")
        self.stream.flush()
