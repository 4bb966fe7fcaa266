"""ONNX -> TensorFlow (onnx2tf, offline) -> TFLite fp32 and full-integer int8.

onnx2tf converts the float-input ONNX variant (convert.export) into a Keras model in memory
(``disable_model_save``: no SavedModel, no float16 model is written). onnx2tf would download a
sample-image file unless one is in its working directory, so we write that file ourselves from
the calibration films (20×128×128×3 float32 in [0, 1], its own format) and run it there.

* fp32: a ``uint8`` input cast to float in front of the Keras model (the same input contract
  as the int8 model; the cast is a float-model op and harmless there).
* int8: TFLiteConverter with the calibration films as representative dataset, builtin int8 ops
  only, ``uint8`` input. The calibration range of the input is forced to include 0 and 255, so
  the input quantisation is scale 1, zero point 0: raw pixels go in unchanged. Outputs stay
  float32 (a DEQUANTIZE at the end, which the Edge TPU leaves to the CPU after the graph).
  ``per-channel`` (default) or ``per-tensor`` weight quantisation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.runtime import usable_cores

__all__ = ["QUANTIZATIONS", "keras_from_onnx", "tflite_run", "to_fp32_tflite", "to_int8_tflite", "write_onnx2tf_sample"]

ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
QUANTIZATIONS = {"per-channel": {"disable_per_channel": False}, "per-tensor": {"disable_per_channel": True}}


def write_onnx2tf_sample(images: np.ndarray, folder: Path) -> Path:
    """onnx2tf's test-image file, from our films (cycled to 20), so it never downloads one."""
    from PIL import Image

    picks = [images[i % len(images)] for i in range(20)]
    small = np.stack([np.asarray(Image.fromarray(img).resize((128, 128), Image.Resampling.BILINEAR)) for img in picks])
    path = Path(folder) / ONNX2TF_SAMPLE
    np.save(path, (small.astype(np.float32) / 255.0))
    return path


def keras_from_onnx(onnx_path: Path, workdir: Path, images: np.ndarray, verbose: bool = False):
    """onnx2tf in memory, in ``workdir`` (holding its sample file). Returns the Keras model."""
    if not verbose:  # TensorFlow's C++ log lines; read once, when TensorFlow is first imported
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnx2tf

    write_onnx2tf_sample(images, workdir)
    with contextlib.chdir(workdir), _quiet(verbose):
        return onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(workdir / "tf"),
                               keep_shape_absolutely_input_names=["pixels"], disable_model_save=True,
                               non_verbose=not verbose, verbosity="debug" if verbose else "error")


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    if verbose:
        yield
        return
    with open(Path("/dev/null"), "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _concrete(keras_model, input_dtype: str, size: int):
    import tensorflow as tf

    spec = tf.TensorSpec([1, size, size, 3], {"uint8": tf.uint8, "float32": tf.float32}[input_dtype], name="pixels")

    @tf.function(input_signature=[spec])
    def serve(pixels):
        outputs = keras_model(tf.cast(pixels, tf.float32))
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    return serve.get_concrete_function()


def _weights_only(keras_model):
    """What the converter saves with the function: a bare tf.Module tracking the model's variables.
    Handing it the Keras model itself makes TFLiteConverter serialise every layer's Keras metadata
    into its temporary SavedModel (deep copies of the config of ~1000 onnx2tf layers), which took
    over 80% of the conversion time; the graph and the variables saved are the same."""
    import tensorflow as tf

    module = tf.Module()
    module.weights = list(keras_model.variables)  # a Keras model or any tf.Module
    return module


def to_fp32_tflite(keras_model, size: int = 224) -> bytes:
    """fp32 TFLite with a uint8 NHWC input (cast to float inside)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete(keras_model, "uint8", size)],
                                                                _weights_only(keras_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def representative(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    """Calibration samples as float raw pixels; the first also carries a 0 and a 255 pixel so the
    input range is exactly [0, 255] (scale 1, zero point 0 on the uint8 input)."""
    for i, img in enumerate(images):
        x = img[None].astype(np.float32)
        if i == 0:
            x[0, 0, 0, :], x[0, 0, 1, :] = 0.0, 255.0
        yield [x]


def to_int8_tflite(keras_model, images: np.ndarray, quantization: str = "per-channel", size: int = 224) -> bytes:
    """Full-integer TFLite: uint8 input (raw pixels), int8 builtin ops, int8 outputs."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose one of {sorted(QUANTIZATIONS)}")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete(keras_model, "float32", size)],
                                                                _weights_only(keras_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = lambda: representative(images)
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    converter._experimental_disable_per_channel = QUANTIZATIONS[quantization]["disable_per_channel"]
    return converter.convert()


def tflite_run(path: str | Path, images: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores N×L, features N×H×W×C), dequantised to float32, for N×224×224×3 uint8 images. ``threads``
    defaults to this process's cores (the interpreter's own default is one): the outputs are the same bits
    whatever the count, and conversion's fidelity, guard and CAM runs take half the time on two cores."""
    from ai_edge_litert.interpreter import Interpreter

    threads = threads or usable_cores()
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    outs = sorted(interp.get_output_details(), key=lambda d: len(d["shape"]))  # scores (2-D), features (4-D)
    scores, feats = [], []
    for img in images:
        interp.set_tensor(inp["index"], _to_input(img[None], inp))
        interp.invoke()
        s, f = (_dequantize(interp.get_tensor(d["index"]), d) for d in outs)
        scores.append(s)
        feats.append(f)
    return np.concatenate(scores), np.concatenate(feats)


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if not scale:
        return x.astype(detail["dtype"])
    if detail["dtype"] == np.uint8 and scale == 1.0 and zero_point == 0:
        return x
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if not scale:
        return q.astype(np.float32)
    return ((q.astype(np.int64) - zero_point) * scale).astype(np.float32)
