"""The classifier heads, one registry entry each, read by all three stages.

A head is what follows DenseNet-121's last feature map A (H×W×C). Its entry says:

* ``layers``: the head as ``(op, parameter prefix)`` steps, dropout left out (the identity in
  eval): edge.cam runs them forward and backward in numpy (its ``OPS``), and the array names in
  ``cam_head.npz`` are ``<prefix>_<param>`` (``<param>`` without a prefix);
* ``pool``: the name of its pooling in bundle.json ``cam.pool`` (edge checks it);
* ``modules``: for each parameter prefix, the submodule of train.model's head that holds those
  parameters (convert.camhead reads them from there);
* ``batchnorm``: how convert exports BatchNorms that follow no convolution, when ``--batchnorm
  auto``: a 1×1 depthwise convolution is more precise in int8 than MUL + ADD, but its per-channel
  parameters add ~0.8 MB, too much next to the paper head's 2048×512 layer under the 8.5 MB limit.

train.model builds the PyTorch module of each head by the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["HEADS", "HeadSpec"]


@dataclass(frozen=True)
class HeadSpec:
    layers: tuple[tuple[str, str], ...]
    pool: str
    modules: dict[str, str] = field(default_factory=dict)
    batchnorm: str = "depthwise"


HEADS: dict[str, HeadSpec] = {
    # CheXNet: global average pool -> Linear
    "chexnet": HeadSpec(layers=(("avgpool", ""), ("linear", "")), pool="avg", modules={"": "classifier"},
                        batchnorm="depthwise"),
    # the seed paper's fastai head: [max, avg] pool -> BN, Linear, ReLU -> BN, Linear
    "paper": HeadSpec(layers=(("concatpool", ""), ("affine", "bn1"), ("linear", "fc1"), ("relu", ""),
                              ("affine", "bn2"), ("linear", "fc2")),
                      pool="concat-max-avg", modules={"bn1": "bn1", "fc1": "fc1", "bn2": "bn2", "fc2": "fc2"},
                      batchnorm="mul"),
}
# fastai v1's own wiring of that head to a torchvision DenseNet (train.model: no ReLU between norm5 and the
# pooling, so the feature map A may be negative); the same layers and arrays.
HEADS["fastai"] = HeadSpec(layers=HEADS["paper"].layers, pool="concat-max-avg", modules=dict(HEADS["paper"].modules),
                           batchnorm="mul")
