"""``python -m convert.importer KIND FILE --out CKPT``: published DenseNet-121 weights -> this project's checkpoint.

Layouts (``LAYOUTS``), read from the public code that writes each file:

* ``fastai``: the seed paper's fastai v1 ``Learner.save`` file, ``{'model': state_dict, 'opt': ...}`` (or the state
  dict alone, ``with_opt=False``). ``cnn_learner`` builds ``nn.Sequential(body, head)``; ``create_body`` keeps
  torchvision DenseNet's children up to its classifier, so the body is ``0.0.<features name>``, ending at
  ``norm5`` without the ReLU torchvision's forward adds; ``create_head(2048, n)`` is AdaptiveConcatPool2d (max
  then avg), Flatten, then ``bn_drop_lin`` twice: ``1.2`` BatchNorm1d(2048), ``1.4`` Linear(2048, 512), ReLU,
  ``1.6`` BatchNorm1d(512), ``1.8`` Linear(512, n) (dropout layers hold no tensors). Imported as the
  ``fastai`` head (train.model). fastai keeps the class names in the data, not the model: ``--labels`` in
  ``learn.data.classes`` order is required. Two outputs: one-vs-all (softmax), else multi-label (sigmoid).
* ``chexnet``: arnoweng/CheXNet ``model.pth.tar``, ``{'state_dict': ...}`` saved from ``nn.DataParallel`` of a
  wrapper holding ``densenet121`` (names ``module.densenet121.features...`` in the old torchvision form
  ``denselayer1.norm.1``) whose classifier is ``Sequential(Linear(1024, 14), Sigmoid())`` (``classifier.0``);
  its 14 labels in CLASS_NAMES order (NIH's). Evaluated resized to 256 with ten 224 crops averaged.
* ``torchvision``: a plain ``torchvision.models.densenet121`` state dict whose classifier was replaced by a
  ``Linear(1024, n)`` (``classifier.weight``/``bias``, or ``classifier.0.*`` for ``Sequential(Linear, Sigmoid)``,
  as jrzech/reproduce-chexnet builds it: that project pickles the whole model, so its users save the
  ``state_dict()`` first); ``--labels`` in output order is required.

Old ``norm.1``-style names are renamed as torchvision's ``_load_state_dict`` does, a ``module.`` prefix
(DataParallel) is dropped, and every tensor's name and shape is checked against this project's DenseNet-121:
a missing, an unexpected or a wrong-shaped tensor is refused naming the file and the tensor. Files are read with
``torch.load(weights_only=True)``: a file that needs code unpickled (a whole pickled model, a fastai
``export.pkl``) is refused with how to save its ``state_dict()`` instead.

Preprocessing: edge feeds the whole film, aspect kept, resized to 224 (edge.preprocess). The source's
normalisation is recorded in the checkpoint (``normalisation``, 0-255 scale) and folded into the network at
export (convert.export), like edge's own. A source evaluated another way (CheXNet's 256 + ten 224 crops) is
refused unless ``--accept-whole-film`` says the user takes edge's whole-film input, which is then recorded.
Thresholds: ``DEFAULT_THRESHOLD`` (none of these sources publishes operating points); the checkpoint's
``threshold_choice`` says they were not chosen on the user's data, and convert says so in the bundle.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convert.errors import ConvertError
from edge.cli import run_main

__all__ = ["DEFAULT_THRESHOLD", "LAYOUTS", "NORMALISATIONS", "Layout", "import_weights", "main", "read_state",
           "to_project_names"]

DEFAULT_THRESHOLD = 0.5
NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
              "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
# Per-channel (mean, std) on the 0-1 scale a source divided pixels to; stored x255 in the checkpoint.
NORMALISATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
_OLD_NAME = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")
_FASTAI_HEAD = (("bn", "bn1"), ("linear", "fc1"), ("bn", "bn2"), ("linear", "fc2"))


@dataclass(frozen=True)
class Layout:
    head: str  # train.model head
    container: str | None  # the file's key holding the state dict (None: the file is the state dict)
    rename: Callable[[dict, Path], dict]  # source names (no module. prefix, new DenseNet names) -> ours
    labels: tuple[str, ...] | None  # known output order, or None: --labels required
    normalisation: str | None  # the source's (NORMALISATIONS), or None: the user's --normalise
    geometry: str  # how the source fed films to the network
    whole_film: bool  # the source's geometry is edge's (whole film resized to 224)
    reference: str
    published: dict


def _features(key: str) -> str | None:
    return key if key.startswith("features.") else None


def _rename_torchvision(state: dict, path: Path) -> dict:
    # classifier.0: a Linear inside Sequential(Linear, Sigmoid), as jrzech/reproduce-chexnet and CheXNet code build it
    names = {f"classifier.{i}{p}": f"head.classifier.{p}" for i in ("", "0.") for p in ("weight", "bias")}
    return {_features(key) or names.get(key, key): value for key, value in state.items()}


def _rename_chexnet(state: dict, path: Path) -> dict:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("densenet121.")
        out[_features(key) or {"classifier.0.weight": "head.classifier.weight",
                               "classifier.0.bias": "head.classifier.bias"}.get(key, key)] = value
    return out


def _rename_fastai(state: dict, path: Path) -> dict:
    out, head = {}, {}
    for key, value in state.items():
        if key.startswith("0.0."):
            out["features." + key[len("0.0."):]] = value
        elif (m := re.match(r"^1\.(\d+)\.(.+)$", key)):
            head.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            out[key] = value
    kinds = [("bn" if "running_mean" in p else "linear" if getattr(p.get("weight"), "ndim", 0) == 2 else "?")
             for _, p in sorted(head.items())]
    if kinds != [k for k, _ in _FASTAI_HEAD]:
        raise ConvertError(f"{path}: the fastai head's layers with tensors are {kinds or 'none'}, not fastai v1's "
                           f"default create_head (bn, linear, bn, linear: lin_ftrs [512], bn_final False)")
    for (_, name), (_, params) in zip(_FASTAI_HEAD, sorted(head.items()), strict=True):
        out.update({f"head.{name}.{k}": v for k, v in params.items()})
    return out


LAYOUTS: dict[str, Layout] = {
    "fastai": Layout(
        head="fastai", container="model", rename=_rename_fastai, labels=None, normalisation="imagenet",
        geometry="fastai v1 ImageDataBunch: resized to the training size (224 in the paper; a square film is not "
                 "cropped), imagenet_stats on pixels / 255; fastai resamples with bilinear grid_sample, edge with "
                 "Pillow's antialiased bilinear",
        whole_film=True, reference="fastai v1 vision.learner cnn_learner, create_body, create_head",
        published={}),
    "chexnet": Layout(
        head="chexnet", container="state_dict", rename=_rename_chexnet, labels=NIH_LABELS, normalisation="imagenet",
        geometry="arnoweng/CheXNet: Resize(256), TenCrop(224), ImageNet normalisation on pixels / 255, scores "
                 "averaged over the ten crops",
        whole_film=False, reference="arnoweng/CheXNet model.py (DenseNet121 wrapper, DataParallel, CLASS_NAMES)",
        published={"macro_auroc": 0.847, "split": "the test list the source's repository ships, not necessarily "
                                                  "NIH's official one"}),
    "torchvision": Layout(
        head="chexnet", container=None, rename=_rename_torchvision, labels=None, normalisation=None,
        geometry="stated by the user: whole film resized to 224 (edge's input), normalised with --normalise",
        whole_film=True, reference="torchvision.models.densenet121 with classifier = Linear(1024, n)",
        published={}),
}


def read_state(path: Path, container: str | None) -> dict:
    """The file's state dict (name -> tensor), loaded without unpickling code. ConvertError naming the file."""
    import pickle

    import torch

    if not path.is_file():
        raise ConvertError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise ConvertError(f"{path}: not a PyTorch weights file ({str(err).splitlines()[0][:120]})") from None
        raise ConvertError(f"{path}: holds pickled code (a whole pickled model or a fastai export.pkl), which is "
                           f"never unpickled here; in the environment that made it save the weights alone: "
                           f"torch.save(model.state_dict(), 'weights.pth') (fastai v1: learn.save('name') writes "
                           f"models/name.pth) and import that") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise ConvertError(f"{path}: not a PyTorch weights file ({str(err).splitlines()[0][:120]})") from None
    if isinstance(obj, dict) and container in obj and isinstance(obj[container], dict):
        obj = obj[container]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        where = f"under '{container}' or " if container else ""
        raise ConvertError(f"{path}: no state dict {where}at the top level of the file (found {keys})")
    return obj


