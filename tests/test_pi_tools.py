"""make pi-check's comparison bar (tools.pi_compare) on a fake pair of result folders, and constraints-pi.txt.

The emulated run itself is ``make pi-check`` (root, minutes), not part of the suite; these take about 2 s together
(most of it SQLite's fsync per stored row).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from edge.store import DB_NAME, FilmResult, Store
from tools import dist_check, pi_check, pi_compare, pi_constraints

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["Effusion", "Nodule"]


def _row(name: str, **kw) -> FilmResult:
    base = dict(film_path=f"/somewhere/{name}", file_sha256=f"sha-{name}", model_hash="m", status="ok",
                scanned_at="2026-01-01T00:00:00+00:00", labels=LABELS, scores={"Effusion": 0.75, "Nodule": 0.125},
                flagged=["Effusion"], top_label="Effusion", top_score=0.75, guard="accepted",
                cam=[{"label": "Effusion", "x": 10, "y": 20, "peaks": [[10, 20]], "overlay": None}])
    return FilmResult(**{**base, **kw})


def _folder(tmp: Path, name: str, rows: list[FilmResult]) -> Path:
    out = tmp / name
    with Store(out / DB_NAME) as store:
        for row in rows:
            store.add(row)
    return out


def _films() -> list[FilmResult]:
    return [_row("a.png"), _row("b.dcm"),
            _row("c.png", flagged=[], guard="refused", refusal="not recognised as a chest film like the training "
                                                                 "films: its features are 3.60 from ...", cam=[])]


def _probe(**override) -> dict[str, np.ndarray]:
    films = {"a.png": (np.full((4, 4, 3), 7, np.uint8), np.ones((2, 2, 3), np.float32)),
             "b.dcm": (np.full((4, 4, 3), 9, np.uint8), np.zeros((2, 2, 3), np.float32))}
    films.update(override)
    return {f"{kind}:{name}": pair[i] for name, pair in films.items() for i, kind in enumerate(("input", "features"))}


def _compare(tmp: Path, other: list[FilmResult], probe: dict | None = None) -> pi_compare.Comparison:
    tmp = Path(tempfile.mkdtemp(dir=tmp))  # each comparison in a folder of its own
    np.savez(tmp / "x86.npz", **_probe())
    np.savez(tmp / "arm.npz", **(probe or _probe()))
    return pi_compare.compare(_folder(tmp, "x86", _films()), _folder(tmp, "arm", other), tmp / "x86.npz",
                              tmp / "arm.npz")


def test_identical_scans_pass_and_are_counted(tmp_path):
    moved = _films()
    moved[0].film_path = "/opt/pi-check/films/a.png"  # matched by bytes, not by path
    result = _compare(tmp_path, moved)
    assert result.ok, result.problems
    assert (result.films, result.decisions_agreeing, result.refused) == (3, 3, 1)
    assert (result.same_input, result.features_exact, result.png, result.max_dscore) == (2, 2, 1, 0.0)
    assert result.decoded_differently == []


def test_a_score_off_by_more_than_the_tolerance_fails_and_within_it_passes(tmp_path):
    near = _films()
    near[0].scores = {"Effusion": 0.750001, "Nodule": 0.125}  # stored scores are rounded to 6 decimals
    assert _compare(tmp_path, near).ok
    far = _films()
    far[0].scores = {"Effusion": 0.750002, "Nodule": 0.125}
    result = _compare(tmp_path, far)
    assert not result.ok and result.max_dscore == pytest.approx(2e-6)
    assert result.problems == ["a.png: Effusion score 0.75 != 0.750002"]


@pytest.mark.parametrize(("field", "value"), [("flagged", []), ("guard", "refused"), ("refusal", "other words"),
                                              ("status", "error"), ("top_label", "Nodule")])
def test_a_different_decision_or_refusal_fails(tmp_path, field, value):
    other = _films()
    setattr(other[0], field, value)
    result = _compare(tmp_path, other)
    assert not result.ok and result.decisions_agreeing == 2
    assert result.problems[0].startswith(f"a.png: {field} ")


def test_a_film_scanned_on_one_machine_only_fails(tmp_path):
    result = _compare(tmp_path, _films()[:2])
    assert not result.ok and result.problems == ["c.png: scanned on one machine only"]


def test_the_same_input_must_give_the_same_feature_map_in_any_format(tmp_path):
    for name in ("a.png", "b.dcm"):
        arrays = _probe()
        film_input, features = arrays[f"input:{name}"], arrays[f"features:{name}"].copy()
        features[0, 0, 0] = np.nextafter(features[0, 0, 0], np.float32(2))  # one unit in the last place
        result = _compare(tmp_path, _films(), _probe(**{name: (film_input, features)}))
        assert not result.ok and result.features_exact == 1
        ulp = np.spacing(np.float32(arrays[f"features:{name}"][0, 0, 0]))
        assert result.problems == [f"{name}: the same input gives different feature maps (max |d| {ulp:.3g})"]


def test_a_film_decoded_differently_is_reported_with_its_scores_unless_it_is_a_png(tmp_path):
    other = _films()
    other[1].scores = {"Effusion": 0.751, "Nodule": 0.125}  # b.dcm: one grey level off in two pixels
    film_input = np.full((4, 4, 3), 9, np.uint8)
    film_input[0, 0, 0] = film_input[1, 1, 1] = 10
    result = _compare(tmp_path, other, _probe(**{"b.dcm": (film_input, np.full((2, 2, 3), 0.5, np.float32))}))
    assert result.ok, result.problems
    assert result.decoded_differently == [pi_compare.Decoded("b.dcm", 1, 2, pytest.approx(0.001))]
    assert (result.same_input, result.max_dscore) == (1, 0.0)
    png = _probe(**{"a.png": (film_input, np.ones((2, 2, 3), np.float32))})
    result = _compare(tmp_path, _films(), png)
    assert not result.ok and result.problems == ["a.png: decoded differently (pixels)"]


def test_heatmap_peaks_moved_by_a_pixel_are_reported_not_failed(tmp_path):
    other = _films()
    other[0].cam = [{"label": "Effusion", "x": 11, "y": 20, "peaks": [[11, 20]], "overlay": None}]
    result = _compare(tmp_path, other)
    assert result.ok and result.max_peak_shift == 1
    other[0].cam = [{"label": "Nodule", "x": 11, "y": 20, "peaks": [[11, 20]], "overlay": None}]
    assert not _compare(tmp_path, other).ok


def test_constraints_pi_is_the_edge_set_of_the_lock_and_nothing_else():
    text = (ROOT / "constraints-pi.txt").read_text()
    assert text == pi_constraints.render((ROOT / "constraints.txt").read_text(), pi_constraints.edge_closure()), \
        "constraints-pi.txt is out of date: run make lock-pi"
    names = {line.split("==")[0].lower() for line in text.splitlines() if not line.startswith("#")}
    assert {"numpy", "pillow", "pydicom", "ai-edge-litert", "flask", "waitress", "werkzeug"} <= names
    assert not names & {"torch", "tensorflow", "onnx", "scikit-learn", "matplotlib", "pytest", "picamera2"}


def test_pi_check_says_it_needs_root_and_touches_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pi_check.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(pi_check, "binfmt_aarch64", lambda: pytest.fail("registered something without root"))
    assert pi_check.main(["--wheel", str(tmp_path / "x.whl")]) == 2
    assert "needs root" in capsys.readouterr().err


def test_dist_check_names_a_missing_wheel_and_installs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dist_check, "check", lambda *a: pytest.fail("ran without a wheel"))
    assert dist_check.main(["--wheel", str(tmp_path / "x.whl")]) == 2
    assert f"{tmp_path / 'x.whl'} does not exist" in capsys.readouterr().err


def test_dist_check_film_is_a_grey_png_without_pillow(tmp_path):
    from PIL import Image

    with Image.open(dist_check.grey_film(tmp_path)) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "L", (256, 256))
        assert len(np.unique(np.asarray(img))) > 100
