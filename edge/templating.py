"""HTML through Jinja2 with autoescape, one set of templates for the app's pages and report.html.

The templates and the stylesheet live in edge/web/ (templates/, static/app.css); the app's Flask
environment loads the same folder. report.html is a file opened offline from the results folder, so it
cannot link the app's stylesheet: it carries the same CSS inline (its Content-Security-Policy allows
inline style, no script). Shared pieces (a score line, a refusal, the demo banner) are macros in
templates/macros.html, used by both.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

__all__ = ["STATIC", "TEMPLATES", "environment", "render", "stylesheet"]

_WEB = Path(__file__).resolve().parent / "web"
TEMPLATES = _WEB / "templates"
STATIC = _WEB / "static"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Autoescaped, and strict: a name missing from the context is an error, never an empty string."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@lru_cache(maxsize=1)
def stylesheet() -> Markup:
    """app.css, for a page that must carry its style inline (report.html). Our own file: not escaped."""
    return Markup((STATIC / "app.css").read_text(encoding="utf-8"))


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)
