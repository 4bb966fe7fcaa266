"""Names from films never escape the output folder and stay inert in HTML, CSV and JSON."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from edge.report import render_report
from edge.store import Store
from tests.edge.test_scan import fake_bundle, install_fakes, rows, run, write_film

HOSTILE = [
    "..png",                        # dots only: no '..' may reach an output name
    "...hidden.png",
    "line\nbreak.png",
    "tab\tand\rreturn.png",
    "=cmd|' \\C calc'!A0.png",     # '/' cannot be in a file name: the closing part is made by a folder below
    "+SUM(1,2).png",
    "@import.png",
    "-2+3.png",
    "a \"quoted\" & <b>bold</b.png",
    "über naïve 胸部.png",
    "$(reboot); `rm -rf ~`.png",
]
SCRIPT_DIR, SCRIPT_FILE = "<script>alert(1)<", "script>.png"  # path text "<script>alert(1)</script>.png"


@pytest.fixture
def fake(monkeypatch):
    return install_fakes(monkeypatch)


@pytest.fixture
def hostile_films(tmp_path) -> Path:
    root = tmp_path / "films"
    for i, name in enumerate(HOSTILE):
        write_film(root / name, seed=i)
    write_film(root / SCRIPT_DIR / SCRIPT_FILE, seed=99)
    write_film(root / "=cmd|' " / "C calc'!A0.png", seed=98)  # path text "…/=cmd|' /C calc'!A0.png"
    (root / "sub").mkdir()
    undecodable = os.fsencode(root) + b"/bad-\xff\xfe-bytes.png"
    write_film(Path(os.fsdecode(undecodable)), seed=97)
    return root


def _tree(path: Path) -> set[str]:
    return {str(p) for p in path.rglob("*")}


def test_hostile_names_stay_inside_out_and_inert(fake, hostile_films, tmp_path):
    out = tmp_path / "out"
    before = _tree(tmp_path)
    assert run([hostile_films, hostile_films / "sub" / ".." / HOSTILE[2]], out) == 0
    written = _tree(tmp_path) - before
    assert written and all(Path(p).resolve().is_relative_to(out.resolve()) for p in written), written

    stored = rows(out)
    assert len(stored) == len(HOSTILE) + 3  # the second name of line-break film is the same bytes: once
    overlays = out / "overlays"
    for r in stored:
        for rel in r["overlays"]:
            p = (out / rel).resolve()
            assert p.parent == overlays.resolve() and p.is_file()
            assert Path(rel).parts == ("overlays", Path(rel).name) and not Path(rel).name.startswith(".")
            assert Path(rel).name.isascii() and Path(rel).name.isprintable() and " " not in rel

    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in html
    assert "Content-Security-Policy" in html and "script-src" not in html  # default-src 'none' forbids scripts

    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(stored)
    for cell in (c for row in table for c in row.values()):
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    names = {Path(r["film_path"].lstrip("'")).name for r in table}
    assert "'=cmd|' " not in names and "C calc'!A0.png" in names

    jsonl = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["film_path"] for r in jsonl} == {r["film_path"] for r in stored}
    assert any(r["film_path"].endswith("line\nbreak.png") for r in jsonl)
    assert any(r["film_path"].endswith("bad-\\xff\\xfe-bytes.png") for r in jsonl)


def test_report_escapes_labels_and_messages(tmp_path):
    bundle = fake_bundle(tmp_path)
    row = {"film_path": "<img src=x onerror=alert(1)>.png", "status": "error", "error": "<svg onload=alert(2)>",
           "scores": {}, "flagged": [], "cam": [], "overlays": []}
    ok = {"film_path": "a.png", "status": "ok", "error": None, "flagged": ["Effusion"], "overlays": [],
          "scores": {"Cardiomegaly": 0.1, "Effusion": 0.8, "Pneumothorax": 0.2},
          "cam": [{"label": "Effusion", "x": 1, "y": 2, "overlay": "overlays/a\"onmouseover=\"x.png",
                   "peaks": [[1, 2], [700, "<b>8</b>"]]}]}
    html = render_report([row, ok], bundle)
    assert "<img src=x" not in html and "<svg" not in html and "<b>8" not in html
    assert "&lt;svg onload=alert(2)&gt;" in html
    assert 'onmouseover="x' not in html
    assert "Effusion: peak at x=1, y=2; also x=700, y=&lt;b&gt;8&lt;/b&gt;" in html  # the second hot spot too


def test_store_keeps_exact_names(tmp_path):
    """What goes in comes out unchanged from the database (escaping is for display only)."""
    from tests.edge.test_store import result

    with Store(tmp_path / "r.sqlite") as s:
        s.add(result("a" * 64, path="=1+1\n<script>"))
        assert next(s.rows())["film_path"] == "=1+1\n<script>"


def test_default_thresholds_are_said_wherever_scores_are_shown(tmp_path):
    """A published model converted without labelled films (convert.importer) has default thresholds: report.html
    and the app's model facts say they were not chosen on such films; a bundle with chosen ones says nothing."""
    from edge.present import model_facts, threshold_note

    bundle = fake_bundle(tmp_path)
    ok = {"film_path": "a.png", "status": "ok", "error": None, "flagged": [], "overlays": [], "cam": [],
          "scores": {"Cardiomegaly": 0.1, "Effusion": 0.2, "Pneumothorax": 0.3}, "model_hash": bundle.sha256}
    assert threshold_note(bundle.spec) is None and "not chosen" not in render_report([ok], bundle)
    bundle.spec["threshold_choice"] = {"rule": "default 0.5", "chosen_on_user_data": False}
    assert "not chosen on films like yours" in render_report([ok], bundle)
    assert any(k == "Thresholds" and "default 0.5" in v for k, v in model_facts(ok, bundle))
