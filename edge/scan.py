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
import hashlib
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge.errors import EdgeError, FilmError, StoreError
from edge.preprocess import preprocess
from edge.progress import Progress, StopOnSignal, run_main
from edge.report import export_all, summary_text
from edge.screen import ALLOWED, REFUSED, judge_result, refuse_unscored, screen_file
from edge.store import DB_NAME, OVERLAYS, FilmResult, OutLock, Store, output_error
from edge.walk import collect, hash_film_file, path_text

__all__ = ["CAM_MODES", "CamExplainer", "Explainer", "Prepared", "ScanContext", "Summary", "main", "overlay_name",
           "prepare", "safe_stem", "scan_one", "scan_paths", "score_prepared", "finish", "Scored"]

CAM_MODES = ("top", "all", "none")
_QUEUE_DEPTH = 2
_STEM_MAX = 48
OVERLAY_SIDE = 512  # px, longer side of an overlay PNG: the 7×7 heatmap needs no more, and it fits a Pi's screen


class Explainer(Protocol):
    """CPU Grad-CAM for one model (edge.cam), and the overlay writer (edge.overlay)."""

    def cam(self, features: np.ndarray, label_index: int) -> np.ndarray: ...
    def peaks(self, cam: np.ndarray, film_shape: tuple[int, int]) -> list[tuple[int, int]]: ...
    def write_overlay(self, path: Path, film: np.ndarray, cam: np.ndarray, label: str,
                      peaks: list[tuple[int, int]]) -> None: ...


class CamExplainer:
    """The real Explainer: edge.cam's Grad-CAM on the bundle's head, edge.overlay's PNGs."""

    def __init__(self, bundle: Any, head: Any = None):
        """``head``: the model's own (edge.runtime.Model.head, the one for its features) when it has one."""
        from edge import cam, overlay
        self._cam, self._overlay = cam, overlay
        self.head, self.task = head if head is not None else cam.load_head(bundle), bundle.task

    def cam(self, features: np.ndarray, label_index: int) -> np.ndarray:
        return self._cam.grad_cam(self.head, features, label_index, self.task)

    def peaks(self, cam: np.ndarray, film_shape: tuple[int, int]) -> list[tuple[int, int]]:
        """The heatmap's peaks in film pixels, hottest first (edge.cam.cam_peaks)."""
        return [(int(x), int(y)) for x, y in self._cam.cam_peaks(cam, film_shape)]

    def write_overlay(self, path: Path, film: np.ndarray, cam: np.ndarray, label: str,
                      peaks: list[tuple[int, int]]) -> None:
        """PNG at most OVERLAY_SIDE px, fast zlib level (a 1024 px level-6 PNG costs several invokes)."""
        cam_film = self._cam.upsample(cam, self._overlay.overlay_shape(film.shape, OVERLAY_SIDE))
        self._overlay.save_overlay_png(path, film, cam_film, label=label, peak=peaks[0], others=peaks[1:],
                                       max_side=OVERLAY_SIDE)


@dataclass
class ScanContext:
    """Everything a film needs to be scored and stored. ``model``: edge.runtime.Model or a stand-in."""

    model: Any
    explainer: Explainer | None
    store: Store
    out_dir: Path
    cam_mode: str = "top"
    top_k: int = 3
    overlays: bool = True
    guard: Any = None  # edge.novelty.Guard, None: the bundle has none (every film scored, as before)
    allow_unrecognised: bool = False  # score films the guard or the screen refuses, marked so


@dataclass
class Prepared:
    """A film read, hashed and preprocessed on the background thread (or why it could not be)."""

    path: Path
    shown: str
    sha: str | None = None
    film: np.ndarray | None = None
    x: np.ndarray | None = None
    decode_ms: float = 0.0
    error: EdgeError | None = None
    error_kind: str | None = None
    skip: str | None = None  # "done" (already in the store) | "duplicate" (same bytes earlier in this run)
    refusal: str | None = None  # edge.screen.screen_file: not a chest film, from its header or colour


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


# ---------------------------------------------------------------- one film

def _error_kind(err: BaseException) -> str:
    if isinstance(err, FilmError):
        kind = getattr(err, "kind", None)
        return str(kind) if kind else err.problem.split(":")[0].split(" (")[0][:40]
    return f"unexpected {type(err).__name__}"


