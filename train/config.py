"""Training configuration: one plain dataclass, and named presets as plain data.

A run's configuration is ``PRESETS[name]`` with the command line's overrides applied
(``resolve``); the result is written to RUN/config.json and into every checkpoint, so a
run can always be repeated and resumed exactly.

Presets:

* ``chexnet``: CheXNet (Rajpurkar et al. 2017): global-average-pool + Linear head, Adam
  lr 1e-3 β=(0.9, 0.999), BCE, 224 px, batch 16, lr /10 when the validation loss plateaus,
  random horizontal flips. ``--pretrained PATH`` for its ImageNet start.
* ``paper``: the seed paper's fastai recipe: concat-pool head, AdamW with the one-cycle
  policy (learning rate and momentum), rotation ±30°, zoom 1.3 (p=0.5), brightness and
  contrast 0.4, then a second phase that trains the head only with the body frozen.
  Set up for a GPU (bf16 autocast, channels_last).
* ``demo`` / ``test``: short CPU runs of the same network on phantom films (``make demo``
  and the test session's model). 224 px trains at ~3-5 images/s on two cores, so they train
  at 128 px (~3.5x faster) and spend only the last epoch at 224 px, the size the bundle runs
  and every validation and test is scored at (fastai's progressive resizing). Without that
  last epoch the scores at 224 px fall unpredictably (one run: 0.845 at 128 px, 0.774 at
  224 px). bf16 autocast is ~9x slower than fp32 on a CPU without AVX-512, so they use fp32.
  ``max_minutes`` is a safety net that bounds a run on a busy machine, not its planned length.

``batch_size`` is per process: ``torchrun --nproc_per_node N`` trains on N × batch_size films a step.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from edge.errors import XrayError

__all__ = ["AMP", "DEVICES", "OPTIMIZERS", "PRESETS", "SCHEDULES", "SPLITS", "THRESHOLD_RULES", "ConfigError",
           "TrainConfig", "dumps", "from_json", "preset_names", "resolve"]

AMP = ("none", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("onecycle", "constant", "plateau")
THRESHOLD_RULES = ("f1", "youden")
SPLITS = ("official", "random-images")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(XrayError, ValueError):
    """A configuration value a user gave is not allowed. The message says which and why."""


@dataclass
class TrainConfig:
    # What to learn
    task: str = "all"                      # train.splits.TASKS: all | findings | pneumothorax
    head: str = "chexnet"                  # train.model.HEADS: chexnet | paper
    dropout: float = 0.5                   # the paper head's dropout (unused by chexnet)
    pretrained: str | None = None          # torchvision ImageNet weights file; None = random init
    # Optimisation
    epochs: int = 3                        # phase 1: the whole network
    head_epochs: int = 0                   # phase 2: the head only, body frozen (the paper's second phase)
    head_lr: float | None = None           # phase 2 peak lr (default: lr / 10)
    batch_size: int = 16
    lr: float = 1e-3                       # peak lr of the one-cycle, or the constant lr
    weight_decay: float = 0.0
    optimizer: str = "adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "onecycle"
    pct_start: float = 0.25                # one-cycle: share of steps spent warming up
    div_factor: float = 25.0               # one-cycle: initial lr = lr / div_factor
    final_div_factor: float = 1e4          # one-cycle: final lr = initial lr / final_div_factor
    momentum_range: list[float] = field(default_factory=lambda: [0.85, 0.95])  # one-cycle β1 cycle
    pos_weight: bool = True                # multilabel: BCE pos_weight = n_neg / n_pos (training split)
    class_weight: bool = True              # one-vs-all: CE weights n / (k·n_c) (training split)
    # Speed
    device: str = "auto"                   # auto | cpu | cuda
    amp: str = "none"                      # none | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = False
    compile: bool = False                  # torch.compile the training forward/backward (GPU; slow to start)
    threads: int | None = None             # torch CPU threads for this run (None: torch's default, the cores)
    reproducible: bool = False             # CPU: instruction sets and threads pinned (train.repro), same model anywhere
    workers: int = 0                       # DataLoader workers (0: load in the training process)
    cache: bool = True                     # decode films once into a uint8 cache (False: decode every epoch)
    image_size: int = 224                  # cache and evaluation size; the bundle runs 224 (smaller: tests only)
    train_sizes: list[int] = field(default_factory=list)  # per-epoch train size (last repeats); [] = image_size
    # Augmentation (train batches only, on the batch's device)
    augment: bool = True
    rotation: float = 30.0                 # degrees, uniform in ±rotation
    zoom: float = 1.3                      # zoom in by up to this factor ...
    zoom_p: float = 0.5                    # ... with this probability
    brightness: float = 0.4                # fastai-style: logit shift of up to ±brightness
    contrast: float = 0.4                  # contrast scale in [1-c, 1/(1-c)] (log-uniform)
    hflip_p: float = 0.0                   # horizontal flip probability (CheXNet used 0.5)
    # Data
    seed: int = 0
    val_fraction: float = 0.1
    split: str = "official"                # official | random-images (leaks patients; warns)
    cache_dir: str | None = None           # None: RUN/cache
    max_train_films: int | None = None     # use a seeded subset of the training films
    # Evaluation and housekeeping
    threshold_rule: str = "f1"             # how per-label thresholds are picked on validation data
    eval_labels: str = "present"           # macro averages over labels with positives ("present") or "all"
    max_minutes: float | None = None       # time budget: training stops cleanly, then evaluates
    checkpoint_minutes: float = 10.0       # also save the resume state this often within an epoch
    log_every: int = 10                    # steps between progress lines

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

# Named presets: plain overrides of TrainConfig's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "chexnet": dict(head="chexnet", optimizer="adam", lr=1e-3, betas=[0.9, 0.999], batch_size=16, epochs=20,
                    schedule="plateau", weight_decay=0.0, rotation=0.0, zoom=1.0, zoom_p=0.0, brightness=0.0,
                    contrast=0.0, hflip_p=0.5, workers=8, task="all"),
    "paper": dict(head="paper", optimizer="adamw", lr=2e-3, weight_decay=1e-2, batch_size=64, epochs=15,
                  head_epochs=3, schedule="onecycle", amp="bf16", channels_last=True, workers=8, task="findings"),
    # 120 phantom patients (make demo): ~205 training films; 9 epochs at 128 px, the last at 224 px.
    "demo": dict(head="chexnet", optimizer="adamw", lr=1e-3, weight_decay=1e-4, batch_size=16, epochs=10,
                 train_sizes=[128] * 9 + [224], schedule="onecycle", rotation=10.0, zoom=1.1, zoom_p=0.5,
                 brightness=0.2, contrast=0.2, val_fraction=0.15, max_minutes=30.0, task="all"),
    # 220 phantom patients, 35% held out (the test session): ~273 training films, ~72 validation films
    # (calibration), ~190 test films (fidelity); measured test macro AUROC 0.895.
    "test": dict(head="chexnet", optimizer="adamw", lr=1e-3, weight_decay=1e-4, batch_size=16, epochs=8,
                 train_sizes=[128] * 7 + [224], schedule="onecycle", rotation=10.0, zoom=1.1, zoom_p=0.5,
                 brightness=0.2, contrast=0.2, val_fraction=0.2, max_minutes=30.0, task="all"),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def _check(cfg: TrainConfig) -> TrainConfig:
    """Refuse values that cannot work, naming the option and the choices."""
    choices = {"amp": AMP, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "threshold_rule": THRESHOLD_RULES,
               "split": SPLITS, "device": DEVICES, "eval_labels": ("present", "all")}
    from train.model import HEADS
    from train.splits import TASKS

    choices.update(head=tuple(HEADS), task=tuple(TASKS))
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    positive = ("epochs", "batch_size", "lr")
    for name in positive:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)!r}")
    if cfg.head_epochs < 0 or cfg.workers < 0 or cfg.threads is not None and cfg.threads < 1:
        raise ConfigError("head_epochs and workers must not be negative, threads at least 1")
    if cfg.reproducible and cfg.device == "cuda":
        raise ConfigError("reproducible is for CPU training (device cpu or auto), not cuda")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    if not 32 <= cfg.image_size <= 1024 or any(s < 32 or s > cfg.image_size for s in cfg.train_sizes):
        raise ConfigError(f"train_sizes must be within 32..image_size ({cfg.image_size}), got {cfg.train_sizes}")
    if cfg.zoom < 1.0 or not 0.0 <= cfg.contrast < 1.0 or cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise ConfigError("zoom must be >= 1, contrast in [0, 1), max_minutes positive")
    if cfg.reproducible and cfg.threads is None:
        from train.repro import PINNED_THREADS
        cfg = dataclasses.replace(cfg, threads=PINNED_THREADS)  # the thread count is part of the result
    return cfg


def resolve(preset: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """``TrainConfig()`` <- ``PRESETS[preset]`` <- ``overrides`` (a None value sets the field to None)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
        values.update(PRESETS[preset])
    unknown = sorted(set(overrides or {}) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown config field(s) {', '.join(unknown)}")
    values.update(overrides or {})
    return _check(TrainConfig(**values))


def from_json(data: dict[str, Any]) -> TrainConfig:
    """A config as written to RUN/config.json (unknown keys refused, so an old run is not misread)."""
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(f"config has unknown field(s) {', '.join(unknown)}")
    return _check(TrainConfig(**data))


def dumps(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_json(), indent=2, sort_keys=True)
