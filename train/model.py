"""DenseNet-121 with torchvision's parameter names, and the two classifier heads.

torchvision cannot be installed next to a CPU build of torch from the registry, so the
network is defined here. Parameter names match ``torchvision.models.densenet121`` exactly,
so an ImageNet state dict saved from torchvision loads with ``load_pretrained``.

The network is split where the CAM needs it: ``forward_features`` returns the last
feature map A (after the final BatchNorm and ReLU, N×1024×7×7 at 224 px) and
``forward_head`` maps A to logits. Edge recomputes the head's gradient in numpy from
the parameters convert writes into the bundle, so the heads stay small and plain.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HEADS", "NO_FEATURE_RELU", "DenseBlock", "DenseLayer", "DenseNet121", "build_model", "load_pretrained"]

# Plain data, not code: one entry per supported architecture.
ARCHS = {
    "densenet121": {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64,
                    "bn_size": 4, "num_features": 1024},
}


class DenseLayer(nn.Module):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.new_features(torch.cat(features, 1))

    def new_features(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's ``growth_rate`` new channels from the concatenation ``x`` of all earlier ones."""
        x = self.conv1(self.relu1(self.norm1(x)))
        x = self.conv2(self.relu2(self.norm2(x)))
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


class DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
                 drop_rate: float):
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, 1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


def _make_features(growth_rate: int, block_config: tuple[int, ...], num_init_features: int,
                   bn_size: int, drop_rate: float) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv0=nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False),
        norm0=nn.BatchNorm2d(num_init_features),
        relu0=nn.ReLU(inplace=True),
        pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    n = num_init_features
    for i, num_layers in enumerate(block_config):
        layers[f"denseblock{i + 1}"] = DenseBlock(num_layers, n, bn_size, growth_rate, drop_rate)
        n += num_layers * growth_rate
        if i != len(block_config) - 1:
            layers[f"transition{i + 1}"] = _Transition(n, n // 2)
            n //= 2
    layers["norm5"] = nn.BatchNorm2d(n)
    return nn.Sequential(layers)


class AdaptiveConcatPool2d(nn.Module):
    """fastai's pooling: [max, avg] concatenated on channels (max first, as fastai does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_max_pool2d(x, 1), F.adaptive_avg_pool2d(x, 1)], 1)


def _chexnet_head(num_features: int, num_classes: int, dropout: float) -> nn.Module:
    # CheXNet: global average pool -> Linear. Named "classifier" like torchvision's.
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     classifier=nn.Linear(num_features, num_classes)))


def _paper_head(num_features: int, num_classes: int, dropout: float, hidden: int = 512) -> nn.Module:
    # The seed paper's fastai head: ConcatPool -> Flatten -> [BN, Dropout, Linear, ReLU] -> BN, Dropout, Linear.
    return nn.Sequential(OrderedDict(
        pool=AdaptiveConcatPool2d(), flatten=nn.Flatten(),
        bn1=nn.BatchNorm1d(2 * num_features), drop1=nn.Dropout(dropout / 2),
        fc1=nn.Linear(2 * num_features, hidden), relu=nn.ReLU(inplace=True),
        bn2=nn.BatchNorm1d(hidden), drop2=nn.Dropout(dropout),
        fc2=nn.Linear(hidden, num_classes),
    ))


# The PyTorch module of each head in edge.heads.HEADS (what it means to every stage): name -> builder(
# num_features, num_classes, dropout). "fastai" is the paper head as fastai v1 wires it to a torchvision
# DenseNet: create_body cuts the network after ``features`` (norm5), before the ReLU that torchvision's own
# forward applies, so the concat pool sees the BatchNorm's output, negative values included.
HEADS = {"chexnet": _chexnet_head, "paper": _paper_head, "fastai": _paper_head}
# Heads whose feature map A is norm5's output as it is, not after a ReLU (see "fastai" above).
NO_FEATURE_RELU = frozenset({"fastai"})


class DenseNet121(nn.Module):
    """DenseNet-121 body (``features``) and a named head (``head``)."""

    def __init__(self, num_classes: int = 14, head: str = "chexnet", dropout: float = 0.5,
                 arch: str = "densenet121", drop_rate: float = 0.0):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
        cfg = ARCHS[arch]
        self.arch, self.head_name, self.num_classes = arch, head, num_classes
        self.features_relu = head not in NO_FEATURE_RELU
        self.features = _make_features(cfg["growth_rate"], cfg["block_config"], cfg["num_init_features"],
                                       cfg["bn_size"], drop_rate)
        self.head = HEADS[head](cfg["num_features"], num_classes, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised N×3×H×W images -> the CAM feature map A (N×1024×H/32×W/32), after ReLU (but for the
        heads in NO_FEATURE_RELU)."""
        a = self.features(x)
        return F.relu(a) if self.features_relu else a

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def body_parameters(self):
        return self.features.parameters()

    def head_parameters(self):
        return self.head.parameters()


def build_model(num_classes: int = 14, head: str = "chexnet", dropout: float = 0.5,
                arch: str = "densenet121") -> DenseNet121:
    return DenseNet121(num_classes=num_classes, head=head, dropout=dropout, arch=arch)


def load_pretrained(model: DenseNet121, path: str | Path) -> list[str]:
    """Load torchvision ImageNet weights (``densenet121-*.pth`` or .safetensors) into the body.

    Old torchvision files name layers ``denselayer1.norm.1``; they are renamed to
    ``denselayer1.norm1`` as torchvision itself does. The ImageNet classifier is not
    loaded (its label set differs). Returns the body keys that were not in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")
    renamed = {}
    for key, value in state.items():
        m = pattern.match(key)
        if m:
            key = m.group(1) + m.group(2)
        if key.startswith("features."):
            renamed[key[len("features."):]] = value
    missing, unexpected = model.features.load_state_dict(renamed, strict=False)
    if unexpected:
        raise ValueError(f"{path}: not DenseNet-121 weights (unexpected keys such as {unexpected[:3]})")
    if len(missing) == len(model.features.state_dict()):
        raise ValueError(f"{path}: no DenseNet-121 body weights found")
    return list(missing)
