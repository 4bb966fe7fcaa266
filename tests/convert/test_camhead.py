"""cam_head.npz: the head's float32 parameters in eval form reproduce the PyTorch head exactly."""

from __future__ import annotations

import numpy as np
import pytest

from convert.camhead import CAM_FILE, head_arrays, head_scores, save_head
from tests.convert.test_export import _randomise_batchnorms

ARRAYS = {"chexnet": ["bias", "weight"],
          "paper": ["bn1_scale", "bn1_shift", "bn2_scale", "bn2_shift", "fc1_bias", "fc1_weight", "fc2_bias",
                    "fc2_weight"]}
ARRAYS["fastai"] = ARRAYS["paper"]  # fastai v1's wiring of the paper head (pooled before any ReLU): same arrays


@pytest.mark.parametrize(("head", "task", "labels"), [("chexnet", "multilabel", 14), ("paper", "multilabel", 14),
                                                      ("chexnet", "one_vs_all", 2), ("fastai", "one_vs_all", 2),
                                                      ("fastai", "multilabel", 14)])
def test_saved_head_reproduces_pytorch(tmp_path, head, task, labels):
    import torch

    from train.model import build_model

    model = build_model(num_classes=labels, head=head).eval()
    _randomise_batchnorms(model)
    arrays = head_arrays(model)
    assert sorted(arrays) == ARRAYS[head]
    save_head(arrays, tmp_path / CAM_FILE)
    with np.load(tmp_path / CAM_FILE, allow_pickle=False) as saved:
        loaded = {name: saved[name] for name in saved.files}
    assert all(a.dtype == np.float32 for a in loaded.values())
    feats = np.random.default_rng(0).gamma(1.0, 1.0, (3, 7, 7, 1024)).astype(np.float32)
    if head == "fastai":
        feats -= 1.0  # fastai pools norm5 without the ReLU: the feature map can be negative
    with torch.no_grad():
        logits = model.forward_head(torch.from_numpy(feats).permute(0, 3, 1, 2))
        ref = (torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, 1)).numpy()
    np.testing.assert_allclose(head_scores(head, task, loaded, feats), ref, atol=2e-6)


@pytest.mark.parametrize("head", ["chexnet", "paper", "fastai"])
def test_bias_correction_removes_a_constant_feature_offset(head):
    from convert.camhead import bias_correct, head_forward, pooled
    from train.model import build_model

    model = build_model(num_classes=4, head=head).eval()
    _randomise_batchnorms(model)
    arrays = head_arrays(model)
    rng = np.random.default_rng(2)
    feats = rng.gamma(1.0, 1.0, (5, 7, 7, 1024)).astype(np.float32)
    shifted = feats + rng.normal(0, 0.05, 1024).astype(np.float32)  # what int8 rounding does, systematically
    offset = (pooled(head, shifted) - pooled(head, feats)).mean(axis=0)
    corrected = bias_correct(head, arrays, offset)
    exact = {"chexnet": "exact_bias", "paper": "exact_bn1_shift", "fastai": "exact_bn1_shift"}[head]
    np.testing.assert_array_equal(corrected[exact], arrays[exact[len("exact_"):]])
    before = np.abs(head_forward(head, arrays, shifted) - head_forward(head, arrays, feats)).max()
    after = np.abs(head_forward(head, corrected, shifted) - head_forward(head, arrays, feats)).max()
    assert after < 1e-4 < before


def test_with_baseline_adds_both_feature_maps_and_edge_reads_the_one_for_its_model(tmp_path):
    from convert.camhead import with_baseline
    from edge.cam import make_head
    from train.model import build_model

    arrays = head_arrays(build_model(num_classes=4, head="chexnet").eval())
    int8, fp32 = np.full((7, 7, 1024), 0.5, np.float32), np.full((7, 7, 1024), 0.4, np.float32)
    out = with_baseline(arrays, int8, fp32)
    assert sorted(out) == sorted([*ARRAYS["chexnet"], "baseline", "exact_baseline"])
    assert arrays.keys() == set(ARRAYS["chexnet"])  # the input is left alone
    save_head(out, tmp_path / CAM_FILE)
    with np.load(tmp_path / CAM_FILE, allow_pickle=False) as saved:
        np.testing.assert_array_equal(make_head("chexnet", dict(saved)).baseline, int8)


def test_per_label_baseline_is_the_mean_of_the_films_without_the_label():
    from convert.camhead import films_averaged, per_label_baseline

    rng = np.random.default_rng(0)
    features = rng.random((6, 2, 3, 4), dtype=np.float32)
    targets = np.array([[1, 0, 0, 1], [1, 0, 1, 1], [0, 0, 1, 1], [0, 1, 0, 1], [1, 0, 0, 1], [0, 0, 0, 1]])
    base = per_label_baseline(features, targets)
    assert base.shape == (4, 2, 3, 4) and base.dtype == np.float32
    for label, films in enumerate(([2, 3, 5], [0, 1, 2, 4, 5], [0, 3, 4, 5])):
        np.testing.assert_allclose(base[label], features[films].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(base[3], features.mean(axis=0), rtol=1e-6)  # every film has it: the mean of all
    assert films_averaged(targets).tolist() == [3, 5, 4, 6]  # what bundle.json records per label
    with pytest.raises(ValueError, match="N×L targets"):
        per_label_baseline(features, targets[:5])
