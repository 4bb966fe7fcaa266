"""The app (issue #15): a thin web layer over edge.service, served by ``python -m edge.serve``.

``create_app(engine, ...)`` is the factory (the Flask tutorial's shape): blueprints ``pages`` (HTML through
Jinja2, autoescaped) and ``api`` (JSON), one results folder shared with edge.scan and edge.capture
(edge.web.engine). Every request passes ``_guard``: the access code where one is required, the CSRF token
on every state-changing request. Every error a user can cause is a page (or JSON for /api/) with its HTTP
status and a message; anything else is logged and answered with a plain 500 page, never a traceback.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from flask import Flask, abort, g, jsonify, render_template, request, session
from werkzeug.exceptions import HTTPException

from edge.errors import XrayError
from edge.report import DEMO_DISCLAIMER
from edge.web.engine import Engine
from edge.web.security import Throttle, code_matches, new_token, security_headers

__all__ = ["DEFAULT_MAX_MB", "UserError", "answer", "create_app", "csrf_token", "state"]

DEFAULT_MAX_MB = 100
_HERE = Path(__file__).resolve().parent
_OPEN_ENDPOINTS = {"static", "pages.login"}  # reachable without the access code
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_MESSAGES = {
    400: "The request was not understood.",
    403: "This form has expired or came from another page: reload the page and try again.",
    404: "There is no such page or result.",
    405: "That is not something this page does.",
    413: "The file is too large.",
    500: "Something went wrong on the server. The details are in the server's log; nothing you sent was lost "
         "if a result was shown.",
}


def create_app(engine: Engine, *, code: str, require_code: bool, max_mb: int = DEFAULT_MAX_MB,
               throttle: Throttle | None = None, secret_key: bytes | None = None) -> Flask:
    """The app for ``engine``. ``code``: the folder's access code (API clients send it in ``X-Access-Code``);
    ``require_code``: every page asks for it (any address but loopback)."""
    app = Flask(__name__, template_folder=str(_HERE / "templates"), static_folder=str(_HERE / "static"))
    app.config.update(SECRET_KEY=secret_key or secrets.token_bytes(32), MAX_CONTENT_LENGTH=max_mb * 2**20,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_NAME="xray",
                      MAX_FORM_MEMORY_SIZE=2**20, MAX_MB=max_mb, TEMPLATES_AUTO_RELOAD=False)
    app.extensions["xray"] = {"engine": engine, "code": code, "require": require_code,
                              "throttle": throttle or Throttle()}
    from edge.web.api import api
    from edge.web.views import pages

    app.register_blueprint(pages)
    app.register_blueprint(api, url_prefix="/api")
    app.before_request(_guard)
    app.after_request(_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(UserError, _user_error)
    app.register_error_handler(XrayError, _xray_error)
    app.register_error_handler(Exception, _bug)
    app.context_processor(lambda: {"csrf_token": csrf_token, "bundle": engine.bundle,
                                   "needs_code": require_code,
                                   "disclaimer_text": DEMO_DISCLAIMER})
    return app


def state() -> dict[str, Any]:
    from flask import current_app
    return current_app.extensions["xray"]


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = new_token()
    return session["csrf"]


def is_api() -> bool:
    return request.path.startswith("/api/")


def header_code_ok() -> bool:
    """The request carries the right access code in ``X-Access-Code`` (API clients)."""
    code = state()["code"]
    given = request.headers.get("X-Access-Code")
    return given is not None and code_matches(given, code)


def _guard() -> None:
    by_header = header_code_ok()
    if state()["require"] and not by_header and not session.get("auth") and request.endpoint not in _OPEN_ENDPOINTS:
        abort(401)
    if request.method not in _SAFE_METHODS and not by_header and request.endpoint != "static":
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
        if not (session.get("csrf") and secrets.compare_digest(sent.encode(), session["csrf"].encode())):
            abort(403)


def _headers(response: Any) -> Any:
    security_headers(response.headers)
    if "score_ms" in g:  # an upload: the server's time from the file received to its result stored
        response.headers["Server-Timing"] = f"score;dur={g.score_ms:.1f}"
    return response


class UserError(Exception):
    """A problem the user caused and can fix: answered with ``status`` and ``message`` (a page, or JSON)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def answer(status: int, message: str) -> Any:
    """The error page (or JSON under /api/) for ``status``; 401 is the access code form."""
    if is_api():
        response = jsonify({"error": message, "status": status})
        response.status_code = status
        return response
    if status == 401:
        return render_template("login.html", message=message, next=request.full_path), 401
    return render_template("error.html", status=status, message=message), status


def _http_error(err: HTTPException) -> Any:
    from flask import current_app
    status = err.code or 500
    if status == 401:
        return answer(401, "Enter the access code shown where the app was started.")
    if status == 413:
        return answer(413, f"The file is too large: at most {current_app.config['MAX_MB']} MB.")
    return answer(status, _MESSAGES.get(status, err.name))


def _user_error(err: UserError) -> Any:
    return answer(err.status, err.message)


def _xray_error(err: XrayError) -> Any:
    """A store or folder problem (full disk, a scan holding the folder): the user is told, 503."""
    return answer(503, f"The result could not be stored: {err}")


def _bug(err: Exception) -> Any:
    from flask import current_app
    if isinstance(err, HTTPException):
        return _http_error(err)
    current_app.logger.exception("unexpected error on %s %s", request.method, request.path)
    return answer(500, _MESSAGES[500])