def to_project_names(state: dict, layout: Layout, path: Path) -> dict:
    """The state dict under train.model's names: ``module.`` dropped, old DenseNet names renamed, layout's map."""
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = {(m.group(1) + m.group(2) if (m := _OLD_NAME.match(k)) else k): v for k, v in state.items()}
    return layout.rename(state, path)


def _outputs(state: dict, head: str, path: Path) -> int:
    last = {"chexnet": "head.classifier.weight", "fastai": "head.fc2.weight"}[head]
    if last not in state:
        raise ConvertError(f"{path}: missing tensor {last} (the classifier's last Linear)")
    return int(state[last].shape[0])


def _fit(model, state: dict, path: Path) -> None:
    """Check every name and shape against ``model``, then load (missing BatchNorm counters become 0)."""
    import torch

    target = model.state_dict()
    for key in target:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing:
        raise ConvertError(f"{path}: missing tensor {missing[0]}{_more(missing)} (not a DenseNet-121 of this layout)")
    if unexpected:
        raise ConvertError(f"{path}: unexpected tensor {unexpected[0]}{_more(unexpected)} (another architecture or "
                           f"head than DenseNet-121 of this layout)")
    for key, want in target.items():
        if tuple(state[key].shape) != tuple(want.shape):
            raise ConvertError(f"{path}: tensor {key} has shape {list(state[key].shape)}, DenseNet-121 with this "
                               f"head needs {list(want.shape)}")
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)


