"""Checkpoints: model weights as safetensors plus a JSON description, never a pickle.

One file, ``*.safetensors``: tensors are the model's state dict; the safetensors metadata
holds one key, ``"xray"``, a JSON object (``meta`` below). Convert reads nothing else::

    format        "xray-checkpoint"
    version       1
    arch          "densenet121"
    head          "chexnet" | "paper"
    task          "multilabel" | "one_vs_all"
    labels        ordered output labels
    thresholds    {label: operating threshold chosen on validation data}
    preprocess    edge.preprocess.PREPROCESS the films were cached with
    data          {"kind": "phantom" | "nih", "dir": ..., "val_fraction": ..., "seed": ...}
    config        the resolved training config
    metrics       the evaluation numbers on held-out data (e.g. {"test": {"macro_auroc": ...}})

Writes are atomic (temporary file, fsync, rename), so a crash never leaves a half file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edge.errors import XrayError
from edge.fsio import atomic_write_bytes
from edge.preprocess import PREPROCESS
from train.model import DenseNet121, build_model

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "model_from_checkpoint",
           "save_checkpoint", "weights_digest"]

CHECKPOINT_FORMAT = "xray-checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED = ("arch", "head", "task", "labels", "thresholds", "preprocess", "data", "config")


class CheckpointError(XrayError):
    """A checkpoint is missing, damaged, or not one this code can use. Names the file."""


def save_checkpoint(path: str | Path, model: DenseNet121, meta: dict) -> None:
    """Write ``model``'s weights and ``meta`` (see module doc) atomically to ``path``."""
    from safetensors.torch import save

    full = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": model.arch,
            "head": model.head_name, "preprocess": PREPROCESS, **meta}
    missing = [k for k in _REQUIRED if k not in full]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(path), save(state, metadata={"xray": json.dumps(full)}))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read (state_dict, meta). Raises CheckpointError naming the file and the problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    try:
        state = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({err})") from None
    raw = header.get("__metadata__", {}).get("xray")
    if raw is None:
        raise CheckpointError(f"{path}: a safetensors file, but not an xray-edge checkpoint (no 'xray' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r} v{meta.get('version')!r} "
                              f"is not {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint description lacks {', '.join(missing)}")
    return state, meta


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the weights alone (names, dtypes, shapes, bytes), not of the description beside them:
    two runs trained the same model exactly when their digests are equal."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def model_from_checkpoint(path: str | Path) -> tuple[DenseNet121, dict]:
    """Build the network a checkpoint describes and load its weights (eval mode)."""
    state, meta = load_checkpoint(path)
    try:
        model = build_model(num_classes=len(meta["labels"]), head=meta["head"], arch=meta["arch"])
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0][:300]
        raise CheckpointError(f"{path}: weights do not fit {meta['arch']} with the {meta['head']} head "
                              f"and {len(meta['labels'])} labels ({first})") from None
    return model.eval(), meta
