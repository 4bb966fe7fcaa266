"""Run a bundle's TFLite model: raw uint8 pixels in, label scores and the CAM feature map out.

Shaped like pycoral's ``adapters/common.py``: free functions of a few lines that take the
interpreter first, quantisation made explicit, pure numpy apart from the interpreter calls.

- Interpreter: ``ai_edge_litert.interpreter``, else ``tflite_runtime.interpreter``; neither
  installed -> ``RuntimeMissingError`` with the install line.
- Device: ``cpu``; ``edgetpu`` (the bundle's Edge TPU model through ``load_delegate`` of the
  same interpreter module, never PyPI pycoral); ``auto`` uses the Edge TPU when the bundle has
  an Edge TPU model and ``libedgetpu`` loads, else the CPU, and says why in ``Model.notes``.
- Outputs are found by the tensor names in ``bundle.json["outputs"]`` for the model file, never
  by index or shape; a score output whose size is not the bundle's label count is refused.
- Quantised tensors: inputs are quantised from pixel values (raw pixels fed as they are when the
  input is uint8 with scale 1, zero point 0); outputs are dequantised with
  ``(q.astype(np.int64) - zero_point) * scale``.
- Scores: when bundle.json ``scoring.from`` is "features" (what convert writes), the reported
  scores are the activation (sigmoid, or softmax for one-vs-all) of the float head of
  ``cam_head.npz`` on the dequantised feature map: the int8 score output is quantised to 1/256
  steps, the float head on the int8 features is several times closer to the fp32 model. The
  int8 model's own score output stays in ``Prediction.model_scores``. The fp32 model runs the
  uncorrected head (``edge.cam.load_head(exact=True)``). "model" (or no ``scoring``): the
  model's score output.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import TASK_ACTIVATION, Bundle, load_bundle
from edge.cam import Head, head_logits, load_head
from edge.errors import BundleError, EdgeError, RuntimeMissingError

__all__ = ["DEVICES", "KINDS", "Model", "Prediction", "dequantize", "input_tensor", "open_model", "open_scan_models",
           "output_tensor", "quantize", "scores_from_logits", "set_input", "usable_cores"]

DEVICES = ("auto", "cpu", "edgetpu")
KINDS = ("int8", "fp32")

# Interpreter modules in order of preference, with the distribution that provides each.
_INTERPRETERS = (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime"))
_INSTALL_RUNTIME = "no TFLite interpreter installed: run `pip install ai-edge-litert` (or `pip install tflite-runtime`)"
_EDGETPU_LIB = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
_INSTALL_EDGETPU = ("install the Edge TPU runtime from Coral's apt repository (`sudo apt-get install libedgetpu1-std`, "
                    "see https://coral.ai/docs/accelerator/get-started) and plug in the accelerator, "
                    "or use --device cpu")


@dataclass(frozen=True)
class Prediction:
    """One film's model outputs: ``scores`` (L,) float32 as edge reports them, ``features`` (H, W, C)
    float32, invoke time, and ``model_scores``: the model's own score output (the same array as
    ``scores`` unless the bundle scores from the features)."""

    scores: np.ndarray
    features: np.ndarray
    invoke_ms: float
    model_scores: np.ndarray | None = None


# ---------------------------------------------------------------- pure numpy: quantisation

def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Real values -> ``dtype`` tensor values (widened, rounded, clipped); scale 0 means not quantised."""
    dtype = np.dtype(dtype)
    if not scale:
        return np.asarray(x).astype(dtype)
    q = np.rint(np.asarray(x, np.float64) / scale + zero_point)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Tensor values -> float32 real values; scale 0 means not quantised."""
    if not scale:
        return np.asarray(q).astype(np.float32)
    return ((np.asarray(q).astype(np.int64) - zero_point) * scale).astype(np.float32)


def _is_raw_pixels(dtype: np.dtype, scale: float, zero_point: int) -> bool:
    return np.dtype(dtype) == np.uint8 and abs(scale - 1.0) < 1e-6 and zero_point == 0


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """A 224×224×3 uint8 picture -> the input tensor value (batch of one) for ``detail``."""
    dtype, (scale, zero_point) = np.dtype(detail["dtype"]), detail["quantization"]
    if _is_raw_pixels(dtype, scale, zero_point):
        value = x
    elif dtype.kind == "f":
        value = x.astype(dtype)
    else:
        value = quantize(x, scale, zero_point, dtype)
    return value[None]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


ACTIVATIONS = {"sigmoid": _sigmoid, "softmax": _softmax}


def scores_from_logits(logits: np.ndarray, activation: str) -> np.ndarray:
    """Label scores (L,) float32 from the head's logits: "sigmoid" (multi-label) or "softmax" (one-vs-all)."""
    return ACTIVATIONS[activation](np.asarray(logits, np.float64)).astype(np.float32)


