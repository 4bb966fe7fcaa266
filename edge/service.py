"""The one path of a film through the edge: film in, stored result out.

Every caller goes through it: ``edge.scan`` (folders; it overlaps the steps of consecutive films on
threads), ``edge.capture`` (the Pi camera) and the app. The steps, each usable alone:

1. ``prepare``: hash the file, skip it when the store already holds its result under this model,
   decode and preprocess it (never raises for a bad film: the error travels with it); a JPEG much larger
   than the network and the overlays need is decoded at reduced size (edge.films.load_film_reduced);
2. ``score_prepared``: the model and the CPU Grad-CAM (no file written);
3. ``render_overlays`` (optional, any thread): the overlays encoded in memory, the film scaled once for all;
4. ``finish``: the overlays written (atomically), then the store row, so a row only names files that exist.

``scan_one`` runs them for one film. ``findings`` is the pure rule of which labels a film is
flagged for and which get a heatmap.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import FilmError, StoreError
from edge.explain import OVERLAY_SIDE, Explainer
from edge.fsio import atomic_write_bytes, output_error
from edge.preprocess import PREPROCESS, preprocess
from edge.screen import judge_result, refuse_unscored, screen_file
from edge.store import OVERLAYS, FilmResult, Store
from edge.walk import hash_film_file, path_text

__all__ = ["CAM_MODES", "Findings", "Prepared", "ScanContext", "Scored", "decode", "decode_side", "findings", "finish",
           "input_side", "overlay_name", "prepare", "prepare_claimed", "render_overlays", "safe_stem", "scan_one",
           "score_prepared"]

CAM_MODES = ("top", "all", "none")
_STEM_MAX = 48


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
    """A film read, hashed and preprocessed (or why it could not be)."""

    path: Path
    shown: str
    sha: str | None = None
    film: np.ndarray | None = None  # may be a reduced decode of a large JPEG: ``shape`` is the film's own size
    shape: tuple[int, int] | None = None  # (H, W) of the film, in whose pixels the heatmap peaks are given
    x: np.ndarray | None = None
    decode_ms: float = 0.0
    error: FilmError | None = None
    error_kind: str | None = None
    skip: str | None = None  # "done" (already in the store) | "duplicate" (same bytes earlier in this run)
    refusal: str | None = None  # edge.screen.screen_file: not a chest film, from its header or colour


@dataclass
class Scored:
    """A film through the model and the CAM, not yet written: overlays and the store row come next."""

    item: Prepared
    result: FilmResult
    cams: list = field(default_factory=list)  # (label, 7×7 cam, [(x, y) peaks, hottest first]) per explained label
    encoded: list[bytes] | None = None  # the overlays rendered in memory (render_overlays), one per cam
    render_ms: float = 0.0


@dataclass(frozen=True)
class Findings:
    """Label indices: ``flagged`` at or over their threshold, highest score first; ``explain`` to get a
    heatmap; ``best`` the highest score."""

    flagged: list[int]
    explain: list[int]
    best: int


def findings(scores: Sequence[float] | np.ndarray, thresholds: Sequence[float], cam_mode: str = "top",
             top_k: int = 3) -> Findings:
    """Which labels a film is flagged for and which to explain: ``cam_mode`` 'top' explains the flagged
    labels by score (at most ``top_k``; the best label when none is flagged), 'all' every label by
    score, 'none' none. Ties go to the earlier label."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    over = [i for i, (s, t) in enumerate(zip(scores, thresholds, strict=True)) if s >= t]
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    if cam_mode == "none":
        explain = []
    elif cam_mode == "all":
        explain = order
    else:
        explain = [i for i in order if i in over][:top_k] or order[:1]
    return Findings(flagged=sorted(over, key=lambda i: -scores[i]), explain=explain, best=int(np.argmax(scores)))


# ---------------------------------------------------------------- 1. prepare

def input_side(bundle: Any) -> int:
    """The network input's side in px, from the bundle's preprocessing spec (edge.preprocess's when absent)."""
    return int((bundle.spec.get("preprocess") or {}).get("size", PREPROCESS["size"]))


def decode_side(side: int) -> int:
    """The longer side a film needs to keep when decoded at reduced size: twice the network input (for its
    antialiased resize) and the overlays' side."""
    return max(2 * side, OVERLAY_SIDE)


