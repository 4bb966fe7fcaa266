"""The training loop: films -> a DenseNet-121 checkpoint with thresholds and held-out metrics.

``fit(cfg, data_dir, run_dir)`` writes into RUN (rank 0 only when torchrun starts several):

* ``config.json``: the resolved ``TrainConfig``;
* ``best.safetensors``: the weights of the epoch with the best validation macro AUROC, the
  per-label operating thresholds chosen on that epoch's validation predictions
  (``train.evaluate.choose_thresholds``), and at the end the validation and test metrics
  (``train.checkpoint`` format, which convert reads);
* ``last.safetensors`` + ``last_state.pt``: the latest weights, and all a resume needs (weights,
  optimizer, scheduler, grad scaler, epoch, batch, step, every rank's RNG state, history), saved
  at each epoch end and every ``checkpoint_minutes``. The state holds plain tensors and
  containers only (``torch.save``), read with ``torch.load(weights_only=True)``;
* ``metrics.json`` (history, validation and test numbers), ``roc.png``, ``pr.png``,
  ``cooccurrence.png`` (test split), ``history.png``.

Every file is written under a temporary name and renamed, so a kill at any moment leaves the
previous complete file. ``resume=True`` continues the same run from ``last_state.pt``: same
schedule, same data order (an epoch's order depends on seed and epoch only; batches already
done are skipped), same augmentation draws (seeded per step) and dropout RNG.

Phases: ``epochs`` over the whole network, then ``head_epochs`` over the head alone with the
body frozen (its BatchNorm statistics too), each with its own one-cycle schedule.
``max_minutes`` ends training cleanly (validation, checkpoints, test evaluation) when the
budget is spent; the time spent before a resume counts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from edge.preprocess import PREPROCESS
from train.config import TrainConfig
from train.engine import FitError, write_config, write_json
from train.runstate import RunState

__all__ = ["FitError", "Run", "data_kind", "fit"]


def fit(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, *, resume: bool = False, log=print,
        stop_after_steps: int | None = None) -> dict:
    """Train (or resume) the run in ``run_dir``; returns a summary (metrics and paths).

    ``stop_after_steps``: end this invocation once that many optimizer steps are done in all,
    with the resume state saved and nothing evaluated (time-sliced jobs; the resume tests).
    """
    import torch

    from train.distributed import init_distributed, shutdown
    from train.repro import PIN_HINT, check_pinned

    try:
        d = init_distributed(cfg.device)
    except RuntimeError as err:
        raise FitError(str(err)) from None
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.reproducible and (problems := check_pinned(cfg.threads, d.device.type)):
            raise FitError("--reproducible: " + "; ".join(problems) + f" ({PIN_HINT})")
        with torch.random.fork_rng(devices=[d.device] if d.device.type == "cuda" else []):
            run = Run(cfg, d, Path(data_dir), Path(run_dir), log=log if d.main else _quiet)
            return run.run(resume=resume, stop_after_steps=stop_after_steps)
    finally:
        torch.set_num_threads(threads)
        shutdown(d)


def _quiet(*args, **kwargs) -> None:
    return None


def data_kind(data_dir: Path) -> str:
    return "phantom" if (data_dir / "phantoms.json").is_file() else "nih"


class Run:
    """One training run in one process (one rank): set-up, epochs, checkpoints, final evaluation."""

    def __init__(self, cfg: TrainConfig, d, data_dir: Path, out: Path, log=print):
        self.cfg, self.d, self.data_dir, self.out, self.log = cfg, d, data_dir, out, log
        self.t0 = time.monotonic()
        self.last_save = self.t0
        self.state = RunState()
        self.opt = None  # made by start_phase
        self.last_val: dict | None = None  # the latest validation's metrics

    # --- set-up --------------------------------------------------------------------------------------------

    def run(self, resume: bool, stop_after_steps: int | None) -> dict:
        self._check_out(resume)
        self.setup()
        self.check_sizes()
        if resume:
            self._restore()
        elif self.d.main:
            write_config(self.out / "config.json", self.cfg)
        self.log(f"training {self.cfg.head} head, task {self.cfg.task}: {len(self.train_films)} train / "
                 f"{len(self.val_films)} val / {len(self.test_films)} test films, {self.steps_per_epoch} steps "
                 f"per epoch on {self.d.device} x{self.d.world}")
        if not self.state.done and not self._train(stop_after_steps):
            return {"stopped": True, "step": self.state.step, "run": str(self.out)}
        return self._final()

    def _check_out(self, resume: bool) -> None:
        if self.d.main:
            self.out.mkdir(parents=True, exist_ok=True)
        taken = [n for n in ("last_state.pt", "best.safetensors") if (self.out / n).exists()]
        if taken and not resume:
            raise FitError(f"{self.out}: already holds a run ({', '.join(taken)}); resume it with --resume or "
                           "choose another --out")
        if resume and not (self.out / "last_state.pt").is_file():
            raise FitError(f"{self.out}: nothing to resume (no last_state.pt); start without --resume")

    def setup(self) -> None:
        """Data, model, loss (shared with the LR range test and the benchmark)."""
        self._load_data()
        self._build_model()
        if self.d.device.type == "cuda":
            import torch
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels

    def _load_data(self) -> None:
        from train.data import CachedFilms, DecodedFilms, build_cache, load_dataset

        cfg = self.cfg
        ds = load_dataset(self.data_dir, task=cfg.task, val_fraction=cfg.val_fraction, seed=cfg.seed, split=cfg.split)
        self.dataset = ds
        self.train_films = _subset(ds.train, cfg.max_train_films, cfg.seed)
        self.val_films, self.test_films = ds.val, ds.test
        per_rank = -(-len(self.train_films) // self.d.world)
        self.steps_per_epoch = per_rank // cfg.batch_size
        if cfg.cache:
            cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache"
            if self.d.main:
                build_cache(ds.films, cache_dir, cfg.image_size, workers=None, progress=sys.stderr.isatty())
            self.d.barrier()
            cache = build_cache(ds.films, cache_dir, cfg.image_size, workers=None, progress=False)
            wrap = lambda films: CachedFilms(cache, films)  # noqa: E731
        else:
            wrap = lambda films: DecodedFilms(films, cfg.image_size)  # noqa: E731
        self.train_ds, self.val_ds, self.test_ds = (wrap(f) for f in (self.train_films, self.val_films,
                                                                      self.test_films))
        self.y_train = np.stack([f.target for f in self.train_films])

    def check_sizes(self) -> None:
        """Refuse a training set smaller than one batch per process, or no validation films."""
        if self.steps_per_epoch == 0 or not self.val_films:
            raise FitError(f"{self.data_dir}: {len(self.train_films)} training and {len(self.val_films)} validation "
                           f"films are too few for batch size {self.cfg.batch_size} x {self.d.world} process(es)")

    def _build_model(self) -> None:
        import torch

        from train.augment import AugmentParams
        from train.engine import criterion
        from train.model import build_model, load_pretrained

        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # inside fit's fork_rng: the caller's RNG is left as it was
        model = build_model(len(self.dataset.labels), head=cfg.head, dropout=cfg.dropout)
        if cfg.pretrained:
            try:
                load_pretrained(model, cfg.pretrained)
            except (FileNotFoundError, ValueError, RuntimeError) as err:
                raise FitError(f"--pretrained: {str(err).splitlines()[0]}") from None
        model.to(self.d.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        torch.manual_seed(cfg.seed + 1 + self.d.rank)  # dropout: one stream per rank
        self.criterion = criterion(self.dataset.kind, self.y_train, cfg, self.d.device)
        self.augment = AugmentParams.from_config(cfg) if cfg.augment else None

    # --- phases, optimizer, schedule -----------------------------------------------------------------------

    def phase_of(self, epoch: int) -> int:
        return 0 if epoch < self.cfg.epochs else 1

    def start_phase(self, phase: int) -> None:
        """Freeze (phase 1) or unfreeze the body, and make the phase's optimizer and schedule."""
        import torch

        from train.engine import make_optimizer, make_scheduler

        cfg = self.cfg
        for p in self.model.features.parameters():
            p.requires_grad_(phase == 0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr = cfg.lr if phase == 0 else (cfg.head_lr or cfg.lr / 10)
        n_epochs = cfg.epochs if phase == 0 else cfg.head_epochs
        self.opt = make_optimizer(cfg, params, lr)
        self.sched, self.sched_per = make_scheduler(cfg, self.opt, lr, n_epochs * self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.d.device.type, enabled=cfg.amp == "fp16")
        self.net = self.model
        if self.d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.d.local_rank] if self.d.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.state.phase = phase

    def train_mode(self) -> None:
        self.net.train()
        if self.state.phase == 1:
            self.model.features.eval()  # a frozen body keeps its BatchNorm statistics

    def step(self, x, y, size: int | None):
        """One optimizer step on a uint8 batch; returns the (device) loss."""
        from train.augment import step_generator
        from train.engine import autocast, prepare_batch

        d, cfg = self.d, self.cfg
        g = step_generator(cfg.seed, self.state.step, d.rank, d.device) if self.augment else None
        x = prepare_batch(x.to(d.device, non_blocking=True), size=size, augment=self.augment, generator=g,
                          channels_last=cfg.channels_last)
        with autocast(d.device, cfg.amp):
            logits = self.net(x)
        loss = self.criterion(logits.float(), y.to(d.device, non_blocking=True))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.sched_per == "step":
            self.sched.step()
        return loss

    # --- the epochs ----------------------------------------------------------------------------------------

    def _train(self, stop_after_steps: int | None) -> bool:
        """Run the remaining epochs. False when stopped by ``stop_after_steps`` (state saved)."""
        from train.engine import epoch_indices, loader

        cfg, d = self.cfg, self.d
        total = cfg.epochs + cfg.head_epochs
        if self.opt is None:
            self.start_phase(self.phase_of(self.state.epoch))
        while self.state.epoch < total:
            epoch = self.state.epoch
            if self.phase_of(epoch) != self.state.phase:
                self.start_phase(self.phase_of(epoch))
            size = _train_size(cfg, epoch)
            order = epoch_indices(len(self.train_ds), d, cfg.seed, epoch, shuffle=True)
            order = order[self.state.batch * cfg.batch_size:self.steps_per_epoch * cfg.batch_size]
            batches = loader(self.train_ds, order, cfg.batch_size, cfg.workers, d.device.type == "cuda", True)
            outcome = self._epoch(batches, size, stop_after_steps)
            if outcome == "paused":
                self._save_last(None)
                return False
            self._end_epoch(partial=outcome == "budget")
            if outcome == "budget":
                self.state.stopped_early = True
                self.log(f"time budget of {cfg.max_minutes} min spent: training stops at epoch {epoch + 1}")
                break
        self.state.done = True
        self._save_last(self.last_val)
        return True

    def _epoch(self, batches, size: int | None, stop_after_steps: int | None) -> str:
        """Train on the batches; 'done', 'budget' (time spent) or 'paused' (stop_after_steps)."""
        import torch

        self.train_mode()
        self.loss_sum, self.loss_n = torch.zeros((), device=self.d.device), 0
        t, seen = time.monotonic(), 0
        for x, y, _ in batches:
            lr = self.opt.param_groups[0]["lr"]
            loss = self.step(x, y, size)
            self.loss_sum += loss.detach()
            self.loss_n += 1
            seen += len(x)
            self.state.batch += 1
            self.state.step += 1
            if self.state.step % self.cfg.log_every == 0:
                self.log(f"  epoch {self.state.epoch + 1} step {self.state.step}: loss "
                         f"{float(self.loss_sum) / self.loss_n:.4f}, lr {lr:.2e}, "
                         f"{seen * self.d.world / (time.monotonic() - t):.1f} img/s, {self.elapsed():.0f} s")
            stop, save = self._flags()
            if stop_after_steps is not None and self.state.step >= stop_after_steps:
                return "paused"
            if save:
                self._save_last(None)
            if stop:
                return "budget"
        return "done"

    def elapsed(self) -> float:
        return self.state.elapsed + time.monotonic() - self.t0

    def _flags(self) -> tuple[bool, bool]:
        """(stop: the time budget is spent, save: a periodic resume state is due), as rank 0 decides."""
        from train.distributed import sync_flags

        if self.d.enabled and self.state.step % 10:
            return False, False
        budget = self.cfg.max_minutes
        stop = budget is not None and self.elapsed() > budget * 60
        save = time.monotonic() - self.last_save > self.cfg.checkpoint_minutes * 60
        flags = sync_flags(self.d, [stop, save])
        return flags[0], flags[1]

    def _end_epoch(self, partial: bool) -> None:
        """Validate; keep the best; save last + resume state; log."""
        from train.checkpoint import save_checkpoint
        from train.runstate import validation

        val = validation(self)
        st = self.state
        score = val["macro_auroc"] if val["macro_auroc"] is not None else -val["loss"]
        record = {"epoch": st.epoch + 1, "step": st.step, "phase": st.phase, "partial": partial,
                  "train_loss": float(self.loss_sum) / max(self.loss_n, 1), "val_loss": val["loss"],
                  "val_macro_auroc": val["macro_auroc"], "lr": self.opt.param_groups[0]["lr"],
                  "train_size": _train_size(self.cfg, st.epoch) or self.cfg.image_size,
                  "seconds": round(self.elapsed(), 1)}
        st.history.append(record)
        if self.sched_per == "epoch":
            self.sched.step(val["loss"])
        st.thresholds = val["thresholds"]
        if st.best_score is None or score > st.best_score:
            st.best_score, st.best_epoch, st.best_val = score, st.epoch + 1, val["metrics"]
            st.best_thresholds = val["thresholds"]
            self.best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            if self.d.main:
                save_checkpoint(self.out / "best.safetensors", self.model, self.meta({"val": val["metrics"]}))
        if not partial:
            st.epoch, st.batch = st.epoch + 1, 0
        self.last_val = val["metrics"]
        self._save_last(val["metrics"])
        best = "  (best)" if st.best_epoch == record["epoch"] else ""
        self.log(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {val['loss']:.4f}, "
                 f"val macro AUROC {_fmt(val['macro_auroc'])}{best}, {record['seconds']:.0f} s")

    # --- files ---------------------------------------------------------------------------------------------

    def meta(self, metrics: dict, thresholds: dict | None = None) -> dict:
        labels = list(self.dataset.labels)
        th = thresholds or self.state.thresholds or {n: 0.5 for n in labels}
        cfg = self.cfg
        data = {"kind": data_kind(self.data_dir), "dir": str(self.data_dir.resolve()), "task": cfg.task,
                "val_fraction": cfg.val_fraction, "seed": cfg.seed, "split": cfg.split,
                "films": {"train": len(self.train_films), "val": len(self.val_films), "test": len(self.test_films)}}
        meta = {"task": self.dataset.kind, "labels": labels, "thresholds": th, "data": data, "config": cfg.to_json(),
                "metrics": metrics, "epoch": self.state.epoch, "step": self.state.step}
        if cfg.image_size != PREPROCESS["size"]:  # a test-size run says so; convert and edge then refuse it
            meta["preprocess"] = {**PREPROCESS, "size": cfg.image_size}
        return meta

    def _save_last(self, val_metrics: dict | None) -> None:
        """last.safetensors and last_state.pt (every rank's RNG state gathered to rank 0, which writes)."""
        from train.checkpoint import save_checkpoint
        from train.runstate import rng_states, save_state

        self.state.elapsed = self.elapsed()
        self.t0 = time.monotonic()
        self.last_save = self.t0
        rng = rng_states(self.d)
        if self.d.main:
            save_checkpoint(self.out / "last.safetensors", self.model, self.meta({"val": val_metrics}))
            save_state(self.out / "last_state.pt", self, rng)
            write_json(self.out / "metrics.json", {"history": self.state.history, "run": str(self.out)})

    def _restore(self) -> None:
        from train.runstate import load_state

        load_state(self.out / "last_state.pt", self)
        self.log(f"resuming {self.out} at epoch {self.state.epoch + 1}, step {self.state.step}")

    def _final(self) -> dict:
        from train.runstate import final_evaluation

        return final_evaluation(self)


def _train_size(cfg: TrainConfig, epoch: int) -> int | None:
    if not cfg.train_sizes:
        return None
    return cfg.train_sizes[min(epoch, len(cfg.train_sizes) - 1)]


def _subset(films: list, limit: int | None, seed: int) -> list:
    if limit is None or limit >= len(films):
        return films
    keep = np.sort(np.random.default_rng(seed).permutation(len(films))[:limit])
    return [films[i] for i in keep]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
