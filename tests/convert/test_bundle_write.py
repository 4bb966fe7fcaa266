"""Atomic bundle writing (convert.bundle.write_bundle): never a half bundle where edge would load it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from convert.bundle import MODEL_FILES, write_bundle
from convert.errors import ConvertError
from edge.bundle import FORMAT, FORMAT_VERSION, load_bundle
from edge.errors import BundleError
from edge.preprocess import PREPROCESS

LABELS = ["A", "B"]


def _spec() -> dict:
    names = {"scores": "s", "features": "f"}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "task": "multilabel", "labels": LABELS,
            "input": {"shape": [1, 224, 224, 3], "dtype": "uint8", "layout": "NHWC",
                      "quantization": {"scale": 1.0, "zero_point": 0}},
            "preprocess": dict(PREPROCESS), "outputs": {MODEL_FILES["int8"]: names},
            "thresholds": {"A": 0.5, "B": 0.4}, "models": {"int8": MODEL_FILES["int8"], "fp32": None, "edgetpu": None},
            "cam": {"head": "chexnet"}, "provenance": {"data": {"kind": "phantom"}}}


def _files(tag: bytes) -> dict:
    return {MODEL_FILES["int8"]: b"int8 model " + tag, "cam_head.npz": b"head " + tag}


def _fail_at(step: str, error: Exception):
    def hook(name: str) -> None:
        if name == step:
            raise error
    return hook


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_write_then_load(tmp_path: Path):
    out = write_bundle(tmp_path / "b", _files(b"1"), _spec())
    bundle = load_bundle(out)
    assert bundle.labels == LABELS and bundle.thresholds == [0.5, 0.4] and bundle.is_demo
    assert set(bundle.spec["files"]) == set(_files(b"1"))
    assert _leftovers(tmp_path) == []


def test_refuses_to_overwrite_without_force(tmp_path: Path):
    out = write_bundle(tmp_path / "b", _files(b"1"), _spec())
    with pytest.raises(ConvertError, match="already exists; pass --force"):
        write_bundle(out, _files(b"2"), _spec())
    assert (out / MODEL_FILES["int8"]).read_bytes() == b"int8 model 1"


@pytest.mark.parametrize("step", [MODEL_FILES["int8"], "cam_head.npz", "bundle.json"])
def test_failure_mid_write_leaves_nothing(tmp_path: Path, step: str):
    out = tmp_path / "b"
    with pytest.raises(ConvertError, match="cannot write the bundle"):
        write_bundle(out, _files(b"1"), _spec(), hook=_fail_at(step, OSError(errno.EIO, "I/O error")))
    assert not out.exists()
    with pytest.raises(BundleError):
        load_bundle(out)
    assert _leftovers(tmp_path) == []


def test_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path: Path):
    out = tmp_path / "b"
    with pytest.raises(ConvertError, match="disk full"):
        write_bundle(out, _files(b"1"), _spec(), hook=_fail_at("cam_head.npz", OSError(errno.ENOSPC, "No space")))
    assert not out.exists() and _leftovers(tmp_path) == []


def test_force_keeps_the_old_bundle_until_the_new_one_is_complete(tmp_path: Path):
    out = write_bundle(tmp_path / "b", _files(b"old"), _spec())
    seen = []

    def hook(name: str) -> None:
        seen.append(load_bundle(out).spec["files"])  # the old bundle stays loadable during the write
        if name == "bundle.json":
            raise OSError(errno.ENOSPC, "No space")

    with pytest.raises(ConvertError, match="disk full"):
        write_bundle(out, _files(b"new"), _spec(), force=True, hook=hook)
    assert len(seen) == 3
    assert (load_bundle(out).path / MODEL_FILES["int8"]).read_bytes() == b"int8 model old"
    write_bundle(out, _files(b"new"), _spec(), force=True)
    assert (load_bundle(out).path / MODEL_FILES["int8"]).read_bytes() == b"int8 model new"
    assert _leftovers(tmp_path) == []
