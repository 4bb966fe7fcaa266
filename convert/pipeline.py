"""The conversion, step by step: checkpoint -> ONNX -> TFLite fp32 + int8 -> checks -> bundle.

Films come from an NIH-layout data folder with labels (``data``: calibration from the validation split,
fidelity on the test split, the guard fitted on training films) or from any folder of films without labels
(``films``: calibration, int8-vs-fp32 agreement, CAM baseline and the guard's statistics all from those films;
no AUROC check, and the report and bundle say so).

Each step is a short function; ``convert`` runs them in order, timing each (the timings go
into the bundle's provenance). Intermediate files live in a temporary folder that is always
removed; only a complete, verified bundle is renamed into ``out`` (convert.bundle).
"""

from __future__ import annotations

import errno
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convert.errors import ConvertError
from convert.fidelity import LIMITS
from edge.heads import HEADS

if TYPE_CHECKING:
    from convert.calibrate import FilmSet
    from edge.novelty import Guard
    from train.model import DenseNet121

__all__ = ["BATCHNORMS", "SCORES", "Artifacts", "Options", "convert"]

MB = 1_000_000
SUPPORTED_ARCHS = ("densenet121",)
BATCHNORMS = ("auto", "depthwise", "mul")  # auto: the head's choice (edge.heads)
SCORES = ("features", "model")  # where edge takes the scores from (bundle.json "scoring")


@dataclass
class Options:
    """What ``python -m convert`` was asked; the command line's defaults are these."""

    checkpoint: Path
    data: Path | None
    out: Path
    films: Path | None = None  # any folder of films, no labels (instead of ``data``)
    calibration: int = 300
    heldout: int = 200
    force: bool = False
    quantization: str = "per-channel"
    limits: dict[str, float] = field(default_factory=lambda: {k: v for k, (_, v) in LIMITS.items()})
    max_int8_mb: float = 8.5
    batchnorm: str = "auto"
    scores: str = "features"
    bias_correction: bool = True
    cam_baseline: bool = True
    auroc_min_films: int = 1
    float_check_films: int = 32
    guard: bool = True
    guard_films: int = 1000
    false_refusal: float = 0.01
    seed: int = 0
    verbose: bool = False
    log: Callable[[str], None] = print


@dataclass
class Artifacts:
    """What the steps make, in the order they make it (None until then)."""

    model: DenseNet121 | None = None
    meta: dict = field(default_factory=dict)  # the checkpoint's metadata
    cal: FilmSet | None = None  # calibration films
    held: FilmSet | None = None  # held-out films (the calibration films themselves with ``films``)
    labelled: bool = True  # the films have labels (an NIH-layout folder)
    batchnorm: str = ""  # how BatchNorms after no convolution were exported
    onnx: Path | None = None  # uint8 input
    onnx_float: Path | None = None  # float input, for onnx2tf
    shapes: dict[str, list[int]] = field(default_factory=dict)  # the network's output shapes
    fp32: Path | None = None
    int8: Path | None = None
    head: dict[str, np.ndarray] = field(default_factory=dict)  # cam_head.npz arrays
    bias_correction: dict | None = None
    cam_baseline: dict | None = None
    fidelity: dict = field(default_factory=dict)
    edgetpu_report: Path | None = None
    edgetpu: dict = field(default_factory=dict)
    edgetpu_model: Path | None = None
    edgetpu_log: Path | None = None
    held_features: np.ndarray | None = None  # the int8 model's features of the held-out films
    guard: Guard | None = None  # the out-of-distribution guard (convert.novelty)
    novelty: dict | None = None  # bundle.json's novelty entry
    runs: dict = field(default_factory=dict)  # (model, films) -> tflite_run outputs of films used more than once


def _tflite_outputs(a: Artifacts, kind: str, films: FilmSet) -> tuple[np.ndarray, np.ndarray]:
    """``tflite_run`` of the int8 or fp32 model on a film set, once: the calibration films' outputs are kept (the
    thresholds and the head use them; with --films they are the held-out films too), the held-out films' are not."""
    from convert.tflite import tflite_run

    key = (kind, id(films))
    out = a.runs.get(key) or tflite_run(getattr(a, kind), films.images)
    if films is a.cal:
        a.runs[key] = out
    return out


