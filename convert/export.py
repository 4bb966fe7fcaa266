"""PyTorch checkpoint -> ONNX, with the normalisation folded into the network.

The exported network takes raw pixels as ``edge.preprocess.preprocess`` makes them
(1×224×224×3, NHWC, 0-255), normalises them inside (``(x - mean) / std`` per channel: ImageNet's
statistics, ``edge.preprocess.MEAN``/``STD``, unless the checkpoint says its source used others,
meta ``normalisation``; convert.importer), and returns two outputs:

``scores``    1×L: sigmoid of the logits (``multilabel``) or softmax (``one_vs_all``)
``features``  1×7×7×1024 (NHWC): the last feature map A, after the final ReLU, for the CAM

Two variants of the same graph are exported, differing only in the input dtype:

* ``uint8`` (``model.onnx``): the reference. The Pi feeds raw ``uint8`` pixels, so this is the
  ONNX model checked against PyTorch with onnxruntime and the one a user would deploy.
* ``float32`` (raw pixels 0-255 as float, no cast): what onnx2tf converts. Full-integer
  quantisation needs a float graph input; the TFLite converter then turns it into a
  ``uint8`` input whose quantisation (scale 1, zero point 0) maps raw pixels one to one, so
  the int8 model has no float CAST op that would split the Edge TPU graph. The fp32 TFLite
  model gets a ``uint8`` input by a cast in front (convert.tflite).

One rewrite of the ONNX graph for the Edge TPU, exact in value: a padded MaxPool whose input comes
from a Relu (DenseNet's ``pool0``) becomes a zero Pad (constant pads) then an unpadded MaxPool.
Max pooling pads with -inf, which TFLite expresses as PADV2, an op the Edge TPU does not list;
after a ReLU every value is >= 0, so zero padding gives the same maximum, and PAD is supported.
(Done on the ONNX graph, not with ``F.pad`` in PyTorch: the exporter computes F.pad's pads with
ops that onnx2tf then lays out wrongly.)

Rewrites of (a copy of) the network before export, equal in value, for int8 precision and speed
(``int8_friendly``). Each dense block concatenates as it goes: layer k appends its 32 new channels to
the running concatenation (``cat([x, new])``, two inputs) instead of concatenating the list of all
earlier outputs (up to 25 inputs, as torchvision and training do). TFLite's int8 CONCATENATION needs
one scale for its inputs and output: with many inputs of their own scales the converter put 139
requantising QUANTIZE ops in front of them, and XNNPACK took none of the many-input concatenations
(46 delegate partitions in int8, 43 in fp32; now 4 and 1). Measured on the test model: no QUANTIZE
op but the input's, 252 ops instead of 391, int8 max |Δscore| 0.047 → 0.045, and on a model trained
with more epochs at 224 px 0.075 → 0.047. A BatchNorm2d that does not follow a convolution (DenseNet's ``norm1`` after
each concatenation, the transitions' ``norm``, ``norm5``; the exporter already folds the ones
after a convolution) becomes a 1×1 depthwise convolution. TFLite would otherwise run it as MUL
then ADD with the per-channel scales quantised to one int8 scale for all channels, losing the
small ones; a depthwise convolution has per-channel int8 weights and an int32 bias. And in the
paper head a BatchNorm1d followed (through Dropout) by a Linear is folded into that Linear.
The depthwise form costs about 0.8 MB of per-channel quantisation parameters in the int8 file,
which the paper head (a 2048×512 layer more) cannot afford under the 8.5 MB limit; convert
chooses per head (``edge.heads.HEADS``, ``batchnorm``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.bundle import TASK_ACTIVATION

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "export_onnx", "int8_friendly", "make_wrapper", "normalisation_of", "onnx_run",
           "torch_run"]

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("scores", "features")
OPSET = 17


def normalisation_of(meta: dict) -> tuple[list[float], list[float]]:
    """(mean, std) on the 0-255 scale the network's input is normalised with: the checkpoint's own
    ``normalisation`` (an imported model's source) or edge's ImageNet statistics."""
    from edge.preprocess import MEAN, STD

    norm = meta.get("normalisation") or {"mean": MEAN, "std": STD}
    return [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]


def make_wrapper(model, task: str, normalisation: tuple | None = None):
    """An nn.Module: NHWC raw pixels (uint8 or float) -> (scores, NHWC features); ``normalisation``:
    (mean, std) on 0-255, default edge's ImageNet statistics."""
    import torch
    from torch import nn

    mean, std = normalisation or normalisation_of({})
    if task not in TASK_ACTIVATION:  # the bundle contract's table: plain data, looked up, never an if-chain
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_ACTIVATION)}")
    activation = TASK_ACTIVATION[task]

    class PixelsToScores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, pixels: torch.Tensor):
            x = pixels.permute(0, 3, 1, 2).to(torch.float32)
            x = (x - self.mean) * self.inv_std
            a = self.net.forward_features(x)
            logits = self.net.forward_head(a)
            scores = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)
            return scores, a.permute(0, 2, 3, 1)

    return PixelsToScores().eval()


