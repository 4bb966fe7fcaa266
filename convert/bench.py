"""``python -m convert.bench PATH...``: latency of the same network in each form, 1 and 2 threads.

PATH is a bundle folder (int8 and fp32 TFLite) and/or a checkpoint (PyTorch eager fp32 and
onnxruntime fp32, exported to a temporary ONNX file). Each figure is the median of ``--runs``
single-image invokes after ``--warmup`` runs; printed as a table, and written as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["bench_bundle", "bench_checkpoint", "main", "median_ms"]


def median_ms(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 2)


def _tflite_fn(path: Path, image: np.ndarray, threads: int) -> Callable[[], object]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
    return interp.invoke


def bench_bundle(path: Path, image: np.ndarray, threads: list[int], runs: int, warmup: int) -> list[dict]:
    from edge.bundle import load_bundle

    bundle = load_bundle(path)
    rows = []
    for kind, label in (("int8", "TFLite int8"), ("fp32", "TFLite fp32")):
        model = bundle.model_path(kind)
        if model is None:
            continue
        for t in threads:
            rows.append({"runtime": label, "threads": t,
                         "median_ms": median_ms(_tflite_fn(model, image, t), runs, warmup)})
    return rows


def bench_checkpoint(path: Path, image: np.ndarray, threads: list[int], runs: int, warmup: int) -> list[dict]:
    import onnxruntime as ort
    import torch

    from convert.export import INPUT_NAME, export_onnx, make_wrapper
    from train.checkpoint import model_from_checkpoint

    model, meta = model_from_checkpoint(path)
    wrapper, x = make_wrapper(model, meta["task"]), torch.from_numpy(image[None].copy())
    rows, before = [], torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, meta["task"], Path(tmp) / "model.onnx")
        for t in threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = t, 1
            session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
            feed = {INPUT_NAME: image[None]}
            rows.append({"runtime": "onnxruntime fp32", "threads": t,
                         "median_ms": median_ms(lambda s=session, f=feed: s.run(None, f), runs, warmup)})
    try:
        for t in threads:
            torch.set_num_threads(t)
            with torch.inference_mode():
                rows.append({"runtime": "PyTorch eager fp32", "threads": t,
                             "median_ms": median_ms(lambda: wrapper(x), runs, warmup)})
    finally:
        torch.set_num_threads(before)
    return rows


def _table(rows: list[dict]) -> str:
    lines = [f"{'runtime':<22}{'threads':>8}{'median ms':>12}"]
    lines += [f"{r['runtime']:<22}{r['threads']:>8}{r['median_ms']:>12.1f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.bench", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, help="bundle folder(s) and/or checkpoint(s)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    from convert.errors import ConvertError
    from edge.errors import EdgeError
    from train.checkpoint import CheckpointError

    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    rows: list[dict] = []
    try:
        for path in args.paths:
            bench = bench_bundle if path.is_dir() else bench_checkpoint
            rows += [{**r, "source": str(path)} for r in bench(path, image, args.threads, args.runs, args.warmup)]
    except (ConvertError, EdgeError, CheckpointError) as err:
        print(f"convert.bench: error: {err}", file=sys.stderr)
        return 2
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
