"""LR range test (``python -m train ... --lr-find``): the learning rate grows geometrically each step
while the training loss is recorded; the run stops when the smoothed loss exceeds 4x its minimum.

Writes RUN/lr_find.json (lrs, raw and smoothed losses, suggestions) and RUN/lr_find.png. The
suggestions are fastai's two rules of thumb: the lr of the minimum smoothed loss divided by 10,
and the lr of the steepest descent of the smoothed loss. Nothing else in RUN is touched.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from train.config import TrainConfig

__all__ = ["lr_find", "suggest"]

_BETA = 0.98


def suggest(lrs: list[float], smoothed: list[float]) -> dict:
    """Pure: the two suggestions from a finished sweep."""
    losses = np.asarray(smoothed)
    i_min = int(np.argmin(losses))
    slope = np.gradient(losses, np.log(np.asarray(lrs))) if len(losses) > 2 else np.zeros_like(losses)
    i_steep = int(np.argmin(slope[: max(i_min, 1)]))
    return {"min_loss_lr": float(lrs[i_min]), "suggested_lr": float(lrs[i_min]) / 10,
            "steepest_lr": float(lrs[i_steep])}


def _sweep(run, lrs: np.ndarray) -> tuple[list[float], list[float]]:
    from train.engine import epoch_indices, loader

    cfg, d = run.cfg, run.d
    raw, smoothed, avg, best, i, epoch = [], [], 0.0, math.inf, 0, 0
    while i < len(lrs):
        order = epoch_indices(len(run.train_ds), d, cfg.seed, epoch, shuffle=True)
        for x, y, _ in loader(run.train_ds, order, cfg.batch_size, cfg.workers, d.device.type == "cuda", True):
            for group in run.opt.param_groups:
                group["lr"] = float(lrs[i])
            loss = float(run.step(x, y, cfg.train_sizes[0] if cfg.train_sizes else None).detach())
            avg = _BETA * avg + (1 - _BETA) * loss
            value = avg / (1 - _BETA ** (i + 1))
            raw.append(loss)
            smoothed.append(value)
            best = min(best, value)
            i += 1
            if i >= len(lrs) or not math.isfinite(value) or value > 4 * best:
                return raw, smoothed
        epoch += 1
    return raw, smoothed


def lr_find(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, *, start: float = 1e-7, end: float = 10.0,
            steps: int = 100, log=print) -> dict:
    import torch

    from train.distributed import init_distributed, shutdown
    from train.engine import write_json
    from train.fit import Run

    out = Path(run_dir)
    d = init_distributed(cfg.device)
    try:
        with torch.random.fork_rng(devices=[d.device] if d.device.type == "cuda" else []):
            out.mkdir(parents=True, exist_ok=True)
            run = Run(cfg, d, Path(data_dir), out, log=log)
            run.setup()
            run.check_sizes()
            run.start_phase(0)
            run.sched_per = None  # the sweep sets the lr itself
            run.train_mode()
            lrs = np.geomspace(start, end, steps)
            raw, smoothed = _sweep(run, lrs)
    finally:
        shutdown(d)
    result = {"lrs": lrs[: len(raw)].tolist(), "loss": raw, "smoothed": smoothed,
              **suggest(lrs[: len(raw)].tolist(), smoothed)}
    if d.main:
        write_json(out / "lr_find.json", result)
        _plot(result, out / "lr_find.png")
    return result


def _plot(result: dict, path: Path) -> None:
    from train.evaluate import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result["lrs"], result["loss"], alpha=0.3, label="loss")
    ax.plot(result["lrs"], result["smoothed"], label="smoothed loss")
    ax.axvline(result["suggested_lr"], color="red", ls="--", label=f"suggested {result['suggested_lr']:.1e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
