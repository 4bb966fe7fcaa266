"""``python -m train.bench`` (``make bench-train``): training images/s of the real loop at 224×224.

It writes a few phantom films (1024² PNGs, like NIH's) into a temporary folder and times the
training step of ``train.fit`` (loader, augmentation, forward, backward, optimizer) with the
film cache and without it (every film decoded from its PNG each time), on the CPU and, when
torch sees a GPU, on the GPU with bf16 autocast and channels_last. Prints a table and JSON.
A benchmark, not a test: figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from edge.cli import run_main
from edge.errors import XrayError

__all__ = ["SETUPS", "bench", "main"]

# device -> the settings the loop uses there (plain data)
SETUPS = {
    "cpu": {"amp": "none", "channels_last": False, "batch_size": 16, "workers": 0, "steps": 3},
    "cuda": {"amp": "bf16", "channels_last": True, "batch_size": 256, "workers": 8, "steps": 30},
}


def _make_films(root: Path, patients: int) -> Path:
    from train.phantoms import main as phantoms_main

    data = root / "phantoms"
    if phantoms_main(["--out", str(data), "--patients", str(patients), "--seed", "0", "--quiet"]) != 0:
        raise RuntimeError("could not make phantom films")
    return data


def _time_steps(run, steps: int, warmup: int = 2) -> float:
    """Images per second over ``steps`` timed steps after ``warmup`` steps."""
    import torch

    from train.engine import loader

    n = len(run.train_ds)
    bs = run.cfg.batch_size
    indices = [i % n for i in range((steps + warmup) * bs)]
    batches = iter(loader(run.train_ds, indices, bs, run.cfg.workers, run.d.device.type == "cuda", True))
    run.train_mode()
    sync = torch.cuda.synchronize if run.d.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        x, y, _ = next(batches)
        run.step(x, y, None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y, _ = next(batches)
        run.step(x, y, None)
    sync()
    return steps * bs / (time.perf_counter() - t0)


def bench(data: Path, out: Path, device: str, cache: bool, steps: int | None = None,
          batch_size: int | None = None) -> dict:
    import torch

    from train.config import resolve
    from train.distributed import Dist
    from train.fit import Run

    setup = dict(SETUPS[device])
    setup["batch_size"] = batch_size or setup["batch_size"]
    steps = steps or setup.pop("steps")
    setup.pop("steps", None)
    cfg = resolve("paper", {**setup, "cache": cache, "cache_dir": str(out / "cache"), "schedule": "constant",
                            "device": device, "train_sizes": [], "image_size": 224, "max_minutes": None})
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    run = Run(cfg, Dist(device=dev), data, out / f"run-{device}-{cache}", log=lambda *a: None)
    run.setup()
    run.start_phase(0)
    rate = _time_steps(run, steps)
    return {"device": device, "amp": cfg.amp, "channels_last": cfg.channels_last, "cache": cache,
            "batch_size": cfg.batch_size, "workers": cfg.workers, "steps": steps, "images_per_s": round(rate, 2)}


def _table(rows: list[dict]) -> str:
    head = f"{'device':6} {'amp':5} {'ch_last':7} {'cache':5} {'batch':>5} {'img/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['device']:6} {r['amp']:5} {str(r['channels_last']):7} {str(r['cache']):5} "
                     f"{r['batch_size']:>5} {r['images_per_s']:>9.1f}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--steps", type=int, help="timed steps per setting (default: 3 on CPU, 30 on GPU)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--patients", type=int, default=8, help="phantom patients to make (~2.5 films each)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def _run(args: argparse.Namespace) -> int:
    import torch

    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        raise XrayError("--device cuda, but torch sees no GPU")
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        data = _make_films(Path(tmp), args.patients)
        for device in devices:
            for cache in (True, False):
                rows.append(bench(data, Path(tmp), device, cache, args.steps, args.batch_size))
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print(_table(rows))
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name(0) if "cuda" in devices else None, "results": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("train.bench", lambda: _parser().parse_args(argv), _run)


if __name__ == "__main__":
    sys.exit(main())
