"""``python -m edge.bench [--bundle DIR]`` (``make bench``): how fast and how lean the edge runtime is.

Measured on this machine with the bundle's int8 model (and its fp32 TFLite model when present):

- invoke time of the interpreter (median of ``--repeat`` runs on a real film) on all cores and on one,
  and bare-invoke films/s the way the scans run the model: by default one one-thread interpreter per
  core, each invoking on its own thread (edge.runtime.open_scan_models), with ``--threads N`` one
  interpreter on N threads;
- CPU Grad-CAM time per film (one label, and three labels with peak and 1024 px upsampling), as a
  share of the invoke time;
- the per-film CPU of each stage of the service path (edge.bench_scan: hash, decode, preprocess, invoke
  on one thread, CAM, overlays, commit) and the bound they imply on this machine's cores: cores /
  (decode + preprocess + invoke), + overlays when they are on (issue 16). The stages are measured before
  and after the scans and averaged (``stages_sum_before/after_scans_cpu_ms`` show how far the machine's
  speed moved meanwhile: on a shared 2-core machine a few percent in the minutes of the scans, enough to
  move a fraction of the bound by as much, one way or the other, when it was measured once);
- end-to-end films/s of ``python -m edge.scan`` on 1024² PNG films at 50 and 500 films, with and
  without overlays, with the fixed start-up cost (imports, bundle verification, exports) measured on
  an empty folder and taken out; each scan run ``--scan-repeat`` times (3) in rounds, its median run
  reported with its slowest and fastest beside it (``*_lo`` / ``*_hi``: one 50-film run of a shared 2-core
  machine fell a quarter below the other two); as a fraction of the bound, split into the cores' worth of
  CPU the scan had (``*_cores_used``: on a machine shared with other work, fewer than its cores) and the share of
  its CPU that went to the stages' own work (``*_cpu_efficiency``: what the pipeline adds is the rest);
- a simulated fast accelerator (a model answering in 2 ms by sleeping, like an Edge TPU): the scan is
  then bound by decoding, and its films/s is compared with cores / (decode + preprocess + hash);
- a 2,048² JPEG decoded in full and at reduced size (what the scan does with large JPEGs);
- peak memory (``ru_maxrss`` of the scan process, from ``os.wait4``) of every scan: it should be flat,
  not grow with the number of films;
- import time of ``edge.runtime`` and ``edge.scan`` in a fresh interpreter.

The films are distinct 1024² PNGs made from the demo's phantom films (``make demo`` first), each
with a few pixels changed so that no two files have the same hash. The latency of the same
network under PyTorch and onnxruntime is in ``convert/bench.py`` (edge never imports them).
"""

from __future__ import annotations

# isort: off
import edge._blas  # noqa: F401 - first, before numpy loads: one OpenBLAS thread, as in the commands it measures
# isort: on

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

from edge.bench_scan import bounds, fake_accelerator, median_run, stage_cpu
from edge.cli import positive, run_main
from edge.errors import EdgeError

__all__ = ["main", "make_films", "run_scan"]

DEFAULT_BUNDLE = Path("demo-out/bundle")
DEFAULT_FILMS = (Path("demo-out/field/images"), Path("demo-out/phantoms/images"))
FILM_SIDE = 1024
MEMORY_COUNTS = (50, 500)
SCAN_REPEAT = 3  # runs of each scan (the median is reported, with the slowest and fastest)
STAGE_FILMS = 20  # films whose stages are timed one by one (median per stage)
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


def _side_by_side_films_per_s(bundle, x: np.ndarray, repeat: int) -> float:
    """Bare invokes per second of the scan's default: one one-thread interpreter per core, each on a thread."""
    from concurrent.futures import ThreadPoolExecutor

    from edge.runtime import open_scan_models

    models = open_scan_models(bundle, device="cpu")
    n = repeat * len(models)

    def run(model) -> None:
        for _ in range(repeat):
            model.predict(x)

    with ThreadPoolExecutor(len(models)) as pool:
        list(pool.map(lambda m: m.predict(x), models))  # warm
        start = time.perf_counter()
        list(pool.map(run, models))
    return n / (time.perf_counter() - start)


