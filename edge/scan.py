"""``python -m edge.scan FOLDER_OR_FILES... --bundle DIR --out DIR``: films in, scores, heatmaps, results out.

Order of work: the bundle is opened and verified before any film is touched (a tampered or
mismatched bundle is refused, exit 2); the output folder is locked (one scan at a time); folders
are walked recursively in sorted order; every film is hashed and skipped when the store already
holds its result under this model (a run after a kill or a power cut resumes and never
duplicates). Decode workers (one thread per core, ``--workers``) hash, decode and preprocess the
films ahead of the model (a bounded window); on the CPU one one-thread interpreter per core scores
films side by side (edge.runtime.open_scan_models); the overlays are encoded on the decode workers, and
one writer thread writes each film's overlays and commits its row, in the films' order. At the end CSV, JSON Lines
and report.html are exported from the database (atomically, on every run, so they always match it).

Exit status: 0 every film scored, 1 some films failed, 2 usage / bundle / store error,
130 stopped by Ctrl-C (after the current film; results kept and exported).
"""

from __future__ import annotations

# isort: off
import edge._blas  # noqa: F401 - first, before numpy loads: one OpenBLAS thread
# isort: on

import argparse
import dataclasses
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edge.cli import positive, run_main
from edge.explain import CamExplainer
from edge.progress import Progress, StopOnSignal
from edge.report import export_all, summary_text
from edge.runtime import DEVICES, usable_cores
from edge.screen import ALLOWED, REFUSED
from edge.service import (
    CAM_MODES,
    Prepared,
    ScanContext,
    Scored,
    finish,
    input_side,
    prepare_claimed,
    render_overlays,
    score_prepared,
)
from edge.store import DB_NAME, FilmResult, OutLock, Store
from edge.walk import collect, path_text

__all__ = ["Summary", "main", "scan_paths"]


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
#   decode workers (threads): hash, read, preprocess, in a window of films ahead  ->  main thread: duplicates, in
#   film order  ->  scorer threads, one per interpreter: model + CAM  ->  decode workers: overlays encoded in memory
#   ->  writer thread: overlay files, then the commit, in film order
# Threads, not processes: Pillow, zlib, libjpeg, hashlib and the interpreter release the GIL for their work,
# and films and results stay in one process (no copies between processes, one SQLite writer; measured in
# issue 16). A film goes to a scorer only when an interpreter is free, so a stop (Ctrl-C) waits for the films
# being scored and no more. Rows are committed one at a time in the films' order; the window and the commit
# queue are bounded, so memory stays flat; a film is reported done only after its commit (fsynced), and once a commit
# fails no later film is written, so a kill or a full disk loses at most the films in flight (redone by the
# next run) and never a committed one.

class _Claims:
    """Which film of this run first has each content hash, whichever worker hashes first: a worker skips
    decoding a film an earlier one already has; the main thread decides duplicates in film order."""

    def __init__(self) -> None:
        self._first: dict[str, int] = {}
        self._lock = threading.Lock()

    def claim(self, sha: str, index: int) -> bool:
        with self._lock:
            first = min(self._first.get(sha, index), index)
            self._first[sha] = first
            return first == index


