"""The app's side of "film in, stored result out": an uploaded file through edge.service into the shared store.

One ``Engine`` per app. ``submit`` takes the uploaded bytes and the name the phone gave them, and:

1. sniffs the bytes (edge.films.sniff; never the name): not an image or DICOM -> refused, nothing stored;
2. for a photo of a film (the page's camera button, or a JPEG whose EXIF names a camera) runs edge.capture's
   quality checks; a photo that fails them is refused, nothing stored; one that passes is kept as its
   trimmed grayscale film (PNG), as edge.capture keeps its captures;
3. under one lock (the interpreter is not thread-safe, and one film at a time keeps the Pi's memory flat)
   and the results folder's OutLock (shared with edge.scan and edge.capture, held only while storing):
   saves the file as ``OUT/uploads/<sha256>.<format>`` (atomically; named by its hash, never by the name
   sent) and runs ``edge.service.scan_one`` (the scan's own scoring, CAM, overlays and store row): the result
   is committed before the page answers.
4. results.csv, results.jsonl and report.html (edge.report.export_all) are rebuilt from the store by a
   background thread once uploads pause for a second (a burst is one rebuild; a minute at most while they
   keep coming), and before any
   download of them and at shutdown (``flush_exports``). Rebuilding them costs time in proportion to the
   whole store, so doing it inside each upload would make every upload slower than the last; a kill before
   the rebuild loses nothing (the store has the result, and the next scan or start of the app rebuilds them).

The Pi camera (when the device has one) is the page's too: ``camera_shot`` grabs a frame and runs
edge.capture's checks, the page shows it with what is wrong (retake) or a keep button, and ``keep_shot`` saves
it as edge.capture saves its captures (OUT/captures/capture-….png) and scores it by the same path.

The name sent is only ever text shown to people (the row's ``film_path`` is ``upload/<name>``).
"""

from __future__ import annotations

import hashlib
import io
import secrets
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge.capture import check_frame, save_capture
from edge.decode import MAX_PIXELS
from edge.errors import XrayError
from edge.films import FORMATS, sniff
from edge.fsio import atomic_write_bytes, output_error, remove_stale_temp_files
from edge.present import UPLOAD_PREFIX
from edge.progress import printable
from edge.report import export_all
from edge.service import ScanContext, scan_one
from edge.store import APP_HOLDER, DB_NAME, OutLock, Store

__all__ = ["UPLOADS", "UPLOAD_PREFIX", "CameraError", "Engine", "Outcome", "Shot", "display_name", "is_photo"]

UPLOADS = "uploads"  # OUT/uploads/<sha256>.<format>
_NAME_MAX = 120
_LOCK_WAIT = 10.0  # seconds an upload waits for a scan to let go of the folder before it is refused
_PREVIEW_SIDE = 960  # px, the longer side of a camera preview sent to the page
_SHOTS_KEPT = 4  # camera frames kept for "keep" at a time (one per person taking pictures)
_EXPORT_QUIET = 1.0  # seconds without an upload before the exports are rebuilt (a burst is one rebuild)
_EXPORT_MAX_LAG = 60.0  # seconds at most between an upload and its rebuild while uploads keep coming
_CAMERA_TAGS = (0x010F, 0x0110)  # EXIF Make, Model
_READABLE = ", ".join(k.upper() for k in FORMATS if k != "dicom") + " or DICOM"


class CameraError(XrayError):
    """No Pi camera, or one that does not answer."""


@dataclass
class Shot:
    """A frame from the Pi camera: its preview (JPEG), the trimmed gray film when the checks passed, else why not."""

    token: str
    preview: bytes
    film: np.ndarray | None
    problems: list[str]


@dataclass
class Outcome:
    """What became of an upload: ``stored`` (a new row), ``known`` (the store already had it), ``refused``
    (nothing stored; ``problems`` say why). ``status``: the HTTP status the app answers with."""

    kind: str
    status: int
    row_id: int | None = None
    row: dict | None = None
    problems: list[str] = field(default_factory=list)