def prepare(path: Path, done: set[str], seen: set[str]) -> Prepared:
    """Hash, check the store's done set, decode and preprocess one film. Never raises for a bad film."""
    from edge.films import load_film

    item = Prepared(path=path, shown=path_text(path))
    try:
        item.sha = hash_film_file(path)
        if item.sha in done or item.sha in seen:
            item.skip = "done" if item.sha in done else "duplicate"
            return item
        seen.add(item.sha)
        start = time.perf_counter()
        item.film = load_film(path)
        item.x = preprocess(item.film)
        item.refusal = screen_file(path)
        item.decode_ms = (time.perf_counter() - start) * 1000.0
    except Exception as err:  # noqa: BLE001 - a decoder bug on one film must not end the scan
        if not isinstance(err, FilmError):
            err = FilmError(path, f"unexpected {type(err).__name__} while decoding: {err}")
        item.error, item.error_kind, item.film, item.x = err, _error_kind(err), None, None
    return item


def safe_stem(name: str) -> str:
    """A film name as a harmless file-name part: ASCII letters, digits, ``._-``, no leading dot, bounded."""
    stem = Path(name.replace("\\", "/").split("/")[-1]).stem
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in stem).lstrip(".-_")
    return cleaned[:_STEM_MAX] or "film"


def overlay_name(film_path: str, sha: str, model_hash: str, label: str) -> str:
    """``overlays/<stem>-<film hash>-<model hash>-<label>.png``, relative to OUT; never leaves it."""
    return f"{OVERLAYS}/{safe_stem(film_path)}-{sha[:10]}-{model_hash[:6]}-{safe_stem(label)}.png"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _base_result(item: Prepared, ctx: ScanContext) -> FilmResult:
    model = ctx.model
    sha = item.sha or "path:" + hashlib.sha256(item.shown.encode()).hexdigest()
    return FilmResult(film_path=item.shown, file_sha256=sha, model_hash=model.bundle.sha256, status="error",
                      scanned_at=_now(), runtime=model.runtime, device=model.device, model_kind=model.kind,
                      labels=list(model.bundle.labels))


