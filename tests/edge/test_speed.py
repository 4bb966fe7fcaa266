"""Issue 16's pipeline: large JPEGs decoded at reduced size, overlays from one scaled film, several decode workers
with results committed in film order, and the bench's bound arithmetic. (Speed itself: ``make bench``.)"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import edge.bench
import edge.service
from edge.bench import ratios, scan_figures
from edge.bench_scan import bounds
from edge.explain import OVERLAY_SIDE, CamExplainer
from edge.films import load_film, load_film_reduced
from edge.preprocess import preprocess_gray
from edge.scan import scan_paths
from edge.service import ScanContext, decode
from edge.store import Store
from tests.edge.test_scan import FakeExplainer, FakeModel, fake_bundle, write_film


def _chest(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    return (60 + 120 * np.exp(-((x - 0.5) ** 2 + (y - 0.45) ** 2) * 8) + 40 * np.sin(x * 40)).astype(np.uint8)


def test_a_large_jpeg_is_decoded_at_reduced_size_and_says_its_full_size(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(_chest(1200, 1600)).save(path, quality=92)
    small, full = load_film_reduced(path, 400)
    assert full == (1200, 1600) and small.shape == (300, 400)  # 1/4 scale: the longer side still 400 px
    whole = load_film(path)
    assert np.abs(preprocess_gray(small, 128).astype(int) - preprocess_gray(whole, 128)).mean() < 2
    assert load_film_reduced(path, 1000)[0].shape == (1200, 1600)  # not twice as large as needed: in full


def test_the_full_size_of_a_reduced_jpeg_is_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter
    path = tmp_path / "turned.jpg"
    Image.fromarray(_chest(1200, 1600)).save(path, quality=92, exif=exif.tobytes())
    small, full = load_film_reduced(path, 400)
    assert full == (1600, 1200) and small.shape == (400, 300)


def test_the_scan_decodes_a_png_in_full(tmp_path):
    path = tmp_path / "film.png"
    Image.fromarray(_chest(1200, 1600)).save(path)
    film, full = decode(path, 224)
    assert film.shape == full == (1200, 1600)


def test_overlays_of_a_reduced_decode_match_those_of_the_full_film():
    film = _chest(1200, 1600)
    half = np.asarray(Image.fromarray(film).resize((800, 600), Image.Resampling.BOX))
    cam = np.zeros((7, 7), np.float32)
    cam[2, 5] = 1.0
    explainer = CamExplainer(SimpleNamespace(task="multilabel"), head=object())
    cams = [("Nodule", cam, [(1200, 400)])]
    pictures = [np.asarray(Image.open(io.BytesIO(explainer.render_overlays(f, (1200, 1600), cams)[0])))
                for f in (film, half)]
    assert all(p.shape == (384, OVERLAY_SIDE, 3) for p in pictures)
    assert np.abs(pictures[0].astype(int) - pictures[1]).mean() < 3
    with Image.open(io.BytesIO(explainer.render_overlays(film, film.shape, cams)[0])) as img:
        assert img.format == "JPEG"


def test_several_workers_commit_in_film_order_and_keep_the_first_copy(tmp_path, monkeypatch):
    folder = tmp_path / "films"
    paths = [write_film(folder / f"f{i:02d}.png", seed=i) for i in range(12)]
    paths[9].write_bytes(paths[2].read_bytes())  # a copy of an earlier film
    real_hash, slow = edge.service.hash_film_file, {paths[0], paths[2]}

    def hash_late(path: Path) -> str:  # the first films finish last
        if path in slow:
            time.sleep(0.2)
        return real_hash(path)

    monkeypatch.setattr(edge.service, "hash_film_file", hash_late)
    with Store(tmp_path / "r.sqlite") as store:
        ctx = ScanContext(model=FakeModel(fake_bundle(tmp_path)), explainer=FakeExplainer(), store=store,
                          out_dir=tmp_path / "out")
        summary = scan_paths(paths, ctx, interrupt=threading.Event(), workers=4)
        stored = [Path(r["film_path"]).name for r in store.rows()]
    assert summary.scored == 11 and summary.skipped["duplicate"] == 1
    assert stored == [p.name for i, p in enumerate(paths) if i != 9]


class _SlowModel(FakeModel):
    """A fake interpreter that takes a while, and counts how many ran at once."""

    running, most, lock = 0, 0, threading.Lock()

    def __init__(self, bundle, delay: float):
        super().__init__(bundle)
        self.delay = delay

    def predict(self, x):
        with _SlowModel.lock:
            _SlowModel.running += 1
            _SlowModel.most = max(_SlowModel.most, _SlowModel.running)
        time.sleep(self.delay)
        with _SlowModel.lock:
            _SlowModel.running -= 1
        return super().predict(x)


def test_several_interpreters_score_side_by_side_and_commit_in_film_order(tmp_path):
    folder = tmp_path / "films"
    paths = [write_film(folder / f"f{i:02d}.png", seed=i) for i in range(10)]
    bundle = fake_bundle(tmp_path)
    models = [_SlowModel(bundle, 0.03), _SlowModel(bundle, 0.05)]  # the second one slower: finishes out of order
    with Store(tmp_path / "one.sqlite") as store:
        ctx = ScanContext(model=FakeModel(bundle), explainer=FakeExplainer(), store=store, out_dir=tmp_path / "a")
        alone = scan_paths(paths, ctx, interrupt=threading.Event())
        want = [(r["film_path"], r["scores"], r["cam"]) for r in store.rows()]
    _SlowModel.most = 0
    with Store(tmp_path / "two.sqlite") as store:
        ctx = ScanContext(model=models[0], explainer=FakeExplainer(), store=store, out_dir=tmp_path / "b")
        summary = scan_paths(paths, ctx, interrupt=threading.Event(), models=models)
        got = [(r["film_path"], r["scores"], r["cam"]) for r in store.rows()]
    assert alone.scored == summary.scored == 10 and got == want  # same results, in the films' order
    assert all(m.calls >= 2 for m in models) and sum(m.calls for m in models) == 10 and _SlowModel.most == 2
    assert ctx.model is models[0] and summary.errors == {}


@pytest.mark.parametrize("n_models", [1, 2])
def test_a_stop_waits_for_the_films_being_scored_and_no_more(tmp_path, n_models):
    folder = tmp_path / "films"
    paths = [write_film(folder / f"f{i}.png", seed=i) for i in range(8)]
    bundle, stop = fake_bundle(tmp_path), threading.Event()
    models = [_SlowModel(bundle, 0.3) for _ in range(n_models)]
    real = models[0].predict

    def predict(x):
        time.sleep(0.1)  # the next film is already waiting for a free interpreter
        stop.set()  # Ctrl-C while this interpreter scores a film
        return real(x)

    models[0].predict = predict
    with Store(tmp_path / "r.sqlite") as store:
        ctx = ScanContext(model=models[0], explainer=None, store=store, out_dir=tmp_path / "out")
        summary = scan_paths(paths, ctx, interrupt=stop, models=models)
        assert summary.stopped and store.count() == summary.scored
        assert summary.scored == 1 if n_models == 1 else 1 <= summary.scored <= 2  # the films being scored


def test_a_model_error_on_a_scorer_thread_stops_the_scan_after_the_films_before_it(tmp_path):
    folder = tmp_path / "films"
    paths = [write_film(folder / f"f{i}.png", seed=i) for i in range(8)]
    bundle = fake_bundle(tmp_path)
    models = [_SlowModel(bundle, 0.02), _SlowModel(bundle, 0.02)]
    calls = []

    def predict(x, real=models[1].predict):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the interpreter failed")
        return real(x)

    models[1].predict = predict
    with Store(tmp_path / "r.sqlite") as store:
        ctx = ScanContext(model=models[0], explainer=None, store=store, out_dir=tmp_path / "out")
        with pytest.raises(RuntimeError, match="interpreter failed"):
            scan_paths(paths, ctx, interrupt=threading.Event(), models=models)
        stored = [Path(r["film_path"]).name for r in store.rows()]
    assert 1 <= len(stored) < 8 and stored == [p.name for p in paths[:len(stored)]]  # a prefix, in film order


def test_bounds_and_ratios():
    stages = {"hash": 1.0, "decode": 9.0, "preprocess": 2.0, "invoke": 29.0, "cam": 1.0, "overlays": 10.0,
              "commit": 1.0}
    b = bounds(stages, cores=2)
    assert b["bound_no_overlays_films_per_s"] == 50.0 and b["bound_overlays_films_per_s"] == 40.0
    assert round(b["bound_decoding_films_per_s"], 6) == round(2000 / 12, 6)
    fig = {**b, **{f"stage_{k}_cpu_ms": v for k, v in stages.items()}, "scan_50_films_per_s": 16.0,
           "scan_50_cpu_ms_per_film": 66.25, "scan_50_no_overlays_films_per_s": 20.0,
           "fake_accelerator_films_per_s": 150.0, "fake_accelerator_cpu_ms_per_film": 13.0}
    r = ratios(fig, (50,), cores=2)
    assert r["scan_50_over_bound"] == 16 / 40 and r["scan_50_overlays_over_no_overlays"] == 0.8
    assert r["scan_50_cores_used"] == 1.06 and r["scan_50_cpu_efficiency"] == 0.8  # 53 ms of stages in 66.25
    over_all = 16 / b["bound_all_stages_overlays_films_per_s"]
    assert abs(over_all - r["scan_50_cores_used"] / 2 * r["scan_50_cpu_efficiency"]) < 1e-12
    assert r["scan_50_no_overlays_over_bound"] == 0.4 and "scan_50_no_overlays_cores_used" not in r
    assert r["fake_accelerator_over_bound"] == 150 / b["bound_decoding_films_per_s"]
    assert r["fake_accelerator_cpu_efficiency"] == 1.0  # hash + decode + preprocess + commit: 13 ms


def test_the_bench_repeats_each_scan_in_rounds_and_reports_its_median_run(tmp_path, monkeypatch):
    films = tmp_path / "films"
    films.mkdir()
    for i in range(4):
        (films / f"film{i}.png").write_bytes(b"x")
    calls = []
    walls = {"2": [2.0, 5.0, 3.0], "2_no_overlays": [1.5, 2.0, 5.0]}  # 1 s of start-up in each

    def run_scan(bundle, folder, out, threads, *extra):
        if folder.name == "empty":
            return 1.0, 100.0, 0.5
        key = f"{len(list(folder.iterdir()))}{'_no_overlays' if extra else ''}"
        calls.append(key)
        wall = walls[key][sum(k == key for k in calls) - 1]
        return wall, 120.0 + wall, 0.5 + wall * 1.5

    monkeypatch.setattr(edge.bench, "run_scan", run_scan)
    fig = scan_figures(Path("bundle"), films, tmp_path, None, (2,), repeat=3)
    assert calls == ["2", "2_no_overlays"] * 3  # in rounds, every kind once per round
    assert fig["scan_2_films_per_s"] == 2 / 2.0 and fig["scan_2_cpu_ms_per_film"] == 1000 * 4.5 / 2  # the median run
    assert fig["scan_2_films_per_s_lo"] == 2 / 4.0 and fig["scan_2_films_per_s_hi"] == 2 / 1.0
    assert fig["scan_2_no_overlays_films_per_s"] == 2 / 1.0 and fig["scan_2_no_overlays_peak_rss_mib"] == 125.0
    b = {"bound_overlays_films_per_s": 2.0, "bound_no_overlays_films_per_s": 8.0}
    r = ratios({**fig, **b}, (2,), cores=2)
    assert (r["scan_2_over_bound_lo"], r["scan_2_over_bound"], r["scan_2_over_bound_hi"]) == (0.25, 0.5, 1.0)
