"""``python -m edge.capture --bundle DIR --out DIR``: photograph a film on a lightbox and score it.

A still is grabbed from a camera (``Camera``: anything with ``capture_array()``; on the Pi the
``Picamera2Camera`` adapter, picamera2 imported lazily), turned to grayscale (a film on a
lightbox already shows bone white) and checked before it is used: exposure (too dark, too bright,
clipped), focus (variance of the finest detail band, a Laplacian-like high-pass, relative to the
next band) and whether it looks like a film at all. The last is a heuristic, honestly: a film
photo is gray (no colour), has a wide spread of gray levels, and, once a bright lightbox border
is trimmed, a roughly film-shaped aspect ratio. It can be fooled; it catches a lens cap, a blank lightbox, a blurred
shot, a room or a face. Every failed check says why in one line.

Accepted captures are saved as PNG in OUT/captures/ and scored through the service path every
caller shares (``edge.service.scan_one``: the file is read back by ``edge.films.load_film``) into
the same store as edge.scan's.
Modes: ``--key`` (default; Enter captures, then Enter keeps, r retakes, q quits) or ``--timer S``
(a capture every S seconds). ``--count N`` stops after N accepted films.
"""

from __future__ import annotations

# isort: off
import edge._blas  # noqa: F401 - first, before numpy loads: one OpenBLAS thread
# isort: on

import argparse
import io
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageFilter

from edge.cli import run_main
from edge.errors import RuntimeMissingError
from edge.explain import CamExplainer
from edge.fsio import atomic_write_bytes, output_error
from edge.progress import StopOnSignal, printable
from edge.report import DEMO_DISCLAIMER, export_all
from edge.runtime import DEVICES
from edge.screen import REFUSED, guard_notes
from edge.service import ScanContext, scan_one
from edge.store import DB_NAME, OutLock, Store

__all__ = ["QUALITY", "Camera", "Picamera2Camera", "check_frame", "crop_lightbox", "main", "open_camera",
           "sharpness", "to_gray"]

CAPTURES = "captures"
INSTALL_PICAMERA2 = "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2`"

# Plain data: the limits of every check (gray levels 0-255, fractions of pixels).
QUALITY = {
    "dark_mean": 35.0,          # mean below: too dark
    "bright_mean": 225.0,       # mean above: too bright
    "clipped_white": 0.25,      # fraction at 250+ (after trimming the lightbox border) above: overexposed
    "clipped_black": 0.40,      # fraction at 5- above: underexposed
    "min_sharpness": 0.065,     # fine/next detail band variance on a 256 px copy (``sharpness``) below: blurred
    "min_spread": 60.0,         # 2nd-98th percentile range below: too flat to be a film
    "max_colour": 0.10,         # mean (max-min)/255 of RGB above: colourful, a film is gray
    "aspect": (0.55, 1.8),      # height/width of the film (lightbox border trimmed) outside: not film-shaped
    "border_level": 235.0,      # edge rows/columns this bright are lightbox, trimmed
}


class Camera(Protocol):
    """A still camera: ``capture_array()`` -> H×W (gray) or H×W×3 (RGB) uint8."""

    def capture_array(self) -> np.ndarray: ...


def _import_picamera2() -> Any:
    try:
        import picamera2  # only on a Raspberry Pi: imported when a camera is opened
    except ImportError:
        raise RuntimeMissingError(INSTALL_PICAMERA2) from None
    return picamera2


class Picamera2Camera:
    """picamera2 behind the ``Camera`` protocol (full-resolution RGB stills, optional preview window)."""

    def __init__(self, index: int = 0, preview: bool = True):
        picamera2 = _import_picamera2()
        try:
            self._cam = picamera2.Picamera2(camera_num=index)
            self._cam.configure(self._cam.create_still_configuration(main={"format": "RGB888"}))
            if preview:
                self._start_preview(picamera2)
            self._cam.start()
        except (IndexError, RuntimeError, OSError) as err:
            raise RuntimeMissingError(f"no camera {index} found ({err}): connect the camera module and check it "
                                      f"with `rpicam-hello --list-cameras`") from None

    def _start_preview(self, picamera2: Any) -> None:
        try:
            self._cam.start_preview(picamera2.Preview.QTGL)
        except Exception:  # noqa: BLE001 - no display (headless Pi): go on without a window
            print("note: no preview window (no display); framing by the checks alone", file=sys.stderr)

    def capture_array(self) -> np.ndarray:
        return np.asarray(self._cam.capture_array("main"))[..., 2::-1]  # RGB888 is B, G, R in memory

    def close(self) -> None:
        self._cam.stop()
        self._cam.close()


def open_camera(index: int, preview: bool) -> Camera:
    return Picamera2Camera(index, preview)


# ---------------------------------------------------------------- pure numpy checks