def display_name(name: str | None) -> str:
    """The last part of a sent file name, one printable line, bounded; "film" when there is none."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return printable(base)[:_NAME_MAX] or "film"


def is_photo(data: bytes) -> bool:
    """A JPEG whose EXIF names the camera that took it: a photograph (of a film), not a film file."""
    if sniff(data) != "jpeg":
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            exif = img.getexif()
    except Exception:  # noqa: BLE001 - unreadable EXIF: not recognisably a photo; the decoder will say more
        return False
    return any(exif.get(tag) for tag in _CAMERA_TAGS)


def _photo_film(data: bytes) -> tuple[bytes | None, list[str]]:
    """(the trimmed gray film as PNG bytes, or None; problems) for a photo, by edge.capture's checks."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                return None, [f"the photo is too large ({img.width}×{img.height} px)"]
            frame = np.asarray(img.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - any decoder failure is a property of the upload
        return None, [f"the photo could not be read ({type(err).__name__})"]
    film, problems = check_frame(frame)
    if problems:
        return None, problems
    buf = io.BytesIO()
    Image.fromarray(film).save(buf, format="PNG")
    return buf.getvalue(), []


class Engine:
    """The loaded model and the results folder; ``submit`` is safe to call from many threads."""

    def __init__(self, model: Any, explainer: Any, out_dir: Path, *, keep_uploads: bool = True, guard: Any = None,
                 camera: Any = None):
        """``guard``: the bundle's out-of-distribution guard (edge.novelty.load_guard), as edge.scan uses it;
        ``camera``: a Pi camera (edge.capture.Camera) the pages can capture from, or None."""
        self.camera = camera
        self._camera_lock = threading.Lock()
        self._shots: OrderedDict[str, Shot] = OrderedDict()
        self.model, self.explainer, self.out_dir, self.guard = model, explainer, Path(out_dir), guard
        self.keep_uploads = keep_uploads
        self._lock = threading.Lock()
        self._stale = False  # a stored result is not in the exports yet (guarded by _lock)
        self._swept = False  # uploads/ cleared of a killed app's temp files (guarded by _lock)
        self._due = threading.Event()  # wakes the exporter
        self._exporter: threading.Thread | None = None

    @property
    def bundle(self) -> Any:
        return self.model.bundle

    def open_store(self) -> Store:
        return Store(self.out_dir / DB_NAME)

    def submit(self, data: bytes, name: str | None, photo: bool = False) -> Outcome:
        """Sniff, check, store and score one upload (see the module's docstring)."""
        fmt = sniff(data)
        if fmt is None or fmt not in FORMATS:
            return Outcome("refused", 415, problems=[f"not a film file: the bytes are not {_READABLE}"])
        if photo or is_photo(data):
            data, problems = _photo_film(data)
            if data is None:
                return Outcome("refused", 422, problems=problems)
            fmt = "png"
        with self._lock, OutLock(self.out_dir, wait=_LOCK_WAIT, holder=APP_HOLDER), self.open_store() as store:
            return self._store(store, data, fmt, display_name(name))

    def _store(self, store: Store, data: bytes, fmt: str, name: str) -> Outcome:
        sha = hashlib.sha256(data).hexdigest()
        folder = self.out_dir / UPLOADS
        if not self._swept:  # only this app writes uploads/: a killed one's temp files, once (not a listing per upload)
            remove_stale_temp_files(folder)
            self._swept = True
        path = folder / f"{sha}.{fmt}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not path.is_file():
                atomic_write_bytes(path, data)
        except OSError as err:
            raise output_error(folder, err, "keep the upload") from None
        try:
            return self._score(store, path, UPLOAD_PREFIX + name)
        finally:
            if not self.keep_uploads:
                path.unlink(missing_ok=True)

    def _score(self, store: Store, path: Path, shown: str | None) -> Outcome:
        """The scan's own path for one stored file (edge.service.scan_one), and what became of it."""
        ctx = ScanContext(model=self.model, explainer=self.explainer, store=store, out_dir=self.out_dir,
                          guard=self.guard)
        prepared, result = scan_one(path, ctx, shown=shown)
        row_id = store.result_id(prepared.sha, self.bundle.sha256) if prepared.sha else None
        row = store.result(row_id) if row_id is not None else None
        if result is not None:
            self.exports_due()
        kind = "stored" if result is not None else "known"
        ok = row is not None and row["status"] == "ok"
        return Outcome(kind, (201 if kind == "stored" else 200) if ok else 422, row_id, row)

    # ------------------------------------------------------------ the Pi camera, from the page

    def camera_shot(self) -> Shot:
        """A frame from the Pi camera and edge.capture's checks of it, kept (a few at a time) until it is kept or
        retaken; raises CameraError when there is no camera or it does not answer."""
        if self.camera is None:
            raise CameraError("there is no Pi camera on this device")
        with self._camera_lock:
            try:
                frame = self.camera.capture_array()
            except Exception as err:  # noqa: BLE001 - a camera that fails is a message, not a crash
                raise CameraError(f"the camera did not answer ({type(err).__name__}: {err})") from None
            frame = np.asarray(frame)
            film, problems = check_frame(frame)
            preview = Image.fromarray(frame[..., :3] if frame.ndim == 3 else frame)
            preview.thumbnail((_PREVIEW_SIDE, _PREVIEW_SIDE))
            buf = io.BytesIO()
            preview.convert("RGB").save(buf, format="JPEG", quality=85)
            shot = Shot(secrets.token_urlsafe(16), buf.getvalue(), None if problems else film, problems)
            self._shots[shot.token] = shot
            while len(self._shots) > _SHOTS_KEPT:
                self._shots.popitem(last=False)
            return shot

    def shot(self, token: str) -> Shot | None:
        with self._camera_lock:
            return self._shots.get(token)

    def keep_shot(self, token: str) -> Outcome:
        """Save a shot that passed the checks as edge.capture saves its captures (OUT/captures) and score it."""
        with self._camera_lock:
            shot = self._shots.pop(token, None)
        if shot is None:
            return Outcome("refused", 410, problems=["that picture is no longer kept: take another"])
        if shot.film is None:
            return Outcome("refused", 422, problems=shot.problems)
        with self._lock, OutLock(self.out_dir, wait=_LOCK_WAIT, holder=APP_HOLDER), self.open_store() as store:
            return self._score(store, save_capture(self.out_dir, shot.film), None)

    # ------------------------------------------------------------ exports, off the upload's path

    def exports_due(self) -> None:
        """Ask for results.csv, results.jsonl and report.html to be rebuilt soon (a background thread).
        Called under ``_lock`` by an upload, or at start (the app's exports may predate results stored last)."""
        self._stale = True
        self._due.set()
        if self._exporter is None or not self._exporter.is_alive():
            self._exporter = threading.Thread(target=self._export_loop, name="exports", daemon=True)
            self._exporter.start()

    def _export_loop(self) -> None:
        """Rebuild once uploads pause for ``_EXPORT_QUIET`` s, or ``_EXPORT_MAX_LAG`` s after the first waiting one.
        A rebuild holds the upload lock for a time that grows with the store, so
        under a stream of uploads rebuilding every second made every upload wait behind it."""
        while self._due.wait():
            first = time.monotonic()
            while True:
                self._due.clear()
                time.sleep(_EXPORT_QUIET)
                if not self._due.is_set() or time.monotonic() - first >= _EXPORT_MAX_LAG:
                    break
            self._due.clear()
            try:
                self.flush_exports()
            except XrayError as err:  # said once on the server's log; the next upload or download tries again
                print(f"edge.serve: note: the exports were not rebuilt: {err}", file=sys.stderr, flush=True)

    def flush_exports(self) -> None:
        """Rebuild the exports now if a stored result is not in them yet (before a download, at shutdown).
        A failure (a full disk, a scan holding the folder) is raised; the result stays in the store."""
        with self._lock:
            if not self._stale:
                return
            with OutLock(self.out_dir, wait=_LOCK_WAIT, holder=APP_HOLDER), self.open_store() as store:
                export_all(store, self.out_dir, self.bundle)
            self._stale = False