# ---------------------------------------------------------------- interpreter helpers

def input_tensor(interpreter: Any) -> dict:
    """The details of the model's single input tensor."""
    return interpreter.get_input_details()[0]


def output_tensor(interpreter: Any, name: str) -> dict:
    """The details of the output tensor called ``name``; KeyError listing the names when absent."""
    details = interpreter.get_output_details()
    for detail in details:
        if detail["name"] == name:
            return detail
    raise KeyError(f"no output tensor named {name!r}; the model's outputs are {[d['name'] for d in details]}")


def set_input(interpreter: Any, x: np.ndarray) -> None:
    """Quantise (if needed) and set the picture ``x`` as the model's input."""
    detail = input_tensor(interpreter)
    interpreter.set_tensor(detail["index"], _to_input(x, detail))


def get_output(interpreter: Any, detail: dict) -> np.ndarray:
    """An output tensor's first batch item, dequantised to float32."""
    scale, zero_point = detail["quantization"]
    return dequantize(interpreter.get_tensor(detail["index"])[0], scale, zero_point)


# ---------------------------------------------------------------- the model

@dataclass
class Model:
    """An interpreter ready to run one bundle's model. Build it with ``open_model``."""

    bundle: Bundle
    kind: str
    device: str
    runtime: str
    threads: int
    interpreter: Any = field(repr=False)
    notes: tuple[str, ...] = ()
    head: Head | None = field(default=None, repr=False)  # set when the bundle scores from the features
    _input: dict = field(init=False, repr=False)
    _scores: dict = field(init=False, repr=False)
    _features: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._input, self._scores, self._features = _check_model(self.interpreter, self.bundle, self.file_kind)

    @property
    def file_kind(self) -> str:
        """The bundle's ``models`` key of the file running: "edgetpu" on the Edge TPU, else ``kind``."""
        return "edgetpu" if self.device == "edgetpu" else self.kind

    @property
    def model_file(self) -> Path:
        return self.bundle.model_path(self.file_kind)

    @property
    def scores_from(self) -> str:
        """"features" (the float head on the feature map) or "model" (the model's score output)."""
        return "features" if self.head is not None else "model"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self._input["shape"][1:])

    def predict(self, x: np.ndarray) -> Prediction:
        """Run one preprocessed picture (``edge.preprocess.preprocess``: H×W×3 uint8)."""
        if x.dtype != np.uint8 or x.shape != self.input_shape:
            raise ValueError(f"expected a uint8 picture of shape {self.input_shape}, got {x.dtype} {x.shape}")
        set_input(self.interpreter, x)
        start = time.perf_counter()
        self.interpreter.invoke()
        invoke_ms = (time.perf_counter() - start) * 1000.0
        model_scores = get_output(self.interpreter, self._scores).reshape(-1)
        features = get_output(self.interpreter, self._features)
        scores = model_scores
        if self.head is not None:
            scores = scores_from_logits(head_logits(self.head, features), self.bundle.spec["scoring"]["activation"])
        return Prediction(scores=scores, features=features, invoke_ms=invoke_ms, model_scores=model_scores)

    def twin(self, threads: int = 1) -> Model:
        """Another interpreter of this model on the CPU, on ``threads`` threads: ``edge.scan`` scores films side by
        side on several (``open_scan_models``). The Edge TPU takes one interpreter: no twin there."""
        if self.device != "cpu":
            raise EdgeError(f"a second interpreter runs on the CPU only, not on {self.device}")
        module, _ = _interpreter_module()
        interpreter = _make_interpreter(module, self.model_file, threads, None)
        return Model(bundle=self.bundle, kind=self.kind, device=self.device, runtime=self.runtime, threads=threads,
                     interpreter=interpreter, notes=self.notes, head=self.head)