def _more(names: list[str]) -> str:
    return f" and {len(names) - 1} more" if len(names) > 1 else ""


def _labels(layout: Layout, given: list[str] | None, n: int, path: Path) -> tuple[list[str], str]:
    if given is None and layout.labels is None:
        raise ConvertError(f"{path}: this layout does not record its label order; give --labels, its {n} outputs' "
                           f"names in order (fastai v1: print(learn.data.classes))")
    labels, origin = (list(given), "given by the user") if given is not None else (list(layout.labels), "the layout's")
    if len(labels) != n:
        raise ConvertError(f"{path}: the classifier has {n} outputs but {len(labels)} labels were given"
                           + ("" if given is not None else f" (the {len(labels)} of this layout; pass --labels)"))
    if len(set(labels)) != len(labels) or not all(labels):
        raise ConvertError(f"{path}: the labels must be distinct and non-empty, got {labels}")
    return labels, origin


def import_weights(kind: str, path: str | Path, out: str | Path, labels: list[str] | None = None,
                   task: str | None = None, normalise: str | None = None, accept_whole_film: bool = False,
                   force: bool = False) -> dict:
    """Write ``out`` (a train.checkpoint file) from the ``kind`` layout file ``path``; returns its meta."""
    from edge.bundle import sha256_file
    from train.checkpoint import save_checkpoint
    from train.model import build_model

    path, out, layout = Path(path), Path(out), LAYOUTS[kind]
    if out.exists() and not force:
        raise ConvertError(f"{out}: already exists; pass --force to replace it")
    if layout.normalisation and normalise and normalise != layout.normalisation:
        raise ConvertError(f"--normalise {normalise}: the {kind} source normalises with {layout.normalisation}")
    if not layout.whole_film and not accept_whole_film:
        raise ConvertError(f"{path}: the {kind} source was evaluated differently from edge's input ({layout.geometry});"
                           f" edge shows the model the whole film resized to 224: pass --accept-whole-film to import "
                           f"it so (recorded in the bundle) and check it on labelled films")
    state = to_project_names(read_state(path, layout.container), layout, path)
    n = _outputs(state, layout.head, path)
    names, origin = _labels(layout, labels, n, path)
    task = task or ("one_vs_all" if kind == "fastai" and n == 2 else "multilabel")
    model = build_model(num_classes=n, head=layout.head).eval()
    _fit(model, state, path)
    norm_name = layout.normalisation or normalise or "imagenet"
    mean, std = NORMALISATIONS[norm_name]
    normalisation = {"name": norm_name, "mean": [255 * v for v in mean], "std": [255 * v for v in std],
                     "scale": "0-255", "from": "the source's code" if layout.normalisation else
                     ("given by the user" if normalise else "assumed (torchvision's convention; --normalise)")}
    source = {"layout": kind, "file": path.name, "sha256": sha256_file(path), "reference": layout.reference,
              "head": layout.head, "task": task, "outputs": n, "labels": names, "labels_from": origin,
              "preprocessing": layout.geometry, "normalisation": normalisation,
              "imported_as": "edge.preprocess: the whole film, aspect kept, resized to 224; the source's "
                             "normalisation folded into the network",
              "accepted_difference": None if layout.whole_film else "whole film at 224 instead of the source's "
                                                                    "evaluation (--accept-whole-film)",
              "published": layout.published}
    choice = {"rule": f"default {DEFAULT_THRESHOLD}", "chosen_on_user_data": False,
              "note": "the source publishes no operating points; these thresholds were not chosen on your films"}
    meta = {"task": task, "labels": names, "thresholds": dict.fromkeys(names, DEFAULT_THRESHOLD),
            "data": {"kind": "published", "layout": kind, "trained_on": "ChestX-ray14 (the source's split)"},
            "config": {}, "metrics": {"published": layout.published} if layout.published else {},
            "normalisation": normalisation, "threshold_choice": choice, "source": source}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, meta)
    return meta


