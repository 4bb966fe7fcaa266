"""Shared by the app's tests: an app over the fake model (tests/edge/test_scan.py) or a real bundle, films as
bytes, the CSRF token of a page, and a waitress server on 127.0.0.1 on an ephemeral port."""

from __future__ import annotations

import io
import json
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge.web import create_app
from edge.web.engine import Engine
from edge.web.security import Throttle, access_code
from tests.edge.test_scan import FakeExplainer, FakeModel, fake_bundle

__all__ = ["api_post", "broken_png", "csrf", "fake_app", "film_png", "multipart", "non_film_png", "post_film", "served"]


def film_png(seed: int = 0, size: tuple[int, int] = (120, 100)) -> bytes:
    """A gray film-shaped PNG (distinct bytes per seed)."""
    rng = np.random.default_rng(seed)
    film = (np.linspace(0, 200, size[0] * size[1]).reshape(size) + rng.integers(0, 50, size)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(film).save(buf, format="PNG")
    return buf.getvalue()


def non_film_png() -> bytes:
    """A colourful banner: an image, but no chest film (8:1, refused by shape until the novelty guard refuses it)."""
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (100, 800, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def broken_png() -> bytes:
    return film_png(3)[:200]  # a PNG signature and header, then nothing


def fake_app(out: Path, *, require_code: bool = False, clock: Any = None, max_mb: int = 100,
             keep_uploads: bool = True, camera: Any = None) -> tuple[Any, Engine, str]:
    bundle = fake_bundle(out / "bundle")
    engine = Engine(FakeModel(bundle), FakeExplainer(), out, keep_uploads=keep_uploads, camera=camera)
    code = access_code(out)
    app = create_app(engine, code=code, require_code=require_code, max_mb=max_mb,
                     throttle=Throttle(clock) if clock else None)
    return app, engine, code


def csrf(client: Any, path: str = "/") -> str:
    page = client.get(path)
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def post_film(client: Any, data: bytes, name: str = "film.png", token: str | None = None, path: str = "/upload",
              **fields: Any) -> Any:
    form = {"film": (io.BytesIO(data), name), **fields}
    if token is not None:
        form["csrf_token"] = token
    return client.post(path, data=form, content_type="multipart/form-data")


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    """(body, content type) of a multipart form with one file field ``film``."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"film\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@contextmanager
def served(app: Any) -> Iterator[str]:
    """The app on a real waitress server on 127.0.0.1, an ephemeral port; yields its base URL."""
    from waitress import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    closed = threading.Event()

    def run() -> None:
        try:
            server.run()
        except OSError:  # closing the sockets under the loop's select() (EBADF): expected once closed
            if not closed.is_set():
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}/"
    finally:
        closed.set()
        server.close()
        thread.join(timeout=10)


def api_post(base: str, data: bytes, name: str, code: str) -> tuple[int, dict]:
    body, ctype = multipart(data, name)
    req = urllib.request.Request(base + "api/results", data=body, method="POST",
                                 headers={"Content-Type": ctype, "X-Access-Code": code})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