def _check_model(interpreter: Any, bundle: Bundle, kind: str) -> tuple[dict, dict, dict]:
    """The input, scores and features tensor details, checked against bundle.json."""
    model_file = bundle.model_path(kind)
    names = bundle.spec["outputs"].get(model_file.name)
    if not isinstance(names, dict) or not {"scores", "features"} <= set(names):
        raise BundleError(f"{bundle.path / 'bundle.json'}: 'outputs' does not name the scores and features "
                          f"tensors of {model_file.name}")
    try:
        scores, features = output_tensor(interpreter, names["scores"]), output_tensor(interpreter, names["features"])
    except KeyError as err:
        raise BundleError(f"{model_file}: {err.args[0]} (bundle.json 'outputs' names {names})") from None
    inp = input_tensor(interpreter)
    if [int(n) for n in inp["shape"]] != list(bundle.spec["input"]["shape"]):
        raise BundleError(f"{model_file}: input shape {list(inp['shape'])} is not bundle.json's "
                          f"{bundle.spec['input']['shape']}")
    n_scores, n_labels = int(np.prod(scores["shape"][1:])), len(bundle.labels)
    if n_scores != n_labels:
        raise BundleError(f"{model_file}: the model outputs {n_scores} scores but bundle.json lists {n_labels} "
                          f"labels; the bundle.json belongs to another model, convert again")
    feature_shape = [int(n) for n in features["shape"][1:]]
    if feature_shape != list(bundle.spec["cam"]["feature_shape"]):
        raise BundleError(f"{model_file}: feature map shape {feature_shape} is not bundle.json's cam.feature_shape "
                          f"{bundle.spec['cam']['feature_shape']}")
    return inp, scores, features


def _scoring_head(bundle: Bundle, kind: str) -> Head | None:
    """The float head that computes the scores from the features, or None to use the score output."""
    if bundle.scores_from != "features":
        return None
    activation = bundle.spec["scoring"].get("activation")
    if activation != TASK_ACTIVATION.get(bundle.task):
        raise BundleError(f"{bundle.path / 'bundle.json'}: scoring activation {activation!r} does not fit the "
                          f"{bundle.task!r} task (expected {TASK_ACTIVATION.get(bundle.task)!r})")
    return load_head(bundle, exact=kind == "fp32")


# ---------------------------------------------------------------- opening

