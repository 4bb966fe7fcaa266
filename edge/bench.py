"""``python -m edge.bench [--bundle DIR]`` (``make bench``): how fast and how lean the edge runtime is.

Measured on this machine with the bundle's int8 model (and its fp32 TFLite model when present):

- invoke time of the interpreter (median of ``--repeat`` runs on a real film) on all cores and on one,
  and bare-invoke films/s with the scans' interpreter threads (``--threads``, default all cores as in
  ``edge.scan``): the scan's throughput is compared with the same interpreter doing nothing but invoke;
- CPU Grad-CAM time per film (one label, and three labels with peak and 1024 px upsampling), as a
  share of the invoke time;
- end-to-end films/s of ``python -m edge.scan`` on 1024² PNG films (decode, hash, preprocess,
  invoke, CAM, overlays, SQLite commit per film), with the fixed start-up cost (imports, bundle
  verification, exports) measured on an empty folder and taken out; also without overlays, and with
  a one-thread interpreter (its ratio to one-thread bare invoke shows what the pipeline hides when
  decoding and overlays have a core of their own);
- peak memory (``ru_maxrss`` of the scan process, from ``os.wait4``) of a scan of 50 and of 500
  films: it should be flat, not grow with the number of films;
- import time of ``edge.runtime`` and ``edge.scan`` in a fresh interpreter.

The films are distinct 1024² PNGs made from the demo's phantom films (``make demo`` first), each
with a few pixels changed so that no two files have the same hash. The latency of the same
network under PyTorch and onnxruntime is in ``convert/bench.py`` (edge never imports them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edge.cli import run_main
from edge.errors import EdgeError

__all__ = ["main", "make_films"]

DEFAULT_BUNDLE = Path("demo-out/bundle")
DEFAULT_FILMS = (Path("demo-out/field/images"), Path("demo-out/phantoms/images"))
FILM_SIDE = 1024
MEMORY_COUNTS = (50, 500)
THROUGHPUT_FILMS = 50
_NEEDS_DEMO = "run `make demo` first (it trains and converts a demo model), or pass --bundle DIR"


# ---------------------------------------------------------------- films

def _sources(folders: list[Path]) -> list[Path]:
    found = [p for folder in folders if folder.is_dir() for p in sorted(folder.rglob("*.png"))]
    if not found:
        raise EdgeError(f"no PNG films found in {', '.join(map(str, folders))}: {_NEEDS_DEMO}, or pass --films DIR")
    return found


def make_films(sources: list[Path], out: Path, n: int, side: int = FILM_SIDE) -> list[Path]:
    """``n`` distinct side×side 8-bit PNGs made from ``sources`` (a few pixels encode the index)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = Image.open(sources[i % len(sources)]).convert("L")
        film = np.array(src.resize((side, side), Image.Resampling.BILINEAR) if src.size != (side, side) else src)
        film[0, :8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)
        path = out / f"film{i:04d}.png"
        Image.fromarray(film).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- in-process timings

def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _invoke_ms(bundle, x: np.ndarray, kind: str, threads: int | None, repeat: int) -> tuple[float, object]:
    from edge.runtime import open_model

    model = open_model(bundle, device="cpu", threads=threads, kind=kind)
    for _ in range(3):
        pred = model.predict(x)
    return statistics.median(model.predict(x).invoke_ms for _ in range(repeat)), pred


def _cam_ms(bundle, features: np.ndarray, repeat: int) -> dict[str, float]:
    from edge.cam import cam_peaks, grad_cam, load_head, upsample

    head = load_head(bundle)
    n_labels = len(bundle.labels)

    def three() -> None:
        for label in range(min(3, n_labels)):
            cam = grad_cam(head, features, label, bundle.task)
            cam_peaks(cam, (FILM_SIDE, FILM_SIDE))
            upsample(cam, (FILM_SIDE, FILM_SIDE))

    return {"cam_one_label_ms": _median_ms(lambda: grad_cam(head, features, 0, bundle.task), repeat * 5),
            "cam_three_labels_peak_upsample_ms": _median_ms(three, repeat)}


