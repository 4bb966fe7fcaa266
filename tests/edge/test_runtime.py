"""The TFLite runtime: quantisation helpers, output lookup by name, checks against bundle.json, devices.

Fast tests drive ``open_model`` with a fake interpreter module (the same API as ai_edge_litert's);
the slow ones run the real session bundle.
"""

from __future__ import annotations

import numpy as np
import pytest

import edge.runtime as runtime
from edge.bundle import Bundle
from edge.errors import BundleError, EdgeError, RuntimeMissingError
from edge.preprocess import preprocess
from edge.runtime import dequantize, open_model, quantize

LABELS = ("A", "B", "C")
FEATURES = (7, 7, 8)


# ---------------------------------------------------------------- pure functions

def test_quantize_rounds_clips_and_widens():
    x = np.array([-3.0, 0.0, 0.26, 1.74, 300.0])
    np.testing.assert_array_equal(quantize(x, 0.5, 10, np.uint8), [4, 10, 11, 13, 255])
    np.testing.assert_array_equal(quantize(np.array([0, 255]), 1.0, -128, np.int8), [-128, 127])
    assert quantize(np.array([1.5]), 0.0, 0, np.float32).dtype == np.float32  # scale 0: not quantised


def test_dequantize_widens_before_subtracting_the_zero_point():
    q = np.array([0, 128, 255], np.uint8)
    out = dequantize(q, 0.5, 128)
    np.testing.assert_array_equal(out, [-64.0, 0.0, 63.5])  # uint8 arithmetic would wrap 0 - 128 to 128
    assert out.dtype == np.float32
    np.testing.assert_array_equal(dequantize(np.array([-128, 127], np.int8), 2.0, -128), [0.0, 510.0])
    np.testing.assert_array_equal(dequantize(np.array([0.25], np.float32), 0.0, 0), [0.25])


def test_quantize_then_dequantize_is_within_half_a_step():
    x = np.random.default_rng(0).uniform(-1, 1, 1000)
    back = dequantize(quantize(x, 1 / 100, 0, np.int8), 1 / 100, 0)
    assert np.abs(back - x).max() <= 0.005 + 1e-6


# ---------------------------------------------------------------- a fake interpreter module

def _detail(name, index, shape, dtype, quant=(0.0, 0)):
    return {"name": name, "index": index, "shape": np.array(shape), "dtype": dtype, "quantization": quant}


class FakeInterpreter:
    """Outputs listed features first, so a runtime that takes outputs by index would swap them."""

    input_dtype, input_quant = np.uint8, (1.0, 0)
    score_count = len(LABELS)
    feature_shape = FEATURES
    made: list = []

    def __init__(self, model_path=None, num_threads=None, experimental_delegates=None):
        self.model_path, self.num_threads, self.delegates = model_path, num_threads, experimental_delegates
        self.inputs = {}
        FakeInterpreter.made.append(self)

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [_detail("pixels", 0, [1, 224, 224, 3], self.input_dtype, self.input_quant)]

    def get_output_details(self):
        return [_detail("features_out", 7, [1, *self.feature_shape], np.int8, (0.5, -128)),
                _detail("scores_out", 9, [1, self.score_count], np.uint8, (1 / 256, 0))]

    def set_tensor(self, index, value):
        self.inputs[index] = value

    def invoke(self):
        pass

    def get_tensor(self, index):
        if index == 9:
            return np.array([[0, 128, 255]], np.uint8)
        return np.full((1, *FEATURES), -126, np.int8)


class FakeModule:
    Interpreter = FakeInterpreter

    def __init__(self, delegate_ok=False):
        self.delegate_ok, self.loaded = delegate_ok, []

    def load_delegate(self, library, options=None):
        self.loaded.append(library)
        if not self.delegate_ok:
            raise ValueError(f"Failed to load delegate from {library}")
        return "tpu-delegate"


@pytest.fixture
def fake(monkeypatch):
    """Install a fake interpreter module; returns it (set ``delegate_ok`` to emulate an Edge TPU)."""
    module = FakeModule()
    FakeInterpreter.made = []
    monkeypatch.setattr(runtime, "_interpreter_module", lambda: (module, "fake-litert 9.9"))
    monkeypatch.setattr(runtime, "_library_loads", lambda name: module.delegate_ok)
    return module


