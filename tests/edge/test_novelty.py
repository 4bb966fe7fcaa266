"""The out-of-distribution guard without a model: the distance, its fit, the screen, and what a scan does.

edge.novelty is the one implementation of the distance (convert.novelty fits it); a stand-in model with
a fitted guard shows the scan's refusal: no findings, no heatmaps, scores kept, said in every output.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edge.runtime
from convert.novelty import choose_threshold, crossfit_guard, fit_guard, fit_ledoit_wolf, fit_pca, ledoit_wolf_shrinkage
from convert.oddballs import natural_photos
from edge.bundle import Bundle
from edge.errors import BundleError
from edge.novelty import NOVELTY_FILE, Guard, distances, judge, load_guard, pooled_features
from edge.screen import MAX_COLOUR_SPREAD, NOT_RECOGNISED, colour_spread, dicom_header_problem
from edge.store import Store
from tests.edge.test_scan import LABELS, FakeExplainer, FakeModel, fake_bundle, rows, write_film

RNG = np.random.default_rng(0)


def _data(n: int = 60, c: int = 40) -> np.ndarray:
    mix = RNG.normal(size=(c, c)) * 0.3
    return RNG.gamma(2.0, 1.0, (n, c)) @ mix + 3.0


def test_ledoit_wolf_guard_is_the_dense_mahalanobis_distance():
    x = _data()
    alpha, m = ledoit_wolf_shrinkage(x - x.mean(axis=0))
    s = np.cov(x, rowvar=False, bias=True)
    sigma = (1 - alpha) * s + alpha * m * np.eye(x.shape[1])
    y = x[:5] + RNG.normal(size=(5, x.shape[1]))
    r = y - x.mean(axis=0)
    dense = np.sqrt(np.einsum("ij,jk,ik->i", r, np.linalg.inv(sigma), r) / x.shape[1])
    np.testing.assert_allclose(distances(fit_ledoit_wolf(x), y), dense, rtol=1e-4)


def test_shrinkage_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.covariance")
    x = _data(30, 80)  # fewer films than features: the plain covariance is singular
    assert ledoit_wolf_shrinkage(x - x.mean(axis=0))[0] == pytest.approx(sklearn.ledoit_wolf(x)[1], rel=1e-9)


def test_guard_fitted_on_some_films_threshold_set_on_others():
    x, check = _data(200), _data(100)
    guard, how = fit_guard(x, check, 0.05)
    assert how["films"] == 100 and guard.threshold == max(how["empirical_quantile"], how["lognormal_quantile"])
    assert 0 < (distances(guard, _data(2000)) > guard.threshold).mean() < 0.1  # about the rate asked
    assert (distances(guard, x[:20] + 25.0) > guard.threshold).all()


def test_crossfitted_pca_guard_keeps_a_patient_in_one_fold():
    x = _data(200)
    groups = [f"p{i // 3}" for i in range(200)]
    guard, how = crossfit_guard(x, 0.05, fitter=fit_pca, groups=groups)
    assert guard.components.shape[0] < x.shape[1] and how["folds"] == 5 and how["films"] == 200
    assert (distances(guard, x[:20] + 25.0) > guard.threshold).all()
    from convert.novelty import fold_parts
    for part in fold_parts(groups, 5, 0):
        assert not {groups[i] for i in part} & {g for j, g in enumerate(groups) if j not in set(part)}
    chosen = choose_threshold(np.exp(RNG.normal(size=5000)), 0.01)
    assert chosen["empirical_quantile"] == pytest.approx(chosen["lognormal_quantile"], rel=0.1)


def test_pooled_features_and_judge():
    maps = RNG.random((3, 7, 7, 40)).astype(np.float32)
    assert pooled_features(maps).shape == (3, 40) and pooled_features(maps[0]).shape == (40,)
    guard, _ = fit_guard(*(pooled_features(RNG.random((n, 7, 7, 40))) for n in (60, 40)), 0.01)
    assert judge(guard, maps[0]).in_distribution
    assert not judge(guard, maps[0] + 5).in_distribution


def _bundle_with_guard(path: Path, guard: Guard) -> Bundle:
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / NOVELTY_FILE, **guard.arrays())
    bundle = fake_bundle(path)
    bundle.spec["novelty"] = {"method": guard.method, "threshold": guard.threshold, "params": NOVELTY_FILE}
    return bundle


def test_load_guard_round_trip_old_bundles_and_damage(tmp_path):
    guard, _ = fit_guard(_data(), _data(), 0.01)
    bundle = _bundle_with_guard(tmp_path / "b", guard)
    loaded = load_guard(bundle)
    x = _data(4)
    np.testing.assert_allclose(distances(loaded, x), distances(guard, x), rtol=1e-6)
    assert load_guard(fake_bundle(tmp_path)) is None  # made before the guard: edge says it has none
    np.savez(tmp_path / "b" / NOVELTY_FILE, mean=np.zeros(3))
    with pytest.raises(BundleError, match="guard cannot be read"):
        load_guard(bundle)


# ---- the screen before the model ----------------------------------------------------------------------------

@pytest.mark.parametrize(("tags", "said"), [
    ({"Modality": "CT"}, "Modality is 'CT'"), ({"Modality": "MR"}, "Modality is 'MR'"),
    ({"Modality": "US"}, "Modality is 'US'"), ({"Modality": "CR", "BodyPartExamined": "KNEE"}, "'KNEE', not the chest"),
    ({"Modality": "DX", "BodyPartExamined": "CHEST"}, None), ({"Modality": "CR"}, None), ({}, None),
])
def test_dicom_header_check(tags, said):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for k, v in tags.items():
        setattr(ds, k, v)
    problem = dicom_header_problem(ds)
    assert (problem is None) if said is None else (said in problem and NOT_RECOGNISED in problem)


def test_colour_photos_are_far_above_a_tinted_gray_film():
    gray = RNG.integers(0, 256, (64, 64)).astype(np.float64)
    for tint in ((1.0, 0.93, 0.8), (0.8, 0.9, 1.0)):
        tinted = np.clip(gray[..., None] * np.array(tint) + RNG.normal(0, 2, (64, 64, 3)), 0, 255).astype(np.uint8)
        assert colour_spread(tinted) < MAX_COLOUR_SPREAD / 2
    photos = list(natural_photos())
    if not photos:
        pytest.skip("neither matplotlib nor scikit-learn is installed")
    spreads = [colour_spread(p) for _, p in photos]
    assert np.mean(np.array(spreads) > MAX_COLOUR_SPREAD) >= 0.9, spreads


# ---- the scan with a guard ------------------------------------------------------------------------------------

class GuardedModel(FakeModel):
    """FakeModel whose 7×7×4 features are the picture's brightness: a guard fitted on dark films refuses bright."""

    def predict(self, x):
        pred = super().predict(x)
        return edge.runtime.Prediction(scores=np.array([0.99, 0.99, 0.99], np.float32),
                                       features=pred.features + RNG.normal(0, 0.01, pred.features.shape).astype(
                                           np.float32), invoke_ms=1.0)