def timings(bundle, film: Path, threads: int | None, repeat: int) -> dict[str, float]:
    """Invoke times on all cores and on one; bare-invoke films/s the scans' way (``threads`` None: one
    one-thread interpreter per core side by side; else one interpreter on ``threads`` threads)."""
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
    if threads is None:
        out["scan_interpreters"] = cores
        out["bare_invoke_films_per_s"] = _side_by_side_films_per_s(bundle, x, repeat)
        return out
    out["scan_interpreters"], out["scan_threads"] = 1, threads
    scan_ms = {cores: out["int8_invoke_ms"], 1: out["int8_invoke_1thread_ms"]}.get(threads)
    out["bare_invoke_films_per_s"] = 1000.0 / (scan_ms or _invoke_ms(bundle, x, "int8", threads, repeat)[0])
    return out


# ---------------------------------------------------------------- child processes

# A small launcher process runs each scan and reports its peak RSS and CPU: Linux hands a child the peak RSS
# of the process it was forked from (kept across exec), so a scan started by this one, which holds models,
# would report this process's peak instead of its own.
_LAUNCHER = """import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_child(argv: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of a child process; its failure is an error."""
    with tempfile.NamedTemporaryFile("r", suffix=".usage") as usage:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, usage.name, *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            tail = proc.stdout.decode(errors="replace")[-2000:]
            raise EdgeError(f"{' '.join(argv[:4])}… exited with {proc.returncode}:\n{tail}")
        rss_kib, cpu = usage.read().split()
    return wall, float(rss_kib) / 1024.0, float(cpu)  # Linux: KiB


def run_scan(bundle: Path, films: Path, out: Path, threads: int | None, *extra: str) -> tuple[float, float, float]:
    """(wall s, peak RSS MiB, CPU s) of one scan (``threads`` None: the scan's own default interpreters)."""
    argv = [sys.executable, "-m", "edge.scan", str(films), "--bundle", str(bundle), "--out", str(out), "--quiet",
            "--device", "cpu", *(("--threads", str(threads)) if threads else ()), *extra]
    return _run_child(argv)


def import_seconds(module: str, repeat: int = 3) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def _folder(films: Path, work: Path, n: int) -> Path:
    folder = work / f"films-{n}"
    folder.mkdir()
    for path in sorted(films.iterdir())[:n]:
        os.link(path, folder / path.name)
    return folder


def scan_figures(bundle: Path, films: Path, work: Path, threads: int | None, counts: tuple[int, ...],
                 repeat: int = SCAN_REPEAT) -> dict[str, float]:
    """Start-up cost, then films/s, CPU per film and peak memory of scans of ``counts`` films, with and without
    overlays (films/s and CPU with the start-up taken out): each scan ``repeat`` times, the rounds one after
    the other (every kind of scan once per round, so a slow minute of a shared machine falls on one round of
    each, not on every run of one kind). Each kind's figures are those of its median run by films/s; its
    slowest and fastest runs are given beside it (``*_films_per_s_lo`` / ``_hi``) and its peak memory is the
    largest of its runs."""
    (work / "empty").mkdir()
    startup, _, startup_cpu = run_scan(bundle, work / "empty", work / "out-empty", threads)
    kinds = [(n, tag, extra) for n in counts for tag, extra in (("", ()), ("_no_overlays", ("--no-overlays",)))]
    folders = {n: _folder(films, work, n) for n in counts}
    runs: dict[str, list[tuple[float, float, float]]] = {f"{n}{tag}": [] for n, tag, _ in kinds}
    for i in range(repeat):
        for n, tag, extra in kinds:
            wall, rss, cpu = run_scan(bundle, folders[n], work / f"out-{n}{tag}-{i}", threads, *extra)
            runs[f"{n}{tag}"].append((n / max(wall - startup, 1e-9), 1000.0 * max(cpu - startup_cpu, 0.0) / n, rss))
    fig: dict[str, float] = {"scan_startup_s": startup, "scan_repeat": repeat}
    for key, found in runs.items():
        speed, cpu_ms, _ = median_run(found)
        fig[f"scan_{key}_films_per_s"], fig[f"scan_{key}_cpu_ms_per_film"] = speed, cpu_ms
        fig[f"scan_{key}_films_per_s_lo"], fig[f"scan_{key}_films_per_s_hi"] = min(found)[0], max(found)[0]
        fig[f"scan_{key}_peak_rss_mib"] = max(rss for _, _, rss in found)
    return fig


