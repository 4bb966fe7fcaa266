"""Write a model bundle (edge/bundle.py documents the format) atomically.

The bundle is built in a hidden sibling folder, every file fsynced, bundle.json written last,
then renamed into place. With ``force`` an existing bundle is moved aside only after the new
one is complete, and deleted after the new one is in place; without it an existing ``out`` is
refused. A failure at any point (a full disk included) removes the temporary folder, so a
half-written bundle is never left where edge would load it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from convert.errors import ConvertError
from edge.bundle import BUNDLE_JSON, FORMAT, FORMAT_VERSION, load_bundle, sha256_file
from edge.fsio import atomic_write_bytes, fsync_dir, is_disk_full, json_default
from edge.preprocess import PREPROCESS

__all__ = ["MODEL_FILES", "build_spec", "tflite_io", "write_bundle"]

MODEL_FILES = {"int8": "model_int8.tflite", "fp32": "model_fp32.tflite", "edgetpu": "model_int8_edgetpu.tflite"}


def tflite_io(path: str | Path) -> dict:
    """Tensors of a .tflite file by role: input, scores (the 2-D output), features (the 4-D output)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    (inp,) = interp.get_input_details()
    roles = {2: "scores", 4: "features"}
    io = {"input": _tensor(inp)}
    io.update({roles[len(d["shape"])]: _tensor(d) for d in interp.get_output_details() if len(d["shape"]) in roles})
    if set(io) != {"input", "scores", "features"} or len(interp.get_output_details()) != 2:
        raise ConvertError(f"{path}: expected one 2-D scores and one 4-D features output, "
                           f"got {[list(d['shape']) for d in interp.get_output_details()]}")
    return io


def _tensor(detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    return {"name": detail["name"], "shape": [int(s) for s in detail["shape"]], "dtype": detail["dtype"].__name__,
            "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None}


def build_spec(meta: dict, io: dict[str, dict], cam: dict, extra: dict) -> dict:
    """bundle.json without ``files`` (added by write_bundle). ``io``: model file -> tflite_io()."""
    int8 = io[MODEL_FILES["int8"]]["input"]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "task": meta["task"], "labels": list(meta["labels"]),
        "input": {"shape": int8["shape"], "dtype": int8["dtype"], "layout": "NHWC",
                  "quantization": int8["quantization"]},
        "preprocess": dict(PREPROCESS),
        "outputs": {name: {role: t[role]["name"] for role in ("scores", "features")} for name, t in io.items()},
        "tensors": io,
        "thresholds": {label: float(meta["thresholds"][label]) for label in meta["labels"]},
        "models": {kind: (name if name in io else None) for kind, name in MODEL_FILES.items()},
        "cam": cam, **extra,
    }


def write_bundle(out: str | Path, files: dict[str, bytes | Path], spec: dict, force: bool = False,
                 hook: Callable[[str], None] | None = None) -> Path:
    """Write ``files`` (name -> bytes or a file to copy) and bundle.json into ``out``, atomically.

    ``hook(step)`` is called between steps (tests use it to fail mid-write)."""
    out = Path(out)
    if out.exists() and not force:
        raise ConvertError(f"{out}: already exists; pass --force to replace it (the old bundle is kept until "
                           f"the new one is complete)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _fill(tmp, files, spec, hook or (lambda step: None))
        load_bundle(tmp)  # the reader's own check, before anything is replaced
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        fsync_dir(out.parent)
    except OSError as err:
        _restore(out, old)
        if is_disk_full(err):
            raise ConvertError(f"{out.parent}: disk full while writing the bundle; nothing was written "
                               f"(free space and convert again)") from None
        raise ConvertError(f"{out}: cannot write the bundle ({err.strerror or err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _restore(out: Path, old: Path) -> None:
    if old.exists() and not out.exists():
        old.rename(out)


def _fill(tmp: Path, files: dict[str, bytes | Path], spec: dict, hook: Callable[[str], None]) -> None:
    digests = {}
    for name, data in files.items():
        target = tmp / name
        atomic_write_bytes(target, data if isinstance(data, bytes) else Path(data).read_bytes())
        digests[name] = sha256_file(target)
        hook(name)
    full = {**spec, "files": digests}
    atomic_write_bytes(tmp / BUNDLE_JSON, (json.dumps(full, indent=2, default=json_default) + "\n").encode())
    hook(BUNDLE_JSON)
