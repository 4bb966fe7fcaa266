"""``python -m convert.bench PATH...``: latency of the same network in each form, 1 and 2 threads.

PATH is a bundle folder (int8 and fp32 TFLite) and/or a checkpoint (PyTorch eager fp32 and
onnxruntime fp32, exported to a temporary ONNX file). Every form is loaded first; then the timed
single-image invokes are taken in ``--rounds`` rounds, each round giving every form and thread
count its share of ``--runs`` in turn, so a slow spell of a shared machine falls on all of them
alike rather than on whichever ran then. Each figure is the median of its ``--runs`` invokes after
``--warmup`` untimed ones. The ratio int8 / PyTorch eager (issue 5's target: at most 0.5) is
printed per thread count with the table, and written as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.cli import positive, run_main

__all__ = ["Form", "bench_bundle", "bench_checkpoint", "main", "measure", "ratios"]

INT8, TORCH = "TFLite int8", "PyTorch eager fp32"
TARGET_RATIO = 0.5  # int8 invoke <= 0.5x PyTorch eager fp32 (issue 5)


@dataclass
class Form:
    """One network form at one thread count: ``fn`` runs one invoke; ``enter`` (untimed) runs before
    each of its blocks of invokes (PyTorch's thread count is process-wide)."""

    runtime: str
    threads: int
    fn: Callable[[], object]
    enter: Callable[[], object] = lambda: None
    times: list[float] = field(default_factory=list)


def measure(forms: list[Form], runs: int, warmup: int, rounds: int = 5) -> list[dict]:
    """Median ms of ``runs`` invokes per form, interleaved in ``rounds`` rounds (see the module doc)."""
    rounds = max(1, min(rounds, runs))
    for form in forms:
        form.enter()
        for _ in range(warmup):
            form.fn()
    for r in range(rounds):
        share = runs // rounds + (r < runs % rounds)
        for form in forms:
            form.enter()
            for _ in range(share):
                t0 = time.perf_counter()
                form.fn()
                form.times.append(time.perf_counter() - t0)
    return [{"runtime": f.runtime, "threads": f.threads, "median_ms": round(1000 * statistics.median(f.times), 2),
             "runs": len(f.times)} for f in forms]


def _tflite_fn(path: Path, image: np.ndarray, threads: int) -> Callable[[], object]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
    return interp.invoke


def bench_bundle(path: Path, image: np.ndarray, threads: list[int]) -> list[Form]:
    """The bundle's int8 and fp32 TFLite models, loaded, at each thread count."""
    from edge.bundle import load_bundle

    bundle = load_bundle(path)
    forms = []
    for kind, label in (("int8", INT8), ("fp32", "TFLite fp32")):
        model = bundle.model_path(kind)
        if model is not None:
            forms += [Form(label, t, _tflite_fn(model, image, t)) for t in threads]
    return forms


@contextmanager
def bench_checkpoint(path: Path, image: np.ndarray, threads: list[int]) -> Iterator[list[Form]]:
    """onnxruntime (a temporary ONNX export) and PyTorch eager forms of the checkpoint's network."""
    import onnxruntime as ort
    import torch

    from convert.export import INPUT_NAME, export_onnx, make_wrapper
    from train.checkpoint import model_from_checkpoint

    model, meta = model_from_checkpoint(path)
    wrapper, x = make_wrapper(model, meta["task"]), torch.from_numpy(image[None].copy())
    before = torch.get_num_threads()
    forms = []

    def eager() -> object:
        with torch.inference_mode():
            return wrapper(x)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, meta["task"], Path(tmp) / "model.onnx")
        for t in threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = t, 1
            session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
            feed = {INPUT_NAME: image[None]}
            forms.append(Form("onnxruntime fp32", t, lambda s=session, f=feed: s.run(None, f)))
        forms += [Form(TORCH, t, eager, lambda t=t: torch.set_num_threads(t)) for t in threads]
        try:
            yield forms
        finally:
            torch.set_num_threads(before)


def ratios(rows: list[dict]) -> dict[str, float]:
    """int8 / PyTorch eager median per thread count ("1", "2", ...) where exactly one of each was timed
    (two bundles or two checkpoints make the pairing ambiguous: no ratio then)."""
    out = {}
    for t in sorted({r["threads"] for r in rows}):
        int8 = [r["median_ms"] for r in rows if r["runtime"] == INT8 and r["threads"] == t]
        torch = [r["median_ms"] for r in rows if r["runtime"] == TORCH and r["threads"] == t]
        if len(int8) == len(torch) == 1:
            out[str(t)] = round(int8[0] / torch[0], 3)
    return out


def _table(rows: list[dict], ratio: dict[str, float]) -> str:
    lines = [f"{'runtime':<22}{'threads':>8}{'median ms':>12}"]
    lines += [f"{r['runtime']:<22}{r['threads']:>8}{r['median_ms']:>12.1f}" for r in rows]
    lines += [f"int8 / PyTorch eager at {t} thread(s): {v:.3f} (target <= {TARGET_RATIO}: "
              f"{'met' if v <= TARGET_RATIO else 'NOT met'})" for t, v in ratio.items()]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert.bench", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, help="bundle folder(s) and/or checkpoint(s)")
    p.add_argument("--runs", type=positive, default=40, help="timed invokes per form and thread count")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=positive, default=5, help="interleaved rounds the runs are spread over")
    p.add_argument("--threads", type=positive, nargs="+", default=[1, 2])
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p


def _measure_all(args: argparse.Namespace) -> list[dict]:
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    with ExitStack() as stack:
        forms, sources = [], []
        for path in args.paths:
            found = (bench_bundle(path, image, args.threads) if path.is_dir()
                     else stack.enter_context(bench_checkpoint(path, image, args.threads)))
            forms += found
            sources += [str(path)] * len(found)
        return [{**r, "source": s} for r, s in zip(measure(forms, args.runs, args.warmup, args.rounds), sources,
                                                   strict=True)]


def _run(args: argparse.Namespace) -> int:
    rows = _measure_all(args)
    ratio = ratios(rows)
    print(_table(rows, ratio))
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "rounds": min(args.rounds, args.runs), "results": rows,
                                         "int8_over_pytorch": ratio}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("convert.bench", lambda: _parser().parse_args(argv), _run)

if __name__ == "__main__":
    sys.exit(main())