def jpeg_figures(source: Path, work: Path, side: int = 224) -> dict[str, float]:
    """CPU ms to decode a 2,048² JPEG film in full and at reduced size (what the scan does: edge.service.decode)."""
    from edge.films import load_film
    from edge.service import decode

    path = work / "large.jpg"
    Image.open(source).convert("L").resize((2048, 2048), Image.Resampling.BICUBIC).save(path, quality=90)
    cpu = time.thread_time  # this thread's decoding alone
    full, reduced = [], []
    for _ in range(5):
        start = cpu()
        load_film(path)
        full.append(cpu() - start)
        start = cpu()
        decode(path, side)
        reduced.append(cpu() - start)
    return {"jpeg_2048_decode_full_ms": 1000 * statistics.median(full),
            "jpeg_2048_decode_reduced_ms": 1000 * statistics.median(reduced)}


# ---------------------------------------------------------------- the report

def ratios(fig: dict[str, float], counts: tuple[int, ...], cores: int) -> dict[str, float]:
    """Each scan's films/s over its bound, split into the two things that make it: the cores' worth of CPU the
    scan had (``cores_used``: films/s × its CPU per film; on a machine shared with other work, less than the
    cores) and how much of that CPU went to the stages' own work (``cpu_efficiency``: their sum over the
    scan's CPU per film; the rest is the pipeline's overhead). Over the bound of all the stages,
    films/s = bound × cores_used / cores × cpu_efficiency."""
    stages = {k.removeprefix("stage_").removesuffix("_cpu_ms"): v for k, v in fig.items() if k.startswith("stage_")}
    work = {"": sum(stages.values()), "_no_overlays": sum(stages.values()) - stages.get("overlays", 0.0),
            "fake_accelerator": stages.get("hash", 0) + stages.get("decode", 0) + stages.get("preprocess", 0)
            + stages.get("commit", 0)}
    out = {}
    for n in counts:
        for tag, bound in (("", "bound_overlays_films_per_s"), ("_no_overlays", "bound_no_overlays_films_per_s")):
            speed, cpu = fig.get(f"scan_{n}{tag}_films_per_s"), fig.get(f"scan_{n}{tag}_cpu_ms_per_film")
            if speed is None:
                continue
            out[f"scan_{n}{tag}_over_bound"] = speed / fig[bound]
            for end in ("_lo", "_hi"):  # the slowest and fastest of the repeated runs
                if f"scan_{n}{tag}_films_per_s{end}" in fig:
                    out[f"scan_{n}{tag}_over_bound{end}"] = fig[f"scan_{n}{tag}_films_per_s{end}"] / fig[bound]
            if cpu:
                out[f"scan_{n}{tag}_cores_used"] = speed * cpu / 1000.0
                out[f"scan_{n}{tag}_cpu_efficiency"] = work[tag] / cpu
        if f"scan_{n}_films_per_s" in fig and f"scan_{n}_no_overlays_films_per_s" in fig:
            out[f"scan_{n}_overlays_over_no_overlays"] = fig[f"scan_{n}_films_per_s"] / fig[
                f"scan_{n}_no_overlays_films_per_s"]
    if "fake_accelerator_films_per_s" in fig:
        speed, cpu = fig["fake_accelerator_films_per_s"], fig["fake_accelerator_cpu_ms_per_film"]
        out["fake_accelerator_over_bound"] = speed / fig["bound_decoding_films_per_s"]
        out["fake_accelerator_cores_used"] = speed * cpu / 1000.0
        out["fake_accelerator_cpu_efficiency"] = work["fake_accelerator"] / cpu
    return out


