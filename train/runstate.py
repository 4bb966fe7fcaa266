"""A run's validation, resume state and final evaluation (the parts of ``train.fit.Run`` that touch files).

``last_state.pt`` holds plain tensors and containers only: ``torch.save`` writes it, and it is
read with ``torch.load(weights_only=True)``, which refuses anything else (no pickled code)::

    version, config (TrainConfig as JSON data), model (state dict), optimizer, scheduler,
    scaler (their state dicts), rng ([{cpu, cuda?} per rank]), run (epoch, batch, step, phase,
    best score / epoch / validation metrics / thresholds, history, elapsed, done)
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from train.engine import FitError, write_json

if TYPE_CHECKING:
    from train.fit import Run

__all__ = ["RESUMABLE_FIELDS", "RunState", "final_evaluation", "load_state", "rng_states", "save_state", "validation"]

STATE_VERSION = 1
# Config fields a resumed run may change: they do not alter what is learned.
RESUMABLE_FIELDS = ("workers", "threads", "max_minutes", "checkpoint_minutes", "log_every", "cache_dir", "device")


@dataclass
class RunState:
    """A run's counters and results so far: saved in ``last_state.pt`` (as ``run``, a plain dict) and
    restored on resume."""

    epoch: int = 0
    batch: int = 0  # batches done in this epoch
    step: int = 0
    phase: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    best_val: dict | None = None
    best_thresholds: dict | None = None
    thresholds: dict | None = None
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0  # seconds trained before this process
    done: bool = False
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def validation(run: Run) -> dict:
    """Validation loss, macro AUROC, thresholds chosen on it, and all metrics at those thresholds."""
    import torch

    from train.engine import activation, predict
    from train.evaluate import choose_thresholds, metrics

    cfg, labels = run.cfg, run.dataset.labels
    z, y = predict(run.model, run.val_ds, run.d, batch_size=2 * cfg.batch_size, amp=cfg.amp,
                   channels_last=cfg.channels_last, workers=cfg.workers)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    with torch.no_grad():
        loss = float(run.criterion(zt.to(run.d.device), yt.to(run.d.device)))
    scores = activation(run.dataset.kind, zt).numpy()
    thresholds = choose_thresholds(y, scores, labels, cfg.threshold_rule)
    numbers = metrics(y, scores, labels, thresholds, cfg.eval_labels)
    return {"loss": loss, "macro_auroc": numbers["macro_auroc"], "thresholds": thresholds, "metrics": numbers}


def rng_states(d) -> list[dict]:
    """Every rank's RNG states (CPU, and CUDA when used), gathered on all ranks."""
    import torch

    mine = {"cpu": torch.get_rng_state()}
    if d.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(d.device)
    if not d.enabled:
        return [mine]
    import torch.distributed as dist
    out: list = [None] * d.world
    dist.all_gather_object(out, mine)
    return out


def save_state(path: Path, run: Run, rng: list[dict]) -> None:
    import torch

    from edge.fsio import atomic_write_bytes

    state = {"version": STATE_VERSION, "config": run.cfg.to_json(),
             "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
             "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
             "scaler": run.scaler.state_dict(), "rng": rng, "run": run.state.to_dict()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _read_state(path: Path) -> dict:
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise FitError(f"{path}: unreadable resume state ({type(err).__name__}: {str(err).splitlines()[0][:200]})") \
            from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise FitError(f"{path}: not a resume state of version {STATE_VERSION}")
    return state


def load_state(path: Path, run: Run) -> None:
    """Put ``run`` back where ``last_state.pt`` left it: weights, optimizer, schedule, RNG, counters."""
    import torch

    state = _read_state(path)
    saved, now = state["config"], run.cfg.to_json()
    changed = sorted(k for k in saved if k not in RESUMABLE_FIELDS and saved[k] != now.get(k))
    if changed:
        raise FitError(f"{path}: the run was made with other {', '.join(changed)}; a resume continues the same run")
    run.model.load_state_dict(state["model"])
    run.state = dataclasses.replace(run.state, **state["run"])
    run.start_phase(run.state.phase)
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    rng = state["rng"][run.d.rank] if len(state["rng"]) == run.d.world else state["rng"][0]
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and run.d.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], run.d.device)
    best = run.out / "best.safetensors"
    if run.state.best_epoch is not None and best.is_file():
        from train.checkpoint import CheckpointError, load_checkpoint
        try:
            run.best_weights, _ = load_checkpoint(best)
        except CheckpointError as err:
            raise FitError(str(err)) from None


def _best_weights(run: Run) -> dict:
    weights = getattr(run, "best_weights", None)
    if weights is None:
        raise FitError(f"{run.out}: no best weights to evaluate (best.safetensors is missing)")
    return weights


def final_evaluation(run: Run) -> dict:
    """Best weights -> test metrics and plots -> best.safetensors (with the metrics) and metrics.json."""
    from train.checkpoint import save_checkpoint
    from train.engine import activation, predict
    from train.evaluate import write_report

    cfg, d, st = run.cfg, run.d, run.state
    run.model.load_state_dict(_best_weights(run))
    thresholds = st.best_thresholds
    test = None
    if run.test_films:
        z, y = predict(run.model, run.test_ds, d, batch_size=2 * cfg.batch_size, amp=cfg.amp,
                       channels_last=cfg.channels_last, workers=cfg.workers)
        if d.main:
            import torch
            scores = activation(run.dataset.kind, torch.from_numpy(z)).numpy()
            test = write_report(run.out, y, scores, run.dataset.labels, thresholds, cfg.eval_labels, name="test")
    summary = {"run": str(run.out), "best": str(run.out / "best.safetensors"), "best_epoch": st.best_epoch,
               "epochs_run": len(st.history), "steps": st.step, "seconds": round(run.elapsed(), 1),
               "stopped_early": st.stopped_early,
               "val_macro_auroc": (st.best_val or {}).get("macro_auroc"),
               "test_macro_auroc": test["macro_auroc"] if test else None,
               "evaluated_labels": test["evaluated_labels"] if test else []}
    if d.main:
        meta = run.meta({"val": st.best_val, "test": test}, thresholds=thresholds)
        meta["best_epoch"] = st.best_epoch
        save_checkpoint(run.out / "best.safetensors", run.model, meta)
        write_json(run.out / "metrics.json", {**summary, "history": st.history, "val": st.best_val,
                                              "test": test, "thresholds": thresholds})
        plot_history(st.history, run.out / "history.png")
    return summary


def plot_history(history: list[dict], path: Path) -> Path:
    from train.evaluate import pyplot

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
    b.plot(epochs, [h["val_macro_auroc"] or float("nan") for h in history], "o-", label="validation macro AUROC")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