def _guard_ms(bundle, features: np.ndarray, film: Path, repeat: int) -> dict[str, float]:
    """The out-of-distribution guard per film: its distance (edge.novelty.judge), and the screen before the
    model (edge.screen.screen_file: the header / colour check, which rereads the file)."""
    from edge.novelty import judge, load_guard
    from edge.screen import screen_file

    guard = load_guard(bundle)
    out = {"screen_ms": _median_ms(lambda: screen_file(film), repeat)}
    if guard is not None:
        out["guard_ms"] = _median_ms(lambda: judge(guard, features), repeat * 5)
    return out


def timings(bundle, film: Path, threads: int, repeat: int) -> dict[str, float]:
    """Invoke times on all cores, on one, and on ``threads`` (the scans'): bare-invoke films/s at ``threads``."""
    from edge.preprocess import preprocess
    from edge.runtime import usable_cores

    x = preprocess(np.asarray(Image.open(film).convert("L")))
    cores = usable_cores()
    out: dict[str, float] = {}
    out["int8_invoke_ms"], pred = _invoke_ms(bundle, x, "int8", cores, repeat)
    out["int8_invoke_1thread_ms"], _ = _invoke_ms(bundle, x, "int8", 1, repeat)
    if bundle.model_path("fp32") is not None:
        out["fp32_tflite_invoke_ms"], _ = _invoke_ms(bundle, x, "fp32", cores, repeat)
    out.update(_cam_ms(bundle, pred.features, repeat))
    out["cam_share_of_invoke"] = out["cam_one_label_ms"] / out["int8_invoke_ms"]
    out.update(_guard_ms(bundle, pred.features, film, repeat))
    if "guard_ms" in out:
        out["guard_share_of_invoke"] = out["guard_ms"] / out["int8_invoke_ms"]
    out["scan_threads"] = threads
    scan_ms = {cores: out["int8_invoke_ms"], 1: out["int8_invoke_1thread_ms"]}.get(threads)
    out["bare_invoke_films_per_s"] = 1000.0 / (scan_ms or _invoke_ms(bundle, x, "int8", threads, repeat)[0])
    return out


# ---------------------------------------------------------------- child processes