@dataclass
class _State:
    opts: Options
    work: Path
    timings: dict[str, float] = field(default_factory=dict)
    art: Artifacts = field(default_factory=Artifacts)


@contextmanager
def _step(state: _State, name: str) -> Iterator[None]:
    state.opts.log(f"-- {name}")
    t0 = time.monotonic()
    yield
    state.timings[name] = round(time.monotonic() - t0, 2)
    state.opts.log(f"   {name}: {state.timings[name]:.1f} s")


def _load_checkpoint(state: _State) -> None:
    from edge.bundle import TASK_ACTIVATION
    from edge.preprocess import PREPROCESS, spec_matches
    from train.checkpoint import CheckpointError, model_from_checkpoint

    path = state.opts.checkpoint
    try:
        model, meta = model_from_checkpoint(path)
    except CheckpointError as err:
        raise ConvertError(str(err)) from None
    if meta["arch"] not in SUPPORTED_ARCHS:
        raise ConvertError(f"{path}: architecture {meta['arch']!r} cannot be converted (supported: {SUPPORTED_ARCHS})")
    if meta["task"] not in TASK_ACTIVATION:
        raise ConvertError(f"{path}: unknown task {meta['task']!r} (expected one of {sorted(TASK_ACTIVATION)})")
    if not spec_matches(meta["preprocess"]):
        raise ConvertError(f"{path}: trained with preprocessing {meta['preprocess']}, but edge implements "
                           f"{PREPROCESS}; retrain at {PREPROCESS['size']} px")
    if set(meta["thresholds"]) != set(meta["labels"]):
        raise ConvertError(f"{path}: the thresholds do not name the checkpoint's labels")
    state.art.model, state.art.meta = model, meta


def _films(state: _State) -> None:
    from convert.calibrate import folder_films, split_films

    o = state.opts
    if o.films is not None:
        cal = folder_films(o.films, len(state.art.meta["labels"]), o.calibration, o.seed)
        o.log(f"   {len(cal.names)} films from {o.films}, no labels: calibration, int8-vs-fp32 agreement, CAM "
              f"baseline and guard all from these films; no AUROC check")
        state.art.cal, state.art.held, state.art.labelled = cal, cal, False
        return
    cal, held = split_films(o.data, state.art.meta, o.calibration, o.heldout, o.seed)
    if len(cal.names) < o.calibration:
        o.log(f"   note: the validation split has only {len(cal.names)} films; calibrating on all of them")
    o.log(f"   calibration: {len(cal.names)} validation films; held out: {len(held.names)} test films")
    state.art.cal, state.art.held = cal, held


def _export(state: _State) -> None:
    from convert.export import export_onnx, normalisation_of

    model, meta = state.art.model, state.art.meta
    bn = HEADS[meta["head"]].batchnorm if state.opts.batchnorm == "auto" else state.opts.batchnorm
    state.art.batchnorm, task, dw, norm = bn, meta["task"], bn == "depthwise", normalisation_of(meta)
    state.art.onnx = export_onnx(model, task, state.work / "model.onnx", "uint8", depthwise_bn=dw, normalisation=norm)
    state.art.onnx_float = export_onnx(model, task, state.work / "model_float_input.onnx", "float32",
                                          depthwise_bn=dw, normalisation=norm)
    state.art.shapes = _onnx_output_shapes(state.art.onnx)


