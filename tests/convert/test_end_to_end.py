"""The real DenseNet-121, trained briefly on phantoms, converted end to end offline (session ``bundle_dir``).

tests/conftest.py builds the bundle with ``python -m convert CKPT --data PHANTOMS --out ... --calibration 72``
under tests/offline.py, which refuses and logs every network attempt.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from convert.bundle import MODEL_FILES
from convert.fidelity import LIMITS
from edge.bundle import load_bundle
from train.phantoms import DRAWN_LABELS as DRAWN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


def test_int8_model_loads_with_litert_and_takes_raw_pixels(bundle):
    from ai_edge_litert.interpreter import Interpreter

    path = bundle.model_path("int8")
    assert path.stat().st_size <= 8.5e6
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, 224, 224, 3]
    scale, zero_point = inp["quantization"]
    assert scale == pytest.approx(1.0) and zero_point == 0
    assert bundle.spec["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    names = {d["name"] for d in interp.get_output_details()}
    assert set(bundle.output_names("int8").values()) == names


def test_int8_fidelity_within_the_default_limits(bundle):
    """Issue 4's limits on the scores edge reports, over enough held-out films that one swapped pair of
    a rare label cannot decide it (the fixture converts with relaxed limits so the other tests run)."""
    q = bundle.spec["fidelity"]["int8_vs_fp32"]
    assert q["films"] >= 150 and q["auroc_labels"] == 6
    assert min(q["per_label"][label]["positives"] for label in DRAWN) >= 10
    print(f"\nint8 vs fp32: mean |dAUROC| {q['mean_abs_dauroc']:.4f}, max |dscore| {q['max_abs_dscore']:.4f}")
    assert q["mean_abs_dauroc"] <= LIMITS["mean_abs_dauroc"][1]
    assert q["max_abs_dscore"] <= LIMITS["max_abs_dscore"][1]


def test_fidelity_report_and_float_paths_within_the_limits(bundle):
    fid = bundle.spec["fidelity"]
    q = fid["int8_vs_fp32"]
    assert q["films"] >= 8 and q["auroc_labels"] >= 1
    assert fid["onnx_vs_torch"]["films"] == fid["fp32_vs_onnx"]["films"] == 32
    assert fid["onnx_vs_torch"]["max_abs_dscore"] <= LIMITS["onnx_vs_torch"][1]
    assert fid["fp32_vs_onnx"]["max_abs_dscore"] <= 1e-3
    held = set(fid["heldout"]["names"])
    assert held and not held & set(bundle.spec["provenance"]["data"]["calibration"]["names"])


def test_compatibility_report_lists_every_op(bundle):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(bundle.model_path("int8")),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ops = [op["op_name"] for op in interp._get_ops_details()]
    report = json.loads((bundle.path / bundle.spec["edgetpu"]["report"]).read_text())
    assert [row["op"] for row in report["table"]] == ops
    assert bundle.spec["edgetpu"]["ops"] == len(ops)
    assert "PADV2" not in ops and "CAST" not in ops and "DEQUANTIZE" not in ops
    # dense blocks concatenate as they go: one CONCATENATION per dense layer, and no requantising QUANTIZE op
    # (the only one left turns the uint8 input into the int8 the network runs on)
    assert ops.count("CONCATENATION") == 58
    assert [i for i, op in enumerate(ops) if op == "QUANTIZE"] == [0]


def test_cam_head_and_provenance(bundle):
    cam = bundle.spec["cam"]
    with np.load(bundle.path / cam["params"], allow_pickle=False) as arrays:
        assert sorted(arrays.files) == cam["arrays"]
        assert all(arrays[name].dtype == np.float32 for name in arrays.files)
    scoring = bundle.spec["scoring"]
    assert {k: scoring[k] for k in ("from", "activation", "params")} == {
        "from": "features", "activation": "sigmoid", "params": cam["params"]}
    assert bundle.scores_from == "features"
    correction = scoring["bias_correction"]  # measured on the calibration films, kept apart from the held-out ones
    assert correction["films"] == bundle.spec["provenance"]["data"]["calibration"]["films"]
    assert 0 < correction["max_abs_offset"] < 1 and "exact_bias" in cam["arrays"]
    assert cam["baseline"]["films"] == correction["films"]  # the CAM baseline: the same calibration films
    without = cam["baseline"]["films_averaged"]  # one map per label, of the calibration films without it
    assert cam["baseline"]["per_label"] and list(without) == bundle.labels
    assert all(0 < n <= correction["films"] for n in without.values()) and min(without.values()) < correction["films"]
    with np.load(bundle.path / cam["params"], allow_pickle=False) as arrays:
        for name in ("baseline", "exact_baseline"):
            assert arrays[name].shape == (len(bundle.labels), *cam["feature_shape"]) and arrays[name].min() >= 0
        absent = [i for i, label in enumerate(bundle.labels) if without[label] == correction["films"]]
        assert absent and all(np.array_equal(arrays["baseline"][i], arrays["baseline"][absent[0]]) for i in absent)
        present = min(without, key=without.get)  # the commonest finding: its map differs from the all-film mean
        assert not np.allclose(arrays["baseline"][bundle.labels.index(present)], arrays["baseline"][absent[0]])
        assert 0 < np.abs(arrays["baseline"] - arrays["exact_baseline"]).mean() < 0.1 * arrays["baseline"].mean()
    prov = bundle.spec["provenance"]
    assert prov["data"]["kind"] == "phantom" and bundle.is_demo
    assert len(prov["checkpoint_sha256"]) == 64 and prov["versions"]["onnx2tf"]
    assert set(bundle.spec["models"]) == set(MODEL_FILES)


def test_conversion_opened_no_socket(bundle_dir):
    log = bundle_dir.parent / "network.log"
    assert log.is_file() and log.read_text() == ""