def _run_child(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a child process; its failure is an error."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with proc.stdout:
        output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = output.decode(errors="replace")[-2000:]
        raise EdgeError(f"{' '.join(argv[:4])}… exited with {proc.returncode}:\n{tail}")
    return wall, usage.ru_maxrss / 1024.0  # Linux: KiB


def _scan(bundle: Path, films: Path, out: Path, threads: int, *extra: str) -> tuple[float, float]:
    argv = [sys.executable, "-m", "edge.scan", str(films), "--bundle", str(bundle), "--out", str(out), "--quiet",
            "--device", "cpu", "--threads", str(threads), *extra]
    return _run_child(argv)


def import_seconds(module: str, repeat: int = 3) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def scan_figures(bundle: Path, sources: list[Path], work: Path, threads: int,
                 counts: tuple[int, ...]) -> dict[str, float]:
    """Start-up cost, end-to-end films/s and peak memory of scans of ``counts`` films with ``threads``
    interpreter threads; for THROUGHPUT_FILMS also without overlays, and with a one-thread interpreter
    when ``threads`` > 1 (decoding and overlays then have the other cores to themselves)."""
    (work / "empty").mkdir()
    startup, _ = _scan(bundle, work / "empty", work / "out-empty", threads)
    films = work / "films"
    make_films(sources, films, max(counts))
    fig: dict[str, float] = {"scan_startup_s": startup}
    for n in counts:
        folder = work / f"films-{n}"
        folder.mkdir()
        for path in sorted(films.iterdir())[:n]:
            os.link(path, folder / path.name)
        wall, rss = _scan(bundle, folder, work / f"out-{n}", threads)
        fig[f"scan_{n}_wall_s"] = wall
        fig[f"scan_{n}_films_per_s"] = n / max(wall - startup, 1e-9)
        fig[f"scan_{n}_peak_rss_mib"] = rss
        if n == THROUGHPUT_FILMS:
            wall, _ = _scan(bundle, folder, work / f"out-{n}-no-overlays", threads, "--no-overlays")
            fig[f"scan_{n}_no_overlays_films_per_s"] = n / max(wall - startup, 1e-9)
            if threads > 1:
                wall, _ = _scan(bundle, folder, work / f"out-{n}-1thread", 1)
                fig[f"scan_{n}_1thread_films_per_s"] = n / max(wall - startup, 1e-9)
    return fig


# ---------------------------------------------------------------- command line

def _targets(fig: dict[str, float]) -> list[tuple[str, float, bool]]:
    """(target, figure, met) for the issue's targets that this run measured."""
    out = [("CAM <= 5% of invoke", fig["cam_share_of_invoke"], fig["cam_share_of_invoke"] <= 0.05)]
    if "guard_share_of_invoke" in fig:
        out.append(("guard <= 2% of invoke", fig["guard_share_of_invoke"], fig["guard_share_of_invoke"] <= 0.02))
    if "scan_over_bare_invoke" in fig:
        out.append(("scan >= 0.85x bare invoke", fig["scan_over_bare_invoke"], fig["scan_over_bare_invoke"] >= 0.85))
    rss = [v for k, v in fig.items() if k.endswith("_peak_rss_mib")]
    if rss:
        out.append(("scan peak memory <= 250 MB", max(rss) * 1.048576, max(rss) * 1.048576 <= 250))
    return out


def _report(fig: dict[str, float]) -> str:
    key = f"scan_{THROUGHPUT_FILMS}_films_per_s"
    if key in fig:
        fig["scan_over_bare_invoke"] = fig[key] / fig["bare_invoke_films_per_s"]
    key = f"scan_{THROUGHPUT_FILMS}_1thread_films_per_s"
    if key in fig:
        fig["scan_1thread_over_bare_invoke_1thread"] = fig[key] * fig["int8_invoke_1thread_ms"] / 1000.0
    lines = [f"  {name:36s} {value:10.3f}" for name, value in fig.items()]
    lines += [f"  target {name:29s} {'met' if ok else 'NOT met'} ({value:.3f})" for name, value, ok in _targets(fig)]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.bench", description="Benchmark the edge runtime.")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help=f"model bundle (default {DEFAULT_BUNDLE})")
    p.add_argument("--films", type=Path, action="append", help="folder of PNG films to build the test films from "
                   "(default: the demo's phantom films)")
    p.add_argument("--threads", type=int, default=None,
                   help="interpreter threads of the scans (default: all cores, as the scan's own default)")
    p.add_argument("--repeat", type=int, default=30, help="timed runs per in-process figure")
    p.add_argument("--counts", type=int, nargs="+", default=list(MEMORY_COUNTS),
                   help="scan sizes for throughput and peak memory (default 50 500)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p


def _run(args: argparse.Namespace) -> int:
    from edge.bundle import load_bundle
    from edge.runtime import usable_cores

    if not (args.bundle / "bundle.json").is_file():
        raise EdgeError(f"no model bundle at {args.bundle}: {_NEEDS_DEMO}")
    bundle = load_bundle(args.bundle)
    sources = _sources(args.films or list(DEFAULT_FILMS))
    fig = {"import_edge_runtime_s": import_seconds("edge.runtime"), "import_edge_scan_s": import_seconds("edge.scan")}
    threads = args.threads or usable_cores()
    fig.update(timings(bundle, sources[0], threads, args.repeat))
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as work:
        fig.update(scan_figures(args.bundle, sources, Path(work), threads, tuple(sorted(set(args.counts)))))
    print(f"edge.bench: bundle {args.bundle} ({bundle.sha256[:12]}), {os.cpu_count()} CPUs, films {FILM_SIDE}²")
    print(_report(fig))
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("edge.bench", lambda: _parser().parse_args(argv), _run)


if __name__ == "__main__":
    sys.exit(main())