def _cam_targets(scores: np.ndarray, flagged: list[int], mode: str, top_k: int) -> list[int]:
    """Label indices to explain: 'top' = flagged labels by score (at most k), else the best label."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    if mode == "none":
        return []
    if mode == "all":
        return order
    called = [i for i in order if i in flagged][:top_k]
    return called or order[:1]


@dataclass
class Scored:
    """A film through the model and the CAM, not yet written: overlays and the store row come next."""

    item: Prepared
    result: FilmResult
    cams: list = field(default_factory=list)  # (label, 7×7 cam, [(x, y) peaks, hottest first]) per explained label


def _explain(scored: Scored, ctx: ScanContext, features: np.ndarray, targets: list[int]) -> None:
    result, start = scored.result, time.perf_counter()
    for index in targets:
        cam = ctx.explainer.cam(features, index)
        peaks = ctx.explainer.peaks(cam, scored.item.film.shape)
        x, y = peaks[0]
        scored.cams.append((result.labels[index], cam, peaks))
        result.cam.append({"label": result.labels[index], "x": x, "y": y, "peaks": [list(p) for p in peaks],
                           "overlay": None})
    if result.cam:
        first = result.cam[0]
        result.cam_label, result.cam_x, result.cam_y = first["label"], first["x"], first["y"]
    result.cam_ms = (time.perf_counter() - start) * 1000.0


def score_prepared(item: Prepared, ctx: ScanContext) -> Scored:
    """Model + CAM for one prepared film (or its error row). No file is written here."""
    scored = Scored(item, _base_result(item, ctx))
    result = scored.result
    if item.error is not None:
        result.error_kind, result.error = item.error_kind, str(item.error)
        return scored
    result.film_height, result.film_width = (int(n) for n in item.film.shape)
    if item.refusal is not None and not ctx.allow_unrecognised:  # guard hook: refused before the model
        refuse_unscored(result, item.refusal)
        return scored
    pred = ctx.model.predict(item.x)
    scores = np.asarray(pred.scores, np.float64).reshape(-1)
    flagged = [i for i, (s, t) in enumerate(zip(scores, ctx.model.bundle.thresholds, strict=True)) if s >= t]
    shown = judge_result(result, ctx.guard, pred.features, item.refusal, ctx.allow_unrecognised)  # guard hook
    flagged = flagged if shown else []
    best = int(np.argmax(scores))
    result.status, result.invoke_ms, result.decode_ms = "ok", float(pred.invoke_ms), item.decode_ms
    result.scores = {label: round(float(s), 6) for label, s in zip(result.labels, scores, strict=True)}
    result.flagged = [result.labels[i] for i in sorted(flagged, key=lambda i: -scores[i])]
    result.top_label, result.top_score = result.labels[best], round(float(scores[best]), 6)
    if ctx.explainer is not None and shown:
        _explain(scored, ctx, pred.features, _cam_targets(scores, flagged, ctx.cam_mode, ctx.top_k))
    return scored


def _write_overlay(scored: Scored, ctx: ScanContext, label: str, cam: np.ndarray, peaks: list) -> str:
    result = scored.result
    rel = overlay_name(result.film_path, result.file_sha256, result.model_hash, label)
    path = ctx.out_dir / rel
    if path.resolve().parent != (ctx.out_dir / OVERLAYS).resolve():
        raise StoreError(f"refusing to write an overlay outside {ctx.out_dir}: {rel!r}")  # cannot happen
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ctx.explainer.write_overlay(path, scored.item.film, cam, label, peaks)
    except OSError as err:
        raise output_error(path, err, "write the overlay") from None
    return rel


def finish(scored: Scored, ctx: ScanContext) -> FilmResult:
    """Write the film's overlays (atomically), then commit its row: a row only ever names files that exist."""
    result, start = scored.result, time.perf_counter()
    if ctx.overlays:
        for entry, (label, cam, peaks) in zip(result.cam, scored.cams, strict=True):
            entry["overlay"] = _write_overlay(scored, ctx, label, cam, peaks)
            result.overlays.append(entry["overlay"])
        result.overlay_ms = (time.perf_counter() - start) * 1000.0
    ctx.store.add(result)
    return result


def scan_one(path: Path, ctx: ScanContext) -> tuple[Prepared, FilmResult | None]:
    """One film through exactly the scan path (used by edge.capture); None when already stored."""
    item = prepare(Path(path), ctx.store.done(ctx.model.bundle.sha256), set())
    return item, (None if item.skip else finish(score_prepared(item, ctx), ctx))


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
    if result.guard in (REFUSED, ALLOWED):  # guard hook: the scan's line for a refused film
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

def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.scan", description="Score chest films with a model bundle.")
    p.add_argument("paths", nargs="+", metavar="FOLDER_OR_FILE", help="films, or folders searched recursively")
    p.add_argument("--bundle", required=True, help="model bundle folder (made by python -m convert)")
    p.add_argument("--out", required=True, help="results folder (database, CSV, JSONL, overlays, report)")
    p.add_argument("--device", choices=("auto", "cpu", "edgetpu"), default="auto")
    p.add_argument("--threads", type=_positive, default=None, help="interpreter threads (default: all cores)")
    p.add_argument("--cam", choices=CAM_MODES, default="top",
                   help="heatmaps for the labels over threshold (up to --top; the best label if none), "
                        "for every label, or none")
    p.add_argument("--top", type=_positive, default=3, help="at most this many heatmaps per film with --cam top")
    p.add_argument("--no-overlays", action="store_true", help="compute heatmap peaks but write no overlay PNGs")
    p.add_argument("--quiet", action="store_true", help="no progress bar (films that fail are still named)")
    p.add_argument("--verbose", action="store_true", help="also name every file passed over in the folders")
    p.add_argument("--allow-unrecognised", action="store_true",
                   help="score films not recognised as chest films like the training films (another modality or "
                        "body part, a colour picture, or over the bundle's novelty threshold) as if they were, "
                        "marked 'scored anyway'; by default they get no findings and no heatmaps")
    return p


def _run(args: argparse.Namespace) -> int:
    from edge.novelty import load_guard
    from edge.runtime import open_model

    model = open_model(args.bundle, device=args.device, threads=args.threads)  # verified before any film
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