def decode(path: Path, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A film's pixels and its full (H, W): a JPEG much larger than a ``side`` px input and the overlays need is
    decoded at reduced size (edge.films.load_film_reduced); PNG, DICOM and the rest in full (edge.films.load_film)."""
    from edge import films

    if films.sniff(path) == "jpeg":
        return films.load_film_reduced(path, decode_side(side))
    film = films.load_film(path)
    return film, (int(film.shape[0]), int(film.shape[1]))


def prepare(path: Path, done: Container[str], seen: set[str], side: int | None = None) -> Prepared:
    """Hash, check the store's done set and this run's ``seen`` hashes, decode and preprocess one film to a
    ``side`` px input (edge.preprocess's size when None). Never raises for a bad film."""
    def first(sha: str) -> bool:
        if sha in seen:
            return False
        seen.add(sha)
        return True

    return prepare_claimed(path, done, first, side)


def prepare_claimed(path: Path, done: Container[str], claim: Callable[[str], bool],
                    side: int | None = None) -> Prepared:
    """``prepare`` for decode workers: ``claim(sha)`` says whether this film is the first of its bytes in the
    run (False: a duplicate, not decoded). Never raises for a bad film."""
    item = Prepared(path=path, shown=path_text(path))
    side = side or int(PREPROCESS["size"])
    try:
        item.sha = hash_film_file(path)
        if item.sha in done or not claim(item.sha):
            item.skip = "done" if item.sha in done else "duplicate"
            return item
        start = time.perf_counter()
        item.film, item.shape = decode(path, side)
        item.x = preprocess(item.film, side)
        item.refusal = screen_file(path)
        item.decode_ms = (time.perf_counter() - start) * 1000.0
    except Exception as err:  # noqa: BLE001 - a decoder bug on one film must not end the scan
        if not isinstance(err, FilmError):
            err = FilmError(path, f"unexpected {type(err).__name__} while decoding: {err}")
        item.error, item.error_kind, item.film, item.x = err, err.kind, None, None
    return item


# ---------------------------------------------------------------- 2. score

def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _base_result(item: Prepared, ctx: ScanContext) -> FilmResult:
    model = ctx.model
    sha = item.sha or "path:" + hashlib.sha256(item.shown.encode()).hexdigest()
    return FilmResult(film_path=item.shown, file_sha256=sha, model_hash=model.bundle.sha256, status="error",
                      scanned_at=_now(), runtime=model.runtime, device=model.device, model_kind=model.kind,
                      labels=list(model.bundle.labels))


def _explain(scored: Scored, ctx: ScanContext, features: np.ndarray, targets: list[int]) -> None:
    result, start = scored.result, time.perf_counter()
    for index in targets:
        cam = ctx.explainer.cam(features, index)
        peaks = ctx.explainer.peaks(cam, scored.item.shape)
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
    result.film_height, result.film_width = item.shape
    if item.refusal is not None and not ctx.allow_unrecognised:  # not a chest film by its header or colour
        refuse_unscored(result, item.refusal)
        return scored
    pred = ctx.model.predict(item.x)
    scores = np.asarray(pred.scores, np.float64).reshape(-1)
    found = findings(scores, ctx.model.bundle.thresholds, ctx.cam_mode, ctx.top_k)
    shown = judge_result(result, ctx.guard, pred.features, item.refusal, ctx.allow_unrecognised)
    result.status, result.invoke_ms, result.decode_ms = "ok", float(pred.invoke_ms), item.decode_ms
    result.scores = {label: round(float(s), 6) for label, s in zip(result.labels, scores, strict=True)}
    result.flagged = [result.labels[i] for i in found.flagged] if shown else []  # refused: scores kept for audit
    result.top_label, result.top_score = result.labels[found.best], round(float(scores[found.best]), 6)
    if ctx.explainer is not None and shown:
        _explain(scored, ctx, pred.features, found.explain)
    return scored


# ---------------------------------------------------------------- 3. write

def safe_stem(name: str) -> str:
    """A film name as a harmless file-name part: ASCII letters, digits, ``._-``, no leading dot, bounded."""
    stem = Path(name.replace("\\", "/").split("/")[-1]).stem
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in stem).lstrip(".-_")
    return cleaned[:_STEM_MAX] or "film"


def overlay_name(film_path: str, sha: str, model_hash: str, label: str, suffix: str = ".png") -> str:
    """``overlays/<stem>-<film hash>-<model hash>-<label><suffix>``, relative to OUT; never leaves it."""
    return f"{OVERLAYS}/{safe_stem(film_path)}-{sha[:10]}-{model_hash[:6]}-{safe_stem(label)}{suffix}"


def render_overlays(scored: Scored, ctx: ScanContext) -> Scored:
    """Encode the film's overlays in memory when the explainer can (pure compute, any thread; no file)."""
    render = getattr(ctx.explainer, "render_overlays", None)
    if ctx.overlays and scored.cams and render is not None and scored.encoded is None:
        start, item = time.perf_counter(), scored.item
        scored.encoded = render(item.film, item.shape, scored.cams)
        scored.render_ms = (time.perf_counter() - start) * 1000.0
    return scored


def _write_overlay(scored: Scored, ctx: ScanContext, index: int) -> str:
    result, (label, cam, peaks) = scored.result, scored.cams[index]
    suffix = getattr(ctx.explainer, "overlay_suffix", ".png")
    rel = overlay_name(result.film_path, result.file_sha256, result.model_hash, label, suffix)
    path = ctx.out_dir / rel
    if path.resolve().parent != (ctx.out_dir / OVERLAYS).resolve():
        raise StoreError(f"refusing to write an overlay outside {ctx.out_dir}: {rel!r}")  # cannot happen
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if scored.encoded is not None:
            atomic_write_bytes(path, scored.encoded[index])
        else:
            ctx.explainer.write_overlay(path, scored.item.film, cam, label, peaks)
    except OSError as err:
        raise output_error(path, err, "write the overlay") from None
    return rel


def finish(scored: Scored, ctx: ScanContext) -> FilmResult:
    """Write the film's overlays (atomically), then commit its row: a row only ever names files that exist."""
    result = scored.result
    if ctx.overlays:
        render_overlays(scored, ctx)
        start = time.perf_counter()
        for index, entry in enumerate(result.cam):
            entry["overlay"] = _write_overlay(scored, ctx, index)
            result.overlays.append(entry["overlay"])
        result.overlay_ms = scored.render_ms + (time.perf_counter() - start) * 1000.0
    ctx.store.add(result)
    return result


def scan_one(path: Path, ctx: ScanContext, shown: str | None = None) -> tuple[Prepared, FilmResult | None]:
    """One film through the whole path (edge.capture, the app); None when the store already holds it.

    ``shown``: the name to store and show instead of ``path`` (the app: the uploaded file's own name)."""
    item = prepare(Path(path), ctx.store.done_lookup(ctx.model.bundle.sha256), set(), input_side(ctx.model.bundle))
    if shown is not None:
        item.shown = shown
        if item.error is not None:
            item.error = FilmError(shown, item.error.problem, item.error.kind)
    return item, (None if item.skip else finish(score_prepared(item, ctx), ctx))