def to_gray(frame: np.ndarray) -> tuple[np.ndarray, float]:
    """(2-D uint8 luminance (ITU-R 601-2, Pillow's "L"), colourfulness 0-1) of a gray, RGB or RGBA/XRGB frame."""
    a = np.asarray(frame)
    if a.dtype != np.uint8:
        raise ValueError(f"a camera frame must be uint8, got {a.dtype}")
    if a.ndim == 2:
        return a, 0.0
    if a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"a camera frame must be H×W or H×W×3, got shape {a.shape}")
    gray = np.asarray(Image.fromarray(np.ascontiguousarray(a[..., :3])).convert("L"))
    sample = a[::8, ::8, :3].astype(np.int16)  # colour needs no full-resolution pass
    colour = float((sample.max(axis=2) - sample.min(axis=2)).mean() / 255)
    return gray, colour


def _small(gray: np.ndarray, side: int = 512) -> np.ndarray:
    img = Image.fromarray(gray)
    scale = side / max(img.size)
    if scale >= 1:
        return gray
    return np.asarray(img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.Resampling.BILINEAR))


def crop_lightbox(gray: np.ndarray, level: float = QUALITY["border_level"]) -> np.ndarray:
    """Trim edge rows and columns brighter than ``level`` on average (the lit frame around a film)."""
    rows, cols = gray.mean(axis=1) < level, gray.mean(axis=0) < level
    if not rows.any() or not cols.any():
        return gray  # all lightbox: nothing on it
    r, c = np.flatnonzero(rows), np.flatnonzero(cols)
    return gray[r[0]:r[-1] + 1, c[0]:c[-1] + 1]


def sharpness(gray: np.ndarray, side: int = 256) -> float:
    """Focus measure: variance of the finest detail band over that of the next band, on a ``side`` px copy.

    Fine band = picture minus its 1 px Gaussian blur (a Laplacian-like high-pass); next band = 1 px blur
    minus 4 px blur. A blurred photo has lost the fine band but not the coarser one. The small copy makes it
    independent of the camera's resolution and averages sensor noise away; the ratio makes it independent
    of exposure and contrast. Sharp films score about 0.08-0.3, blurred ones under 0.05.
    """
    img = Image.fromarray(_small(gray, side))
    a = np.asarray(img, np.float32)
    fine = np.asarray(img.filter(ImageFilter.GaussianBlur(1)), np.float32)
    coarse = np.asarray(img.filter(ImageFilter.GaussianBlur(4)), np.float32)
    return float((a - fine).var() / max(float((fine - coarse).var()), 1e-3))


def check_frame(frame: np.ndarray, q: dict = QUALITY) -> tuple[np.ndarray, list[str]]:
    """(the film: gray, lightbox trimmed, full resolution; problems, one line each). No problems: usable."""
    gray, colour = to_gray(frame)
    film = crop_lightbox(gray, q["border_level"])
    small, mean, problems = _small(film), float(_small(gray).mean()), []
    if mean < q["dark_mean"]:
        problems.append(f"too dark: mean brightness {mean:.0f}/255 (needs {q['dark_mean']:.0f}+); switch the "
                        f"lightbox on or open the exposure")
    elif mean > q["bright_mean"] and film.shape == gray.shape:  # bright, and no film found on the lightbox
        problems.append(f"too bright: mean brightness {mean:.0f}/255 (at most {q['bright_mean']:.0f}); is a film on "
                        f"the lightbox?")
    white, black = float((small >= 250).mean()), float((small <= 5).mean())
    if white > q["clipped_white"]:
        problems.append(f"overexposed: {white:.0%} of the film is clipped white (at most {q['clipped_white']:.0%})")
    if black > q["clipped_black"]:
        problems.append(f"underexposed: {black:.0%} of the film is clipped black (at most {q['clipped_black']:.0%})")
    problems.extend(_film_like(small, film.shape, colour, q))
    return film, problems


def _film_like(small: np.ndarray, shape: tuple[int, int], colour: float, q: dict) -> list[str]:
    problems = []
    lo, hi = np.percentile(small, (2, 98))
    if colour > q["max_colour"]:
        problems.append(f"does not look like a film: the picture is colourful ({colour:.2f}, at most "
                        f"{q['max_colour']:.2f}); a film on a lightbox is gray")
    if hi - lo < q["min_spread"]:
        problems.append(f"does not look like a film: too little contrast (gray levels span {hi - lo:.0f}, "
                        f"needs {q['min_spread']:.0f})")
    elif (s := sharpness(small)) < q["min_sharpness"]:
        problems.append(f"blurred: sharpness {s:.3f} (needs {q['min_sharpness']:.3f}); focus on the film and "
                        f"hold the camera still")
    aspect = shape[0] / shape[1]
    if not q["aspect"][0] <= aspect <= q["aspect"][1]:
        problems.append(f"does not look like a film: the framed area is {shape[1]}×{shape[0]} px "
                        f"(height/width {aspect:.2f}); frame the whole film")
    return problems


# ---------------------------------------------------------------- the session

def save_capture(out_dir: Path, film: np.ndarray) -> Path:
    """OUT/captures/capture-<UTC time>-<n>.png, a name not used before, written atomically."""
    folder, stamp = out_dir / CAPTURES, datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    buf = io.BytesIO()
    Image.fromarray(film).save(buf, format="PNG")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        n = 1
        while (path := folder / f"capture-{stamp}-{n:03d}.png").exists():  # under OUT's lock: no race
            n += 1
        atomic_write_bytes(path, buf.getvalue())
    except OSError as err:
        raise output_error(folder, err, "save the capture") from None
    return path


