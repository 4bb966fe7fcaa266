"""``python -m edge.scan FOLDER_OR_FILES... --bundle DIR --out DIR``: films in, scores, heatmaps, results out.

Order of work: the bundle is opened and verified before any film is touched (a tampered or
mismatched bundle is refused, exit 2); the output folder is locked (one scan at a time); folders
are walked recursively in sorted order; every film is hashed and skipped when the store already
holds its result under this model (a run after a kill or a power cut resumes and never
duplicates). Decoding and preprocessing run on a background thread (bounded queue) while the
model runs; each film's result is committed before the next starts. At the end CSV, JSON Lines
and report.html are exported from the database (atomically, on every run, so they always match it).

Exit status: 0 every film scored, 1 some films failed, 2 usage / bundle / store error,
130 stopped by Ctrl-C (after the current film; results kept and exported).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edge.cli import positive, run_main
from edge.explain import CamExplainer
from edge.progress import Progress, StopOnSignal
from edge.report import export_all, summary_text
from edge.runtime import DEVICES
from edge.screen import ALLOWED, REFUSED
from edge.service import CAM_MODES, Prepared, ScanContext, finish, prepare, score_prepared
from edge.store import DB_NAME, OutLock, Store
from edge.walk import collect, path_text

__all__ = ["Summary", "main", "scan_paths"]

_QUEUE_DEPTH = 2


@dataclass
class Summary:
    total: int = 0
    scored: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    refused: int = 0  # not recognised as chest films (edge.screen): no findings
    allowed: int = 0  # ... scored anyway (--allow-unrecognised)
    not_films: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    stopped: bool = False


# ---------------------------------------------------------------- the pipeline
#   decode thread: hash, read, preprocess  ->  main: model + CAM  ->  writer thread: overlays, then commit
# Rows are committed one film at a time, in order; at most one film is being written while the next is
# scored, so a kill loses at most the films in flight (redone by the next run), never a committed one.

_END = object()


def _put(q: queue.Queue, item: object, halt: threading.Event) -> bool:
    while not halt.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(paths: Sequence[Path], done: set[str], q: queue.Queue, halt: threading.Event) -> None:
    seen: set[str] = set()
    try:
        for path in paths:
            if halt.is_set() or not _put(q, prepare(path, done, seen), halt):
                return
    except BaseException as err:  # noqa: BLE001 - handed to the main thread, which re-raises it
        _put(q, err, halt)
    _put(q, _END, halt)


def _settle(future: Future | None, summary: Summary, progress: Progress) -> None:
    """Wait for a film's overlays and commit (re-raising a StoreError), then count it."""
    if future is None:
        return
    result = future.result()
    if result.guard in (REFUSED, ALLOWED):  # the scan's line for a film not recognised as a chest film
        summary.refused += result.guard == REFUSED
        summary.allowed += result.guard == ALLOWED
        progress.message(f"{result.guard}: {result.film_path}: {result.refusal}")
    if result.status == "ok":
        summary.scored += 1
    else:
        summary.errors[result.error_kind] += 1
        progress.message(f"failed: {result.error}")
    progress.update(scored=True)


def _next(q: queue.Queue, producer: threading.Thread) -> Prepared | None:
    """The next prepared film, or None at the end."""
    while True:
        try:
            item = q.get(timeout=0.2)
        except queue.Empty:
            if producer.is_alive():
                continue
            return None
        if isinstance(item, BaseException):
            raise item
        return None if item is _END else item


def scan_paths(paths: Sequence[Path], ctx: ScanContext, *, progress: Progress | None = None,
               interrupt: threading.Event | None = None) -> Summary:
    """Score every film not yet stored for this model; decoding and writing overlapped with inference.

    ``interrupt`` set (by a signal handler) stops the scan after the film being scored.
    """
    progress = progress or Progress(len(paths), enabled=False)
    interrupt = interrupt or threading.Event()
    summary, halt, pending = Summary(total=len(paths)), threading.Event(), None
    q: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    producer = threading.Thread(target=_produce, args=(paths, ctx.store.done(ctx.model.bundle.sha256), q, halt),
                                name="edge-decode", daemon=True)
    start = time.monotonic()
    producer.start()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-write") as writer:
            while not interrupt.is_set() and (item := _next(q, producer)) is not None:
                if item.skip:
                    summary.skipped[item.skip] += 1
                    progress.update(scored=False)
                    continue
                scored = score_prepared(item, ctx)
                _settle(pending, summary, progress)
                pending = writer.submit(finish, scored, ctx)
            _settle(pending, summary, progress)
    finally:
        summary.stopped = interrupt.is_set()
        halt.set()
        producer.join()
        progress.close()
        summary.seconds = time.monotonic() - start
    return summary


# ---------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.scan", description="Score chest films with a model bundle.")
    p.add_argument("paths", nargs="+", metavar="FOLDER_OR_FILE", help="films, or folders searched recursively")
    p.add_argument("--bundle", required=True, help="model bundle folder (made by python -m convert)")
    p.add_argument("--out", required=True, help="results folder (database, CSV, JSONL, overlays, report)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=positive, default=None, help="interpreter threads (default: all cores)")
    p.add_argument("--cam", choices=CAM_MODES, default="top",
                   help="heatmaps for the labels over threshold (up to --top; the best label if none), "
                        "for every label, or none")
    p.add_argument("--top", type=positive, default=3, help="at most this many heatmaps per film with --cam top")
    p.add_argument("--no-overlays", action="store_true", help="compute heatmap peaks but write no overlay PNGs")
    p.add_argument("--quiet", action="store_true", help="no progress bar (films that fail are still named)")
    p.add_argument("--verbose", action="store_true", help="also name every file passed over in the folders")
    p.add_argument("--allow-unrecognised", action="store_true",
                   help="score films not recognised as chest films like the training films (another modality or "
                        "body part, a colour picture, or over the bundle's novelty threshold) as if they were, "
                        "marked 'scored anyway'; by default they get no findings and no heatmaps")
    return p


def _run(args: argparse.Namespace) -> int:
    from edge import runtime
    from edge.novelty import load_guard

    model = runtime.open_model(args.bundle, device=args.device, threads=args.threads)  # verified before any film
    guard = load_guard(model.bundle)  # None: no guard in the bundle, which the summary says
    for note in model.notes:
        print(f"note: {note}", file=sys.stderr)
    out = Path(args.out)
    with OutLock(out), Store(out / DB_NAME) as store:
        explainer = None if args.cam == "none" else CamExplainer(model.bundle, getattr(model, "head", None))
        ctx = ScanContext(model=model, explainer=explainer, store=store, out_dir=out, cam_mode=args.cam,
                          top_k=args.top, overlays=not args.no_overlays, guard=guard,
                          allow_unrecognised=args.allow_unrecognised)
        films, passed = collect(args.paths, passed_paths := [])
        for path in passed_paths if args.verbose else ():
            print(f"passed over (not a film by name or content): {path_text(path)}", file=sys.stderr)
        with StopOnSignal() as interrupts:
            summary = scan_paths(films, ctx, progress=Progress(len(films), enabled=not args.quiet),
                                 interrupt=interrupts.event)
        summary.not_films = passed
        print(summary_text(summary, model, out, export_all(store, out, model.bundle)))
    if summary.stopped:
        return 128 + interrupts.signum
    return 1 if summary.errors else 0


def main(argv: list[str] | None = None) -> int:
    return run_main("edge.scan", lambda: _parser().parse_args(argv), _run,
                    "stopped; every result committed so far is kept, run again to resume")


if __name__ == "__main__":
    sys.exit(main())
