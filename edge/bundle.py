"""The model bundle: the one contract between convert (writer) and edge (reader).

A bundle is a folder::

    bundle.json                 this file's schema, below
    model_int8.tflite           full-integer model: uint8 NHWC raw pixels in
    model_fp32.tflite           optional: the float model, for checks and fallbacks
    model_int8_edgetpu.tflite   optional: compiled for the Coral Edge TPU
    cam_head.npz                float32 head parameters for the CPU Grad-CAM (no pickle)
    edgetpu_report.json         op-by-op Edge TPU compatibility of the int8 model (convert.edgetpu)
    edgetpu_compiler.log        optional: the compiler's output, when it ran
    novelty.npz                 the out-of-distribution guard's statistics (edge.novelty documents them)

``bundle.json`` keys (``FORMAT_VERSION`` 3; edge also reads version 1, whose CAM baseline is one
map for all labels, and version 2, per-label baselines and no guard: such bundles score every film and
edge says they have no guard. Version 3 added the guard, which an older edge cannot apply, so it asks
for an edge update)::

    format            "xray-edge-bundle"
    format_version    3
    task              "multilabel" (sigmoid per label) | "one_vs_all" (softmax over labels)
    labels            ordered label names; the order of the score output
    input             {"shape": [1, 224, 224, 3], "dtype": "uint8", "layout": "NHWC",
                       "quantization": {"scale": s, "zero_point": z}}
    preprocess        edge.preprocess.PREPROCESS as the model was trained with
    outputs           {"scores": tensor name, "features": tensor name} per model file:
                      {"model_int8.tflite": {"scores": ..., "features": ...}, ...}
    tensors           per model file, {"input"|"scores"|"features": {"name", "shape", "dtype",
                      "quantization": {"scale", "zero_point"} or null}}; int8 model outputs are int8
    scoring           {"from": "features" | "model", "activation": "sigmoid" | "softmax",
                      "params": "cam_head.npz"}: "features" means the reported scores are
                      activation(head(dequantised features)) with the float head of cam_head.npz
                      (more precise than the int8 score output, which is kept for reference);
                      "model" means the model's own score output. Absent: "model".
                      "bias_correction": how convert folded the int8 features' mean offset into
                      the head (films, offsets) or null; the uncorrected arrays are kept in
                      cam_head.npz as exact_<name> (the head for the fp32 model's features)
    thresholds        {label: operating threshold chosen on validation data}
    models            {"int8": file, "fp32": file or null, "edgetpu": file or null}
    cam               {"head": "chexnet" | "paper", "pool": "avg" | "concat-max-avg",
                       "params": "cam_head.npz", "feature_shape": [7, 7, 1024],
                       "arrays": names in cam_head.npz (convert/camhead.py documents them),
                       "baseline": {"films", "split", "per_label", "films_averaged", ...} when
                       cam_head.npz holds the CAM baseline (per label, the mean feature map of the
                       calibration films without it; older bundles: one mean map; edge.cam) or null}
    files             {file name: sha256 hex} for every other file in the bundle
    provenance        {"checkpoint_sha256", "training_config", "training_metrics",
                       "data": {"kind": "phantom" | "nih" | ..., ...}, "versions", "created"}
    fidelity          the int8-vs-fp32 and ONNX-vs-PyTorch report (convert.fidelity)
    edgetpu           compiler result or offline compatibility summary
    novelty           the out-of-distribution guard (convert.novelty fits it, edge.novelty applies it) or
                      null: {"method": "mahalanobis-ledoit-wolf", "threshold": novelty above which a film
                      is refused, "params": "novelty.npz", "descriptor", "distance", "components",
                      "fitted_on": {"split", "films"}, "threshold_choice": {"false_refusal_rate", "folds",
                      "films", "rule", "empirical_quantile", "lognormal_quantile", ...}, "heldout":
                      {"split", "films", "false_refusal", "novelty_max"} (measured, not used to choose)}

Edge verifies every checksum before a model runs and refuses an unknown format version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import BundleError
from edge.preprocess import PREPROCESS, spec_matches

__all__ = ["BUNDLE_JSON", "FORMAT", "FORMAT_VERSION", "READS_VERSIONS", "TASK_ACTIVATION", "Bundle", "load_bundle",
           "sha256_file"]

FORMAT = "xray-edge-bundle"
FORMAT_VERSION = 3
READS_VERSIONS = (1, 2, 3)
BUNDLE_JSON = "bundle.json"
TASKS = ("multilabel", "one_vs_all")
TASK_ACTIVATION = {"multilabel": "sigmoid", "one_vs_all": "softmax"}  # how logits become scores
SCORES_FROM = ("features", "model")
_REQUIRED = ("format", "format_version", "task", "labels", "input", "preprocess", "outputs",
             "thresholds", "models", "cam", "files", "provenance")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. ``spec`` is bundle.json as read; the rest is derived from it."""

    path: Path
    spec: dict
    sha256: str = field(default="")  # of bundle.json: identifies the model in results

    @property
    def labels(self) -> list[str]:
        return list(self.spec["labels"])

    @property
    def task(self) -> str:
        return self.spec["task"]

    @property
    def thresholds(self) -> list[float]:
        return [float(self.spec["thresholds"][label]) for label in self.labels]

    @property
    def is_demo(self) -> bool:
        """True for a model trained on phantom films: for demonstration, never diagnosis."""
        return self.spec["provenance"].get("data", {}).get("kind") == "phantom"

    @property
    def scores_from(self) -> str:
        """"features": compute scores with the float head from the features; "model": the score output."""
        return self.spec.get("scoring", {}).get("from", "model")

    def model_path(self, kind: str) -> Path | None:
        name = self.spec["models"].get(kind)
        return self.path / name if name else None

    def output_names(self, kind: str) -> dict:
        return self.spec["outputs"][self.spec["models"][kind]]


