"""python -m edge.serve as a command: prints where it listens (and the access code off loopback), serves the
real bundle, stops on SIGTERM keeping every result; bad arguments and bundles are one-line errors."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from edge.serve import main

ROOT = Path(__file__).resolve().parents[2]


def test_serves_on_loopback_and_stops_on_sigterm(bundle_dir, tmp_path):
    cmd = [sys.executable, "-m", "edge.serve", "--bundle", str(bundle_dir), "--out", str(tmp_path / "out"),
           "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        url = re.search(r"Serving on (http://127\.0\.0\.1:\d+/)", first).group(1)
        with urllib.request.urlopen(url + "api/results", timeout=60) as resp:
            assert json.loads(resp.read())["total"] == 0
        assert "Only this machine" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert code == 0 and "every stored result is kept" in proc.stderr.read()


def test_off_loopback_prints_the_access_code(bundle_dir, tmp_path, monkeypatch, capsys):
    import waitress

    class Server:
        effective_port = 8080

        def run(self):  # waitress returns from run() on Ctrl-C
            return None

    monkeypatch.setattr(waitress, "create_server", lambda app, **kw: Server())
    out = tmp_path / "out"
    assert main(["--bundle", str(bundle_dir), "--out", str(out), "--host", "0.0.0.0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"Access code: {(out / '.access-code').read_text().strip()}" in printed


def test_bad_port_and_missing_bundle_are_one_line_errors(tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--port", "70000"]) == 2
    assert main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--port must be 0 to 65535" in err and "edge.serve: error:" in err and "Traceback" not in err


def test_the_app_refuses_unfamiliar_films_with_the_scans_guard(bundle_dir, phantom_set, tmp_path):
    """The real bundle's out-of-distribution guard runs on uploads as on a scan: a gray page of text (which
    passes the colour screen) is refused, a phantom film is scored."""
    import argparse
    import io

    from PIL import Image

    from convert.oddballs import far
    from edge.serve import build_app

    args = argparse.Namespace(bundle=str(bundle_dir), out=str(tmp_path / "out"), host="127.0.0.1", port=0,
                              max_upload_mb=100, no_keep_uploads=False, threads=2, device="cpu")
    app, _, _ = build_app(args)
    assert app.extensions["xray"]["engine"].guard is not None
    page = next(p for kind, _, p in far(per_kind=1, photos=0) if kind == "text")
    buf = io.BytesIO()
    Image.fromarray(page).convert("L").save(buf, format="PNG")
    film = sorted((phantom_set / "images").glob("*.png"))[0]
    client = app.test_client()
    headers = {"X-Access-Code": (tmp_path / "out" / ".access-code").read_text().strip()}
    refused = client.post("/api/results", headers=headers, data={"film": (io.BytesIO(buf.getvalue()), "page.png")})
    scored = client.post("/api/results", headers=headers, data={"film": (film.open("rb"), film.name)})
    assert refused.get_json()["result"]["verdict"] == "refused", refused.get_json()
    assert refused.get_json()["result"]["guard"] == "refused"
    assert scored.status_code == 201 and scored.get_json()["result"]["guard"] == "accepted"


def test_the_app_benchmark_measures_every_figure_it_judges(bundle_dir, phantom_set, tmp_path):
    """edge.web.bench (make bench) on two uploads of the session bundle: the real server answers, and every
    figure its targets read is measured (the figures themselves are the benchmark's, not this test's)."""
    from edge.bench import make_films
    from edge.web.bench import app_figures, scan_ms_per_film, targets

    make_films(sorted((phantom_set / "images").glob("*.png"))[:2], tmp_path / "films", 2)
    fig = {"scan_ms_per_film": scan_ms_per_film(bundle_dir, tmp_path / "films", tmp_path)}
    fig.update(app_figures(bundle_dir, tmp_path / "films", tmp_path, 2))
    assert fig["app_uploads"] == 2 and fig["app_upload_server_ms_median"] > 0 and fig["app_result_page_kb"] > 1
    assert fig["app_rss_idle_mib"] > 10 and fig["app_rss_peak_mib"] >= fig["app_rss_end_mib"]
    assert [name for name, _, _ in targets(fig)][0].startswith("upload -> result")


def test_camera_on_without_picamera2_is_a_one_line_error(bundle_dir, tmp_path, capsys):
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here")
    assert main(["--bundle", str(bundle_dir), "--out", str(tmp_path / "o"), "--camera", "on", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "picamera2 is not installed" in err and "Traceback" not in err
