"""convert.tflite's converters on a tiny network: uint8 raw-pixel input, int8 everything, close to fp32."""

from __future__ import annotations

import numpy as np

from convert.bundle import tflite_io
from convert.tflite import ONNX2TF_SAMPLE, tflite_run, write_onnx2tf_sample


def test_int8_input_takes_raw_pixels_one_to_one(tiny_tflite):
    io = tflite_io(tiny_tflite["int8"])
    assert io["input"]["dtype"] == "uint8"
    assert io["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert io["scores"]["dtype"] == "int8" and io["features"]["dtype"] == "int8"
    assert io["scores"]["shape"] == [1, 3] and io["features"]["shape"] == [1, 4, 4, 8]


def test_fp32_model_takes_uint8_too(tiny_tflite):
    io = tflite_io(tiny_tflite["fp32"])
    assert io["input"]["dtype"] == "uint8" and io["input"]["quantization"] is None
    assert io["scores"]["dtype"] == "float32"


def test_int8_scores_follow_fp32(tiny_tflite):
    images = np.load(tiny_tflite["images"])
    s8, f8 = tflite_run(tiny_tflite["int8"], images)
    s32, f32 = tflite_run(tiny_tflite["fp32"], images)
    assert s8.shape == s32.shape == (len(images), 3) and f8.dtype == np.float32
    assert np.abs(s8 - s32).max() < 0.05
    assert np.abs(f8 - f32).max() < 0.1 * max(1.0, float(np.abs(f32).max()))


def test_onnx2tf_sample_file_is_written_from_our_films(tmp_path):
    images = np.full((3, 224, 224, 3), 255, np.uint8)
    path = write_onnx2tf_sample(images, tmp_path)
    assert path.name == ONNX2TF_SAMPLE
    sample = np.load(path)
    assert sample.shape == (20, 128, 128, 3) and sample.dtype == np.float32
    assert float(sample.min()) == 1.0 == float(sample.max())


def test_the_thread_count_does_not_change_a_bit(bundle_dir):
    """Conversion runs its interpreters on every core; the session model's outputs are the same bits on one."""
    images = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    for name in ("model_int8.tflite", "model_fp32.tflite"):
        one, two = tflite_run(bundle_dir / name, images, threads=1), tflite_run(bundle_dir / name, images, threads=2)
        assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True)), name