class _Pipeline:
    """One scan's stages; ``run`` drives them from the calling thread (the interpreter's)."""

    def __init__(self, paths: Sequence[Path], ctx: ScanContext, summary: Summary, progress: Progress,
                 workers: int, models: Sequence = ()) -> None:
        self.ctx, self.summary, self.progress = ctx, summary, progress
        self.done, self.claims, self.side = ctx.store.done(ctx.model.bundle.sha256), _Claims(), input_side(
            ctx.model.bundle)
        self.todo = iter(enumerate(paths))
        self.depth = 2 * workers + 2  # films decoded ahead of the model, and results waiting for their commit
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edge-decode")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-write")
        scorers = [dataclasses.replace(ctx, model=model) for model in models] or [ctx]
        self.free: queue.SimpleQueue[ScanContext] = queue.SimpleQueue()  # one context per idle interpreter
        for scorer in scorers:
            self.free.put(scorer)
        self.scoring = ThreadPoolExecutor(max_workers=len(scorers), thread_name_prefix="edge-score")
        self.ahead: deque[Future] = deque()
        self.pending: deque[Future] = deque()
        self.failed = threading.Event()  # a commit failed: no later film is written
        self.seen: set[str] = set()

    def _read(self, index: int, path: Path) -> Prepared:
        return prepare_claimed(path, self.done, lambda sha: self.claims.claim(sha, index), self.side)

    def _fill(self) -> None:
        while len(self.ahead) < self.depth and (nxt := next(self.todo, None)) is not None:
            self.ahead.append(self.pool.submit(self._read, *nxt))

    def _score(self, item: Prepared, scorer: ScanContext) -> Future:
        """Model + CAM on the interpreter ``step`` took for it (a scorer thread), which is then free again; the
        overlays queued on a decode worker."""
        try:
            scored = score_prepared(item, scorer)
        finally:
            self.free.put(scorer)
        return self._render(scored)

    def _commit(self, scoring: Future) -> FilmResult:
        if self.failed.is_set():
            raise _NotWritten
        try:
            return finish(scoring.result().result(), self.ctx)  # the module's ``finish``, looked up at each film
        except BaseException:
            self.failed.set()
            raise

    def _render(self, scored: Scored) -> Future:
        """The film's overlays encoded on a worker; nothing to encode: a future already done (no queueing)."""
        if self.ctx.overlays and scored.cams and hasattr(self.ctx.explainer, "render_overlays"):
            return self.pool.submit(render_overlays, scored, self.ctx)
        done: Future = Future()
        done.set_result(scored)
        return done

    def _skip(self, item: Prepared) -> bool:
        """Count a film already stored or a copy of an earlier one (decided here, in film order)."""
        if item.skip is None and item.sha is not None and item.sha in self.seen:
            item.skip, item.film, item.x = "duplicate", None, None
        if item.sha is not None:
            self.seen.add(item.sha)
        if item.skip:
            self.summary.skipped[item.skip] += 1
            self.progress.update(scored=False)
        return item.skip is not None

    def step(self, interrupt: threading.Event) -> bool:
        """Score the next film and queue its overlays and commit; False at the end, or when ``interrupt`` is set
        while this film waited for a free interpreter (it is left for the next run)."""
        self._fill()
        if not self.ahead:
            return False
        item = self.ahead.popleft().result()
        if not self._skip(item):
            scorer = self.free.get()  # waits for a free interpreter
            if interrupt.is_set():
                self.free.put(scorer)
                return False
            self.pending.append(self.writer.submit(self._commit, self.scoring.submit(self._score, item, scorer)))
        while self.pending and (len(self.pending) > self.depth or self.pending[0].done()):
            _settle(self.pending.popleft(), self.summary, self.progress)
        return True

    def drain(self) -> None:
        while self.pending:
            _settle(self.pending.popleft(), self.summary, self.progress)

    def close(self) -> None:
        self.failed.set()  # whatever is still queued is not written
        for future in (*self.ahead, *self.pending):
            future.cancel()
        try:
            self.scoring.shutdown(wait=True, cancel_futures=True)
        finally:
            try:
                self.pool.shutdown(wait=True, cancel_futures=True)
            finally:
                self.writer.shutdown(wait=True, cancel_futures=True)


class _NotWritten(Exception):
    """A film queued behind a failed commit (never seen by the user: the first failure is raised)."""


def _settle(future: Future, summary: Summary, progress: Progress) -> None:
    """Wait for a film's commit (re-raising a StoreError), then count it."""
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


def scan_paths(paths: Sequence[Path], ctx: ScanContext, *, progress: Progress | None = None,
               interrupt: threading.Event | None = None, workers: int | None = None,
               models: Sequence = ()) -> Summary:
    """Score every film not yet stored for this model: ``workers`` decode threads (default: one per core)
    keep the model fed, results committed in order. ``models``: the interpreters that score films side by side,
    one thread each (edge.runtime.open_scan_models; default ``ctx.model`` alone).

    ``interrupt`` set (by a signal handler) stops the scan after the films being scored; the films already
    scored are committed.
    """
    progress = progress or Progress(len(paths), enabled=False)
    interrupt = interrupt or threading.Event()
    summary = Summary(total=len(paths))
    start = time.monotonic()
    pipeline = _Pipeline(paths, ctx, summary, progress, workers or usable_cores(), models)
    try:
        while not interrupt.is_set() and pipeline.step(interrupt):
            pass
        pipeline.drain()
    finally:
        summary.stopped = interrupt.is_set()
        pipeline.close()
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
    p.add_argument("--threads", type=positive, default=None,
                   help="one interpreter on this many threads (default: on the CPU one interpreter per core, each "
                        "on one thread, scoring films side by side; on the Edge TPU one interpreter)")
    p.add_argument("--workers", type=positive, default=None,
                   help="decode threads (hash, decode, preprocess, overlays; default: one per core)")
    p.add_argument("--cam", choices=CAM_MODES, default="top",
                   help="heatmaps for the labels over threshold (up to --top; the best label if none), "
                        "for every label, or none")
    p.add_argument("--top", type=positive, default=3, help="at most this many heatmaps per film with --cam top")
    p.add_argument("--no-overlays", action="store_true", help="compute heatmap peaks but write no overlay pictures")
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

    models = runtime.open_scan_models(args.bundle, device=args.device, threads=args.threads)  # verified first
    model = models[0]
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
                                 interrupt=interrupts.event, workers=args.workers, models=models)
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