def _bundle(tmp_path, edgetpu: bool = False, labels=LABELS) -> Bundle:
    models = {"int8": "model_int8.tflite", "fp32": None, "edgetpu": "model_int8_edgetpu.tflite" if edgetpu else None}
    names = {"scores": "scores_out", "features": "features_out"}
    spec = {"task": "multilabel", "labels": list(labels), "thresholds": dict.fromkeys(labels, 0.5),
            "input": {"shape": [1, 224, 224, 3], "dtype": "uint8"}, "models": models,
            "outputs": {name: names for name in models.values() if name},
            "cam": {"head": "chexnet", "params": "cam_head.npz", "feature_shape": list(FEATURES)}}
    return Bundle(path=tmp_path, spec=spec)


def _picture() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)


# ---------------------------------------------------------------- open_model and predict

def test_predict_finds_outputs_by_name_and_dequantises(tmp_path, fake):
    model = open_model(_bundle(tmp_path), device="cpu", threads=3)
    x = _picture()
    pred = model.predict(x)
    np.testing.assert_allclose(pred.scores, [0.0, 0.5, 255 / 256])
    assert pred.scores.dtype == np.float32 and pred.scores.shape == (3,)
    assert pred.features.shape == FEATURES and np.all(pred.features == 1.0)  # (-126 + 128) * 0.5
    assert pred.invoke_ms >= 0
    interp = FakeInterpreter.made[-1]
    assert interp.inputs[0].shape == (1, 224, 224, 3) and np.array_equal(interp.inputs[0][0], x)  # raw pixels
    assert interp.num_threads == 3 and interp.delegates is None
    assert interp.model_path == str(tmp_path / "model_int8.tflite")
    assert (model.device, model.kind, model.runtime, model.notes) == ("cpu", "int8", "fake-litert 9.9", ())


@pytest.mark.parametrize(("dtype", "quant", "expected"), [
    (np.int8, (1.0, -128), lambda x: (x.astype(int) - 128).astype(np.int8)),
    (np.uint8, (2.0, 0), lambda x: np.rint(x / 2).astype(np.uint8)),
    (np.float32, (0.0, 0), lambda x: x.astype(np.float32)),
])
def test_input_is_quantised_to_the_input_tensor(tmp_path, fake, monkeypatch, dtype, quant, expected):
    monkeypatch.setattr(FakeInterpreter, "input_dtype", dtype)
    monkeypatch.setattr(FakeInterpreter, "input_quant", quant)
    x = _picture()
    open_model(_bundle(tmp_path), device="cpu").predict(x)
    fed = FakeInterpreter.made[-1].inputs[0][0]
    assert fed.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fed, expected(x))


