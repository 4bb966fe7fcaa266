"""Reproducible CPU training: the same model, bit for bit, on every x86-64 machine.

PyTorch's CPU kernels pick their instructions by what the processor offers: ATen's vectorised
code (AVX2 or AVX-512), oneDNN's convolutions, MKL's matrix products; numpy's maths functions
(the phantom films' drawing) do the same. Each instruction set sums in another order, so the same
training code yields a different model on an AVX-512 machine than on an AVX2 one. Pinning every
one of them to AVX2, which every x86-64 server this project trains on has, and fixing the number
of threads (reductions are split by thread) makes the float results identical.

The variables must be in the environment before torch and numpy load: ``python -m train
--reproducible`` starts itself again with them (``reexec_pinned``), and the test session sets them
for every stage it runs (``pinned_env``). ``check_pinned`` is what training asserts.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

__all__ = ["PINNED_THREADS", "PIN_HINT", "check_pinned", "is_pinned", "pinned_env", "reexec_pinned"]

PINNED_THREADS = 2  # the CI machines' cores; the model depends on it, so it is part of the recipe

# numpy's run-time dispatch targets above AVX2 (names it does not know are ignored).
_NUMPY_ABOVE_AVX2 = ("AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL "
                     "AVX512_SPR")

_ISA_PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",        # ATen's vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",         # oneDNN convolutions (PyTorch's and TensorFlow's)
    "MKL_CBWR": "AVX2,STRICT",            # MKL's conditional numerical reproducibility, alignment-independent
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": _NUMPY_ABOVE_AVX2,
}
_MARK = "XRAY_REPRODUCIBLE_THREADS"
PIN_HINT = "python -m train --reproducible sets the pins itself; set them before Python starts to call fit() directly"


def pinned_env(threads: int = PINNED_THREADS, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the instruction sets and threads pinned."""
    env = dict(os.environ if base is None else base)
    env.update(_ISA_PINS)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), _MARK: str(threads)})
    return env


def is_pinned(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return _MARK in environ and all(environ.get(k) == v for k, v in _ISA_PINS.items())


def _x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def check_pinned(threads: int, device: str = "cpu") -> list[str]:
    """What stands between this process and a reproducible run on ``device`` (empty: nothing)."""
    if not _x86_64():
        return [f"reproducible CPU training is defined for x86-64 machines, not {platform.machine()}"]
    problems = [f"training runs on {device}, not the CPU"] if device != "cpu" else []
    problems += [f"{k}={v} is not set" for k, v in _ISA_PINS.items() if os.environ.get(k) != v]
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        problems.append(f"PyTorch's CPU kernels use {capability}, not AVX2 (this CPU may lack AVX2)")
    if torch.get_num_threads() != threads:
        problems.append(f"PyTorch uses {torch.get_num_threads()} threads, not {threads}")
    return problems


def reexec_pinned(module: str, argv: list[str], threads: int = PINNED_THREADS) -> None:
    """Start ``python -m module argv`` again with the pins, unless they are already in place."""
    if is_pinned() or not _x86_64():
        return  # pinned already, or not x86-64 (training then says why it cannot be reproducible)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], pinned_env(threads))
