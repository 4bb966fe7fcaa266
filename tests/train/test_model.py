"""DenseNet-121: torchvision's parameter names, ImageNet weights in both naming styles, the two heads."""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")

from train.model import HEADS, NO_FEATURE_RELU, build_model, load_pretrained  # noqa: E402

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_densenet121_keys() -> set[str]:
    """torchvision.models.densenet121().state_dict() keys, written out from its definition."""
    keys = {"features.conv0.weight", "classifier.weight", "classifier.bias"}
    keys |= {f"features.norm0.{s}" for s in BN} | {f"features.norm5.{s}" for s in BN}
    for block, layers in enumerate((6, 12, 24, 16), start=1):
        for layer in range(1, layers + 1):
            prefix = f"features.denseblock{block}.denselayer{layer}"
            keys |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
            keys |= {f"{prefix}.{norm}.{s}" for norm in ("norm1", "norm2") for s in BN}
        if block < 4:
            keys |= {f"features.transition{block}.conv.weight"} | {f"features.transition{block}.norm.{s}" for s in BN}
    return keys


def test_expected_key_set_is_densenet121():
    keys = torchvision_densenet121_keys()
    # 120 convolutions, 121 BatchNorms x 5 entries, the classifier's weight and bias
    assert len(keys) == 727
    assert sum(k.endswith("conv0.weight") or re.search(r"conv[12]?\.weight$", k) is not None for k in keys) == 120


def test_parameter_names_match_torchvision():
    model = build_model(14, head="chexnet")
    ours = set(model.state_dict())
    renamed = {k.replace("head.classifier.", "classifier.") for k in ours}
    assert renamed == torchvision_densenet121_keys()
    assert model.state_dict()["head.classifier.weight"].shape == (14, 1024)
    assert sum(p.numel() for p in model.features.parameters()) == 6_953_856


def _old_style(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's original file: 'denselayer1.norm.1.weight', no num_batches_tracked, ImageNet classifier."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        out[re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)] = value
    out["classifier.weight"], out["classifier.bias"] = torch.randn(1000, 1024), torch.zeros(1000)
    return out


@pytest.mark.parametrize("style", ["old", "new"])
def test_load_pretrained_reads_torchvision_files(tmp_path, style):
    source = build_model(1000)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    state = {("features." + k): v for k, v in source.features.state_dict().items()}
    if style == "old":
        state = _old_style(state)
        assert "features.denseblock1.denselayer1.norm.1.weight" in state
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(state, path)
    target = build_model(14)
    missing = load_pretrained(target, path)
    for key, value in source.features.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.features.state_dict()[key], value), key
    assert missing == []  # BatchNorm fills in a num_batches_tracked the old files lack


def test_load_pretrained_refuses_other_weights(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"features.layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, path)
    with pytest.raises(ValueError, match="not DenseNet-121"):
        load_pretrained(build_model(14), path)
    with pytest.raises(FileNotFoundError):
        load_pretrained(build_model(14), tmp_path / "missing.pth")


@pytest.mark.parametrize("head", sorted(HEADS))
def test_heads_give_one_logit_per_class(head):
    model = build_model(5, head=head).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a = model.forward_features(x)
        logits = model(x)
    assert a.shape == (2, 1024, 7, 7)
    # after the final ReLU: the CAM's A; fastai's head pools norm5's output itself, negative values included
    assert bool((a >= 0).all()) == (head not in NO_FEATURE_RELU)
    assert logits.shape == (2, 5)
    assert torch.allclose(model.forward_head(a), logits)


def test_paper_head_is_concat_pool_then_two_blocks():
    head = build_model(3, head="paper").head
    names = [name for name, _ in head.named_children()]
    assert names == ["pool", "flatten", "bn1", "drop1", "fc1", "relu", "bn2", "drop2", "fc2"]
    a = torch.zeros(1, 1024, 7, 7)
    a[0, 0, 3, 3] = 49.0  # max 49, mean 1
    pooled = head.pool(a).flatten(1)
    assert pooled.shape == (1, 2048) and pooled[0, 0] == 49.0 and pooled[0, 1024] == pytest.approx(1.0)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="unknown head"):
        build_model(14, head="resnet")


def test_every_head_in_the_registry_has_a_module_with_its_parameters():
    from edge.heads import HEADS as SPECS

    assert set(HEADS) == set(SPECS)
    for name, spec in SPECS.items():
        head = HEADS[name](64, 3, 0.5)
        for prefix, module in spec.modules.items():
            assert hasattr(head, module), (name, prefix, module)
