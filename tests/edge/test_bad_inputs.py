"""The hostile-input corpus (tests/edge/corpus.py): every kind through load_film, then a whole scan over it.

Each kind must end as expected: a film, or a FilmError naming the file with the expected words. A kind
that never returns is reported as a hang (a generous guard against infinite loops, not a speed test).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from edge.errors import FilmError
from edge.films import load_film
from tests.edge.corpus import KINDS, Case, build_corpus

HANG_SECONDS = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("corpus")
    return {case.name: case for case in build_corpus(root)}


def _load_guarded(path: Path) -> np.ndarray | BaseException:
    """load_film on a worker thread: its film or exception, or TimeoutError if it never returns."""
    box: list = []

    def work() -> None:
        try:
            box.append(load_film(path))
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            box.append(err)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(HANG_SECONDS)
    return box[0] if box else TimeoutError(f"load_film({path!r}) did not return: a hang")


def test_corpus_covers_the_kinds(corpus):
    assert list(corpus) == list(KINDS) and len(KINDS) >= 30
    outcomes = [c.expected.split(":")[0] for c in corpus.values()]
    assert outcomes.count("ok") >= 15 and outcomes.count("error") >= 25


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_ends_as_expected(corpus, kind):
    case = corpus[kind]
    out = _load_guarded(case.path)
    if case.expected == "ok":
        assert isinstance(out, np.ndarray), f"{kind}: expected a film, got {out!r}"
        assert out.ndim == 2 and out.dtype == np.uint8 and min(out.shape) >= 64 and out.std() > 1
        return
    assert isinstance(out, FilmError), f"{kind}: expected a FilmError, got {out!r}"
    fragment = case.expected.removeprefix("error:")
    assert fragment.lower() in out.problem.lower(), f"{kind}: {out.problem!r} lacks {fragment!r}"
    assert out.path == str(case.path) and str(out).startswith(str(case.path))
    assert "\n" not in out.problem and "Traceback" not in out.problem


def test_exif_rotated_corpus_film_is_upright(corpus):
    film = load_film(corpus["EXIF-rotated JPEG"].path)
    assert film.shape == (160, 128)  # stored 128 high × 160 wide, orientation 6: displayed 160 high


# ---- the whole scan over the corpus folder ------------------------------------------------------------------

_COUNT = re.compile(r"^\s+(scored|failed|passed over|duplicate files|already done)\s+(\d+)", re.M)


def _summary_counts(text: str) -> dict[str, int]:
    return {k: int(n) for k, n in _COUNT.findall(text)}


def check_scan_over_corpus(bundle: Path, root: Path, out: Path, capsys) -> None:
    """Scan the corpus folder: no crash, exit 1, every good film scored, every bad file counted."""
    from edge.scan import main

    cases = build_corpus(root)
    rc = main([str(root), "--bundle", str(bundle), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "Traceback" not in captured.out + captured.err
    counts = _summary_counts(captured.out)
    ok = [c for c in cases if c.expected == "ok"]
    bad_files = [c for c in cases if c.expected != "ok" and not c.path.is_dir()]  # a folder is walked, not counted
    assert counts["scored"] == len(ok), captured.out
    assert counts["failed"] + counts.get("passed over", 0) == len(bad_files), captured.out
    assert "unexpected" not in captured.out, captured.out  # a loader bug would show as an "unexpected" kind
    rows = {r["film_path"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    for case in ok:
        assert rows[str(case.path)]["status"] == "ok", case.name
    for case in bad_files:
        assert rows.get(str(case.path), {"status": "error"})["status"] == "error", case.name
    assert len(rows) == len(ok) + counts["failed"]
    resolved = out.resolve()
    assert all(p.resolve().is_relative_to(resolved) for p in out.rglob("*"))  # names cannot escape the output


@pytest.mark.slow
def test_scan_over_the_corpus_with_the_session_bundle(bundle_dir, tmp_path, capsys):
    check_scan_over_corpus(bundle_dir, tmp_path / "corpus", tmp_path / "results", capsys)


def test_scan_over_the_corpus_with_a_stand_in_model(monkeypatch, tmp_path, capsys):
    """The same checks in seconds, with test_scan's stand-in model and CAM."""
    from tests.edge.test_scan import install_fakes

    install_fakes(monkeypatch)
    check_scan_over_corpus(tmp_path / "bundle", tmp_path / "corpus", tmp_path / "results", capsys)
