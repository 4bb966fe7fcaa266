"""The pieces the training loop is made of: batches, loaders, losses, prediction.

A training step's input: uint8 1×H×W films -> float -> augmentation (train only,
``train.augment``) -> resize to the epoch's train size -> 3 channels normalised with
edge.preprocess MEAN/STD (the one source of the normalisation) -> channels_last (optional).
Loaders yield (films, targets, dataset indices); the indices let ``predict`` put the
predictions of all ranks back in dataset order without the sampler's padding duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge.errors import XrayError
from train.config import TrainConfig, dumps

__all__ = ["FitError", "activation", "autocast", "criterion", "epoch_indices", "loader", "make_optimizer",
           "make_scheduler", "predict", "predict_films",
           "prepare_batch", "write_config", "write_json"]

_AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class FitError(XrayError):
    """A run folder, resume state, pretrained file or data problem the user can act on."""


def _torch():
    import torch
    return torch


# --- batches ---------------------------------------------------------------------------------------------

def prepare_batch(x, *, size: int | None = None, augment=None, generator=None, channels_last: bool = False):
    """uint8 N×1×H×W films -> normalised float N×3×size×size network input (augmented if ``augment``)."""
    torch = _torch()
    import torch.nn.functional as F

    from edge.preprocess import MEAN, STD
    from train.augment import augment_batch

    x = x.float().div_(255.0)
    if augment is not None:
        x = augment_batch(x, augment, generator)
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1) / 255.0
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1) / 255.0
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class _Indexed:
    """A film dataset whose batches also carry their dataset indices (for gathering across ranks)."""

    def __init__(self, films):
        self.films = films

    def __len__(self) -> int:
        return len(self.films)

    def __getitem__(self, i: int):
        x, y = self.films[i]
        return x, y, i

    def __getitems__(self, indices: list[int]):
        torch = _torch()
        if hasattr(self.films, "batch"):
            x, y = self.films.batch(indices)
            return x, y, torch.as_tensor(indices, dtype=torch.int64)
        return [self[i] for i in indices]


def _collate(batch):
    if isinstance(batch, tuple):
        return batch
    from torch.utils.data import default_collate
    return default_collate(batch)


def loader(films, indices: list[int], batch_size: int, workers: int, pin: bool, drop_last: bool):
    from torch.utils.data import BatchSampler, DataLoader

    return DataLoader(_Indexed(films), batch_sampler=BatchSampler(indices, batch_size, drop_last),
                      num_workers=workers, collate_fn=_collate, pin_memory=pin)


def epoch_indices(n: int, d, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """This rank's dataset indices for an epoch (a function of seed and epoch only)."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=d.world, rank=d.rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def autocast(device, amp: str):
    torch = _torch()
    dtype = getattr(torch, _AMP_DTYPES.get(amp, "float32"))
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


# --- losses and outputs ----------------------------------------------------------------------------------

def activation(kind: str, logits):
    """Scores in 0-1: sigmoid per label (multilabel) or softmax over the classes (one-vs-all)."""
    torch = _torch()
    return torch.sigmoid(logits) if kind == "multilabel" else torch.softmax(logits, 1)


def criterion(kind: str, y_train: np.ndarray, cfg: TrainConfig, device):
    torch = _torch()
    from train.splits import class_weights, pos_weight

    if kind == "multilabel":
        pw = torch.from_numpy(pos_weight(y_train)).to(device) if cfg.pos_weight else None
        return torch.nn.BCEWithLogitsLoss(pos_weight=pw)
    weight = torch.from_numpy(class_weights(y_train)).to(device) if cfg.class_weight else None
    ce = torch.nn.CrossEntropyLoss(weight=weight)
    return lambda logits, y: ce(logits, y.argmax(1))


# --- optimizer and schedule ------------------------------------------------------------------------------

def make_optimizer(cfg: TrainConfig, params, lr: float):
    torch = _torch()
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    params = list(params)
    fused = {"fused": True} if params and params[0].is_cuda else {}  # one kernel for all parameters on a GPU
    return kinds[cfg.optimizer](params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused)


