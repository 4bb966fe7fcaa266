"""convert.importer: published DenseNet-121 weights in each source's layout -> this project's checkpoint.

Each source's network is built here as its public code builds it (fastai v1 ``cnn_learner``: ``Sequential(body,
create_head(...))`` with the body cut before torchvision DenseNet's final ReLU; arnoweng/CheXNet: a wrapper holding
``densenet121`` with ``Sequential(Linear, Sigmoid)`` as classifier, saved from DataParallel with old ``norm.1`` names;
a torchvision DenseNet with a replaced Linear classifier), with random weights and BatchNorm statistics measured on
the input, and run its own way (its own forward, ImageNet normalisation on pixels / 255). The imported checkpoint
must give the same scores through convert's pixel wrapper. The body is train.model's ``features``, whose names are
torchvision's (torchvision cannot be installed beside a CPU torch here).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convert.errors import ConvertError
from convert.export import make_wrapper, normalisation_of
from convert.importer import LAYOUTS, NIH_LABELS, import_weights, main
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.model import build_model

IMAGENET = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
SMALL = 64  # the mapping tests' input size: every layer runs (2×2 final feature map), at a twelfth of 224's cost


class TorchvisionDenseNet(nn.Module):
    """torchvision.models.DenseNet's forward: features, ReLU, global average pool, classifier."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.features = build_model(num_classes=1).features
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.features(x)), 1), 1))


class ConcatPool(nn.Module):
    """fastai v1 AdaptiveConcatPool2d: [max, avg]."""

    def forward(self, x):
        return torch.cat([F.adaptive_max_pool2d(x, 1), F.adaptive_avg_pool2d(x, 1)], 1)


class CheXNetSource(nn.Module):
    """arnoweng/CheXNet model.py's DenseNet121 wrapper: the classifier ends with a Sigmoid."""

    def __init__(self, n: int):
        super().__init__()
        self.densenet121 = TorchvisionDenseNet(nn.Sequential(nn.Linear(1024, n), nn.Sigmoid()))

    def forward(self, x):
        return self.densenet121(x)


def fastai_source(n: int) -> nn.Module:
    """cnn_learner(data, densenet121): body = Sequential(*children[:-1]) = Sequential(features); create_head(2048, n)
    with lin_ftrs [512], ps 0.5: pool, flatten, bn_drop_lin(2048, 512, p=0.25, ReLU), bn_drop_lin(512, n, p=0.5)."""
    body = nn.Sequential(build_model(num_classes=1).features)
    head = nn.Sequential(ConcatPool(), nn.Flatten(), nn.BatchNorm1d(2048), nn.Dropout(0.25), nn.Linear(2048, 512),
                         nn.ReLU(inplace=True), nn.BatchNorm1d(512), nn.Dropout(0.5), nn.Linear(512, n))
    return nn.Sequential(body, head)


def normalised(pixels: np.ndarray) -> torch.Tensor:
    """The sources' input: NHWC uint8 -> NCHW float, pixels / 255 then ImageNet mean and std."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return (x - IMAGENET[0]) / IMAGENET[1]


def randomised(model: nn.Module, pixels: np.ndarray, seed: int) -> nn.Module:
    """Random BatchNorm affines and Linear biases, BatchNorm statistics of ``pixels`` (one pass in train mode), eval:
    every tensor differs from its neighbour, and activations keep a trained network's scale (int8 needs that)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.momentum = None  # cumulative: one pass sets the statistics of that batch
            elif isinstance(m, nn.Linear):
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
        model.train()
        model(normalised(pixels))
        for m in model.modules():
            # Two films make degenerate 1-d statistics: a feature (nearly) equal in both has variance ~0, eval
            # divides by sqrt(eps), and the head's logits reach hundreds, so every score is 0 or 1 whatever the
            # weights (a wrong import would compare equal). A floor keeps the logits near 1.
            if isinstance(m, nn.BatchNorm1d):
                m.running_var.clamp_(min=0.5)
    return model.eval()


def old_names(state: dict) -> dict:
    """torchvision's DenseNet names before 0.3 (``denselayer1.norm.1``), as in CheXNet's 2017 file, which also
    predates BatchNorm's num_batches_tracked."""
    out = {}
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            out[re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)] = value
    return out