@pytest.fixture
def guarded(monkeypatch, tmp_path):
    from edge.preprocess import preprocess

    level = float(preprocess(np.full((96, 80), 77, np.uint8) + RNG.integers(0, 3, (96, 80)).astype(np.uint8))
                  [16::32, 16::32, 0].mean()) / 255
    guard, _ = fit_guard(RNG.normal(level, 0.03, (80, 4)), RNG.normal(level, 0.03, (80, 4)), 0.01)
    bundle = _bundle_with_guard(tmp_path / "bundle", guard)
    monkeypatch.setattr(edge.runtime, "open_model", lambda *a, **k: GuardedModel(bundle))
    monkeypatch.setattr("edge.scan.CamExplainer", lambda *a, **k: FakeExplainer())
    monkeypatch.setattr("edge.novelty.load_guard", lambda b: guard)
    folder = tmp_path / "films"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((96, 80), 77, np.uint8) + RNG.integers(0, 3, (96, 80)).astype(np.uint8)).save(
            folder / f"dark{i}.png")
    Image.fromarray(np.full((96, 80), 240, np.uint8) - RNG.integers(0, 3, (96, 80)).astype(np.uint8)).save(
        folder / "bright.png")
    photo = np.stack([np.linspace(0, 255, 80)[None].repeat(96, 0)] * 3, axis=2)
    photo[..., 1] = photo[..., 1][:, ::-1]
    Image.fromarray(photo.astype(np.uint8)).save(folder / "colour.png")
    return folder