def _say(line: str) -> None:
    print(printable(line), file=sys.stderr, flush=True)


def _describe(result: Any) -> str:
    if result.status != "ok":
        return f"could not score it: {result.error}"
    if result.guard == REFUSED:  # guard hook: the same check as the scan, and a retake
        return f"{result.refusal}. Retake: the whole chest film, upright, as it hangs on the lightbox"
    found = ", ".join(f"{lb} {result.scores[lb]:.2f}" for lb in result.flagged) or "no finding over threshold"
    return f"{found} (highest: {result.top_label} {result.top_score:.2f})"


def _grab(camera: Camera, ask: Callable[[str], str] | None) -> tuple[np.ndarray | None, bool]:
    """(usable film or None, quit?). Key mode asks before grabbing and again to confirm."""
    if ask is not None and ask("Film on the lightbox? Enter: capture, q: quit > ").strip().lower() == "q":
        return None, True
    film, problems = check_frame(camera.capture_array())
    for problem in problems:
        _say(f"rejected: {problem}")
    if problems:
        return None, False
    if ask is None:
        return film, False
    answer = ask(f"Captured {film.shape[1]}×{film.shape[0]} px, checks passed. Enter: keep and score, "
                 f"r: retake, q: quit > ").strip().lower()
    return (film if answer == "" else None), answer == "q"


def run_session(camera: Camera, ctx: ScanContext, *, timer: float | None, count: int | None,
                ask: Callable[[str], str] | None, stop: Any = None) -> tuple[int, int]:
    """Capture, check, save and score until ``count`` films are kept, q, end of input or ``stop``.

    ``ask`` is None in timed mode. Returns (films kept, films that failed to score).
    """
    kept = failed = 0
    while count is None or kept < count:
        if stop is not None and stop.is_set():
            break
        try:
            film, quit_ = _grab(camera, ask)
        except (EOFError, KeyboardInterrupt):  # end of input, or Ctrl-C at a prompt: end the session cleanly
            break
        if quit_:
            break
        if film is not None:
            path = save_capture(ctx.out_dir, film)
            _, result = scan_one(path, ctx)
            kept += result is None or result.guard != REFUSED  # guard hook: a refused film is not kept
            failed += result is not None and result.status != "ok"
            _say(f"{path.name}: {_describe(result) if result else 'already scored'}")
        if timer is not None and (count is None or kept < count):
            time.sleep(timer)
    return kept, failed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.capture",
                                description="Photograph films on a lightbox with the Pi camera and score them.")
    p.add_argument("--bundle", required=True, help="model bundle folder")
    p.add_argument("--out", required=True, help="results folder (shared with edge.scan)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--timer", type=float, metavar="SECONDS", help="capture every SECONDS seconds")
    mode.add_argument("--key", action="store_true", help="Enter captures, then Enter keeps, r retakes (default)")
    p.add_argument("--count", type=int, help="stop after this many films are kept")
    p.add_argument("--no-preview", action="store_true", help="no live preview window")
    p.add_argument("--camera-index", type=int, default=0)
    p.add_argument("--device", choices=DEVICES, default="auto")
    return p


def _run(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from edge import runtime

    camera = open_camera(args.camera_index, not args.no_preview)  # no picamera2: say so before anything else
    try:
        from edge.novelty import load_guard

        model = runtime.open_model(args.bundle, device=args.device)
        guard = load_guard(model.bundle)
        for note in guard_notes(guard):
            _say(f"note: {note}")
        if model.bundle.is_demo:
            _say(f"*** {DEMO_DISCLAIMER} ***")
        out = Path(args.out)
        with OutLock(out), Store(out / DB_NAME) as store:
            explainer = CamExplainer(model.bundle, getattr(model, "head", None))
            ctx = ScanContext(model=model, explainer=explainer, store=store, out_dir=out, guard=guard)
            timed = args.timer is not None
            with StopOnSignal() if timed else nullcontext() as stop:  # key mode: Ctrl-C ends input() at once
                kept, failed = run_session(camera, ctx, timer=args.timer, count=args.count,
                                           ask=None if timed else input, stop=stop.event if stop else None)
            paths = export_all(store, out, model.bundle)
    finally:
        getattr(camera, "close", lambda: None)()
    _say(f"{kept} film(s) captured and stored, {failed} could not be scored; results: {paths['report']}")
    return 1 if failed else 0


def _check_args(args: argparse.Namespace) -> str | None:
    if (args.timer is not None and args.timer < 0) or (args.count is not None and args.count < 1):
        return "--timer must be 0 or more and --count at least 1"
    return None


def main(argv: list[str] | None = None) -> int:
    return run_main("edge.capture", lambda: _parser().parse_args(argv), _run,
                    "stopped; every film stored so far is kept", _check_args)


if __name__ == "__main__":
    sys.exit(main())
