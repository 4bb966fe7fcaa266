"""The app in a real browser: headless Chromium (Debian's chromium and chromium-driver) through Selenium, against
the session's real bundle served by waitress on 127.0.0.1. A missing browser skips these tests, in CI fails them
(.ci/run installs it)."""

from __future__ import annotations

import argparse
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from convert.oddballs import far
from edge.serve import build_app
from tests.conftest import skip_or_fail
from tests.edge.serve_helpers import broken_png, served

WIDTH = 390
_OVERFLOW = """
const w = document.documentElement.clientWidth;
const wide = [...document.querySelectorAll('body *')].filter(e => {
  const r = e.getBoundingClientRect(); return r.width > 0 && (r.right > w + 1 || r.left < -1); });
return [document.documentElement.scrollWidth, w, wide.map(e => e.tagName + '.' + e.className).slice(0, 5)];
"""


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                              else None)
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def driver():
    paths = _browser_paths()
    if paths is None:
        skip_or_fail("headless Chromium not found: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDTH},1400"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(paths[1]), options=options)
    browser.set_page_load_timeout(120)
    yield browser
    browser.quit()


def _app(bundle_dir: Path, out: Path, host: str):
    args = argparse.Namespace(bundle=str(bundle_dir), out=str(out), host=host, port=0, max_upload_mb=100,
                              no_keep_uploads=False, threads=8, device="cpu")
    return build_app(args)


@pytest.fixture(scope="module")
def site_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-out")


@pytest.fixture(scope="module")
def site(bundle_dir, site_out):
    app, _, _ = _app(bundle_dir, site_out, "127.0.0.1")
    with served(app) as base:
        yield base


def _shot(driver, name: str) -> None:
    """With XRAY_SCREENSHOTS=DIR, keep a screenshot of the page (for a README or a review; never committed)."""
    folder = os.environ.get("XRAY_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def _upload(driver, base: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base)
    driver.find_element(By.ID, "film").send_keys(str(path))
    _submit(driver, driver.find_element(By.ID, "submit"))


def _submit(driver, button) -> None:
    """Click a form's button and wait for the answer page: the old page is gone and the new one complete (a busy
    machine can take seconds to score, so wait rather than look once)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    button.click()
    wait = WebDriverWait(driver, 120)
    wait.until(ec.staleness_of(button))
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    driver.find_element(By.TAG_NAME, "footer")


def _fits(driver) -> None:
    scroll, width, wide = driver.execute_script(_OVERFLOW)
    assert scroll <= width and not wide, f"runs off a {width} px screen: {wide}"


def test_upload_refusal_failure_and_history_in_a_browser(driver, site, phantom_set, tmp_path):
    from selenium.webdriver.common.by import By

    film = sorted((phantom_set / "images").glob("*.png"))[-1]
    _upload(driver, site, film)
    assert len(driver.find_elements(By.CSS_SELECTOR, "li.score")) == 14
    heatmap = driver.find_element(By.ID, "heatmap")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", heatmap)
    _fits(driver)
    _shot(driver, "result")

    other = tmp_path / "holiday.png"  # a gray page of text: a picture the screen passes and the guard refuses
    Image.fromarray(next(p for kind, _, p in far(per_kind=1, photos=0) if kind == "text")).convert("L").save(other)
    _upload(driver, site, other)
    assert "Refused" in driver.find_element(By.ID, "message").text  # the scan's guard, not a decoder failure
    _fits(driver)

    broken = tmp_path / "broken.png"
    broken.write_bytes(broken_png())
    _upload(driver, site, broken)
    assert "Could not be read" in driver.find_element(By.ID, "message").text

    driver.get(site + "history")
    names = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#history a.name")]
    assert names[:3] == ["broken.png", "holiday.png", film.name]
    _fits(driver)
    _shot(driver, "history")
    driver.get(site)
    _fits(driver)
    _shot(driver, "upload")


def test_report_html_reads_on_a_phone(driver, site, site_out, phantom_set):
    """report.html, opened from the results folder as a file, fits a 390 px screen with its heatmaps shown."""
    from selenium.webdriver.common.by import By

    _upload(driver, site, sorted((phantom_set / "images").glob("*.png"))[0])
    # The exports are rebuilt a moment after an upload, in the background; a download rebuilds them first.
    with urllib.request.urlopen(site + "downloads/report", timeout=60) as resp:
        assert resp.status == 200 and b'class="film' in resp.read()
    driver.get((site_out / "report.html").resolve().as_uri())
    assert driver.find_elements(By.CSS_SELECTOR, "article.film")
    thumbs = driver.find_elements(By.CSS_SELECTOR, ".thumbs img")
    assert thumbs and all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", t)
                          for t in thumbs[:4])
    assert driver.find_elements(By.CSS_SELECTOR, "li.score")
    _fits(driver)
    _shot(driver, "report")


def test_without_the_code_off_loopback_the_pages_are_refused(driver, bundle_dir, tmp_path):
    from selenium.webdriver.common.by import By

    app, code, required = _app(bundle_dir, tmp_path / "out", "0.0.0.0")  # as for phones; reached on 127.0.0.1 here
    assert required
    with served(app) as base:
        driver.get(base + "history")
        assert driver.find_elements(By.ID, "code") and not driver.find_elements(By.ID, "history")
        driver.find_element(By.ID, "code").send_keys("wrong-code")
        _submit(driver, driver.find_element(By.CSS_SELECTOR, "form button"))
        assert "not the access code" in driver.find_element(By.ID, "message").text
        driver.find_element(By.ID, "code").send_keys(code)
        _submit(driver, driver.find_element(By.CSS_SELECTOR, "form button"))
        assert driver.find_elements(By.ID, "history")