def _bn_as_depthwise(bn):
    from torch import nn

    c = bn.num_features
    scale = bn.weight.detach() / (bn.running_var.detach() + bn.eps).sqrt()
    conv = nn.Conv2d(c, c, 1, groups=c, bias=True)
    conv.weight.data = scale.view(c, 1, 1, 1).clone()
    conv.bias.data = (bn.bias.detach() - bn.running_mean.detach() * scale).clone()
    return conv


def _fold_bn1d_into_linear(seq) -> None:
    """In a Sequential: BatchNorm1d, [Dropout...], Linear -> Identity, [Dropout...], folded Linear."""
    from torch import nn

    children = list(seq.named_children())
    for i, (name, bn) in enumerate(children):
        if not isinstance(bn, nn.BatchNorm1d):
            continue
        j = i + 1
        while j < len(children) and isinstance(children[j][1], (nn.Dropout, nn.Identity)):
            j += 1
        if j == len(children) or not isinstance(children[j][1], nn.Linear):
            continue
        fc = children[j][1]
        scale = bn.weight.detach() / (bn.running_var.detach() + bn.eps).sqrt()
        shift = bn.bias.detach() - bn.running_mean.detach() * scale
        fc.bias.data = fc.bias.detach() + fc.weight.detach() @ shift
        fc.weight.data = fc.weight.detach() * scale[None, :]
        setattr(seq, name, nn.Identity())


def _concat_as_you_go(block):
    """A dense block that appends each layer's new channels to one running concatenation (two inputs per
    CONCATENATION) instead of concatenating the list of all earlier outputs; same values, same layers."""
    import torch
    from torch import nn

    class ConcatAsYouGo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(block.values())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = torch.cat([x, layer.new_features(x)], 1)
            return x

    return ConcatAsYouGo()


def int8_friendly(model, depthwise_bn: bool = True):
    """A copy of ``model`` (eval) with the value-preserving rewrites of the module docstring
    (``depthwise_bn=False``: BatchNorm2d left as it is, i.e. MUL + ADD in TFLite)."""
    import copy

    from torch import nn

    from train.model import DenseBlock

    net = copy.deepcopy(model).eval()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DenseBlock):
                setattr(parent, name, _concat_as_you_go(child))
    for parent in list(net.modules()):
        previous = None
        for name, child in list(parent.named_children()):
            if depthwise_bn and isinstance(child, nn.BatchNorm2d) and not isinstance(previous, nn.Conv2d):
                setattr(parent, name, _bn_as_depthwise(child))
            previous = child
        if isinstance(parent, nn.Sequential):
            _fold_bn1d_into_linear(parent)
    return net.eval()


def _zero_pad_relu_maxpools(model) -> int:
    """Rewrite padded MaxPool-after-Relu as Pad(0) + MaxPool in place; returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        pads = list(attrs["pads"].ints) if "pads" in attrs else []
        source = producer.get(node.input[0]) if node.input else None
        if node.op_type != "MaxPool" or not any(pads) or source is None or source.op_type != "Relu":
            nodes.append(node)
            continue
        half = len(pads) // 2  # ONNX pads: [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over spatial axes
        name = f"{node.name or node.output[0]}_zero_pad"
        graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64), f"{name}_pads"))
        nodes.append(helper.make_node("Pad", [node.input[0], f"{name}_pads"], [f"{name}_out"], name=name,
                                      mode="constant"))
        node.input[0] = f"{name}_out"
        del attrs["pads"].ints[:]
        attrs["pads"].ints.extend([0] * len(pads))
        nodes.append(node)
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def export_onnx(model, task: str, path: str | Path, input_dtype: str = "uint8", size: int = 224,
                depthwise_bn: bool = True, normalisation: tuple | None = None) -> Path:
    """Export the wrapped ``model`` (eval mode) to ``path``; static shapes, batch 1."""
    import torch

    path = Path(path)
    wrapper = make_wrapper(int8_friendly(model, depthwise_bn), task, normalisation)
    dtype = {"uint8": torch.uint8, "float32": torch.float32}[input_dtype]
    example = torch.zeros((1, size, size, 3), dtype=dtype)
    with torch.no_grad():
        torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          opset_version=OPSET, dynamo=False)
    import onnx

    proto = onnx.load(str(path))
    if _zero_pad_relu_maxpools(proto):
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def torch_run(model, task: str, images: np.ndarray,
              normalisation: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch fp32 reference outputs (scores N×L, features N×7×7×C) for N×224×224×3 uint8 images."""
    import torch

    wrapper = make_wrapper(model, task, normalisation)
    scores, feats = [], []
    with torch.no_grad():
        for img in images:
            s, f = wrapper(torch.from_numpy(np.ascontiguousarray(img[None])))
            scores.append(s.numpy())
            feats.append(f.numpy())
    return np.concatenate(scores), np.concatenate(feats)


def onnx_run(path: str | Path, images: np.ndarray, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime outputs for N×224×224×3 images (dtype as the model's input)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    in_type = session.get_inputs()[0].type
    dtype = np.uint8 if "uint8" in in_type else np.float32
    scores, feats = [], []
    for img in images:
        s, f = session.run(list(OUTPUT_NAMES), {INPUT_NAME: img[None].astype(dtype)})
        scores.append(s)
        feats.append(f)
    return np.concatenate(scores), np.concatenate(feats)