def _read_spec(path: Path) -> dict:
    spec_path = path / BUNDLE_JSON
    if not path.is_dir():
        raise BundleError(f"{path}: no model bundle here (no such folder)")
    if not spec_path.is_file():
        raise BundleError(f"{path}: not a model bundle ({BUNDLE_JSON} is missing)")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{spec_path}: damaged ({err})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise BundleError(f"{spec_path}: not a {FORMAT} file")
    if spec.get("format_version") not in READS_VERSIONS:
        raise BundleError(f"{spec_path}: format version {spec.get('format_version')!r} is not supported "
                          f"(this edge reads versions {', '.join(map(str, READS_VERSIONS))}); convert the model "
                          f"again or update edge")
    missing = [k for k in _REQUIRED if k not in spec]
    if missing:
        raise BundleError(f"{spec_path}: incomplete, missing {', '.join(missing)}")
    return spec


def _check_consistent(path: Path, spec: dict) -> None:
    labels, where = spec["labels"], path / BUNDLE_JSON
    if spec["task"] not in TASKS:
        raise BundleError(f"{where}: unknown task {spec['task']!r}")
    if not labels or len(set(labels)) != len(labels):
        raise BundleError(f"{where}: the label list is empty or has duplicates")
    if set(spec["thresholds"]) != set(labels):
        raise BundleError(f"{where}: thresholds do not name the same labels as the label list")
    if not spec_matches(spec["preprocess"]):
        raise BundleError(f"{where}: the model expects preprocessing {spec['preprocess']}, "
                          f"this edge implements {PREPROCESS}")
    if not spec["models"].get("int8"):
        raise BundleError(f"{where}: no int8 model listed")
    if spec.get("scoring", {}).get("from", "model") not in SCORES_FROM:
        raise BundleError(f"{where}: unknown scoring source {spec['scoring'].get('from')!r}")
    guard = spec.get("novelty")
    if guard is not None and (not isinstance(guard, dict) or guard.get("params") not in spec["files"]
                              or not isinstance(guard.get("threshold"), int | float)):
        raise BundleError(f"{where}: 'novelty' must name its checksummed arrays file and a threshold")


def _verify_files(path: Path, spec: dict) -> None:
    listed = spec["files"]
    for kind, name in spec["models"].items():
        if name and name not in listed:
            raise BundleError(f"{path / name}: the {kind} model has no checksum in {BUNDLE_JSON}")
    for name, digest in listed.items():
        file = path / name
        if Path(name).name != name:
            raise BundleError(f"{path / BUNDLE_JSON}: file name {name!r} points outside the bundle")
        if not file.is_file():
            raise BundleError(f"{file}: listed in {BUNDLE_JSON} but missing")
        if sha256_file(file) != digest:
            raise BundleError(f"{file}: checksum mismatch: the file was changed or damaged after "
                              f"conversion; refusing to run it")


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle: format, version, consistency, and every file's SHA-256."""
    path = Path(path)
    spec = _read_spec(path)
    _check_consistent(path, spec)
    _verify_files(path, spec)
    return Bundle(path=path, spec=spec, sha256=sha256_file(path / BUNDLE_JSON))
