"""``python -m train --data DIR --out RUN [--preset NAME] [overrides...]``: train DenseNet-121.

DIR is an NIH-layout folder (ChestX-ray14 or a phantom set from ``python -m train.phantoms``).
RUN receives best.safetensors (thresholds and held-out metrics inside), last.safetensors and
last_state.pt (``--resume`` continues the same run after a crash), config.json, metrics.json
and plots. ``torchrun --nproc_per_node N -m train ...`` trains on N GPUs (or CPU processes).
User mistakes end with a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]

# CLI option -> TrainConfig field, for the plain overrides.
_OVERRIDES = ("task", "head", "epochs", "head_epochs", "head_lr", "batch_size", "lr", "weight_decay", "optimizer",
              "schedule", "pretrained", "amp", "channels_last", "workers", "seed", "val_fraction", "split",
              "max_minutes", "device", "max_train_films", "threshold_rule", "checkpoint_minutes", "log_every",
              "dropout", "image_size", "threads", "reproducible")


def _sizes(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,160,224, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    from train.config import AMP, OPTIMIZERS, SCHEDULES, SPLITS, THRESHOLD_RULES, preset_names

    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="NIH-layout data folder")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--preset", help=f"one of {', '.join(preset_names())} (default: paper; a resume: the run's own)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last_state.pt")
    p.add_argument("--lr-find", action="store_true", help="run an LR range test (RUN/lr_find.png, .json) and exit")
    g = p.add_argument_group("overrides of the preset")
    g.add_argument("--task", help="all | findings | pneumothorax")
    g.add_argument("--head", help="chexnet | paper")
    g.add_argument("--epochs", type=int)
    g.add_argument("--head-epochs", type=int, help="second phase: head only, body frozen")
    g.add_argument("--head-lr", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--dropout", type=float)
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--pretrained", help="torchvision DenseNet-121 ImageNet weights (.pth or .safetensors)")
    g.add_argument("--amp", choices=AMP)
    g.add_argument("--channels-last", action="store_true", default=None)
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the training step")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    g.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="decode films every epoch instead of once into a cache")
    g.add_argument("--cache", dest="cache_dir", help="film cache folder (default: RUN/cache)")
    g.add_argument("--image-size", type=int, help="cache/evaluation size (224 for a bundle; smaller for tests)")
    g.add_argument("--train-sizes", type=_sizes, help="per-epoch train sizes, e.g. 128,160,224 (last repeats)")
    g.add_argument("--workers", type=int)
    g.add_argument("--threads", type=int, help="torch CPU threads (default: all cores; --reproducible: 2)")
    g.add_argument("--reproducible", action="store_true", default=None,
                   help="CPU: pin instruction sets and threads so every x86-64 machine trains the same model")
    g.add_argument("--seed", type=int)
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--split", choices=SPLITS)
    g.add_argument("--max-minutes", type=float, help="time budget; training then stops cleanly and evaluates (0: none)")
    g.add_argument("--max-train-films", type=int)
    g.add_argument("--threshold-rule", choices=THRESHOLD_RULES)
    g.add_argument("--device", choices=("auto", "cpu", "cuda"))
    g.add_argument("--checkpoint-minutes", type=float)
    g.add_argument("--log-every", type=int)
    return p


def _overrides(args: argparse.Namespace) -> dict:
    names = _OVERRIDES + ("augment", "cache", "cache_dir", "train_sizes", "compile")
    out = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if out.get("max_minutes") == 0:
        out["max_minutes"] = None  # --max-minutes 0: no time budget
    return out


def _saved_config(run: Path):
    from train.config import ConfigError, from_json
    from train.engine import FitError

    path = run / "config.json"
    try:
        return from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise FitError(f"{path}: not found; nothing to resume in {run}") from None
    except (ValueError, TypeError, ConfigError) as err:
        raise FitError(f"{path}: not a readable run config ({err})") from None


def _config(args: argparse.Namespace):
    """The preset with overrides; for --resume the run's own config, refusing changes that alter it."""
    from train.config import resolve
    from train.engine import FitError
    from train.runstate import RESUMABLE_FIELDS

    overrides = _overrides(args)
    if not args.resume:
        return resolve(args.preset or "paper", overrides)
    saved = _saved_config(args.out)
    given = resolve(args.preset, overrides).to_json() if args.preset else overrides
    changed = sorted(k for k, v in given.items() if k not in RESUMABLE_FIELDS and getattr(saved, k) != v)
    if changed:
        raise FitError(f"--resume continues the run in {args.out} as it was configured; these differ from its "
                       f"config.json: {', '.join(changed)} (drop them, or train into another --out)")
    return resolve(None, {**saved.to_json(), **{k: v for k, v in overrides.items() if k in RESUMABLE_FIELDS}})


def _summary(result: dict, data_dir: Path) -> str:
    from train.checkpoint import load_checkpoint, weights_digest
    from train.fit import data_kind

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    labels = result["evaluated_labels"]
    budget = ", stopped by the time budget" if result["stopped_early"] else ""
    lines = [f"best checkpoint: {result['best']} (epoch {result['best_epoch']} of {result['epochs_run']} run, "
             f"{result['steps']} steps, {result['seconds']:.0f} s{budget})",
             f"test macro AUROC {fmt(result['test_macro_auroc'])} over {len(labels)} labels ({', '.join(labels)}); "
             f"validation {fmt(result['val_macro_auroc'])}",
             f"run folder: {result['run']} (config.json, metrics.json, roc.png, pr.png, history.png)",
             f"weights sha256: {weights_digest(load_checkpoint(result['best'])[0])}"]
    if data_kind(data_dir) == "phantom":
        lines.append("trained on phantom films: for demonstration only, not for diagnosis")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from train.fit import fit

    cfg = _config(args)
    if args.lr_find:
        from train.lr_find import lr_find
        result = lr_find(cfg, args.data, args.out)
        print(f"LR range test: suggested lr {result['suggested_lr']:.2e}; plot {args.out / 'lr_find.png'}")
        return 0
    result = fit(cfg, args.data, args.out, resume=args.resume)
    if not result.get("stopped"):
        import os
        if os.environ.get("RANK", "0") == "0":
            print(_summary(result, args.data))
    return 0


def _stopped(args: argparse.Namespace) -> str:
    return f"interrupted; continue with: python -m train --data {args.data} --out {args.out} --resume"


def main(argv: list[str] | None = None) -> int:
    from edge.cli import run_main

    return run_main("train", lambda: _parser().parse_args(argv), _run, _stopped)


if __name__ == "__main__":
    # libgomp's threads spin while they wait; on a CPU shared with other jobs that makes a 2-thread
    # backward pass several times slower than 1 thread. Passive waiting costs little when the CPU is
    # free. Only for this process, only when the user has not chosen, and only before torch loads.
    import os
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "--reproducible" in sys.argv[1:]:
        from train.repro import reexec_pinned
        reexec_pinned("train", sys.argv[1:])  # the pins must be in place before torch loads
    sys.exit(main())