def films(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Gray films (3 equal channels) of smooth structure and noise, N×size×size×3 uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.5, 3, 3)
        img = 128 + 60 * np.sin(a * 6 * xx + c) * np.cos(b * 6 * yy) + rng.normal(0, 20, (size, size))
        out.append(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2))
    return np.stack(out)


def unsaturated(scores: np.ndarray) -> bool:
    """Every score away from 0 and 1, where a sigmoid or softmax hides a change in its input."""
    return bool(((scores > 0.01) & (scores < 0.99)).all())


def imported_scores(ckpt: Path, pixels: np.ndarray) -> np.ndarray:
    """Through convert's pixel wrapper (the source's normalisation folded in, as exported), float32."""
    model, meta = model_from_checkpoint(ckpt)
    with torch.no_grad():
        return make_wrapper(model, meta["task"], normalisation_of(meta))(torch.from_numpy(pixels))[0].numpy()


def imported_scores_on_source_input(ckpt: Path, pixels: np.ndarray) -> np.ndarray:
    """The imported network on the source's own input tensor: the same operations on the same numbers, so a mapping
    error shows far above rounding."""
    model, meta = model_from_checkpoint(ckpt)
    with torch.no_grad():
        z = model(normalised(pixels))
    return (torch.softmax(z, 1) if meta["task"] == "one_vs_all" else torch.sigmoid(z)).numpy()


def save_layout(kind: str, n: int, path: Path, pixels: np.ndarray, seed: int = 0) -> nn.Module:
    """Build the ``kind`` source with random weights, save it as the source saves it; returns it (eval)."""
    if kind == "fastai":
        src = randomised(fastai_source(n), pixels, seed)
        opt = torch.optim.Adam(src.parameters())
        torch.save({"model": src.state_dict(), "opt": opt.state_dict()}, path)  # fastai v1 Learner.save, with_opt
    elif kind == "chexnet":
        src = randomised(CheXNetSource(n), pixels, seed)
        state = old_names(nn.DataParallel(src).state_dict())
        torch.save({"epoch": 1, "arch": "densenet121", "state_dict": state}, path)
    else:
        src = randomised(TorchvisionDenseNet(nn.Linear(1024, n)), pixels, seed)
        torch.save(src.state_dict(), path)
    return src


def source_scores(kind: str, src: nn.Module, pixels: np.ndarray, task: str) -> np.ndarray:
    """The source run its own way: its forward on its normalisation; sigmoid or softmax as its loss implies."""
    with torch.no_grad():
        out = src(normalised(pixels))
    if kind == "chexnet":
        return out.numpy()  # its classifier ends with the Sigmoid
    return (torch.softmax(out, 1) if task == "one_vs_all" else torch.sigmoid(out)).numpy()


LABELS2 = ["Other finding", "Pneumothorax"]


@pytest.mark.parametrize(("kind", "n", "labels", "task"), [
    ("fastai", 2, LABELS2, "one_vs_all"), ("chexnet", 14, None, "multilabel"),
    ("torchvision", 3, ["A", "B", "C"], "multilabel")])
def test_imported_model_scores_as_the_source_runs_it(kind, n, labels, task, tmp_path):
    pixels = films(2, SMALL)
    src = save_layout(kind, n, tmp_path / "weights.pth", pixels)
    meta = import_weights(kind, tmp_path / "weights.pth", tmp_path / "ckpt.safetensors", labels,
                          accept_whole_film=kind == "chexnet")
    assert meta["task"] == task and meta["labels"] == (labels or list(NIH_LABELS))
    want = source_scores(kind, src, pixels, task)
    assert want.shape == (2, n) and unsaturated(want)  # the comparison can see a wrong weight
    got = imported_scores_on_source_input(tmp_path / "ckpt.safetensors", pixels)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    _, stored = load_checkpoint(tmp_path / "ckpt.safetensors")
    assert stored["normalisation"]["mean"] == pytest.approx([255 * m for m in (0.485, 0.456, 0.406)])
    assert stored["normalisation"]["std"] == pytest.approx([255 * s for s in (0.229, 0.224, 0.225)])
    source = stored["source"]
    assert source["layout"] == kind and source["head"] == LAYOUTS[kind].head and source["labels"] == stored["labels"]
    assert source["preprocessing"] == LAYOUTS[kind].geometry and stored["normalisation"]["name"] == "imagenet"
    assert stored["threshold_choice"]["chosen_on_user_data"] is False
    assert set(stored["thresholds"].values()) == {0.5}