def test_refused_films_get_no_findings_and_say_why(guarded, tmp_path, capsys):
    from edge.scan import main

    out = tmp_path / "out"
    assert main([str(guarded), "--bundle", "b", "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    by_name = {Path(r["film_path"]).name: r for r in rows(out)}
    for name in ("dark0.png", "dark1.png"):
        assert by_name[name]["guard"] == "accepted" and by_name[name]["in_distribution"] is True
        assert by_name[name]["flagged"] and by_name[name]["overlays"]
    bright, colour = by_name["bright.png"], by_name["colour.png"]
    assert bright["guard"] == "refused" and bright["in_distribution"] is False and bright["novelty"] > 1
    assert bright["flagged"] == [] and bright["cam"] == [] and bright["overlays"] == []
    assert bright["scores"] == dict.fromkeys(LABELS, pytest.approx(0.99))  # kept for audit
    assert colour["scores"] == {} and "strongly coloured" in colour["refusal"]
    assert f"{NOT_RECOGNISED}: 2" in captured.out
    assert "refused: " in captured.err and "bright.png" in captured.err
    report = (out / "report.html").read_text()
    assert f"{NOT_RECOGNISED}: 2 file(s)" in report.replace("Not recognised", "not recognised")
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {x["guard"] for x in lines} == {"accepted", "refused"}
    assert "novelty" in (out / "results.csv").read_text().splitlines()[0]


def test_allow_unrecognised_scores_them_marked(guarded, tmp_path):
    from edge.scan import main

    out = tmp_path / "out"
    assert main([str(guarded), "--bundle", "b", "--out", str(out), "--quiet", "--allow-unrecognised"]) == 0
    bright = {Path(r["film_path"]).name: r for r in rows(out)}["bright.png"]
    assert bright["guard"] == "scored anyway" and bright["flagged"] and bright["in_distribution"] is False
    assert "Scored anyway" in (out / "report.html").read_text()


# ---- files named like films that cannot be read; an older results database ------------------------------

def test_files_named_like_films_are_failures_named_with_their_path(monkeypatch, tmp_path, capsys):
    from edge.scan import main

    monkeypatch.setattr(edge.runtime, "open_model", lambda *a, **k: FakeModel(fake_bundle(tmp_path)))
    monkeypatch.setattr("edge.scan.CamExplainer", lambda *a, **k: FakeExplainer())
    folder = tmp_path / "films"
    folder.mkdir()
    write_film(folder / "good.png", 1)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("patient notes, not a film\n" * 5)
    (folder / "film.dcm").write_bytes(gzip.compress(b"\0" * 128 + b"DICM" + b"\0" * 64))
    (folder / "readme.txt").write_text("not a film")
    assert main([str(folder), "--bundle", "b", "--out", str(tmp_path / "out"), "--quiet", "--verbose"]) == 1
    captured = capsys.readouterr()
    errors = {Path(r["film_path"]).name: r["error"] for r in rows(tmp_path / "out") if r["status"] == "error"}
    assert set(errors) == {"empty.jpg", "notes.png", "film.dcm"}
    assert "empty file" in errors["empty.jpg"] and "gzip" in errors["film.dcm"] and "not an image" in errors[
        "notes.png"]
    assert "passed over (not a film by name or content): " in captured.err and "readme.txt" in captured.err


def test_an_older_results_database_gains_the_guard_columns(tmp_path):
    db = sqlite3.connect(tmp_path / "results.sqlite")
    db.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, film_path TEXT NOT NULL, file_sha256 TEXT NOT NULL, "
               "model_hash TEXT NOT NULL, status TEXT NOT NULL, scanned_at TEXT NOT NULL, labels TEXT DEFAULT '[]', "
               "scores TEXT DEFAULT '{}', flagged TEXT DEFAULT '[]', cam TEXT DEFAULT '[]', overlays TEXT DEFAULT "
               "'[]', UNIQUE (file_sha256, model_hash))")
    db.execute("INSERT INTO results (film_path, file_sha256, model_hash, status, scanned_at) "
               "VALUES ('a.png', 'x', 'm', 'ok', 'now')")
    db.commit()
    db.close()
    with Store(tmp_path / "results.sqlite") as store:
        cols = {r[1] for r in store._db.execute("PRAGMA table_info(results)")}
        assert {"novelty", "in_distribution", "guard", "refusal"} <= cols