def build_parser() -> argparse.ArgumentParser:
    epilog = "layouts:\n" + "\n".join(f"  {kind}: {lay.reference}; labels: "
                                       f"{'its own ' + str(len(lay.labels)) if lay.labels else '--labels'}"
                                       for kind, lay in sorted(LAYOUTS.items()))
    p = argparse.ArgumentParser(prog="python -m convert.importer", description=__doc__.splitlines()[0], epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(LAYOUTS), help="the file's layout (below)")
    p.add_argument("file", type=Path, help="the published weights file (.pth, .pth.tar)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (*.safetensors)")
    p.add_argument("--labels", nargs="+", help="the outputs' labels in order (required for fastai and torchvision; "
                                               "one comma-separated argument works too)")
    p.add_argument("--task", choices=("multilabel", "one_vs_all"),
                   help="sigmoid per label or softmax over them (default: fastai with 2 outputs one_vs_all, else "
                        "multilabel)")
    p.add_argument("--normalise", choices=sorted(NORMALISATIONS),
                   help="torchvision layout: the normalisation it was trained with (default imagenet)")
    p.add_argument("--accept-whole-film", action="store_true",
                   help="import a source evaluated on crops (chexnet) with edge's whole-film input")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    return p


def _run(args: argparse.Namespace) -> int:
    labels = args.labels
    if labels and len(labels) == 1 and "," in labels[0]:
        labels = [s.strip() for s in labels[0].split(",")]
    meta = import_weights(args.kind, args.file, args.out, labels, args.task, args.normalise, args.accept_whole_film,
                          args.force)
    print(f"wrote {args.out}: {args.kind} layout, {meta['source']['head']} head, {meta['task']}, "
          f"{len(meta['labels'])} labels ({meta['source']['labels_from']}); thresholds {DEFAULT_THRESHOLD}, not chosen "
          f"on your films\nnext: python -m convert {args.out} --films YOUR_FILMS --out BUNDLE")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("convert.importer", lambda: build_parser().parse_args(argv), _run, "interrupted; nothing written")


if __name__ == "__main__":
    sys.exit(main())
