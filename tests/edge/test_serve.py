"""The app (edge.serve, edge.web) over plain HTTP: the Flask test client with the fake model, then a real
waitress server for concurrent uploads. The browser tests are in test_serve_browser.py."""

from __future__ import annotations

import io
import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edge.web.api
import edge.web.engine
import edge.web.views
from edge.store import DB_NAME, OutLock, Store
from tests.edge.serve_helpers import api_post, broken_png, csrf, fake_app, film_png, non_film_png, post_film, served


@pytest.fixture
def app(tmp_path):
    return fake_app(tmp_path / "out")[0]


@pytest.fixture
def client(app):
    return app.test_client()


def test_upload_stores_and_shows_every_score_and_a_heatmap(client, tmp_path):
    r = post_film(client, film_png(), "chest.png", csrf(client))
    assert r.status_code == 303
    page = client.get(r.headers["Location"])
    assert page.status_code == 200 and "chest.png" in page.text
    assert page.text.count('<li class="score') == 3  # every label of the (fake) bundle
    heatmap = client.get("/results/1/overlay/0")
    assert heatmap.status_code == 200 and heatmap.data.startswith(b"\x89PNG")
    out = tmp_path / "out"
    assert len(list((out / "uploads").iterdir())) == 1
    # the exports are rebuilt off the upload's path; a download brings them up to date first
    assert "chest.png" in client.get("/downloads/report").text and "chest.png" in client.get("/downloads/csv").text
    assert "chest.png" in (out / "report.html").read_text()


def test_the_same_film_twice_is_one_result(client):
    token = csrf(client)
    first, second = post_film(client, film_png(), "a.png", token), post_film(client, film_png(), "b.png", token)
    assert first.headers["Location"].split("?")[0] == second.headers["Location"].split("?")[0]
    assert client.get("/api/results").json["total"] == 1


def test_post_without_csrf_token_is_refused(client):
    assert post_film(client, film_png(), "a.png").status_code == 403
    assert post_film(client, film_png(), "a.png", token="forged").status_code == 403
    assert client.get("/api/results").json["total"] == 0


def test_upload_over_the_limit_is_413_with_a_message(tmp_path):
    app = fake_app(tmp_path / "out", max_mb=1)[0]
    client = app.test_client()
    r = post_film(client, film_png() + b"\0" * (2 * 2**20), "big.png", csrf(client))
    assert r.status_code == 413 and "at most 1 MB" in r.text and "Traceback" not in r.text


def test_not_an_image_is_refused_and_not_stored(client):
    r = post_film(client, b"just some text, not a film", "notes.png", csrf(client))
    assert r.status_code == 415 and "not a film file" in r.text
    assert client.get("/api/results").json["total"] == 0


def test_a_broken_film_is_stored_as_failed_and_says_why(client):
    r = post_film(client, broken_png(), "broken.png", csrf(client))
    assert r.status_code == 422 and "Could not be read" in r.text and "broken.png" in r.text
    assert client.get("/api/results?show=failed").json["total"] == 1


def test_a_non_film_picture_is_not_scored_as_a_film(client):
    r = post_film(client, non_film_png(), "holiday.png", csrf(client))
    assert r.status_code == 422 and ("Refused" in r.text or "Could not be read" in r.text)


@pytest.mark.parametrize("name", ["<img src=x onerror=alert(1)>.png", "<svg onload=alert(1)>.png"])
def test_hostile_file_names_are_shown_inert(client, name):
    location = post_film(client, film_png(), name, csrf(client)).headers["Location"]
    for page in (client.get(location), client.get("/history")):
        assert "<img src=x" not in page.text and "<svg" not in page.text
        assert "&lt;" in page.text


def test_history_newest_first_filters_search_and_pages(client):
    token = csrf(client)
    for i in range(23):
        post_film(client, film_png(i), f"film-{i:02d}.png", token)
    post_film(client, broken_png(), "broken.png", token)
    page = client.get("/history")
    assert page.text.index("broken.png") < page.text.index("film-22.png") and "page 1 of 2" in page.text
    assert "film-00.png" in client.get("/history?page=2").text
    failed = client.get("/history?show=failed").text
    assert "broken.png" in failed and "film-01.png" not in failed
    found = client.get("/history?q=film-1").text
    assert "film-10.png" in found and "film-20.png" not in found
    assert client.get("/api/results?q=100%25").json["total"] == 0  # % is taken literally