def _onecycle(cfg: TrainConfig, opt, lr: float, total_steps: int):
    from torch.optim.lr_scheduler import OneCycleLR

    low, high = cfg.momentum_range
    if total_steps < 4:
        raise FitError(f"the one-cycle schedule needs at least 4 steps per phase, this one has {total_steps}: "
                       "train more epochs, use a smaller batch, or --schedule constant")
    # at least one warm-up and one annealing step, however short the run
    pct = min(max(cfg.pct_start, 1.5 / total_steps), 1 - 1.5 / total_steps)
    return OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=pct,
                      div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor, cycle_momentum=True,
                      base_momentum=low, max_momentum=high), "step"


def _constant(cfg: TrainConfig, opt, lr: float, total_steps: int):
    from torch.optim.lr_scheduler import ConstantLR

    return ConstantLR(opt, factor=1.0, total_iters=0), "step"


def _plateau(cfg: TrainConfig, opt, lr: float, total_steps: int):
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    # CheXNet: lr / 10 whenever the validation loss stops falling.
    return ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=1), "epoch"


# name -> builder(cfg, optimizer, peak lr, steps in the phase) -> (scheduler, "step" | "epoch")
SCHEDULERS = {"onecycle": _onecycle, "constant": _constant, "plateau": _plateau}


def make_scheduler(cfg: TrainConfig, opt, lr: float, total_steps: int):
    return SCHEDULERS[cfg.schedule](cfg, opt, lr, total_steps)


# --- prediction ------------------------------------------------------------------------------------------

def predict(model, films, d, *, batch_size: int = 32, amp: str = "none", channels_last: bool = False,
            workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(logits, targets) of every film, in dataset order, gathered from all ranks."""
    torch = _torch()
    from train.distributed import gather_rows

    if len(films) == 0:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    was_training = model.training
    model.eval()
    out_z, out_y, out_i = [], [], []
    batches = loader(films, epoch_indices(len(films), d, 0, 0, shuffle=False), batch_size, workers,
                     d.device.type == "cuda", drop_last=False)
    with torch.no_grad():
        for x, y, i in batches:
            x = prepare_batch(x.to(d.device, non_blocking=True), channels_last=channels_last)
            with autocast(d.device, amp):
                out_z.append(model(x).float())
            out_y.append(y.to(d.device))
            out_i.append(i.to(d.device))
    model.train(was_training)
    _, z, y = gather_rows(d, torch.cat(out_i), torch.cat(out_z), torch.cat(out_y))
    return z.cpu().numpy(), y.cpu().numpy()


def predict_films(model, kind: str, data_dir: str | Path, data_meta: dict, split: str, *, cache_dir: str | Path,
                  size: int = 224, batch_size: int = 32, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(targets, scores) of one split of the dataset a checkpoint was trained on (for train.evaluate)."""
    torch = _torch()
    from train.data import CachedFilms, build_cache, load_dataset
    from train.distributed import Dist, pick_device

    ds = load_dataset(data_dir, task=data_meta["task"], val_fraction=data_meta["val_fraction"],
                      seed=data_meta["seed"], split=data_meta["split"])
    films = getattr(ds, split)
    if not films:
        raise FitError(f"{data_dir}: the {split} split has no films")
    cache = build_cache(ds.films, cache_dir, size, workers=None, progress=True)
    d = Dist(device=pick_device(device, 0))
    z, y = predict(model.to(d.device), CachedFilms(cache, films), d, batch_size=batch_size)
    return y, activation(kind, torch.from_numpy(z)).numpy()



def write_json(path: Path, data: dict) -> None:
    from edge.fsio import atomic_write_bytes, json_default

    atomic_write_bytes(path, json.dumps(data, indent=2, default=json_default).encode())


def write_config(path: Path, cfg: TrainConfig) -> None:
    from edge.fsio import atomic_write_bytes

    atomic_write_bytes(path, dumps(cfg).encode())
