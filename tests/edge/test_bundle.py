"""A bundle is verified before any film is scored: format, version, consistency, checksums."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.bundle import BUNDLE_JSON, FORMAT, FORMAT_VERSION, load_bundle, sha256_file
from edge.errors import BundleError
from edge.preprocess import PREPROCESS

LABELS = ["Cardiomegaly", "Effusion", "Pneumothorax"]


def _write(path: Path, spec: dict) -> None:
    (path / BUNDLE_JSON).write_text(json.dumps(spec))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A structurally valid bundle; the model bytes are a stand-in (load_bundle never parses them)."""
    (tmp_path / "model_int8.tflite").write_bytes(b"TFL3 stand-in model bytes")
    (tmp_path / "cam_head.npz").write_bytes(b"stand-in head")
    files = {n: sha256_file(tmp_path / n) for n in ("model_int8.tflite", "cam_head.npz")}
    spec = {"format": FORMAT, "format_version": FORMAT_VERSION, "task": "multilabel", "labels": LABELS,
            "input": {"shape": [1, 224, 224, 3], "dtype": "uint8"}, "preprocess": dict(PREPROCESS),
            "outputs": {"model_int8.tflite": {"scores": "s", "features": "f"}},
            "thresholds": {label: 0.5 for label in LABELS}, "models": {"int8": "model_int8.tflite"},
            "cam": {"head": "chexnet", "params": "cam_head.npz"}, "files": files,
            "provenance": {"data": {"kind": "phantom"}}}
    _write(tmp_path, spec)
    return tmp_path


def _spec(path: Path) -> dict:
    return json.loads((path / BUNDLE_JSON).read_text())


def test_valid_bundle_loads(bundle):
    b = load_bundle(bundle)
    assert b.labels == LABELS and b.thresholds == [0.5] * 3 and b.is_demo
    assert b.model_path("int8") == bundle / "model_int8.tflite"
    assert b.sha256 == sha256_file(bundle / BUNDLE_JSON)


@pytest.mark.parametrize("version", [1, 2])
def test_older_bundles_still_load(bundle, version):
    """Version 1 had one CAM baseline for all labels (edge.cam reads both); version 2 added per-label ones;
    version 3 the out-of-distribution guard (an older bundle has none: edge.novelty.load_guard gives None)."""
    from edge.novelty import load_guard

    spec = _spec(bundle)
    assert spec["format_version"] == FORMAT_VERSION == 3
    spec["format_version"] = version
    _write(bundle, spec)
    assert load_bundle(bundle).spec["format_version"] == version
    assert load_guard(load_bundle(bundle)) is None


def test_changed_model_byte_is_refused(bundle):
    model = bundle / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[5] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model_int8.tflite: checksum mismatch"):
        load_bundle(bundle)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.update(format_version=FORMAT_VERSION + 1), "format version 4 is not supported.*update edge"),
    (lambda s: s.update(format_version=0), "format version 0 is not supported"),
    (lambda s: s.update(format="something-else"), "not a xray-edge-bundle"),
    (lambda s: s["thresholds"].pop("Effusion"), "thresholds do not name the same labels"),
    (lambda s: s.update(labels=["A", "A"]), "duplicates"),
    (lambda s: s.update(task="regression"), "unknown task"),
    (lambda s: s["preprocess"].update(size=299), "expects preprocessing"),
    (lambda s: s["files"].pop("model_int8.tflite"), "has no checksum"),
    (lambda s: s["files"].update({"../evil.bin": "0" * 64}), "points outside the bundle"),
    (lambda s: s.pop("provenance"), "missing provenance"),
])
def test_inconsistent_bundle_json_is_refused(bundle, edit, message):
    spec = _spec(bundle)
    edit(spec)
    _write(bundle, spec)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_missing_and_damaged_bundle_json(tmp_path, bundle):
    with pytest.raises(BundleError, match="nowhere: no model bundle here"):
        load_bundle(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(empty)
    (bundle / BUNDLE_JSON).write_text("{ half written")
    with pytest.raises(BundleError, match="damaged"):
        load_bundle(bundle)


def test_missing_listed_file(bundle):
    (bundle / "cam_head.npz").unlink()
    with pytest.raises(BundleError, match="cam_head.npz: listed in bundle.json but missing"):
        load_bundle(bundle)


@pytest.mark.slow
def test_real_bundle_verifies_and_a_flipped_byte_is_refused(bundle_dir, tmp_path):
    assert load_bundle(bundle_dir).labels
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    model = copy / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(copy)