def _onnx_output_shapes(path: Path) -> dict[str, list[int]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {out.name: [d.dim_value for d in out.type.tensor_type.shape.dim] for out in graph.output}


def _tflite(state: _State) -> None:
    from convert import tflite

    cal = state.art.cal.images
    keras_model = tflite.keras_from_onnx(state.art.onnx_float, state.work, cal, verbose=state.opts.verbose)
    state.art.fp32 = _write(state.work / "model_fp32.tflite", tflite.to_fp32_tflite(keras_model))
    state.art.int8 = _write(state.work / "model_int8.tflite",
                               tflite.to_int8_tflite(keras_model, cal, state.opts.quantization))
    _check_io(state, state.art.fp32)
    _check_io(state, state.art.int8)
    size = state.art.int8.stat().st_size
    if size > state.opts.max_int8_mb * MB:
        hint = " (try --batchnorm mul)" if state.art.batchnorm == "depthwise" else ""
        raise ConvertError(f"the int8 model is {size / MB:.2f} MB, over the {state.opts.max_int8_mb} MB limit "
                           f"(the Edge TPU caches about 8 MB of parameters on chip){hint}")


def _check_io(state: _State, path: Path) -> None:
    """The converted model must keep batch 1 and the network's output shapes (catches layout errors)."""
    from convert.bundle import tflite_io

    io, want = tflite_io(path), state.art.shapes
    got = {role: io[role]["shape"] for role in want}
    if got != want:
        raise ConvertError(f"{path.name}: the converted model's outputs are {got}, the network's {want}; "
                           f"the ONNX -> TensorFlow conversion laid them out wrongly")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _thresholds(state: _State) -> None:
    """A checkpoint whose thresholds were not chosen on data (convert.importer's defaults) gets them chosen on the
    labelled calibration (validation) films, by train's own rule, from the fp32 model's scores; without labels
    they stay, and bundle.json's ``threshold_choice`` says they were not chosen on the user's data."""
    from train.evaluate import choose_thresholds

    a = state.art
    if not a.labelled or a.meta.get("threshold_choice", {}).get("chosen_on_user_data", True):
        return
    scores = _tflite_outputs(a, "fp32", a.cal)[0]
    a.meta["thresholds"] = choose_thresholds(a.cal.targets, scores, a.meta["labels"], "f1")
    a.meta["threshold_choice"] = {"rule": "f1 (train.evaluate.choose_thresholds; 0.5 for a label without positives)",
                                  "chosen_on_user_data": True, "split": "validation (the calibration films)",
                                  "films": len(a.cal.names), "replaced": a.meta.get("threshold_choice")}
    state.opts.log(f"   thresholds chosen on {len(a.cal.names)} labelled validation films (the checkpoint's were "
                   f"defaults)")


def _head(state: _State) -> None:
    """The float head for edge's scores and CAM (convert.camhead): bias-corrected for the int8 features,
    with the CAM baseline, both measured on the calibration films."""
    from convert.camhead import bias_correct, films_averaged, head_arrays, per_label_baseline, pooled, with_baseline

    a, head, opts = state.art, state.art.meta["head"], state.opts
    a.head, a.bias_correction, a.cam_baseline = head_arrays(a.model), None, None
    if not (opts.bias_correction or opts.cam_baseline):
        return
    cal = a.cal.images
    int8, fp32 = _tflite_outputs(a, "int8", a.cal)[1], _tflite_outputs(a, "fp32", a.cal)[1]
    where = {"films": len(cal), "split": "validation (the calibration films)" if a.labelled else
             "the films folder (the calibration films, no labels)"}
    if opts.bias_correction:
        offset = (pooled(head, int8) - pooled(head, fp32)).mean(axis=0)
        a.head = bias_correct(head, a.head, offset)
        a.bias_correction = {**where, "max_abs_offset": float(np.abs(offset).max()),
                                "mean_offset": float(offset.mean())}
        opts.log(f"   pooled int8 feature offset: mean {offset.mean():+.4f}, max |{np.abs(offset).max():.4f}| "
                 f"(folded into the head)")
    if opts.cam_baseline:
        targets = a.cal.targets
        a.head = with_baseline(a.head, per_label_baseline(int8, targets), per_label_baseline(fp32, targets))
        a.cam_baseline = {**where, "array": "baseline", "per_label": True,
                             "statistic": "per label: mean feature map of the calibration films without the label "
                                          "(all of them when every film or none has it)" if a.labelled else
                                          "no labels: the mean feature map of all the calibration films, every label",
                             "films_averaged": dict(zip(a.meta["labels"], films_averaged(targets).tolist(),
                                                        strict=True))}


def _fidelity(state: _State) -> None:
    from convert import fidelity
    from convert.camhead import head_scores
    from convert.export import normalisation_of, onnx_run, torch_run

    a, held, meta = state.art, state.art.held, state.art.meta
    first = held.images[:state.opts.float_check_films]  # float vs float: a few films show it
    outs = {"torch": torch_run(a.model, meta["task"], first, normalisation_of(meta)), "onnx": onnx_run(a.onnx, first),
            "fp32": _tflite_outputs(a, "fp32", held), "int8": _tflite_outputs(a, "int8", held)}
    model_scores, feats = outs["int8"]
    a.held_features = feats  # the guard's held-out check (_guard)
    if state.opts.scores == "features":  # what edge reports: the float head on the int8 features
        outs["int8"] = (head_scores(meta["head"], meta["task"], a.head, feats), feats)
    rep = fidelity.report(outs["torch"], outs["onnx"], outs["fp32"], outs["int8"], held.targets,
                          [meta["thresholds"][label] for label in meta["labels"]], meta["labels"], held.names,
                          int8_model_scores=model_scores if state.opts.scores == "features" else None,
                          min_films=state.opts.auroc_min_films, labelled=a.labelled,
                          split="test" if a.labelled else "calibration (no labels)")
    rep["scores_from"] = state.opts.scores
    rep["limits"] = dict(state.opts.limits)
    a.fidelity = rep
    state.opts.log(fidelity.summary_lines(rep))
    failures = fidelity.check(rep, state.opts.limits)
    if failures:
        raise ConvertError("fidelity below the limits, no bundle written: " + "; ".join(failures))


def _guard(state: _State) -> None:
    """The out-of-distribution guard (convert.novelty) on the int8 model's features: fitted on training films,
    its threshold set on validation films; its false refusals on the held-out test films are measured and
    recorded, not used to choose anything."""
    from convert.calibrate import guard_films
    from convert.novelty import fit_guard
    from convert.tflite import tflite_run
    from edge.novelty import NOVELTY_FILE, distances, pooled_features

    a, o = state.art, state.opts
    a.novelty = None
    if not o.guard:
        return
    if not a.labelled:
        return _guard_on_films(state)
    train, val = guard_films(o.data, a.meta, o.guard_films, o.seed)
    guard, how = fit_guard(*(pooled_features(tflite_run(a.int8, s.images)[1]) for s in (train, val)),
                           o.false_refusal)
    held = distances(guard, pooled_features(a.held_features))
    a.guard = guard
    a.novelty = {"method": guard.method, "threshold": guard.threshold, "params": NOVELTY_FILE,
                    "descriptor": "int8 feature map, dequantised, averaged over space",
                    "distance": "Mahalanobis distance / sqrt(channels) (edge.novelty)",
                    "components": int(guard.components.shape[0]),
                    "fitted_on": {"split": "train", "films": len(train.names)},
                    "threshold_choice": {"split": "validation", **how},
                    "heldout": {"split": "test", "films": int(held.size),
                                "false_refusal": float((held > guard.threshold).mean()),
                                "novelty_max": float(held.max())}}
    o.log(f"   guard: {guard.method} fitted on {len(train.names)} training films, threshold {guard.threshold:.3f} "
          f"set on {len(val.names)} validation films for {how['false_refusal_rate']:.0%} false refusals; "
          f"held-out test films refused: {a.novelty['heldout']['false_refusal']:.1%} of {held.size}")


def _guard_on_films(state: _State) -> None:
    """Films without splits: the guard is fitted on all of them, its threshold cross-fitted (convert.novelty)."""
    from convert.novelty import crossfit_guard
    from edge.novelty import NOVELTY_FILE, pooled_features

    a, o = state.art, state.opts
    guard, how = crossfit_guard(pooled_features(a.held_features), o.false_refusal, seed=o.seed)
    a.guard = guard
    a.novelty = {"method": guard.method, "threshold": guard.threshold, "params": NOVELTY_FILE,
                 "descriptor": "int8 feature map, dequantised, averaged over space",
                 "distance": "Mahalanobis distance / sqrt(channels) (edge.novelty)",
                 "components": int(guard.components.shape[0]),
                 "fitted_on": {"split": "the films folder (the calibration films)", "films": len(a.cal.names)},
                 "threshold_choice": {"split": "the same films, cross-fitted", **how}, "heldout": None}
    o.log(f"   guard: {guard.method} fitted on the {len(a.cal.names)} films, threshold {guard.threshold:.3f} "
          f"cross-fitted on them for {how['false_refusal_rate']:.0%} false refusals (no films held out from it)")


def _edgetpu(state: _State) -> None:
    import json

    from convert import edgetpu

    report = edgetpu.op_report(state.art.int8)
    state.art.edgetpu_report = _write(state.work / "edgetpu_report.json",
                                         (json.dumps(report, indent=1) + "\n").encode())
    summary = {k: v for k, v in report.items() if k != "table"}
    result = edgetpu.compile_model(state.art.int8, state.work / "edgetpu")
    if result is None:
        state.opts.log(f"   {edgetpu.COMPILER} is not on PATH: no Edge TPU model; offline compatibility report only")
        note = f"{edgetpu.COMPILER} not on PATH (it runs on x86-64 Linux only); offline report from the int8 model"
        state.art.edgetpu = {"compiled": False, "note": note, "report": "edgetpu_report.json", **summary}
    else:
        state.art.edgetpu_model = result.pop("model")
        state.art.edgetpu_log = _write(state.work / "edgetpu_compiler.log", result.pop("log").encode())
        result.pop("compiler_log", None)
        state.art.edgetpu = {"compiled": True, "log": "edgetpu_compiler.log", "report": "edgetpu_report.json",
                                **result, **summary}
    fb = summary["first_cpu_fallback"]
    where = "" if fb is None else f"; first CPU fallback at op {fb['index']} {fb['op']}: {fb['problems'][0]}"
    state.opts.log(f"   Edge TPU ops supported: {summary['supported_ops']}/{summary['ops']}{where}")


def _bundle(state: _State) -> None:
    from convert.bundle import MODEL_FILES, build_spec, tflite_io, write_bundle
    from convert.camhead import CAM_FILE, save_head
    from convert.provenance import provenance
    from edge.bundle import TASK_ACTIVATION

    a, meta = state.art, state.art.meta
    arrays = a.head
    save_head(arrays, state.work / CAM_FILE)
    io = {MODEL_FILES["int8"]: tflite_io(a.int8), MODEL_FILES["fp32"]: tflite_io(a.fp32)}
    files = {MODEL_FILES["int8"]: a.int8, MODEL_FILES["fp32"]: a.fp32, CAM_FILE: state.work / CAM_FILE,
             "edgetpu_report.json": a.edgetpu_report}
    if a.novelty is not None:
        np.savez(state.work / a.novelty["params"], **a.guard.arrays())
        files[a.novelty["params"]] = state.work / a.novelty["params"]
    if a.edgetpu_model is not None:
        io[MODEL_FILES["edgetpu"]] = io[MODEL_FILES["int8"]]  # the compiler keeps the input/output tensors
        files.update({MODEL_FILES["edgetpu"]: a.edgetpu_model, "edgetpu_compiler.log": a.edgetpu_log})
    cam = {"head": meta["head"], "pool": HEADS[meta["head"]].pool, "params": CAM_FILE,
           "feature_shape": io[MODEL_FILES["int8"]]["features"]["shape"][1:], "arrays": sorted(arrays),
           "baseline": a.cam_baseline}
    scoring = {"from": state.opts.scores, "activation": TASK_ACTIVATION[meta["task"]], "params": CAM_FILE,
               "bias_correction": a.bias_correction}
    prov = provenance(state.opts, meta, a.cal, state.timings, a.batchnorm)
    choice = meta.get("threshold_choice") or {"rule": "chosen on validation data in training",
                                              "chosen_on_user_data": True}
    spec = build_spec(meta, io, cam, {"scoring": scoring, "provenance": prov, "fidelity": a.fidelity,
                                      "edgetpu": a.edgetpu, "novelty": a.novelty, "threshold_choice": choice})
    write_bundle(state.opts.out, files, spec, force=state.opts.force)


STEPS = (("checkpoint", _load_checkpoint), ("films", _films), ("onnx export", _export),
         ("tflite fp32 + int8", _tflite), ("thresholds", _thresholds), ("head", _head), ("fidelity", _fidelity),
         ("guard", _guard), ("edge tpu", _edgetpu), ("bundle", _bundle))


def convert(opts: Options) -> dict:
    """Run every step; returns the timings. Raises ConvertError (nothing left at ``out``) on failure."""
    if opts.out.exists() and not opts.force:
        raise ConvertError(f"{opts.out}: already exists; pass --force to replace it")
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="xray-convert-") as tmp:
            state = _State(opts, Path(tmp))
            for name, step in STEPS:
                with _step(state, name):
                    step(state)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ConvertError(f"disk full during conversion ({err.filename or tempfile.gettempdir()}); "
                               f"nothing was written to {opts.out}") from None
        raise
    state.timings["total"] = round(time.monotonic() - t0, 2)
    return state.timings
