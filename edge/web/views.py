"""The pages: upload, result, history, downloads, access code. Results are found by id, files by the store."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, g, make_response, redirect, render_template, request, send_file, session, url_for

from edge.present import PLAIN, model_facts, name_of, refusal, score_lines, source_of, verdict
from edge.report import DEMO_DISCLAIMER
from edge.store import OVERLAYS
from edge.web import UserError, state
from edge.web.engine import CameraError, Engine, Outcome
from edge.web.security import code_matches, new_token

__all__ = ["PAGE_SIZE", "SHOWS", "engine", "find_result", "overlay_path", "page_number", "pages", "take_upload"]

pages = Blueprint("pages", __name__)
PAGE_SIZE = 20
SHOWS = ("all", "flagged", "refused", "failed")
DOWNLOADS = {"csv": ("results.csv", "text/csv"), "jsonl": ("results.jsonl", "application/x-ndjson"),
             "report": ("report.html", "text/html")}


def engine() -> Engine:
    return state()["engine"]


def take_upload() -> Outcome:
    """The request's film (field ``film``, or ``photo`` from the camera button) through the engine."""
    photo_file = request.files.get("photo")
    upload = photo_file if photo_file and photo_file.filename else request.files.get("film")
    if upload is None or not upload.filename:
        raise UserError(400, "Choose a film file (or take a photo of a film) to upload.")
    data = upload.read()
    if not data:
        raise UserError(400, f"The file {upload.filename!r} is empty.")
    photo = upload is photo_file or request.form.get("photo") in ("1", "on", "true")
    started = time.perf_counter()  # the upload is received: from here to its result stored (Server-Timing)
    outcome = engine().submit(data, upload.filename, photo=photo)
    g.score_ms = (time.perf_counter() - started) * 1000
    return outcome


@pages.get("/")
def upload_page() -> Any:
    return render_template("upload.html", accept="image/*,.dcm,application/dicom", camera=engine().camera is not None)


@pages.post("/upload")
def upload() -> Any:
    outcome = take_upload()
    if outcome.row is None:
        return render_template("upload.html", accept="image/*,.dcm,application/dicom",
                               camera=engine().camera is not None, problems=outcome.problems), outcome.status
    if outcome.status >= 400:  # stored, but the file could not be read: say why, here
        return _result_page(outcome.row, status=outcome.status, known=False)
    return redirect(url_for("pages.result", row_id=outcome.row_id, known=int(outcome.kind == "known")), 303)


def find_result(row_id: int) -> dict:
    """The stored result ``row_id``; a 404 message when there is none."""
    with engine().open_store() as store:
        row = store.result(row_id)
    if row is None:
        raise UserError(404, f"There is no result {row_id}.")
    return row


def page_number() -> int:
    page = request.args.get("page", "1")
    return max(1, int(page)) if page.isdigit() else 1


@pages.get("/results/<int:row_id>")
def result(row_id: int) -> Any:
    return _result_page(find_result(row_id), known=request.args.get("known") == "1")


def _result_page(row: dict, status: int = 200, known: bool = False) -> Any:
    bundle = engine().bundle
    cams = [c for c in row.get("cam") or [] if c.get("overlay")]
    shown = request.args.get("show", "0")
    show = int(shown) if shown.isdigit() and int(shown) < len(cams) else 0
    return render_template("result.html", row=row, name=name_of(row), source=source_of(row),
                           verdict=verdict(row), refused=refusal(row), lines=score_lines(row, bundle),
                           facts=model_facts(row, bundle), cams=cams, show=show, known=known,
                           disclaimer=DEMO_DISCLAIMER), status


def overlay_path(row: dict, index: int) -> Path | None:
    """The file of a row's ``index``-th overlay, when it is one inside OUT/overlays that exists."""
    names = row.get("overlays") or []
    if not 0 <= index < len(names):
        return None
    out = engine().out_dir.resolve()
    path = (out / str(names[index])).resolve()
    return path if path.parent == out / OVERLAYS and path.is_file() else None


@pages.get("/results/<int:row_id>/overlay/<int:index>")
def overlay(row_id: int, index: int) -> Any:
    path = overlay_path(find_result(row_id), index)
    if path is None:
        raise UserError(404, "There is no such heatmap.")
    return send_file(path, max_age=3600)  # image/jpeg or image/png, by the overlay's suffix


@pages.get("/history")
def history() -> Any:
    show = request.args.get("show", "all")
    show = show if show in SHOWS else "all"
    name = request.args.get("q", "")[:200]
    page = page_number()
    with engine().open_store() as store:
        rows, total = store.page(show, name, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    items = [{"row": r, "name": name_of(r), "source": source_of(r), "verdict": verdict(r)} for r in rows]
    return render_template("history.html", items=items, total=total, page=page, show=show, q=name, shows=SHOWS,
                           pages=max(1, math.ceil(total / PAGE_SIZE)), plain=PLAIN)


@pages.get("/downloads/<kind>")
def download(kind: str) -> Any:
    if kind not in DOWNLOADS:
        raise UserError(404, "There is no such download.")
    name, mimetype = DOWNLOADS[kind]
    engine().flush_exports()  # the last uploads in it, even if the background rebuild has not run yet
    path = engine().out_dir / name
    if not path.is_file():
        raise UserError(404, f"There is no {name} yet: it is written after the first film is stored.")
    return send_file(path, mimetype=mimetype, as_attachment=True, download_name=name)


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, not //…); else the upload page."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not (target or "").startswith("/") or target.startswith("//"):
        return url_for("pages.upload_page")
    return target


@pages.route("/login", methods=["GET", "POST"])
def login() -> Any:
    st = state()
    if not st["require"]:
        return redirect(url_for("pages.upload_page"), 303)
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", "/")), 200
    addr = request.remote_addr or "?"
    if (wait := st["throttle"].wait(addr)) > 0:
        raise UserError(429, f"Too many wrong codes: wait {math.ceil(wait)} s before trying again.")
    if not code_matches(request.form.get("code"), st["code"]):
        st["throttle"].wrong(addr)
        return render_template("login.html", message="That is not the access code.",
                               next=request.form.get("next", "/")), 401
    st["throttle"].right(addr)
    session.clear()
    session["auth"], session["csrf"] = True, new_token()
    return redirect(_safe_next(request.form.get("next")), 303)


# ---------------------------------------------------------------- the Pi camera

@pages.get("/camera")
def camera() -> Any:
    """A new frame from the Pi camera, with edge.capture's checks: what is wrong (retake), or keep it."""
    try:
        shot = engine().camera_shot()
    except CameraError as err:
        raise UserError(404 if engine().camera is None else 503, f"{str(err).capitalize()}.") from None
    return render_template("camera.html", shot=shot)


@pages.get("/camera/<token>.jpg")
def camera_preview(token: str) -> Any:
    shot = engine().shot(token)
    if shot is None:
        raise UserError(404, "That picture is no longer kept: take another.")
    response = make_response(shot.preview)
    response.headers.update({"Content-Type": "image/jpeg", "Cache-Control": "no-store"})
    return response


@pages.post("/camera/keep")
def camera_keep() -> Any:
    outcome = engine().keep_shot(request.form.get("token", "")[:64])
    if outcome.row is None:
        return render_template("camera.html", shot=None, problems=outcome.problems), outcome.status
    if outcome.status >= 400:
        return _result_page(outcome.row, status=outcome.status, known=False)
    return redirect(url_for("pages.result", row_id=outcome.row_id, known=int(outcome.kind == "known")), 303)
