"""``python -m convert.guardcheck BUNDLE --data DIR``: how well the guard tells training-like films from others.

Runs the bundle's int8 model (edge's own loading and preprocessing) on the validation films (where the guard
is fitted), the held-out test films, the far kinds (photos, text, noise, gradients) and the near kinds made
from test films (convert.oddballs), and for each method (the bundle's, and the alternatives fitted here the
same way: PCA whitening + residual, k-NN cosine, Ledoit–Wolf fitted on the training films) prints the false
refusals on the test films and the detection of every kind: the model's guard alone, and with the colour
check before it. ``--nih DIR`` adds the fraction of real films refused. ``--json`` writes the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from convert.novelty import crossfit_guard, fit_guard, fit_pca, knn_novelty
from convert.oddballs import FAR_KINDS, NEAR_KINDS, far, near

__all__ = ["main", "measure"]


def _features(model_path: Path, pictures: list[np.ndarray]) -> np.ndarray:
    from convert.tflite import tflite_run
    from edge.films import gray_from_rgb
    from edge.novelty import pooled_features
    from edge.preprocess import preprocess

    x = np.stack([preprocess(gray_from_rgb(p) if p.ndim == 3 else p) for p in pictures])
    return pooled_features(tflite_run(model_path, x)[1])


def _splits(bundle, data: Path) -> tuple[dict, dict]:
    from convert.calibrate import _dataset
    from edge.films import load_film

    meta = {"data": bundle.spec["provenance"]["data"], "labels": bundle.labels}
    ds = _dataset(data, meta)
    parts = (("train", ds.train), ("val", ds.val), ("test", ds.test))
    return ({name: [load_film(f.path) for f in part] for name, part in parts},
            {name: [f.image.split("_")[0] for f in part] for name, part in parts})


def _guard_method(guard) -> tuple:
    from edge.novelty import distances

    return (lambda x: distances(guard, x), guard.threshold)


def _knn(fit: np.ndarray, groups: list[str], rate: float) -> tuple:
    from convert.novelty import choose_threshold, fold_parts

    oof = np.empty(len(fit))
    for part in fold_parts(groups, 5, 0):
        oof[part] = knn_novelty(np.delete(fit, part, axis=0), fit[part])
    return (lambda x: knn_novelty(fit, x), choose_threshold(oof, rate)["threshold"])


def _methods(feats: dict, groups: dict, rate: float) -> dict:
    val, g, train = feats["val"], groups["val"], feats["train"]
    both, g_both = np.concatenate([train, val]), groups["train"] + g
    return {"LW, fit train, threshold val (shipped)": _guard_method(fit_guard(train, val, rate)[0]),
            "PCA95+residual, fit train, threshold val": _guard_method(fit_guard(train, val, rate, fit_pca)[0]),
            "kNN5 cosine, fit train, threshold val": _knn_split(train, val, rate),
            "LW, val, cross-fit by film": _guard_method(crossfit_guard(val, rate)[0]),
            "LW, val, cross-fit by patient": _guard_method(crossfit_guard(val, rate, groups=g)[0]),
            "PCA95+residual, val, cross-fit by patient": _guard_method(
                crossfit_guard(val, rate, fitter=fit_pca, groups=g)[0]),
            "kNN5 cosine, val, cross-fit by patient": _knn(val, g, rate),
            "LW, train+val, cross-fit by patient": _guard_method(crossfit_guard(both, rate, groups=g_both)[0])}


def _knn_split(fit: np.ndarray, check: np.ndarray, rate: float) -> tuple:
    from convert.novelty import choose_threshold

    return (lambda x: knn_novelty(fit, x), choose_threshold(knn_novelty(fit, check), rate)["threshold"])


def measure(bundle_dir: Path, data: Path, nih: Path | None = None, rate: float = 0.01, per_kind: int = 20,
            near_films: int = 40) -> dict:
    from edge.bundle import load_bundle
    from edge.films import load_film
    from edge.screen import MAX_COLOUR_SPREAD, colour_spread

    bundle = load_bundle(bundle_dir)
    model = bundle.model_path("int8")
    films, groups = _splits(bundle, data)
    feats = {k: _features(model, v) for k, v in films.items()}
    kinds: dict[str, list[np.ndarray]] = {}
    for kind, _, pic in far(per_kind):
        kinds.setdefault(kind, []).append(pic)
    for kind, _, pic in near(films["test"][:near_films]):
        kinds.setdefault(kind, []).append(pic)
    kind_feats = {k: _features(model, v) for k, v in kinds.items()}
    coloured = {k: np.array([p.ndim == 3 and colour_spread(p) > MAX_COLOUR_SPREAD for p in v])
                for k, v in kinds.items()}
    if nih is not None:
        kind_feats["real NIH films"] = _features(model, [load_film(p) for p in sorted(nih.glob("*.png"))])
        coloured["real NIH films"] = np.zeros(len(kind_feats["real NIH films"]), bool)
    table = {}
    for name, (score, threshold) in _methods(feats, groups, rate).items():
        start = time.perf_counter()
        for row in feats["test"][:50]:
            score(row[None])
        cost_ms = (time.perf_counter() - start) * 1000 / min(50, len(feats["test"]))
        row = {"threshold": float(threshold), "false_refusal_test": float((score(feats["test"]) > threshold).mean()),
               "test_films": len(feats["test"]), "cost_ms": cost_ms}
        for kind, f in kind_feats.items():
            guard = score(f) > threshold
            row[kind] = {"guard": float(guard.mean()), "with_colour": float((guard | coloured[kind]).mean()),
                         "n": len(f)}
        table[name] = row
    return {"validation_films": len(feats["val"]), "train_films": len(feats["train"]), "methods": table,
            "kinds": [*FAR_KINDS, *NEAR_KINDS] + (["real NIH films"] if nih else [])}


def _print(result: dict) -> None:
    kinds = result["kinds"]
    print(f"{result['train_films']} training films, {result['validation_films']} validation films; "
          f"detection = guard alone (with the colour check before it)")
    print("| method | threshold | false refusal (test) | " + " | ".join(kinds) + " | cost ms |")
    print("|---" * (len(kinds) + 4) + "|")
    for name, row in result["methods"].items():
        cells = [f"{100 * row[k]['guard']:.0f}% ({100 * row[k]['with_colour']:.0f}%) n={row[k]['n']}" for k in kinds]
        print(f"| {name} | {row['threshold']:.3f} | {100 * row['false_refusal_test']:.1f}% of {row['test_films']} | "
              + " | ".join(cells) + f" | {row['cost_ms']:.3f} |")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert.guardcheck", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the data folder the model was trained on")
    p.add_argument("--nih", type=Path, help="a folder of real NIH PNG films")
    p.add_argument("--false-refusal", type=float, default=0.01)
    p.add_argument("--json", type=Path)
    return p


def _run(args: argparse.Namespace) -> int:
    result = measure(args.bundle, args.data, args.nih, args.false_refusal)
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    from edge.cli import run_main

    return run_main("convert.guardcheck", lambda: _parser().parse_args(argv), _run, "stopped")


if __name__ == "__main__":
    raise SystemExit(main())
