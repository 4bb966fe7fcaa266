"""The bound a scan is measured against (``edge.bench``, issue 16): the CPU each stage of a film costs, what
that allows on this machine's cores, the scan's films/s as a fraction of it, and a fast accelerator simulated.

- ``stage_cpu``: per-film CPU (process time, one film at a time, interpreter on one thread: its unavoidable
  work) of each stage of the service path, on the bench films: hash, decode (with the colour/header screen),
  preprocess, invoke, CAM (with the scores' head and the guard), overlays (encoded and written), commit.
- ``bounds``: cores / (decode + preprocess + invoke [+ overlays]) films/s, the issue's bound, and the same
  over every stage; the scans' films/s are divided by them.
- ``fake_accelerator``: the scan with a model that answers in ``FAKE_INVOKE_MS`` without the CPU (a sleep,
  like an Edge TPU): it is bound by decoding, and its films/s is compared with cores / (decode + preprocess
  + hash), the median of three scans.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["FAKE_INVOKE_MS", "FAKE_REPEAT", "bounds", "fake_accelerator", "median_run", "stage_cpu"]

FAKE_INVOKE_MS = 2.0
FAKE_REPEAT = 3
STAGES = ("hash", "decode", "preprocess", "invoke", "cam", "overlays", "commit")


def median_run(runs: list[tuple]) -> tuple:
    """The median of repeated runs, each a tuple led by its films/s (the slower middle one of an even count),
    with the figures of that same run."""
    return sorted(runs)[(len(runs) - 1) // 2]


def _cpu() -> float:
    """CPU of the calling thread. The stages run one film at a time on this thread (the interpreter with one
    thread runs on it too), so this is their cost. Process CPU time is not: during the stage loop a second
    thread of this process, idle otherwise, accrues about as much CPU (mostly system time) as the main thread,
    and process CPU counted every stage twice (bounds half the true ones, scans "1.3x" their bound)."""
    return time.thread_time()


class _TimedModel:
    """The real model, with the CPU time of its ``predict`` recorded (the rest of scoring is the CAM's)."""

    def __init__(self, model) -> None:
        self.model, self.cpu = model, 0.0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def predict(self, x: np.ndarray):
        start = _cpu()
        try:
            return self.model.predict(x)
        finally:
            self.cpu = _cpu() - start


def _contexts(bundle_dir: Path, work: Path):
    """Two service contexts on a one-thread interpreter: with overlays, and without (for the bare commit)."""
    from edge.explain import CamExplainer
    from edge.novelty import load_guard
    from edge.runtime import open_model
    from edge.service import ScanContext
    from edge.store import Store

    model = _TimedModel(open_model(bundle_dir, device="cpu", threads=1))
    explainer, guard = CamExplainer(model.bundle, model.head), load_guard(model.bundle)
    stores = Store(work / "a.sqlite"), Store(work / "b.sqlite")
    on = ScanContext(model=model, explainer=explainer, store=stores[0], out_dir=work / "a", guard=guard)
    off = dataclasses.replace(on, store=stores[1], out_dir=work / "b", overlays=False)
    return model, on, off, stores


def stage_cpu(bundle_dir: Path, films: list[Path], warmup: int = 2) -> dict[str, float]:
    """Median per-film CPU ms of every stage (``STAGES``) over ``films``, one film at a time."""
    from edge.preprocess import preprocess
    from edge.screen import screen_file
    from edge.service import Prepared, decode, finish, input_side, render_overlays, score_prepared
    from edge.walk import hash_film_file, path_text

    times: dict[str, list[float]] = {name: [] for name in STAGES}
    with tempfile.TemporaryDirectory(prefix="edge-bench-stages-") as tmp:
        model, on, off, stores = _contexts(bundle_dir, Path(tmp))
        side = input_side(model.bundle)
        try:
            for i, path in enumerate([*films[:warmup], *films]):
                t = [_cpu()]
                item = Prepared(path=path, shown=path_text(path), sha=hash_film_file(path))
                t.append(_cpu())
                item.film, item.shape = decode(path, side)
                item.refusal = screen_file(path)
                t.append(_cpu())
                item.x = preprocess(item.film, side)
                t.append(_cpu())
                scored = score_prepared(item, on)
                t.append(_cpu())
                render_overlays(scored, on)
                bare = dataclasses.replace(scored.result, cam=[dict(c) for c in scored.result.cam], overlays=[])
                t.append(_cpu())
                finish(scored, on)  # the overlay files and a row
                t.append(_cpu())
                off.store.add(bare)  # a row alone
                t.append(_cpu())
                if i < warmup:
                    continue
                d = np.diff(t) * 1000.0
                times["hash"].append(d[0])
                times["decode"].append(d[1])
                times["preprocess"].append(d[2])
                times["invoke"].append(model.cpu * 1000.0)
                times["cam"].append(d[3] - model.cpu * 1000.0)
                times["commit"].append(d[6])
                times["overlays"].append(d[4] + max(d[5] - d[6], 0.0))
        finally:
            for store in stores:
                store.close()
    return {name: statistics.median(values) for name, values in times.items()}


def bounds(stages: dict[str, float], cores: int) -> dict[str, float]:
    """Films/s the stages allow on ``cores`` cores: the issue's (decode + preprocess + invoke, + overlays) and
    over every stage (with and without overlays); and the decoding bound of a fast accelerator."""
    core = stages["decode"] + stages["preprocess"] + stages["invoke"]
    every = sum(stages.values())
    return {"bound_no_overlays_films_per_s": 1000.0 * cores / core,
            "bound_overlays_films_per_s": 1000.0 * cores / (core + stages["overlays"]),
            "bound_all_stages_no_overlays_films_per_s": 1000.0 * cores / (every - stages["overlays"]),
            "bound_all_stages_overlays_films_per_s": 1000.0 * cores / every,
            "bound_decoding_films_per_s": 1000.0 * cores / (stages["decode"] + stages["preprocess"] + stages["hash"])}


# ---------------------------------------------------------------- a fast accelerator, simulated

class _FakeAccelerator:
    """Stands in for an Edge TPU model: the bundle's prediction of one real film, after ``FAKE_INVOKE_MS`` of
    sleep (no CPU, the GIL released)."""

    kind, device, runtime, notes, head = "int8", "fake-accelerator", "sleep", (), None

    def __init__(self, model, x: np.ndarray) -> None:
        self.bundle, self._pred = model.bundle, model.predict(x)

    def predict(self, x: np.ndarray):
        time.sleep(FAKE_INVOKE_MS / 1000.0)
        return self._pred


def fake_accelerator(bundle_dir: Path, films: list[Path], work: Path, workers: int | None = None,
                     repeat: int = FAKE_REPEAT) -> dict[str, float]:
    """films/s and CPU ms per film of a scan of ``films`` on the simulated accelerator (no heatmaps:
    the scan is decoding, hashing, the model's answer and the commit): the median of ``repeat`` scans, each
    into a new results folder (at 500 films a scan lasts a few seconds, and one slow moment of a shared machine
    moved a single scan's figure by 10%)."""
    from edge.films import load_film
    from edge.preprocess import preprocess
    from edge.runtime import open_model
    from edge.scan import scan_paths
    from edge.service import ScanContext
    from edge.store import Store

    model = _FakeAccelerator(open_model(bundle_dir, device="cpu", threads=1), preprocess(load_film(films[0])))
    runs = []
    for i in range(repeat):
        out = work / f"scan{i}"
        out.mkdir()
        with Store(out / "results.sqlite") as store:
            ctx = ScanContext(model=model, explainer=None, store=store, out_dir=out, cam_mode="none", overlays=False)
            cpu = time.process_time()  # the scan's threads together
            summary = scan_paths(films, ctx, interrupt=threading.Event(), workers=workers)
            own = time.process_time() - cpu
        if summary.scored != len(films):
            raise RuntimeError(f"the simulated accelerator scored {summary.scored} of {len(films)} films")
        runs.append((len(films) / summary.seconds, own * 1000.0 / len(films)))
    speed, cpu_ms = median_run(runs)
    return {"fake_accelerator_films_per_s": speed, "fake_accelerator_cpu_ms_per_film": cpu_ms}
