"""The JSON API beside the pages (README: "The app"): post a film, get its result, list results.

    POST /api/results            multipart field ``film`` (``photo=1`` for a photo of a film)
                                 201 new result, 200 already stored, 422 stored but unreadable,
                                 415/413/422 refused (nothing stored): {"error": ...}
    GET  /api/results            ?show=all|flagged|refused|failed &q=NAME &page=N -> {"items", "total", ...}
    GET  /api/results/<id>       one result

Authentication: on loopback none for reading; a POST needs the access code in ``X-Access-Code`` (or, from
the app's own pages, the session's CSRF token). Elsewhere every call needs ``X-Access-Code``.
"""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, jsonify, request

from edge.present import api_row
from edge.web import UserError
from edge.web.views import PAGE_SIZE, SHOWS, engine, find_result, page_number, take_upload

__all__ = ["api"]

api = Blueprint("api", __name__)


@api.post("/results")
def post_result() -> Any:
    outcome = take_upload()
    if outcome.row is None:
        raise UserError(outcome.status, "; ".join(outcome.problems))
    body = {"outcome": outcome.kind, "result": api_row(outcome.row, request.host_url)}
    return jsonify(body), outcome.status


@api.get("/results")
def list_results() -> Any:
    show = request.args.get("show", "all")
    if show not in SHOWS:
        raise UserError(400, f"show must be one of {', '.join(SHOWS)}")
    page = page_number()
    with engine().open_store() as store:
        rows, total = store.page(show, request.args.get("q", "")[:200], PAGE_SIZE, (page - 1) * PAGE_SIZE)
    return jsonify({"items": [api_row(r, request.host_url) for r in rows], "total": total, "page": page,
                    "pages": max(1, math.ceil(total / PAGE_SIZE)), "page_size": PAGE_SIZE})


@api.get("/results/<int:row_id>")
def get_result(row_id: int) -> Any:
    return jsonify(api_row(find_result(row_id), request.host_url))