def _interpreter_module() -> tuple[Any, str]:
    """The first installed interpreter module and its 'distribution version' string."""
    for module_name, dist in _INTERPRETERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            return module, f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            return module, dist
    raise RuntimeMissingError(_INSTALL_RUNTIME)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _library_loads(library: str) -> bool:
    """Whether the shared library loads (load_delegate on a missing library prints noise to stderr)."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def _edgetpu_delegate(module: Any) -> tuple[Any | None, str]:
    """(delegate, "") when the Edge TPU runtime loads, else (None, why not)."""
    library = _EDGETPU_LIB.get(platform.system(), _EDGETPU_LIB["Linux"])
    if not _library_loads(library):
        return None, f"the Edge TPU runtime {library} is not installed"
    try:
        return module.load_delegate(library), ""
    except (OSError, ValueError, RuntimeError) as err:
        return None, f"the Edge TPU delegate {library} did not load, is the accelerator plugged in? ({err})"


def _choose_device(module: Any, bundle: Bundle, device: str, kind: str) -> tuple[str, Any | None, list[str]]:
    """(device used, delegate or None, notes) for the requested ``device``."""
    if device == "cpu":
        return "cpu", None, []
    has_tpu_model = bundle.model_path("edgetpu") is not None
    if device == "edgetpu":
        if kind != "int8":
            raise EdgeError(f"the Edge TPU runs only the int8 model, not {kind}; use --device cpu")
        if not has_tpu_model:
            raise BundleError(f"{bundle.path}: the bundle has no Edge TPU model; use --device cpu, or convert on "
                              f"a machine with edgetpu_compiler")
        delegate, why = _edgetpu_delegate(module)
        if delegate is None:
            raise RuntimeMissingError(f"--device edgetpu: {why}; {_INSTALL_EDGETPU}")
        return "edgetpu", delegate, []
    if kind != "int8" or not has_tpu_model:
        return "cpu", None, []
    delegate, why = _edgetpu_delegate(module)
    if delegate is None:
        return "cpu", None, [f"running on the CPU: the bundle has an Edge TPU model but {why}"]
    return "edgetpu", delegate, []


def _make_interpreter(module: Any, path: Path, threads: int, delegate: Any | None) -> Any:
    delegates = [delegate] if delegate is not None else None
    try:
        interpreter = module.Interpreter(model_path=str(path), num_threads=threads, experimental_delegates=delegates)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise BundleError(f"{path}: the interpreter cannot load this model ({err})") from None
    return interpreter


def open_model(bundle: Bundle | str | Path, device: str = "auto", threads: int | None = None,
               kind: str = "int8") -> Model:
    """Verify the bundle (when given a folder), pick interpreter and device, and load the model."""
    if device not in DEVICES:
        raise EdgeError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if kind not in KINDS:
        raise EdgeError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    if threads is not None and threads < 1:
        raise EdgeError(f"threads must be at least 1, got {threads}")
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    module, runtime = _interpreter_module()
    used, delegate, notes = _choose_device(module, bundle, device, kind)
    if bundle.model_path(kind) is None:
        raise BundleError(f"{bundle.path}: the bundle has no {kind} model")
    threads = threads or usable_cores()
    interpreter = _make_interpreter(module, bundle.model_path("edgetpu" if used == "edgetpu" else kind), threads,
                                    delegate)
    model = Model(bundle=bundle, kind=kind, device=used, runtime=runtime, threads=threads, interpreter=interpreter,
                  notes=tuple(notes))  # checks the model against bundle.json first
    model.head = _scoring_head(bundle, kind)
    return model


def open_scan_models(bundle: Bundle | str | Path, device: str = "auto", threads: int | None = None) -> list[Model]:
    """The interpreters a batch scan scores with, each on its own thread (``edge.scan``).

    ``threads`` given: one interpreter on that many threads. By default one interpreter per core, each on one
    thread, so that films are scored side by side instead of one film's layers being split between the cores:
    the split waits at every layer for its slowest thread, and with the decode workers on the same cores one of
    them is often preempted (issue 16: on 2 cores, bare invokes 21.1 films/s against 19.0 for one interpreter on
    both). On the Edge TPU one interpreter (the accelerator takes one), on one thread for what the TPU does not
    run; the other cores decode films. A stand-in model without ``twin`` scores alone. When another interpreter
    cannot be made (memory), the scan goes on with those made and the first model's ``notes`` say so.
    """
    first = open_model(bundle, device=device, threads=threads or 1)
    if threads is not None or first.device != "cpu" or not hasattr(first, "twin"):
        return [first]
    models = [first]
    for _ in range(usable_cores() - 1):
        try:
            models.append(first.twin(1))
        except BundleError as err:  # e.g. no memory left for another: score on those made, and say so
            first.notes += (f"scoring on {len(models)} interpreter(s), not one per core: {err}",)
            break
    return models

