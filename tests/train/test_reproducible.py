"""Issue 12: reproducible CPU training. The same recipe trains the same model on every x86-64 machine.

The session model (tests/conftest.py, trained ``--reproducible``) must have the same weights on an
AVX2 machine and on an AVX-512 one: its digest is recorded here. Also: the pins are set before torch
loads, the thread count does not follow the machine's cores, and a run that cannot be pinned is refused.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

torch = pytest.importorskip("torch")

# weights_digest of the session model (train.repro pins; preset test; phantoms 220/7/0.35). Measured on an
# AMD EPYC with AVX2 and no AVX-512; the pins exist so that an AVX-512 machine trains the same weights.
SESSION_WEIGHTS_SHA256 = "84fec9cb296bf78d00617882e49f409c9c74ac1dabd2e4e82867c6aa80e97bf4"

x86_64 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="pins are for x86-64")


def _lscpu() -> str:
    lscpu = shutil.which("lscpu")
    out = subprocess.run([lscpu], capture_output=True, text=True, check=False).stdout if lscpu else ""
    flags = next((line for line in out.splitlines() if line.startswith("Flags")), "")
    model = next((line for line in out.splitlines() if line.startswith("Model name")), "")
    isa = sorted({f for f in flags.split() if f.startswith(("avx2", "avx512f", "avx512_vnni", "avx512_bf16"))})
    return f"{model.split(':')[-1].strip()} {' '.join(isa)}"


@x86_64
@pytest.mark.slow
def test_the_session_model_has_the_same_weights_on_every_machine(checkpoint):
    from train.checkpoint import load_checkpoint, weights_digest

    state, meta = load_checkpoint(checkpoint)
    assert meta["config"]["reproducible"] and meta["config"]["threads"] == 2
    digest = weights_digest(state)
    assert digest == SESSION_WEIGHTS_SHA256, (
        f"the session model's weights differ from the recorded ones on this CPU ({_lscpu()}). Either the "
        f"training recipe changed on purpose (then check `make seed-spread` and record {digest}), or this machine "
        "trains differently despite train.repro's pins: find which kernel escapes them")


def _tiny_args(data: Path, run: Path) -> list[str]:
    return ["-m", "train", "--data", str(data), "--out", str(run), "--preset", "test", "--image-size", "64",
            "--train-sizes", "64", "--batch-size", "4", "--epochs", "2", "--max-train-films", "16",
            "--val-fraction", "0.3", "--max-minutes", "0", "--reproducible"]


@x86_64
def test_reproducible_runs_agree_whatever_the_cores_and_record_the_pins(tmp_path):
    """``--reproducible`` restarts itself pinned; on one core it still uses 2 threads and trains the same."""
    from train.checkpoint import load_checkpoint, weights_digest
    from train.phantoms import main as phantoms_main

    data = tmp_path / "set"
    assert phantoms_main(["--out", str(data), "--patients", "16", "--seed", "3", "--size", "64", "--quiet"]) == 0
    digests = []
    for name, prefix in (("all", []), ("one", ["taskset", "-c", "0"] if shutil.which("taskset") else [])):
        run = tmp_path / name
        proc = subprocess.run([*prefix, sys.executable, *_tiny_args(data, run)], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(weights_digest(load_checkpoint(run / "best.safetensors")[0]))
        assert f"weights sha256: {digests[-1]}" in proc.stdout
        config = json.loads((run / "config.json").read_text())
        assert config["reproducible"] is True and config["threads"] == 2
    assert digests[0] == digests[1]


def test_an_unpinned_process_cannot_train_reproducibly(tmp_path):
    """fit() in a process started without the pins is refused before any work, naming what is missing."""
    from train.config import resolve
    from train.engine import FitError
    from train.fit import fit

    cfg = resolve("test", {"reproducible": True, "image_size": 64, "train_sizes": [64]})
    assert cfg.threads == 2  # the thread count is part of a reproducible recipe
    with pytest.raises(FitError, match="--reproducible: .*(ATEN_CPU_CAPABILITY|x86-64)"):
        fit(cfg, tmp_path / "no-data", tmp_path / "run", log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_reproducible_is_for_the_cpu():
    from train.config import ConfigError, resolve

    with pytest.raises(ConfigError, match="reproducible is for CPU"):
        resolve("test", {"reproducible": True, "device": "cuda"})


def test_pinned_env_pins_every_kernel_family_and_keeps_the_rest():
    from train.repro import is_pinned, pinned_env

    env = pinned_env(3, base={"PATH": "/bin", "ATEN_CPU_CAPABILITY": "avx512"})
    assert env["PATH"] == "/bin" and is_pinned(env) and not is_pinned({"PATH": "/bin"})
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_CBWR"].startswith("AVX2") and "AVX512F" in env["NPY_DISABLE_CPU_FEATURES"]
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
