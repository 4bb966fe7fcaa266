"""Imported first by the edge commands (scan, serve, capture), before numpy loads: numpy's OpenBLAS with one
thread. Edge's matrices are small (a 1,024-wide novelty distance, 7×7 CAMs), so BLAS threads buy nothing, and
an OpenBLAS worker busy-waits after each call (system time): measured on 2 cores, a 315-film scan spent 14.8 s
of system time and took 27.3 s; with one thread, 0.8 s and 21.3 s. ``OPENBLAS_NUM_THREADS`` set by the user is
kept."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