def test_api_post_get_and_list(app, tmp_path):
    client, code = app.test_client(), app.extensions["xray"]["code"]
    r = client.post("/api/results", data={"film": (io.BytesIO(film_png()), "x.png")},
                    headers={"X-Access-Code": code}, content_type="multipart/form-data")
    assert r.status_code == 201 and r.json["outcome"] == "stored"
    result = r.json["result"]
    assert set(result["scores"]) == {"Cardiomegaly", "Effusion", "Pneumothorax"} and result["overlay_urls"]
    assert client.get(f"/api/results/{result['id']}").json["file_sha256"] == result["file_sha256"]
    assert client.get("/api/results").json["items"][0]["id"] == result["id"]
    assert client.get("/api/results/999").status_code == 404 and "error" in client.get("/api/results/999").json
    assert client.post("/api/results", data={}).status_code == 403  # neither code nor CSRF token


def test_pages_need_the_access_code_off_loopback(tmp_path):
    app, _, code = fake_app(tmp_path / "out", require_code=True)
    client = app.test_client()
    for path in ("/", "/history", "/results/1", "/api/results"):
        assert client.get(path).status_code == 401
    assert client.get("/api/results", headers={"X-Access-Code": code}).status_code == 200
    r = client.post("/login", data={"code": code.upper(), "csrf_token": csrf(client, "/login"), "next": "/history"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/history")
    assert client.get("/history").status_code == 200
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_repeated_wrong_codes_are_slowed_down(tmp_path):
    now = [1000.0]
    app, _, code = fake_app(tmp_path / "out", require_code=True, clock=lambda: now[0])
    client = app.test_client()
    token = csrf(client, "/login")
    statuses = [client.post("/login", data={"code": "wrong", "csrf_token": token}).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    refused = client.post("/login", data={"code": code, "csrf_token": token})
    assert refused.status_code == 429 and "wait" in refused.text
    now[0] += 1000
    assert client.post("/login", data={"code": code, "csrf_token": token}).status_code == 303


def test_login_goes_back_only_to_this_site(tmp_path):
    app, _, code = fake_app(tmp_path / "out", require_code=True)
    client = app.test_client()
    r = client.post("/login", data={"code": code, "csrf_token": csrf(client, "/login"), "next": "//evil.example/"})
    assert r.headers["Location"] == "/"


def test_access_code_file_is_owner_only(tmp_path):
    out = tmp_path / "out"
    _, _, code = fake_app(out)
    path = out / ".access-code"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == code
    os.chmod(path, 0o644)
    assert fake_app(out)[2] == code and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_every_response_has_the_security_headers(client):
    headers = client.get("/").headers
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"


def test_pages_have_no_inline_script_or_external_asset(client):
    for path in ("/", "/history", "/login"):
        text = client.get(path).text
        assert "<script>" not in text and "http://" not in text and "https://" not in text


def test_unknown_pages_and_heatmaps_are_404_messages(client):
    post_film(client, film_png(), "a.png", csrf(client))
    for path in ("/nope", "/results/99", "/results/1/overlay/7", "/downloads/secrets"):
        r = client.get(path)
        assert r.status_code == 404 and "Traceback" not in r.text


def test_a_bug_is_a_plain_500_page_never_a_traceback(app, client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(app.extensions["xray"]["engine"], "submit", broken)
    r = post_film(client, film_png(), "a.png", csrf(client))
    assert r.status_code == 500 and "secret internals" not in r.text and "Traceback" not in r.text


def test_a_photo_goes_through_the_capture_checks(client):
    buf = io.BytesIO()
    Image.fromarray(np.full((300, 240), 12, np.uint8)).save(buf, format="JPEG")  # lens cap on
    r = post_film(client, buf.getvalue(), "photo.jpg", csrf(client), photo="1")
    assert r.status_code == 422 and "Not accepted" in r.text and "too dark" in r.text
    assert client.get("/api/results").json["total"] == 0
    r = post_film(client, film_png(), "photo.png", csrf(client), photo="1")  # a usable photo: kept as its film
    assert r.status_code == 303


def test_uploads_can_be_left_out(tmp_path):
    app = fake_app(tmp_path / "out", keep_uploads=False)[0]
    client = app.test_client()
    assert post_film(client, film_png(), "a.png", csrf(client)).status_code == 303
    assert list((tmp_path / "out" / "uploads").iterdir()) == []


def test_downloads(client):
    post_film(client, film_png(), "a.png", csrf(client))
    for kind, name in (("csv", "results.csv"), ("jsonl", "results.jsonl"), ("report", "report.html")):
        r = client.get(f"/downloads/{kind}")
        assert r.status_code == 200 and name in r.headers["Content-Disposition"] and b"a.png" in r.data


# ---------------------------------------------------------------- the folder shared with edge.scan

def test_a_scan_holding_the_folder_makes_an_upload_wait_then_refuses_it(client, tmp_path, monkeypatch):
    monkeypatch.setattr(edge.web.engine, "_LOCK_WAIT", 0.2)
    with OutLock(tmp_path / "out"):  # as edge.scan holds it for a whole scan
        r = post_film(client, film_png(), "a.png", csrf(client))
    assert r.status_code == 503 and "another scan is writing" in r.text
    assert post_film(client, film_png(), "a.png", csrf(client)).status_code == 303  # scan over: stored


def test_the_app_holds_the_folder_only_while_storing(client, tmp_path):
    post_film(client, film_png(), "a.png", csrf(client))
    with OutLock(tmp_path / "out"):  # a scan can start at once
        pass
    with Store(tmp_path / "out" / DB_NAME) as store:
        assert store.integrity_check() == "ok" and store.count() == 1


def test_a_scan_waits_for_the_app_to_finish_storing(tmp_path):
    out = tmp_path / "out"
    app_lock = OutLock(out, holder="edge.serve")
    app_lock.acquire()
    with ThreadPoolExecutor(1) as pool:
        scan = pool.submit(lambda: OutLock(out, wait=0).__enter__())
        app_lock.release()
        scan.result(timeout=30).release()  # waited for the app instead of refusing


# ---------------------------------------------------------------- a real server

def test_eight_concurrent_uploads_all_get_their_results(tmp_path):
    app, engine, code = fake_app(tmp_path / "out")
    with served(app) as base, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: api_post(base, film_png(100 + i), f"film-{i}.png", code), range(8)))
    engine.flush_exports()  # as at the server's shutdown
    assert [status for status, _ in answers] == [201] * 8
    ids = {body["result"]["id"] for _, body in answers}
    assert len(ids) == 8
    with Store(tmp_path / "out" / DB_NAME) as store:
        assert store.count() == 8 and store.integrity_check() == "ok"
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["film_path"] for line in lines) == sorted(f"upload/film-{i}.png" for i in range(8))


# ---------------------------------------------------------------- formats and the novelty guard's refusals

def test_a_dicom_film_is_scored(client, test_data):
    film = test_data / "dicom" / "CR-MONO1-10-chest.dcm"
    r = post_film(client, film.read_bytes(), film.name, csrf(client))
    assert r.status_code == 303
    assert client.get("/api/results").json["items"][0]["status"] == "ok"


def test_a_result_the_guard_refused_is_shown_as_refused(client, monkeypatch):
    post_film(client, film_png(), "a.png", csrf(client))
    stored = client.get("/api/results/1").json
    row = {k: stored[k] for k in ("id", "film_path", "file_sha256", "model_hash", "status", "scanned_at", "labels",
                                  "scores", "flagged", "cam", "overlays", "error")}
    row.update(in_distribution=False, guard="refused", refusal="a photo of a cat, not a chest film")
    for module in (edge.web.views, edge.web.api):
        monkeypatch.setattr(module, "find_result", lambda row_id: row)
    page = client.get("/results/1")
    assert page.status_code == 200 and "Refused" in page.text and "a photo of a cat" in page.text
    assert client.get("/api/results/1").json["verdict"] == "refused"


def test_a_scan_and_the_app_share_one_results_folder(tmp_path, monkeypatch):
    from edge.scan import main as scan_main
    from tests.edge.test_scan import install_fakes, write_film

    out = tmp_path / "out"
    install_fakes(monkeypatch)
    films = [write_film(tmp_path / "films" / f"scanned-{i}.png", seed=i) for i in range(2)]
    assert scan_main([str(tmp_path / "films"), "--bundle", str(tmp_path / "b"), "--out", str(out), "--quiet"]) == 0
    app, engine, _ = fake_app(out)
    client = app.test_client()
    history = client.get("/history").text
    assert all(f.name in history for f in films) and history.count(">scan ·") == 2
    assert post_film(client, film_png(), "uploaded.png", csrf(client)).status_code == 303
    engine.flush_exports()
    report = (out / "report.html").read_text()
    assert "uploaded.png" in report and all(f.name in report for f in films)
    assert scan_main([str(tmp_path / "films"), "--bundle", str(tmp_path / "b"), "--out", str(out), "--quiet"]) == 0
    assert "uploaded.png" in (out / "report.html").read_text()  # the scan's exports keep the upload


def test_a_camera_jpeg_is_checked_as_a_photo_without_being_told(client):
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # EXIF Make: taken by a camera
    buf = io.BytesIO()
    Image.fromarray(np.full((300, 240), 12, np.uint8)).save(buf, format="JPEG", exif=exif)
    r = post_film(client, buf.getvalue(), "IMG_0001.jpg", csrf(client))
    assert r.status_code == 422 and "too dark" in r.text


def test_the_exports_catch_up_in_the_background(tmp_path):
    """An upload answers once its result is stored; results.csv and report.html follow a moment later without a
    download or a shutdown (edge.web.engine rebuilds them off the upload's path)."""
    import time

    app, _, code = fake_app(tmp_path / "out")
    with served(app) as base:
        assert api_post(base, film_png(5), "later.png", code)[0] == 201
        deadline = time.monotonic() + 30
        report = tmp_path / "out" / "report.html"
        while time.monotonic() < deadline and not (report.is_file() and "later.png" in report.read_text()):
            time.sleep(0.1)
    assert "later.png" in report.read_text() and "later.png" in (tmp_path / "out" / "results.csv").read_text()


def test_a_stream_of_uploads_waits_for_a_pause_or_the_longest_lag_before_a_rebuild(monkeypatch):
    """Each rebuild holds the upload lock for a time that grows with the store: while uploads keep coming the
    exports are rebuilt once they pause, or once the longest lag has passed, not every second."""
    import time

    # Margins wide enough for a loaded machine (the suite runs this beside the model's training): uploads every
    # 0.05 s against a 0.6 s pause, a 1.5 s longest lag.
    monkeypatch.setattr(edge.web.engine, "_EXPORT_QUIET", 0.6)
    monkeypatch.setattr(edge.web.engine, "_EXPORT_MAX_LAG", 1.5)
    engine = edge.web.engine.Engine(None, None, Path("unused"))
    rebuilds: list[float] = []
    monkeypatch.setattr(engine, "flush_exports", lambda: rebuilds.append(time.monotonic()))
    start = time.monotonic()
    while time.monotonic() - start < 4.0:  # a stream: never quiet for 0.6 s
        engine.exports_due()
        time.sleep(0.05)
    end = time.monotonic()
    time.sleep(2.0)
    # during the stream: only once the longest lag had passed (about 1.8 s and 3.6 s in), never every 0.6 s
    during = [t - start for t in rebuilds if t < end]
    assert 1 <= len(during) <= 2 and all(t >= 1.5 for t in during), during
    after = [t - end for t in rebuilds if t >= end]
    assert len(after) == 1 and 0.5 <= after[0] <= 2.0, after  # the stream's end: quiet, the last rebuild


# ---------------------------------------------------------------- the Pi camera from the page

def _camera_client(tmp_path, test_data, frames):
    from edge.films import load_film
    from tests.edge.test_capture import FakeCamera, photo

    film = load_film(test_data / "nih-images" / "00000001_000.png")
    camera = FakeCamera([photo(film, **kw) for kw in frames])
    app, engine, _ = fake_app(tmp_path / "out", camera=camera)
    return app.test_client(), engine


def test_without_a_camera_the_page_offers_none(client):
    assert 'id="camera"' not in client.get("/").text
    assert client.get("/camera").status_code == 404


def test_camera_retake_then_keep_scores_the_capture(tmp_path, test_data):
    """A blurred frame says why and offers only a retake; a good one is kept (CSRF), saved as edge.capture saves
    its captures and scored by the same path, and its result says it came from the camera."""
    client, _ = _camera_client(tmp_path, test_data, [{"blur": 6}, {}])
    assert 'id="camera"' in client.get("/").text
    blurred = client.get("/camera")
    assert blurred.status_code == 200 and "blurred" in blurred.text and 'id="keep"' not in blurred.text
    good = client.get("/camera")
    assert 'id="keep"' in good.text and "checks passed" in good.text
    token = re.search(r'name="token" value="([^"]+)"', good.text).group(1)
    preview = client.get(f"/camera/{token}.jpg")
    assert preview.status_code == 200 and preview.data.startswith(b"\xff\xd8")
    assert client.post("/camera/keep", data={"token": token}).status_code == 403  # no CSRF token
    kept = client.post("/camera/keep", data={"token": token, "csrf_token": csrf(client)})
    assert kept.status_code == 303
    row = client.get(kept.headers["Location"].split("?")[0].replace("/results/", "/api/results/")).json
    assert row["source"] == "camera" and row["status"] == "ok"
    assert len(list((tmp_path / "out" / "captures").glob("capture-*.png"))) == 1
    again = client.post("/camera/keep", data={"token": token, "csrf_token": csrf(client)})
    assert again.status_code == 410 and "take another" in again.text  # a shot is kept once


def test_a_camera_that_fails_is_a_message(tmp_path):
    class Broken:
        def capture_array(self):
            raise RuntimeError("Camera frontend has timed out!")

    client = fake_app(tmp_path / "out", camera=Broken())[0].test_client()
    page = client.get("/camera")
    assert page.status_code == 503 and "did not answer" in page.text and "Traceback" not in page.text
