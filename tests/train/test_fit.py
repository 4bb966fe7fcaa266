"""The training loop on a tiny phantom set at 64 px: files, learning, thresholds, resume, CLI errors (issue 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

torch = pytest.importorskip("torch")

# A few steps of the real DenseNet-121 on 64 px films: 2 epochs x 4 steps of batch 4.
TINY = dict(image_size=64, train_sizes=[64], batch_size=4, epochs=2, lr=1e-3, max_train_films=16, threads=1,
            val_fraction=0.3, log_every=100, max_minutes=None)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    from train.phantoms import main as phantoms_main

    out = tmp_path_factory.mktemp("phantoms") / "set"
    assert phantoms_main(["--out", str(out), "--patients", "16", "--seed", "3", "--size", "64", "--quiet"]) == 0
    return out


def _cfg(**changes):
    from train.config import resolve

    return resolve("test", {**TINY, **changes})


@pytest.fixture(scope="module")
def tiny_run(tiny_set, tmp_path_factory) -> tuple[Path, dict]:
    from train.fit import fit

    run = tmp_path_factory.mktemp("run") / "run"
    result = fit(_cfg(), tiny_set, run, log=lambda *a: None)
    return run, result


def test_fit_writes_the_run_files(tiny_run):
    run, result = tiny_run
    for name in ("best.safetensors", "last.safetensors", "last_state.pt", "config.json", "metrics.json", "roc.png",
                 "pr.png", "cooccurrence.png", "history.png"):
        assert (run / name).is_file(), name
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]  # no half-written files left
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["steps"] == result["steps"] == 2 * 4
    assert json.loads((run / "config.json").read_text())["batch_size"] == 4


def test_best_checkpoint_describes_the_model(tiny_run):
    from train.checkpoint import model_from_checkpoint
    from train.labels import LABELS

    run, result = tiny_run
    model, meta = model_from_checkpoint(run / "best.safetensors")
    assert meta["task"] == "multilabel" and meta["labels"] == list(LABELS) and meta["head"] == "chexnet"
    assert set(meta["thresholds"]) == set(LABELS)
    assert meta["data"]["kind"] == "phantom" and meta["data"]["split"] == "official"
    assert meta["config"]["image_size"] == 64 and meta["preprocess"]["size"] == 64
    test = meta["metrics"]["test"]
    assert test["macro_auroc"] == result["test_macro_auroc"]
    assert test["evaluated_labels"] and set(test["evaluated_labels"]) <= set(LABELS)


def test_thresholds_are_chosen_on_validation_films(tiny_run, tiny_set):
    from train.checkpoint import model_from_checkpoint
    from train.data import CachedFilms, build_cache, load_dataset
    from train.distributed import Dist
    from train.engine import activation, predict
    from train.evaluate import choose_thresholds

    run, _ = tiny_run
    model, meta = model_from_checkpoint(run / "best.safetensors")
    ds = load_dataset(tiny_set, task="all", val_fraction=meta["data"]["val_fraction"], seed=meta["data"]["seed"])
    cache = build_cache(ds.films, run / "cache", 64, progress=False)

    def chosen(films):
        z, y = predict(model, CachedFilms(cache, films), Dist())
        return choose_thresholds(y, activation("multilabel", torch.from_numpy(z)).numpy(), meta["labels"], "f1")

    on_val = chosen(ds.val)
    assert meta["thresholds"] == pytest.approx(on_val, rel=1e-5)
    assert chosen(ds.test) != pytest.approx(on_val, rel=1e-5)


def test_config_presets_resolve_and_round_trip_through_json():
    from train.config import PRESETS, ConfigError, TrainConfig, from_json, resolve

    for name in PRESETS:
        cfg = resolve(name)
        assert from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    chexnet = resolve("chexnet")
    assert (chexnet.head, chexnet.optimizer, chexnet.lr, chexnet.betas, chexnet.batch_size) == (
        "chexnet", "adam", 1e-3, [0.9, 0.999], 16)
    paper = resolve("paper")
    assert paper.head == "paper" and paper.schedule == "onecycle" and paper.head_epochs > 0
    assert (paper.rotation, paper.zoom, paper.zoom_p, paper.brightness, paper.contrast) == (30.0, 1.3, 0.5, 0.4, 0.4)
    assert resolve("test", {"lr": 0.01, "max_minutes": None}).lr == 0.01
    assert resolve("test", {"max_minutes": None}).max_minutes is None
    with pytest.raises(ConfigError, match="unknown config field"):
        resolve("test", {"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="unknown field"):
        from_json({**TrainConfig().to_json(), "extra": 1})


def test_augmentation_is_seeded_per_step_and_keeps_the_batch_shape():
    from train.augment import AugmentParams, augment_batch, step_generator

    x = torch.rand(4, 1, 32, 32)
    p = AugmentParams()
    a = augment_batch(x, p, step_generator(0, 5))
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, augment_batch(x, p, step_generator(0, 5)))  # same (seed, step): same draw
    assert not torch.equal(a, augment_batch(x, p, step_generator(0, 6)))
    assert not torch.equal(a, augment_batch(x, p, step_generator(0, 5, rank=1)))
    state = torch.get_rng_state()
    off = AugmentParams(rotation=0, zoom=1.0, zoom_p=0, brightness=0, contrast=0)
    assert torch.equal(augment_batch(x, off, step_generator(0, 5)), x)  # nothing asked, nothing changed
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is never touched


def test_prepare_batch_normalises_with_edge_mean_and_std():
    from edge.preprocess import MEAN, STD
    from train.engine import prepare_batch

    x = torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    out = prepare_batch(x, size=4)
    assert out.shape == (2, 3, 4, 4)
    for c in range(3):
        assert float(out[0, c, 0, 0]) == pytest.approx((200 - MEAN[c]) / STD[c], rel=1e-5)


def test_training_steps_lower_the_loss(tiny_set, tmp_path):
    """Eight steps on one batch (no augmentation) must fit it better: the loop really learns."""
    from train.distributed import Dist
    from train.engine import prepare_batch
    from train.fit import Run

    run = Run(_cfg(augment=False, lr=1e-3, schedule="constant"), Dist(), tiny_set, tmp_path, log=lambda *a: None)
    run.setup()
    run.start_phase(0)
    x, y = run.train_ds.batch(list(range(8)))

    def loss() -> float:  # in training mode: BatchNorm normalises with the batch's statistics
        with torch.no_grad():
            return float(run.criterion(run.model(prepare_batch(x)), y))

    run.train_mode()
    before = loss()
    for _ in range(8):
        run.step(x, y, None)
    assert loss() < 0.5 * before


def test_resume_continues_the_same_run(tiny_set, tmp_path, tiny_run):
    """Stopped after 3 of 8 steps (mid-epoch 1) and resumed: the same weights as the uninterrupted run."""
    from safetensors.torch import load_file

    from train.fit import fit

    quiet = {"log": lambda *a: None}
    run = tmp_path / "run"
    paused = fit(_cfg(), tiny_set, run, stop_after_steps=3, **quiet)
    assert paused["stopped"] and paused["step"] == 3
    assert not (run / "metrics.json").exists() or "test" not in json.loads((run / "metrics.json").read_text())
    result = fit(_cfg(), tiny_set, run, resume=True, **quiet)
    assert result["steps"] == tiny_run[1]["steps"]
    whole, resumed = load_file(tiny_run[0] / "last.safetensors"), load_file(run / "last.safetensors")
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    assert result["test_macro_auroc"] == tiny_run[1]["test_macro_auroc"]


def test_two_phases_freeze_the_body(tiny_set, tmp_path):
    from safetensors.torch import load_file

    from train.fit import fit

    run = tmp_path / "run"
    fit(_cfg(epochs=1, head_epochs=1, head="paper"), tiny_set, run, stop_after_steps=4, log=lambda *a: None)
    after_phase1 = load_file(run / "last.safetensors")
    fit(_cfg(epochs=1, head_epochs=1, head="paper"), tiny_set, run, resume=True, log=lambda *a: None)
    after_phase2 = load_file(run / "last.safetensors")
    body = [k for k in after_phase1 if k.startswith("features.")]
    head = [k for k in after_phase1 if k.startswith("head.") and k.endswith("weight")]
    assert all(torch.equal(after_phase1[k], after_phase2[k]) for k in body)  # weights and BN statistics
    assert any(not torch.equal(after_phase1[k], after_phase2[k]) for k in head)


def test_one_vs_all_task_trains_with_weighted_cross_entropy(tiny_set, tmp_path):
    from train.checkpoint import model_from_checkpoint
    from train.fit import fit

    run = tmp_path / "run"
    result = fit(_cfg(task="pneumothorax", epochs=1, max_train_films=None, schedule="constant"), tiny_set, run,
                 log=lambda *a: None)
    model, meta = model_from_checkpoint(run / "best.safetensors")
    assert meta["task"] == "one_vs_all" and meta["labels"] == ["Other finding", "Pneumothorax"]
    assert set(meta["thresholds"]) == {"Other finding", "Pneumothorax"}
    assert result["steps"] == meta["data"]["films"]["train"] // 4 >= 1
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 2)


def _train_cli(*args: str):
    from train.__main__ import main

    return main(list(args))


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "unknown preset"),
    (["--epochs", "0"], "epochs must be positive"),
    (["--task", "lungs"], "task 'lungs' is not one of"),
    (["--head", "resnet"], "head 'resnet' is not one of"),
    (["--pretrained", "/nonexistent/densenet121.pth"], "pretrained"),
])
def test_cli_refuses_bad_options_in_one_line(tiny_set, tmp_path, capsys, args, message):
    rc = _train_cli("--data", str(tiny_set), "--out", str(tmp_path / "run"), "--image-size", "64", *args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_refuses_a_missing_data_folder(tmp_path, capsys):
    assert _train_cli("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--preset", "test") == 2
    assert "data folder not found" in capsys.readouterr().err


def test_cli_refuses_missing_images(tiny_set, tmp_path, capsys):
    import shutil

    broken = tmp_path / "set"
    shutil.copytree(tiny_set, broken)
    victim = sorted((broken / "images").iterdir())[0]
    victim.unlink()
    assert _train_cli("--data", str(broken), "--out", str(tmp_path / "run"), "--preset", "test") == 2
    assert "not found" in capsys.readouterr().err


def test_cli_protects_an_existing_run_and_checks_resume(tiny_run, tiny_set, tmp_path, capsys):
    run, _ = tiny_run
    assert _train_cli("--data", str(tiny_set), "--out", str(run), "--preset", "test") == 2
    assert "--resume" in capsys.readouterr().err
    assert _train_cli("--data", str(tiny_set), "--out", str(tmp_path / "empty"), "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert _train_cli("--data", str(tiny_set), "--out", str(run), "--resume", "--lr", "0.5") == 2
    assert "lr" in capsys.readouterr().err
    (run / "last_state.pt").write_bytes(b"garbage")  # module fixture: this test runs last among its users
    assert _train_cli("--data", str(tiny_set), "--out", str(run), "--resume") == 2
    assert "unreadable resume state" in capsys.readouterr().err


def _cli_args(data: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "train", "--data", str(data), "--out", str(run), "--preset", "test",
            "--image-size", "64", "--train-sizes", "64", "--batch-size", "4", "--epochs", "3", "--threads", "1",
            "--max-train-films", "16", "--val-fraction", "0.3", "--checkpoint-minutes", "0.0001", "--no-augment"]


def test_sigkill_mid_training_then_resume(tiny_set, tmp_path):
    """Issue 6: `python -m train` killed with SIGKILL mid-run; --resume finishes the same run."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli_args(tiny_set, run), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = run / "last_state.pt"
    try:
        deadline = time.monotonic() + 300
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= torch.load(state, weights_only=True)["run"]["step"] < 12
    assert not (run / "metrics.json").exists() or "test" not in json.loads((run / "metrics.json").read_text())
    done = subprocess.run(_cli_args(tiny_set, run) + ["--resume"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout and "test macro AUROC" in done.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 12 and [h["epoch"] for h in metrics["history"] if not h["partial"]] == [1, 2, 3]
    assert np.isfinite(metrics["test"]["macro_auroc"])


def test_lr_find_sweeps_and_suggests(tiny_set, tmp_path):
    from train.lr_find import lr_find, suggest

    result = lr_find(_cfg(), tiny_set, tmp_path / "run", start=1e-5, end=1.0, steps=6, log=lambda *a: None)
    assert 1 <= len(result["lrs"]) <= 6 and result["lrs"] == sorted(result["lrs"])
    assert (tmp_path / "run" / "lr_find.png").is_file()
    assert json.loads((tmp_path / "run" / "lr_find.json").read_text())["suggested_lr"] == result["suggested_lr"]
    assert not (tmp_path / "run" / "best.safetensors").exists()
    # pure rule: the minimum of the smoothed loss is at lr 1e-2 -> suggest 1e-3
    picked = suggest([1e-4, 1e-3, 1e-2, 1e-1], [1.0, 0.8, 0.5, 2.0])
    assert picked["min_loss_lr"] == 1e-2 and picked["suggested_lr"] == pytest.approx(1e-3)
