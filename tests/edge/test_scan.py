"""edge.scan: films in, one committed result per film, resume, exit codes, what is passed over.

Fast tests inject a stand-in model (``FakeModel``) and CAM (``FakeExplainer``, real overlay
writer) through ``edge.runtime.open_model`` / ``edge.scan.CamExplainer``; one test runs the real
session bundle on phantom films.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edge.runtime
import edge.scan
import edge.service
from edge.bundle import Bundle
from edge.cam import cam_peaks, upsample
from edge.errors import BundleError
from edge.overlay import overlay_shape, save_overlay_png
from edge.report import DEMO_DISCLAIMER
from edge.runtime import Prediction
from edge.scan import main, scan_paths
from edge.service import Prepared, ScanContext, safe_stem
from edge.store import Store

LABELS = ["Cardiomegaly", "Effusion", "Pneumothorax"]
AUROC = 0.8765


def fake_bundle(path: Path, demo: bool = True) -> Bundle:
    spec = {"labels": LABELS, "task": "multilabel", "thresholds": dict(zip(LABELS, (0.5, 0.3, 0.9), strict=True)),
            "provenance": {"data": {"kind": "phantom" if demo else "nih"},
                           "training_metrics": {"test": {"macro_auroc": AUROC}}}}
    return Bundle(path=path, spec=spec, sha256="b" * 64)


class FakeModel:
    """Stands in for edge.runtime.Model: scores from the picture's brightness, a 7×7×4 feature map."""

    kind, device, runtime, notes = "int8", "cpu", "fake-runtime 0", ()

    def __init__(self, bundle: Bundle):
        self.bundle, self.calls = bundle, 0

    def predict(self, x: np.ndarray) -> Prediction:
        assert x.shape == (224, 224, 3) and x.dtype == np.uint8
        self.calls += 1
        m = float(x.mean()) / 255
        features = np.repeat(x[16::32, 16::32, :1].astype(np.float32) / 255, 4, axis=2)
        return Prediction(scores=np.array([m, 1 - m, 0.5 * m], np.float32), features=features, invoke_ms=1.0)


class FakeExplainer:
    """A CAM from the first feature channel; overlays written with the real edge.overlay code."""

    def cam(self, features: np.ndarray, label_index: int) -> np.ndarray:
        return features[..., 0]

    def peaks(self, cam: np.ndarray, film_shape: tuple[int, int]) -> list[tuple[int, int]]:
        return cam_peaks(cam, film_shape)

    def write_overlay(self, path: Path, film: np.ndarray, cam: np.ndarray, label: str, peaks) -> None:
        save_overlay_png(path, film, upsample(cam, overlay_shape(film.shape)), label=label, peak=peaks[0],
                         others=peaks[1:])


