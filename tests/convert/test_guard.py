"""The session bundle's out-of-distribution guard, through edge's own path (screen, model, edge.novelty).

Acceptance of the guard: false refusals on the held-out phantom films (test split, never used to fit or
choose anything) at most 1%; far kinds (photos shipped with matplotlib / scikit-learn and their crops and
resizes, rendered text, noise, gradients) refused ≥ 99%; near kinds made from held-out films (negative,
rotated 90° / 180°, a corner quarter) ≥ 95%; pydicom's own test files: nothing not a chest radiograph is
taken for one. Every rate is printed as a table (run with -s).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from convert.oddballs import FAR_KINDS, NEAR_KINDS, far, near, photo_sources, write
from edge.bundle import FORMAT_VERSION, load_bundle
from edge.films import load_film
from edge.novelty import judge, load_guard
from edge.preprocess import preprocess
from edge.screen import screen_file

FAR_MIN, NEAR_MIN, MAX_FALSE_REFUSAL = 0.99, 0.95, 0.01
NEAR_FILMS = 40


@pytest.fixture(scope="module")
def edge_path(bundle_dir):
    from edge.runtime import open_model

    model = open_model(bundle_dir, device="cpu")
    guard = load_guard(model.bundle)
    assert guard is not None

    def refused(path: Path) -> bool:
        if screen_file(path) is not None:
            return True
        return not judge(guard, model.predict(preprocess(load_film(path))).features).in_distribution
    return refused


@pytest.fixture(scope="module")
def heldout(phantom_set) -> list[Path]:
    names = (phantom_set / "test_list.txt").read_text().split()
    return [phantom_set / "images" / n for n in names if (phantom_set / "images" / n).is_file()]


def test_bundle_records_the_guard(bundle_dir):
    spec = load_bundle(bundle_dir).spec
    assert spec["format_version"] == FORMAT_VERSION == 3
    nov = spec["novelty"]
    assert nov["method"] == "mahalanobis-ledoit-wolf" and nov["params"] in spec["files"]
    assert nov["fitted_on"]["split"] == "train" and nov["threshold_choice"]["split"] == "validation"
    assert nov["threshold_choice"]["false_refusal_rate"] == 0.01
    assert nov["threshold"] >= nov["threshold_choice"]["empirical_quantile"]


def test_false_refusals_and_detection_per_kind(edge_path, heldout, tmp_path):
    rates = {"held-out phantom films (false refusal)": _rate(edge_path, heldout)}
    folder = tmp_path / "odd"
    paths: dict[str, list[Path]] = {}
    for kind, name, picture in far(per_kind=20):
        paths.setdefault(kind, []).append(write(folder, f"{kind}-{name}", picture))
    for kind, i, picture in near([load_film(p) for p in heldout[:NEAR_FILMS]]):
        paths.setdefault(kind, []).append(write(folder, f"{i}-{kind}", picture))
    rates.update({kind: _rate(edge_path, found) for kind, found in paths.items()})
    print("\n| kind | refused |\n|---|---|\n" + "\n".join(f"| {k} | {100 * r:.1f}% of {n} |"
                                                       for k, (r, n) in rates.items()))
    assert rates.pop("held-out phantom films (false refusal)")[0] <= MAX_FALSE_REFUSAL
    assert len(photo_sources()) == 3, "the dev extra installs matplotlib and scikit-learn, which ship the photos"
    assert len(paths["photo"]) >= 8 * len(photo_sources())
    for kind in FAR_KINDS:
        assert rates[kind][0] >= FAR_MIN, (kind, rates[kind])
    for kind in NEAR_KINDS:
        assert rates[kind][0] >= NEAR_MIN, (kind, rates[kind])


def _rate(refused, paths: list[Path]) -> tuple[float, int]:
    return sum(map(refused, paths)) / len(paths), len(paths)


def test_pydicom_test_files_are_never_taken_for_chest_films(bundle_dir, tmp_path, capsys):
    import json

    import pydicom

    from edge.scan import main

    data = Path(os.path.dirname(pydicom.__file__)) / "data"
    out = tmp_path / "out"
    rc = main([str(data), "--bundle", str(bundle_dir), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc in (0, 1) and "Traceback" not in captured.out + captured.err and "unexpected" not in captured.out
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    scored = [r for r in rows if r["status"] == "ok"]
    assert scored and all(r["error"] for r in rows if r["status"] != "ok")
    accepted = [r["film_path"] for r in scored if r["guard"] != "refused"]
    assert accepted == [], accepted  # none of pydicom's files is a chest radiograph
    print(f"\npydicom's data: {len(rows)} files with a result, {len(scored)} read and refused "
          f"({sum('DICOM Modality' in r['refusal'] for r in scored)} by Modality, "
          f"{sum('BodyPartExamined' in r['refusal'] for r in scored)} by body part, "
          f"{sum('coloured' in r['refusal'] for r in scored)} by colour, "
          f"{sum('novelty' in r['refusal'] for r in scored)} by the guard), {len(rows) - len(scored)} failed")