def _targets(fig: dict[str, float]) -> list[tuple[str, float, bool]]:
    """(target, figure, met) for the issues' targets that this run measured."""
    out = [("CAM <= 5% of invoke", fig["cam_share_of_invoke"], fig["cam_share_of_invoke"] <= 0.05)]
    if "guard_share_of_invoke" in fig:
        out.append(("guard <= 2% of invoke", fig["guard_share_of_invoke"], fig["guard_share_of_invoke"] <= 0.02))
    for key, value in fig.items():
        if key.endswith("_over_bound"):
            out.append((f"{key.removesuffix('_over_bound')} >= 0.85x bound", value, value >= 0.85))
        elif key.endswith("_overlays_over_no_overlays"):
            out.append((f"{key.split('_overlays')[0]} overlays >= 0.7x none", value, value >= 0.7))
    rss = [v for k, v in fig.items() if k.endswith("_peak_rss_mib")]
    if rss:
        out.append(("scan peak memory <= 250 MB", max(rss) * 1.048576, max(rss) * 1.048576 <= 250))
    return out


def _report(fig: dict[str, float]) -> str:
    lines = [f"  {name:44s} {value:10.3f}" for name, value in fig.items()]
    lines += [f"  target {name:37s} {'met' if ok else 'NOT met'} ({value:.3f})" for name, value, ok in _targets(fig)]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.bench", description="Benchmark the edge runtime.")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help=f"model bundle (default {DEFAULT_BUNDLE})")
    p.add_argument("--films", type=Path, action="append", help="folder of PNG films to build the test films from "
                   "(default: the demo's phantom films)")
    p.add_argument("--threads", type=positive, default=None,
                   help="scans with one interpreter on this many threads (default: the scan's own default, one "
                        "one-thread interpreter per core)")
    p.add_argument("--repeat", type=int, default=30, help="timed runs per in-process figure")
    p.add_argument("--counts", type=int, nargs="+", default=list(MEMORY_COUNTS),
                   help="scan sizes for throughput and peak memory (default 50 500)")
    p.add_argument("--scan-repeat", type=positive, default=SCAN_REPEAT,
                   help=f"runs of each scan, in rounds; the median run is reported (default {SCAN_REPEAT})")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p


def _run(args: argparse.Namespace) -> int:
    from edge.bundle import load_bundle
    from edge.runtime import usable_cores

    if not (args.bundle / "bundle.json").is_file():
        raise EdgeError(f"no model bundle at {args.bundle}: {_NEEDS_DEMO}")
    bundle = load_bundle(args.bundle)
    sources = _sources(args.films or list(DEFAULT_FILMS))
    cores, counts = usable_cores(), tuple(sorted(set(args.counts)))
    fig = {"import_edge_runtime_s": import_seconds("edge.runtime"), "import_edge_scan_s": import_seconds("edge.scan")}
    threads = args.threads
    fig.update(timings(bundle, sources[0], threads, args.repeat))
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        films = make_films(sources, work / "films", max(counts))
        before = stage_cpu(args.bundle, films[:STAGE_FILMS])
        fig.update(jpeg_figures(sources[0], work))
        (work / "fake").mkdir()
        fig.update(fake_accelerator(args.bundle, films, work / "fake"))
        fig.update(scan_figures(args.bundle, work / "films", work, threads, counts, args.scan_repeat))
        after = stage_cpu(args.bundle, films[:STAGE_FILMS])
        stages = {name: (before[name] + after[name]) / 2 for name in before}
        fig.update({f"stage_{name}_cpu_ms": value for name, value in stages.items()})
        fig.update({"stages_sum_before_scans_cpu_ms": sum(before.values()),
                    "stages_sum_after_scans_cpu_ms": sum(after.values())})
        fig.update(bounds(stages, cores))
    fig.update(ratios(fig, counts, cores))
    print(f"edge.bench: bundle {args.bundle} ({bundle.sha256[:12]}), {cores} cores ({_cpu_model()}), films "
          f"{FILM_SIDE}²; scans with {_interpreters(threads, cores)} and one decode worker per core, the median of "
          f"{args.scan_repeat} runs each")
    print(_report(fig))
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2) + "\n", encoding="utf-8")
    return 0


def _interpreters(threads: int | None, cores: int) -> str:
    return f"one interpreter on {threads} threads" if threads else f"{cores} one-thread interpreters side by side"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU model unknown"


def main(argv: list[str] | None = None) -> int:
    return run_main("edge.bench", lambda: _parser().parse_args(argv), _run)


if __name__ == "__main__":
    sys.exit(main())
