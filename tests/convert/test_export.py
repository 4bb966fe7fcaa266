"""ONNX export: checker-valid, uint8 NHWC in, and equal to PyTorch on real films (untrained network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convert.calibrate import load_films
from convert.export import INPUT_NAME, OUTPUT_NAMES, export_onnx, onnx_run, torch_run


@pytest.fixture(scope="module")
def model():
    from train.model import build_model

    return build_model(num_classes=14, head="paper").eval()


@pytest.fixture(scope="module")
def films(test_data: Path) -> np.ndarray:
    return load_films(sorted((test_data / "nih-images").glob("*.png"))[:2])


def test_onnx_matches_pytorch_on_real_films(model, films, tmp_path):
    import onnx

    path = export_onnx(model, "multilabel", tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 224, 224, 3]
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    scores, feats = onnx_run(path, films)
    ref_scores, ref_feats = torch_run(model, "multilabel", films)
    assert scores.shape == (2, 14) and feats.shape == (2, 7, 7, 1024)
    assert np.abs(scores - ref_scores).max() <= 1e-4
    assert np.abs(feats - ref_feats).max() <= 1e-3 * max(1.0, float(np.abs(ref_feats).max()))
    assert (feats >= 0).all()  # after the final ReLU
    _assert_zero_padded_pooling(graph)
    concats = [n for n in graph.node if n.op_type == "Concat"]
    assert len(concats) == 58 + 1 and all(len(n.input) == 2 for n in concats)  # dense layers; the paper head's pool


def _assert_zero_padded_pooling(graph) -> None:
    """pool0 (after a ReLU) pads with zeros through a Pad of constant pads, not inside the MaxPool."""
    initializers = {t.name for t in graph.initializer}
    pools = [n for n in graph.node if n.op_type == "MaxPool"]
    pads = [n for n in graph.node if n.op_type == "Pad"]
    assert pools and all(not any(a.ints) for n in pools for a in n.attribute if a.name == "pads")
    assert len(pads) == 1 and pads[0].input[1] in initializers
    assert pads[0].output[0] == pools[0].input[0]


def test_one_vs_all_scores_are_a_softmax(tmp_path):
    from train.model import build_model

    model = build_model(num_classes=2).eval()
    path = export_onnx(model, "one_vs_all", tmp_path / "m.onnx")
    scores, _ = onnx_run(path, np.zeros((1, 224, 224, 3), np.uint8))
    assert scores.sum() == pytest.approx(1.0, abs=1e-5)


def test_unknown_task_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        export_onnx(model, "regression", tmp_path / "m.onnx")


def _randomise_batchnorms(model, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1


@pytest.mark.parametrize("head", ["chexnet", "paper", "fastai"])
def test_int8_friendly_rewrites_keep_the_values(head):
    import torch

    from convert.export import int8_friendly
    from train.model import DenseBlock, DenseLayer, build_model

    model = build_model(num_classes=5, head=head).eval()
    _randomise_batchnorms(model)
    friendly = int8_friendly(model)
    # only the BatchNorms right after a convolution (norm0, each norm2) remain; the paper head has none left
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in friendly.modules()) == 1 + 58
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in friendly.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 121  # the original is untouched
    # every dense block concatenates as it goes: 58 two-input concatenations, no list of earlier outputs
    assert not any(isinstance(m, DenseBlock) for m in friendly.modules())
    assert sum(isinstance(m, DenseLayer) for m in friendly.modules()) == 58
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model.forward_features(x), friendly.forward_features(x)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
        assert torch.allclose(model.forward_head(a), friendly.forward_head(a), atol=1e-5)
