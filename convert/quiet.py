"""Keep TensorFlow's, absl's and onnx2tf's start-up noise off the user's terminal.

TensorFlow writes lines like ``E0000 ... Unable to register cuDNN factory`` and ``computation placer already
registered`` from C++ before its logging is initialised (``TF_CPP_MIN_LOG_LEVEL`` does not reach them), and the
TFLite converter logs ``Ignored output_format`` through absl: all to file descriptor 2, where a new user reads them
as errors. ``native_stderr_hidden`` points descriptor 2 at a temporary file for the conversion and restores it
after; convert's own progress goes to stdout and its errors are printed after the restore. When the conversion
fails with something other than a ConvertError (a bug), the hidden output's tail is shown with it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

from convert.errors import ConvertError

__all__ = ["native_stderr_hidden"]

_TAIL = 4000


@contextlib.contextmanager
def native_stderr_hidden(hide: bool = True) -> Iterator[None]:
    """While active (``hide``), everything written to file descriptor 2 goes to a temporary file."""
    if not hide:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except (ConvertError, KeyboardInterrupt):
            raise
        except Exception:
            _restore(saved)
            sink.seek(max(0, sink.seek(0, os.SEEK_END) - _TAIL))
            tail = sink.read().decode("utf-8", "replace").strip()
            if tail:
                print(f"(the conversion's own messages before the failure, last part)\n{tail}", file=sys.stderr)
            raise
        finally:
            _restore(saved)
            os.close(saved)


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