def write_film(path: Path, seed: int, size: tuple[int, int] = (96, 80)) -> Path:
    rng = np.random.default_rng(seed)
    film = (np.linspace(0, 200, size[0] * size[1]).reshape(size) + rng.integers(0, 50, size)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(film).save(path, format="PNG")
    return path


def install_fakes(monkeypatch) -> list[FakeModel]:
    """Make ``main`` open the fake model (any --bundle) and the fake CAM; returns the models opened."""
    opened: list[FakeModel] = []

    def open_model(bundle_dir, device="auto", threads=None, kind="int8"):
        opened.append(FakeModel(fake_bundle(Path(bundle_dir))))
        return opened[-1]

    monkeypatch.setattr(edge.runtime, "open_model", open_model)
    monkeypatch.setattr(edge.scan, "CamExplainer", lambda bundle, head=None: FakeExplainer())
    return opened


@pytest.fixture
def fake(monkeypatch) -> list[FakeModel]:
    return install_fakes(monkeypatch)


@pytest.fixture
def films(tmp_path) -> Path:
    folder = tmp_path / "films"
    for i in range(4):
        write_film(folder / ("sub" if i % 2 else "") / f"film{i}.png", seed=i)
    (folder / "notes.txt").write_text("not a film")
    (folder / "sub" / "broken.png").symlink_to(folder / "missing.png")
    return folder


def run(folder_or_files, out: Path, *extra: str) -> int:
    items = folder_or_files if isinstance(folder_or_files, list) else [folder_or_files]
    return main([*map(str, items), "--bundle", str(out.parent / "bundle"), "--out", str(out), "--quiet", *extra])


def rows(out: Path) -> list[dict]:
    with Store(out / "results.sqlite") as s:
        return list(s.rows())


def test_scan_scores_every_film_and_exports(fake, films, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(films, out) == 0
    stored = rows(out)
    assert sorted(Path(r["film_path"]).name for r in stored) == [f"film{i}.png" for i in range(4)]
    assert all(r["status"] == "ok" and set(r["scores"]) == set(LABELS) for r in stored)
    for r in stored:
        assert r["overlays"] and all((out / o).is_file() for o in r["overlays"])
        assert r["cam_label"] == r["cam"][0]["label"] and r["runtime"] == "fake-runtime 0"
        over = [lb for lb, t in zip(LABELS, (0.5, 0.3, 0.9), strict=True) if r["scores"][lb] >= t]
        assert r["flagged"] == sorted(over, key=lambda lb: -r["scores"][lb])
        assert r["top_label"] == max(r["scores"], key=r["scores"].get)
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] == stored
    report = (out / "report.html").read_text()
    assert DEMO_DISCLAIMER in report and "film0.png" in report
    text = capsys.readouterr().out
    assert "scored              4" in text and DEMO_DISCLAIMER in text
    assert f"macro AUROC {AUROC:.3f} on held-out test films" in text and "AUROC" in report
    assert "not a film 1" in text and "broken link 1" in text


def test_resume_skips_done_films_and_never_duplicates(fake, films, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(films / "sub", out) == 0
    assert fake[-1].calls == 2
    assert run(films, out) == 0  # the two in sub/ are already done
    assert fake[-1].calls == 2 and len(rows(out)) == 4
    assert "already done        2" in capsys.readouterr().out
    assert run(films, out) == 0
    assert fake[-1].calls == 0 and len(rows(out)) == 4


def test_same_bytes_twice_scored_once(fake, films, tmp_path):
    shutil.copy(films / "film0.png", films / "copy-of-film0.png")
    out = tmp_path / "out"
    assert run(films, out) == 0
    assert fake[-1].calls == 4 and len(rows(out)) == 4


def test_bad_film_is_an_error_row_and_exit_1(fake, films, tmp_path, capsys):
    bad = films / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing usable
    out = tmp_path / "out"
    assert run(films, out) == 1
    errors = [r for r in rows(out) if r["status"] == "error"]
    assert len(errors) == 1 and str(bad) in errors[0]["error"]
    text = capsys.readouterr().out
    assert "failed              1" in text
    assert run(films, out) == 1  # retried, still failing, still one row
    assert len(rows(out)) == 5


def test_explicit_missing_file_is_tried_and_reported(fake, films, tmp_path, capsys):
    out = tmp_path / "out"
    assert run([films / "film0.png", films / "nope.png"], out) == 1
    (err,) = [r for r in rows(out) if r["status"] == "error"]
    assert err["error"].endswith("nope.png: no such file")


def test_tampered_bundle_refused_before_any_film(monkeypatch, films, tmp_path, capsys):
    def refuse(*a, **k):
        raise BundleError("bundle/model_int8.tflite: checksum mismatch")

    monkeypatch.setattr(edge.runtime, "open_model", refuse)
    touched = []
    monkeypatch.setattr(edge.scan, "collect", lambda *a: touched.append(a))
    out = tmp_path / "out"
    assert run(films, out) == 2
    assert not touched and not (out / "results.sqlite").exists()
    assert "checksum mismatch" in capsys.readouterr().err


def test_usage_errors_exit_2(fake, films, tmp_path):
    assert main([str(films), "--out", str(tmp_path / "o")]) == 2  # no --bundle
    assert main([str(films), "--bundle", "b", "--out", str(tmp_path / "o"), "--top", "0"]) == 2


def test_cam_none_and_no_overlays(fake, films, tmp_path):
    assert run(films, tmp_path / "a", "--cam", "none") == 0
    assert all(not r["cam"] and not r["overlays"] for r in rows(tmp_path / "a"))
    assert run(films, tmp_path / "b", "--no-overlays", "--cam", "all") == 0
    assert all(len(r["cam"]) == 3 and not r["overlays"] for r in rows(tmp_path / "b"))
    assert not (tmp_path / "b" / "overlays").exists() or not list((tmp_path / "b" / "overlays").iterdir())


def test_walk_is_sorted_and_survives_link_loops(fake, films, tmp_path):
    (films / "sub" / "loop").symlink_to(films, target_is_directory=True)
    files, passed = edge.scan.collect([films])
    assert [p.name for p in files] == ["film0.png", "film2.png", "film1.png", "film3.png"]
    assert passed["folder already visited (link loop)"] == 1


def test_stray_overlays_pruned_on_the_next_run(fake, films, tmp_path):
    out = tmp_path / "out"
    assert run(films, out) == 0
    stray = out / "overlays" / "film9-0000000000-bbbbbb-Effusion.png"
    stray.write_bytes(b"left by a kill between overlay and commit")
    assert run(films, out) == 0
    assert not stray.exists()
    named = {o for r in rows(out) for o in r["overlays"]}
    assert {f"overlays/{p.name}" for p in (out / "overlays").iterdir()} == named


def test_interrupt_stops_after_current_film(tmp_path):
    folder = tmp_path / "films"
    paths = [write_film(folder / f"f{i}.png", seed=i) for i in range(5)]
    model = FakeModel(fake_bundle(tmp_path))
    import threading
    stop = threading.Event()
    real_predict = model.predict

    def predict(x):
        stop.set()  # Ctrl-C arrives while the first film is being scored
        return real_predict(x)

    model.predict = predict
    with Store(tmp_path / "r.sqlite") as store:
        ctx = ScanContext(model=model, explainer=None, store=store, out_dir=tmp_path / "out")
        summary = scan_paths(paths, ctx, interrupt=stop)
        assert summary.stopped and summary.scored == 1 and store.count() == 1


def test_unexpected_decoder_exception_becomes_error_row(tmp_path, monkeypatch):
    import edge.films

    def boom(path):
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(edge.films, "load_film", boom)
    item = edge.service.prepare(write_film(tmp_path / "a.png", 1), set(), set())
    assert isinstance(item, Prepared) and "unexpected RuntimeError" in str(item.error)


def test_safe_stem():
    assert safe_stem("../../etc/passwd") == "passwd"
    assert safe_stem("..") == "film" and safe_stem("a\nb<c>.png") == "a_b_c_"
    assert safe_stem("x" * 300 + ".png") == "x" * 48


@pytest.mark.slow
def test_real_bundle_on_phantom_films(bundle_dir, few_films, tmp_path):
    folder = few_films
    out = tmp_path / "out"
    assert main([str(folder), "--bundle", str(bundle_dir), "--out", str(out), "--quiet"]) == 0
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted(Path(r["film_path"]).name for r in table) == sorted(p.name for p in folder.iterdir())
    for r in rows(out):
        assert r["status"] == "ok" and r["overlays"] and all((out / o).is_file() for o in r["overlays"])
        assert 0 <= r["cam_x"] < r["film_width"] and 0 <= r["cam_y"] < r["film_height"]
        assert [r["cam_x"], r["cam_y"]] == r["cam"][0]["peaks"][0]  # the hottest of the label's peaks
        assert all(1 <= len(c["peaks"]) <= 3 and c["peaks"][0] == [c["x"], c["y"]] for c in r["cam"])
    with Store(out / "results.sqlite") as s:
        assert s.integrity_check() == "ok"


@pytest.mark.slow
def test_interpreters_side_by_side_score_as_one_interpreter_does(bundle_dir, few_films, tmp_path, monkeypatch):
    monkeypatch.setattr(edge.runtime, "usable_cores", lambda: 3)  # three one-thread interpreters, whatever the machine
    used, real_scan = [], edge.scan.scan_paths

    def scan_paths(*args, **kwargs):
        used.append([m.threads for m in kwargs["models"]])
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(edge.scan, "scan_paths", scan_paths)
    results = {}
    for tag, extra in (("side", ()), ("one", ("--threads", "2"))):
        out = tmp_path / tag
        assert main([str(few_films), "--bundle", str(bundle_dir), "--out", str(out), "--quiet", *extra]) == 0
        results[tag] = [(r["film_path"], r["scores"], r["cam"]) for r in rows(out)]
    assert used == [[1, 1, 1], [2]] and len(results["one"]) == 3 and results["side"] == results["one"]


def test_progress_bar_redraws_in_place_with_rate():
    import io

    from edge.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = Progress(4, stream=stream)
    bar.update(scored=True)
    bar.message("failed: a\nb.png: not an image")
    bar.update(scored=False)
    bar.close()
    text = stream.getvalue()
    assert "\r\x1b[K[######------------------] 1/4 films" in text and "films/s" in text
    assert "failed: a\\nb.png: not an image\n" in text  # one line, whatever the name holds
    quiet = Tty()
    Progress(4, stream=quiet, enabled=False).update(scored=True)
    assert quiet.getvalue() == ""


def test_symlink_loop_file_is_counted(tmp_path):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    files, passed = edge.scan.collect([tmp_path])
    assert files == [] and passed["link loop"] == 2
