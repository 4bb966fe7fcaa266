"""Provenance for bundle.json: where the model came from and how it was converted."""

from __future__ import annotations

import datetime
import platform
from importlib import metadata

from edge.bundle import sha256_file

__all__ = ["PACKAGES", "provenance", "versions"]

PACKAGES = ("torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow", "ai-edge-litert", "numpy")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(opts, meta: dict, calibration, timings: dict, batchnorm: str) -> dict:
    """``opts``: convert.pipeline.Options; ``calibration``: the FilmSet used for calibration."""
    from convert.export import normalisation_of

    data = dict(meta.get("data", {}))
    if opts.films is not None:  # any folder of films, no labels
        data.update(calibration={"split": "films folder, no labels", "films": len(calibration.names),
                                 "names": calibration.names},
                    heldout={"split": "the calibration films (no other films)"}, converted_with=str(opts.films))
    else:
        data.update(calibration={"split": "validation", "films": len(calibration.names), "names": calibration.names},
                    heldout={"split": "test"}, converted_with=str(opts.data))
    mean, std = normalisation_of(meta)
    return {
        "checkpoint": opts.checkpoint.name,
        "source": meta.get("source"),  # an imported model's origin (convert.importer), else None
        "input_normalisation": {"mean": mean, "std": std, "scale": "0-255", "where": "folded into the network"},
        "checkpoint_sha256": sha256_file(opts.checkpoint),
        "arch": meta["arch"], "head": meta["head"],
        "training_config": meta.get("config", {}),
        "training_metrics": meta.get("metrics", {}),
        "data": data,
        "quantization": {"weights": opts.quantization, "activations": "per-tensor int8",
                         "input": "uint8 raw pixels", "outputs": "int8", "batchnorm": batchnorm,
                         "calibration_films": len(calibration.names)},
        "versions": versions(),
        "timings_s": dict(timings),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
