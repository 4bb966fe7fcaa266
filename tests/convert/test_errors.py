"""``python -m convert`` refuses bad inputs with one clear line and exit code 2, writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from convert.__main__ import main
from tests.convert.conftest import write_checkpoint


def _run(capsys, ckpt: Path, data: Path, out: Path, *extra: str) -> tuple[int, str]:
    rc = main([str(ckpt), "--data", str(data), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert not out.exists()
    return rc, err


def test_missing_checkpoint(capsys, tmp_path):
    rc, err = _run(capsys, tmp_path / "nope.safetensors", tmp_path, tmp_path / "b")
    assert rc == 2
    assert err.strip() == f"convert: error: {tmp_path / 'nope.safetensors'}: checkpoint not found"


def test_corrupt_checkpoint(capsys, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    rc, err = _run(capsys, bad, tmp_path, tmp_path / "b")
    assert rc == 2 and "bad.safetensors: not a readable safetensors checkpoint" in err
    assert len(err.strip().splitlines()) == 1


def test_other_architecture(capsys, tmp_path):
    ckpt = write_checkpoint(tmp_path / "resnet.safetensors", arch="resnet50")
    rc, err = _run(capsys, ckpt, tmp_path, tmp_path / "b")
    assert rc == 2 and "resnet.safetensors" in err and "resnet50" in err


def test_other_label_set(capsys, tmp_path, nih_small):
    ckpt = write_checkpoint(tmp_path / "pets.safetensors", labels=["Cat", "Dog"])
    rc, err = _run(capsys, ckpt, nih_small, tmp_path / "b")
    assert rc == 2 and "another label set" in err and "'Cat', 'Dog'" in err


def test_other_preprocessing(capsys, tmp_path):
    from edge.preprocess import PREPROCESS

    ckpt = write_checkpoint(tmp_path / "small.safetensors", meta={"preprocess": {**PREPROCESS, "size": 128}})
    rc, err = _run(capsys, ckpt, tmp_path, tmp_path / "b")
    assert rc == 2 and "retrain at 224 px" in err


def test_too_few_calibration_films(capsys, tmp_path, nih_small, untrained_checkpoint):
    rc, err = _run(capsys, untrained_checkpoint, nih_small, tmp_path / "b", "--calibration", "4")
    assert rc == 2 and "--calibration 4: too few calibration films; at least 8" in err


def test_data_folder_missing(capsys, tmp_path, untrained_checkpoint):
    rc, err = _run(capsys, untrained_checkpoint, tmp_path / "nodata", tmp_path / "b")
    assert rc == 2 and "nodata" in err


def test_existing_bundle_without_force(capsys, tmp_path, untrained_checkpoint):
    out = tmp_path / "b"
    out.mkdir()
    rc = main([str(untrained_checkpoint), "--data", str(tmp_path), "--out", str(out)])
    assert rc == 2 and "already exists; pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--calibration", "--heldout"])
def test_non_positive_counts(capsys, tmp_path, untrained_checkpoint, option):
    rc, err = _run(capsys, untrained_checkpoint, tmp_path, tmp_path / "b", option, "0")
    assert rc == 2 and f"{option} must be a positive number" in err