def test_predict_refuses_a_picture_of_the_wrong_shape_or_type(tmp_path, fake):
    model = open_model(_bundle(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="224, 224, 3"):
        model.predict(np.zeros((224, 224), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        model.predict(np.zeros((224, 224, 3), np.float32))


def _scoring_bundle(tmp_path, task="multilabel", activation="sigmoid") -> Bundle:
    """The fake bundle scoring from the features, with a chexnet head whose bias was corrected by -1."""
    bundle = _bundle(tmp_path)
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(len(LABELS), FEATURES[-1])).astype(np.float32)
    exact_bias = rng.normal(size=len(LABELS)).astype(np.float32)
    np.savez(tmp_path / "cam_head.npz", weight=weight, bias=exact_bias - 1, exact_bias=exact_bias)
    bundle.spec.update(task=task, files={"cam_head.npz": "-"},
                       scoring={"from": "features", "activation": activation, "params": "cam_head.npz"})
    bundle.spec["models"]["fp32"] = "model_fp32.tflite"
    bundle.spec["outputs"]["model_fp32.tflite"] = bundle.spec["outputs"]["model_int8.tflite"]
    return bundle, weight, exact_bias


def test_scores_come_from_the_float_head_on_the_features_when_the_bundle_says_so(tmp_path, fake):
    bundle, weight, exact_bias = _scoring_bundle(tmp_path)
    pred = open_model(bundle, device="cpu").predict(_picture())
    logits = weight @ np.ones(FEATURES[-1]) + exact_bias - 1  # the fake's features are all 1.0
    np.testing.assert_allclose(pred.scores, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    assert pred.scores.dtype == np.float32
    np.testing.assert_allclose(pred.model_scores, [0.0, 0.5, 255 / 256])  # the int8 output, kept apart
    fp32 = open_model(bundle, device="cpu", kind="fp32").predict(_picture())  # the uncorrected head
    np.testing.assert_allclose(fp32.scores, 1 / (1 + np.exp(-(logits + 1))), rtol=1e-6)


def test_one_vs_all_scores_from_the_features_are_a_softmax(tmp_path, fake):
    bundle, _, _ = _scoring_bundle(tmp_path, task="one_vs_all", activation="softmax")
    scores = open_model(bundle, device="cpu").predict(_picture()).scores
    assert scores.sum() == pytest.approx(1.0, abs=1e-6) and np.all(scores > 0)


def test_a_scoring_activation_that_does_not_fit_the_task_is_refused(tmp_path, fake):
    bundle, _, _ = _scoring_bundle(tmp_path, task="one_vs_all", activation="sigmoid")
    with pytest.raises(BundleError, match="activation 'sigmoid' does not fit the 'one_vs_all' task"):
        open_model(bundle, device="cpu")


def test_without_scoring_the_model_score_output_is_reported(tmp_path, fake):
    pred = open_model(_bundle(tmp_path), device="cpu").predict(_picture())
    assert open_model(_bundle(tmp_path), device="cpu").scores_from == "model"
    np.testing.assert_array_equal(pred.scores, pred.model_scores)


def test_a_label_list_that_does_not_match_the_model_is_refused(tmp_path, fake):
    with pytest.raises(BundleError, match="outputs 3 scores but bundle.json lists 4 labels"):
        open_model(_bundle(tmp_path, labels=("A", "B", "C", "D")), device="cpu")


def test_an_output_name_missing_from_the_model_is_refused(tmp_path, fake):
    bundle = _bundle(tmp_path)
    bundle.spec["outputs"]["model_int8.tflite"] = {"scores": "Identity", "features": "features_out"}
    with pytest.raises(BundleError, match="'Identity'.*scores_out"):
        open_model(bundle, device="cpu")


def test_a_model_file_without_output_names_is_refused(tmp_path, fake):
    bundle = _bundle(tmp_path)
    del bundle.spec["outputs"]["model_int8.tflite"]
    with pytest.raises(BundleError, match="does not name the scores and features tensors of model_int8.tflite"):
        open_model(bundle, device="cpu")


def test_a_feature_map_of_another_shape_is_refused(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(FakeInterpreter, "feature_shape", (1024, 7, 7))
    with pytest.raises(BundleError, match="feature map shape"):
        open_model(_bundle(tmp_path), device="cpu")


def test_bad_options_are_refused(tmp_path, fake):
    for kwargs, message in [({"device": "gpu"}, "unknown device"), ({"kind": "int4"}, "unknown model kind"),
                            ({"threads": 0}, "threads"), ({"kind": "fp32"}, "no fp32 model")]:
        with pytest.raises(EdgeError, match=message):
            open_model(_bundle(tmp_path), **kwargs)


def test_no_interpreter_installed_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "_INTERPRETERS", (("no_such_litert_module.interpreter", "no-such-litert"),))
    with pytest.raises(RuntimeMissingError, match="pip install ai-edge-litert"):
        open_model(_bundle(tmp_path), device="cpu")


# ---------------------------------------------------------------- devices

def test_edgetpu_without_the_runtime_names_libedgetpu_and_the_package(tmp_path, fake):
    with pytest.raises(RuntimeMissingError, match=r"libedgetpu.*libedgetpu1-std"):
        open_model(_bundle(tmp_path, edgetpu=True), device="edgetpu")


def test_edgetpu_without_an_edgetpu_model_is_refused(tmp_path, fake):
    fake.delegate_ok = True
    with pytest.raises(BundleError, match="no Edge TPU model"):
        open_model(_bundle(tmp_path), device="edgetpu")
    with pytest.raises(EdgeError, match="only the int8 model"):
        open_model(_bundle(tmp_path, edgetpu=True), device="edgetpu", kind="fp32")


def test_auto_falls_back_to_the_cpu_and_says_so(tmp_path, fake):
    model = open_model(_bundle(tmp_path, edgetpu=True), device="auto")
    assert model.device == "cpu" and model.model_file == tmp_path / "model_int8.tflite"
    assert len(model.notes) == 1 and "CPU" in model.notes[0] and "libedgetpu" in model.notes[0]
    assert FakeInterpreter.made[-1].delegates is None


def test_auto_and_edgetpu_use_the_delegate_and_the_edgetpu_model(tmp_path, fake):
    fake.delegate_ok = True
    for device in ("auto", "edgetpu"):
        model = open_model(_bundle(tmp_path, edgetpu=True), device=device)
        interp = FakeInterpreter.made[-1]
        assert (model.device, model.kind, model.notes) == ("edgetpu", "int8", ())
        assert interp.delegates == ["tpu-delegate"] and interp.model_path.endswith("model_int8_edgetpu.tflite")
    assert fake.loaded and all("edgetpu" in lib for lib in fake.loaded)


def test_auto_without_an_edgetpu_model_runs_on_the_cpu_silently(tmp_path, fake):
    fake.delegate_ok = True
    model = open_model(_bundle(tmp_path), device="auto")
    assert (model.device, model.notes, fake.loaded) == ("cpu", (), [])


# ---------------------------------------------------------------- the scan's interpreters

def test_a_scan_scores_on_one_single_thread_interpreter_per_core(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 3)
    models = runtime.open_scan_models(_bundle(tmp_path), device="cpu")
    made = FakeInterpreter.made[-3:]
    assert len(models) == 3 and len({id(m.interpreter) for m in models}) == 3
    assert [m.interpreter for m in models] == made and all(i.num_threads == 1 and i.delegates is None for i in made)
    assert all(m.threads == 1 and m.head is models[0].head and m.bundle is models[0].bundle for m in models)
    np.testing.assert_array_equal(models[2].predict(_picture()).scores, models[0].predict(_picture()).scores)
    (one,) = runtime.open_scan_models(_bundle(tmp_path), device="cpu", threads=2)  # --threads: one interpreter
    assert one.threads == 2 and FakeInterpreter.made[-1].num_threads == 2


def test_a_scan_goes_on_with_the_interpreters_it_could_make(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    made = []

    def twin(self, threads=1):
        if made:
            raise BundleError("model_int8.tflite: the interpreter cannot load this model (out of memory)")
        made.append(threads)
        return self

    monkeypatch.setattr(runtime.Model, "twin", twin)
    models = runtime.open_scan_models(_bundle(tmp_path), device="cpu")
    assert len(models) == 2 and "scoring on 2 interpreter(s)" in models[0].notes[-1]
    assert "out of memory" in models[0].notes[-1]


def test_a_scan_on_the_edgetpu_has_one_interpreter(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    fake.delegate_ok = True
    (model,) = runtime.open_scan_models(_bundle(tmp_path, edgetpu=True), device="auto")
    assert model.device == "edgetpu" and FakeInterpreter.made[-1].delegates == ["tpu-delegate"]
    with pytest.raises(EdgeError, match="CPU only"):
        model.twin()


# ---------------------------------------------------------------- the real bundle (slow)

def _phantom_film(phantom_set) -> np.ndarray:
    from PIL import Image

    name = (phantom_set / "test_list.txt").read_text().split()[0]
    return np.asarray(Image.open(next(phantom_set.rglob(name))).convert("L"))


_TO_SCORES = {"multilabel": lambda z: 1 / (1 + np.exp(-z)), "one_vs_all": lambda z: np.exp(z) / np.exp(z).sum()}


@pytest.mark.slow
def test_the_session_bundle_runs_and_its_cam_head_is_the_models_head(bundle_dir, phantom_set):
    from edge.cam import head_logits, load_head

    x = preprocess(_phantom_film(phantom_set))
    int8 = open_model(bundle_dir, device="auto", threads=1)
    assert int8.device == "cpu" and int8.kind == "int8" and int8.runtime.startswith("ai-edge-litert ")
    pred = int8.predict(x)
    labels, to_scores = int8.bundle.labels, _TO_SCORES[int8.bundle.task]
    assert pred.scores.shape == (len(labels),) and np.all((pred.scores >= 0) & (pred.scores <= 1))
    assert pred.features.shape == tuple(int8.bundle.spec["cam"]["feature_shape"]) and pred.features.min() >= 0
    exact = load_head(int8.bundle, exact=True)  # the PyTorch head, for the fp32 model's features
    fp32 = open_model(bundle_dir, device="cpu", kind="fp32").predict(x)
    np.testing.assert_allclose(to_scores(head_logits(exact, fp32.features)), fp32.model_scores, atol=1e-4)
    np.testing.assert_allclose(fp32.scores, fp32.model_scores, atol=1e-4)
    assert int8.bundle.scores_from == "features"  # the int8 model's scores: its bias-corrected float head
    np.testing.assert_allclose(to_scores(head_logits(load_head(int8.bundle), pred.features)), pred.scores, atol=1e-6)
    assert np.abs(pred.model_scores - pred.scores).mean() < 0.03
    assert np.abs(pred.scores - fp32.scores).mean() < 0.03
    assert np.corrcoef(pred.features.ravel(), fp32.features.ravel())[0, 1] > 0.9
