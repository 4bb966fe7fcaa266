"""Fixtures for the conversion tests: a small NIH-layout folder of real films, checkpoints to order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def _filtered(src: Path, dst: Path, names: set[str]) -> None:
    lines = src.read_bytes().splitlines(keepends=True)
    dst.write_bytes(b"".join([lines[0]] + [line for line in lines[1:] if line.split(b",")[0].decode() in names]))


@pytest.fixture(scope="session")
def nih_small(test_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every film of shared/data/nih-images (46; 30 train_val, 16 test) in NIH layout, as symlinks."""
    root = tmp_path_factory.mktemp("nih-small")
    (root / "images").mkdir()
    names = {p.name for p in (test_data / "nih-images").glob("*.png")}
    for name in names:
        os.symlink(test_data / "nih-images" / name, root / "images" / name)
    _filtered(test_data / "nih" / "Data_Entry_2017_v2020.csv", root / "Data_Entry_2017_v2020.csv", names)
    for meta in ("BBox_List_2017.csv", "train_val_list.txt", "test_list.txt"):
        os.symlink(test_data / "nih" / meta, root / meta)
    return root


def write_checkpoint(path: Path, *, labels: list[str] | None = None, head: str = "chexnet", meta: dict | None = None,
                     arch: str | None = None) -> Path:
    """A checkpoint of an untrained DenseNet-121; ``meta`` overrides description keys, ``arch`` fakes another."""
    from safetensors.torch import save

    from train.checkpoint import save_checkpoint
    from train.labels import LABELS
    from train.model import build_model

    labels = list(labels or LABELS)
    model = build_model(num_classes=len(labels), head=head).eval()
    full = {"task": "multilabel", "labels": labels, "thresholds": {name: 0.5 for name in labels},
            "data": {"kind": "nih", "task": "all", "val_fraction": 0.5, "seed": 0, "split": "official"},
            "config": {"note": "untrained test checkpoint"}, "metrics": {}, **(meta or {})}
    save_checkpoint(path, model, full)
    if arch is not None:
        from train.checkpoint import load_checkpoint

        state, described = load_checkpoint(path)
        path.write_bytes(save(state, metadata={"xray": json.dumps({**described, "arch": arch})}))
    return path


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "untrained.safetensors")


def _tiny_tf_model(size: int):
    """A small float network shaped like ours: NHWC raw pixels -> ([1, 3] scores, [1, 4, 4, 8] features)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.k1 = tf.constant(rng.normal(0, 0.1, (3, 3, 3, 8)).astype(np.float32))
            self.k2 = tf.constant(rng.normal(0, 0.1, (1, 1, 16, 8)).astype(np.float32))
            self.w = tf.constant(rng.normal(0, 0.3, (8, 3)).astype(np.float32))

        def __call__(self, x):
            x = (x - 120.0) / 60.0
            a = tf.nn.relu(tf.nn.conv2d(x, self.k1, 2, "SAME"))
            a = tf.nn.max_pool2d(tf.pad(a, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, "VALID")
            a = tf.concat([a, tf.nn.avg_pool2d(a, 1, 1, "VALID")], axis=3)
            a = tf.nn.relu(tf.nn.conv2d(a, self.k2, 2, "SAME"))
            scores = tf.sigmoid(tf.matmul(tf.reduce_mean(a, axis=[1, 2]), self.w))
            return [scores, a]

    return Tiny()


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """int8 and fp32 .tflite files of a tiny network, made by convert.tflite's own converters."""
    import numpy as np

    from convert.tflite import to_fp32_tflite, to_int8_tflite

    size = 32
    model = _tiny_tf_model(size)
    rng = np.random.default_rng(1)
    images = rng.integers(20, 230, (8, size, size, 3), dtype=np.uint8)
    root = tmp_path_factory.mktemp("tiny")
    paths = {"int8": root / "model_int8.tflite", "fp32": root / "model_fp32.tflite", "images": root / "images.npy"}
    paths["int8"].write_bytes(to_int8_tflite(model, images, size=size))
    paths["fp32"].write_bytes(to_fp32_tflite(model, size=size))
    np.save(paths["images"], images)
    return paths