def test_the_comparison_sees_a_wrong_import(tmp_path):
    """The comparison above can fail: fastai's body without its final ReLU matters (the project's ``paper`` head,
    which pools after a ReLU, scores the same weights differently), and so does one tensor changed by a little."""
    pixels = films(2, SMALL)
    src = save_layout("fastai", 14, tmp_path / "w.pth", pixels)
    want = source_scores("fastai", src, pixels, "multilabel")
    assert unsaturated(want)
    import_weights("fastai", tmp_path / "w.pth", tmp_path / "c.safetensors", sorted(NIH_LABELS))
    state, _ = load_checkpoint(tmp_path / "c.safetensors")
    with_relu = build_model(num_classes=14, head="paper").eval()
    with_relu.load_state_dict(state)
    with torch.no_grad():
        relu_scores = torch.sigmoid(with_relu(normalised(pixels))).numpy()
    assert np.abs(relu_scores - want).max() > 1e-3
    saved = torch.load(tmp_path / "w.pth", weights_only=True)
    saved["model"]["0.0.denseblock3.denselayer7.norm2.bias"] += 0.05
    torch.save(saved, tmp_path / "w.pth")
    import_weights("fastai", tmp_path / "w.pth", tmp_path / "c.safetensors", sorted(NIH_LABELS), force=True)
    assert np.abs(imported_scores_on_source_input(tmp_path / "c.safetensors", pixels) - want).max() > 1e-4


@pytest.fixture(scope="module")
def torchvision_state() -> dict:
    return TorchvisionDenseNet(nn.Linear(1024, 3)).state_dict()


