"""`torchrun --nproc_per_node 2 -m train` on the CPU (gloo): both ranks train, one writer, metrics gathered."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from train.phantoms import main as phantoms_main

    out = tmp_path_factory.mktemp("ddp") / "set"
    assert phantoms_main(["--out", str(out), "--patients", "16", "--seed", "3", "--size", "64", "--quiet"]) == 0
    return out


def test_two_gloo_processes_train_and_write_one_checkpoint(tiny_set, tmp_path):
    from train.data import load_dataset

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "train", "--data", str(tiny_set), "--out", str(run), "--preset", "test", "--image-size", "64",
           "--train-sizes", "64", "--batch-size", "4", "--epochs", "2", "--threads", "1", "--max-train-films", "16",
           "--val-fraction", "0.3", "--device", "cpu", "--max-minutes", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # one writer: one run's files, once, and nothing half-written
    assert sorted(p.name for p in run.glob("*.safetensors")) == ["best.safetensors", "last.safetensors"]
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert proc.stdout.count("best checkpoint:") == 1

    # both ranks ran: each rank's RNG state was gathered into the resume state, and they differ
    rng = torch.load(run / "last_state.pt", weights_only=True)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["cpu"], rng[1]["cpu"])

    # each rank trained half of every epoch: 16 films / 2 ranks / batch 4 = 2 steps per epoch
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and [h["epoch"] for h in metrics["history"]] == [1, 2]

    # metrics gathered from both ranks, the sampler's padding duplicates dropped: every test film once
    ds = load_dataset(tiny_set, task="all", val_fraction=0.3, seed=0)
    assert metrics["test"]["films"] == len(ds.test)
    assert metrics["val"]["films"] == len(ds.val)