def _refused(tmp_path, capsys, argv: list[str]) -> str:
    rc = main([*argv, "--out", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.safetensors").exists()
    return err


def test_refusals_name_the_file_and_the_problem(torchvision_state, tmp_path, capsys):
    pickled = tmp_path / "export.pkl"
    torch.save(nn.Sequential(nn.Linear(2, 2)), pickled)  # a whole pickled model, as fastai's export.pkl is
    err = _refused(tmp_path, capsys, ["fastai", str(pickled), "--labels", "A", "B"])
    assert str(pickled) in err and "pickled code" in err and "state_dict()" in err

    wrong = dict(torchvision_state)
    wrong["features.denseblock2.denselayer3.conv1.weight"] = torch.zeros(128, 100, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    err = _refused(tmp_path, capsys, ["torchvision", str(tmp_path / "wrong.pth"), "--labels", "A", "B", "C"])
    assert str(tmp_path / "wrong.pth") in err
    assert "features.denseblock2.denselayer3.conv1.weight has shape [128, 100, 1, 1]" in err
    assert "needs [128, 192, 1, 1]" in err

    missing = {k: v for k, v in torchvision_state.items() if k != "features.transition1.conv.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    err = _refused(tmp_path, capsys, ["torchvision", str(tmp_path / "missing.pth"), "--labels", "A", "B", "C"])
    assert str(tmp_path / "missing.pth") in err and "missing tensor features.transition1.conv.weight" in err

    torch.save(torchvision_state, tmp_path / "tv.pth")
    err = _refused(tmp_path, capsys, ["torchvision", str(tmp_path / "tv.pth"), "--labels", "A,B"])
    assert str(tmp_path / "tv.pth") in err and "3 outputs but 2 labels" in err
    err = _refused(tmp_path, capsys, ["torchvision", str(tmp_path / "tv.pth")])
    assert str(tmp_path / "tv.pth") in err and "--labels" in err


def test_torchvision_classifier_inside_a_sequential(torchvision_state, tmp_path):
    """jrzech/reproduce-chexnet's classifier, Sequential(Linear, Sigmoid), once its state_dict() is saved."""
    state = {k.replace("classifier.", "classifier.0."): v for k, v in torchvision_state.items()}
    torch.save(state, tmp_path / "jrzech.pth")
    import_weights("torchvision", tmp_path / "jrzech.pth", tmp_path / "c.safetensors", ["A", "B", "C"])
    loaded, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(loaded["head.classifier.weight"], torchvision_state["classifier.weight"])
    assert meta["source"]["normalisation"]["from"].startswith("assumed")


def test_chexnet_crop_evaluation_is_refused_unless_accepted(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "model.pth.tar")
    with pytest.raises(ConvertError, match=r"model\.pth\.tar: .*TenCrop.*--accept-whole-film"):
        import_weights("chexnet", tmp_path / "model.pth.tar", tmp_path / "c.safetensors")


NOISE = ("E0000", "W0000", "cuDNN", "cuBLAS", "computation placer", "Ignored output_format", "absl::")


@pytest.mark.slow
def test_import_convert_scan_on_films_without_labels(checkpoint, test_data, tmp_path):
    """arnoweng/CheXNet's layout (old names, DataParallel, Sigmoid classifier) holding the session model's trained
    weights (random weights make no honest int8 model: a random fastai head's int8 scores moved by 0.08 on these
    films), imported, converted on shared/data/nih-images (46 real films, no labels), scanned with edge.scan; scores
    against the source network run its own way on the same 224 px films: fp32 TFLite within 1e-4, edge's int8
    within convert's fidelity limit. 224 px is the smallest honest size: edge runs only its 224 px input."""
    from convert.fidelity import LIMITS
    from convert.tflite import tflite_run
    from edge.films import load_film
    from edge.preprocess import preprocess
    from tests.conftest import run_offline

    trained, _ = load_checkpoint(checkpoint)
    src = CheXNetSource(14).eval()
    src.densenet121.features.load_state_dict({k[9:]: v for k, v in trained.items() if k.startswith("features.")})
    src.densenet121.classifier[0].load_state_dict({k[16:]: v for k, v in trained.items() if k.startswith("head.cl")})
    torch.save({"epoch": 1, "state_dict": old_names(nn.DataParallel(src).state_dict())}, tmp_path / "model.pth.tar")
    assert main(["chexnet", str(tmp_path / "model.pth.tar"), "--accept-whole-film", "--out",
                 str(tmp_path / "ckpt.safetensors")]) == 0

    folder, bundle, out = test_data / "nih-images", tmp_path / "bundle", tmp_path / "scan"
    t0 = time.monotonic()
    proc = run_offline("convert", [str(tmp_path / "ckpt.safetensors"), "--films", str(folder), "--out", str(bundle),
                                   "--float-check-films", "8"], tmp_path / "network.log")
    print(f"\nconvert --films on 46 films: {time.monotonic() - t0:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "" and not [w for w in NOISE if w in proc.stdout], proc.stderr[-2000:]  # no start-up noise
    spec = json.loads((bundle / "bundle.json").read_text())
    assert spec["fidelity"]["checks"]["auroc"] is False and spec["fidelity"]["int8_vs_fp32"]["films"] == 46
    assert spec["threshold_choice"]["chosen_on_user_data"] is False
    assert spec["provenance"]["source"]["layout"] == "chexnet" and spec["provenance"]["source"]["accepted_difference"]
    assert spec["novelty"]["fitted_on"]["films"] == 46 and spec["cam"]["baseline"]["films"] == 46

    paths = sorted(folder.glob("*.png"))
    pixels = np.stack([preprocess(load_film(p)) for p in paths])
    want = source_scores("chexnet", src, pixels, "multilabel")
    fp32 = tflite_run(bundle / "model_fp32.tflite", pixels)[0]
    assert np.abs(fp32 - want).max() <= 1e-4
    proc = run_offline("edge.scan", [str(folder), "--bundle", str(bundle), "--out", str(out), "--quiet", "--cam",
                                     "none", "--allow-unrecognised"], tmp_path / "network.log")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {Path(r["film_path"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    labels = list(NIH_LABELS)
    edge_scores = np.array([[rows[p.name]["scores"][lb] for lb in labels] for p in paths])
    d = np.abs(edge_scores - want)
    print(f"edge.scan int8 vs the PyTorch source on 46 films: max |dscore| {d.max():.4f}, mean {d.mean():.4f}; "
          f"fp32 TFLite max {np.abs(fp32 - want).max():.1e}")
    assert d.max() <= LIMITS["max_abs_dscore"][1]
    assert ((edge_scores >= 0.5) == (want >= 0.5)).mean() >= 0.99


def test_auroc_limits_are_skipped_only_without_labels():
    """Films without labels: the report says the AUROC check did not run, and only then is its limit not applied."""
    from convert.fidelity import LIMITS, check, report

    rng = np.random.default_rng(0)
    s = rng.uniform(size=(10, 2))
    out = (s, rng.uniform(size=(10, 1, 1, 4)))
    limits = {k: v for k, (_, v) in LIMITS.items()}
    unlabelled = report(out, out, out, out, np.zeros((10, 2)), [0.5, 0.5], ["a", "b"], list("abcdefghij"),
                        labelled=False, split="calibration (no labels)")
    assert unlabelled["checks"]["auroc"] is False and check(unlabelled, limits) == []
    labelled = report(out, out, out, out, np.zeros((10, 2)), [0.5, 0.5], ["a", "b"], list("abcdefghij"))
    assert labelled["checks"]["auroc"] is True and "cannot be computed" in check(labelled, limits)[0]
    worse = report(out, out, out, (s + 0.2, out[1]), np.zeros((10, 2)), [0.5, 0.5], ["a", "b"], list("abcdefghij"),
                   labelled=False)
    assert [f for f in check(worse, limits) if "max_abs_dscore" in f]


def test_folder_films_takes_any_folder_without_labels(test_data, tmp_path):
    from convert.calibrate import folder_films

    cal = folder_films(test_data / "nih-images", 3, n=10, seed=0)
    assert cal.images.shape == (10, 224, 224, 3) and cal.targets.shape == (10, 3) and not cal.targets.any()
    assert cal.names == sorted(cal.names) and all(n.endswith(".png") for n in cal.names)
    (tmp_path / "few").mkdir()
    for p in sorted((test_data / "nih-images").glob("*.png"))[:3]:
        (tmp_path / "few" / p.name).symlink_to(p)
    with pytest.raises(ConvertError, match=r"few: too few films: 3 found, at least 8"):
        folder_films(tmp_path / "few", 3, n=10)


def test_thresholds_are_chosen_on_labelled_films_only_when_the_checkpoint_has_defaults(monkeypatch):
    from convert import pipeline
    from convert.calibrate import FilmSet

    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], np.float32)
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.4]], np.float32)
    monkeypatch.setattr(pipeline, "_tflite_outputs", lambda a, kind, films: (scores, None))
    imported = {"labels": ["a", "b"], "thresholds": {"a": 0.5, "b": 0.5},
                "threshold_choice": {"rule": "default 0.5", "chosen_on_user_data": False}}
    for labelled, meta, chosen in ((True, dict(imported), True), (False, dict(imported), False),
                                   (True, {"labels": ["a", "b"], "thresholds": {"a": 0.1, "b": 0.9}}, None)):
        state = pipeline._State(pipeline.Options(None, None, None, log=lambda m: None), None)
        state.art.meta, state.art.labelled = meta, labelled
        state.art.cal = FilmSet(np.zeros((4, 1, 1, 3), np.uint8), list("wxyz"), y)
        pipeline._thresholds(state)
        assert meta.get("threshold_choice", {}).get("chosen_on_user_data") is chosen
        if chosen:
            assert meta["thresholds"] == {"a": pytest.approx(0.8), "b": pytest.approx(0.7)}
        else:
            assert meta["thresholds"] in ({"a": 0.5, "b": 0.5}, {"a": 0.1, "b": 0.9})


def test_native_stderr_is_hidden_unless_verbose(capfd):
    import os

    from convert.quiet import native_stderr_hidden

    with native_stderr_hidden(True):
        os.write(2, b"E0000 00:00 cuda_dnn.cc] Unable to register cuDNN factory\n")
        print("convert's own progress")
    with native_stderr_hidden(False):
        os.write(2, b"W0000 computation placer already registered\n")
    out, err = capfd.readouterr()
    assert out == "convert's own progress\n" and err == "W0000 computation placer already registered\n"
    with pytest.raises(ConvertError), native_stderr_hidden(True):
        os.write(2, b"noise\n")
        raise ConvertError("x: a problem")
    assert capfd.readouterr().err == ""
