"""``python -m convert CKPT --data DIR --out BUNDLE``: a training checkpoint -> a verified model bundle.

``--films DIR`` instead of ``--data``: any folder of films without labels (an imported model's usual case,
convert.importer): calibration, fidelity, CAM baseline and guard from those films, no AUROC check.

Exit codes: 0 bundle written; 2 a problem the user can act on (one line on stderr: missing or
damaged checkpoint, another architecture or label set, too few or unreadable films, fidelity
below the limits, model too large, full disk, existing bundle without --force).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from convert.errors import ConvertError
from convert.pipeline import BATCHNORMS, SCORES, Options
from convert.tflite import QUANTIZATIONS
from edge.cli import run_main

__all__ = ["build_parser", "main"]

_DEFAULTS = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
             for f in dataclasses.fields(Options)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="train checkpoint (*.safetensors), or one convert.importer wrote")
    films = p.add_mutually_exclusive_group(required=True)
    films.add_argument("--data", type=Path,
                       help="the NIH-layout data folder it was trained on (calibration: validation films, "
                            "fidelity: test films, guard: training films; the AUROC checks run)")
    films.add_argument("--films", type=Path,
                       help="any folder of films, no labels: calibration, int8-vs-fp32 agreement, CAM baseline and "
                            "the guard all from these films (up to --calibration of them); no AUROC check")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--calibration", type=int, default=_DEFAULTS["calibration"], metavar="N",
                   help="calibration films (default %(default)s)")
    p.add_argument("--heldout", type=int, default=_DEFAULTS["heldout"], metavar="N",
                   help="held-out films for fidelity (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle (after the new one is complete)")
    p.add_argument("--quantization", choices=sorted(QUANTIZATIONS), default=_DEFAULTS["quantization"],
                   help="weight quantisation (per-tensor: coarser, for older Edge TPU compilers)")
    limits = _DEFAULTS["limits"]
    p.add_argument("--max-mean-dauroc", type=float, default=limits["mean_abs_dauroc"],
                   help="limit: int8 vs fp32 mean per-label |dAUROC| (default %(default)s)")
    p.add_argument("--max-dscore", type=float, default=limits["max_abs_dscore"],
                   help="limit: int8 vs fp32 max |dscore| (default %(default)s)")
    p.add_argument("--max-onnx-diff", type=float, default=limits["onnx_vs_torch"],
                   help="limit: ONNX vs PyTorch max |dscore| (default %(default)s)")
    p.add_argument("--auroc-min-films", type=int, default=_DEFAULTS["auroc_min_films"], metavar="N",
                   help="AUROC differences over labels with at least N held-out films of each class (default 1: "
                        "both classes present)")
    p.add_argument("--float-check-films", type=int, default=_DEFAULTS["float_check_films"], metavar="N",
                   help="held-out films for the float checks, ONNX vs PyTorch and fp32 TFLite vs ONNX "
                        "(default %(default)s)")
    p.add_argument("--max-int8-mb", type=float, default=_DEFAULTS["max_int8_mb"],
                   help="int8 model size limit in MB (default %(default)s)")
    p.add_argument("--batchnorm", choices=BATCHNORMS, default=_DEFAULTS["batchnorm"],
                   help="BatchNorms after a concatenation as 1x1 depthwise convolutions (more precise in int8, "
                        "~0.8 MB larger) or MUL+ADD; auto: depthwise for the chexnet head, mul for the paper head")
    p.add_argument("--scores", choices=SCORES, default=_DEFAULTS["scores"],
                   help="where edge takes the scores from: the float head on the int8 features (default, more "
                        "precise) or the int8 model's own score output; fidelity is checked on that choice")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="do not fold the int8 features' mean offset (measured on the calibration films) into the head")
    p.add_argument("--no-cam-baseline", dest="cam_baseline", action="store_false",
                   help="plain Grad-CAM: do not store the per-label CAM baselines (mean feature maps of the "
                        "calibration films without each label)")
    p.add_argument("--guard-films", type=int, default=_DEFAULTS["guard_films"], metavar="N",
                   help="training films the out-of-distribution guard is fitted on, and validation films its "
                        "threshold is set on (default %(default)s of each, all when fewer)")
    p.add_argument("--false-refusal", type=float, default=_DEFAULTS["false_refusal"], metavar="RATE",
                   help="the guard's threshold: the share of in-distribution films it may refuse (default "
                        "%(default)s), measured on films it was not fitted on")
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="no out-of-distribution guard (edge then scores every film, as before)")
    p.add_argument("--seed", type=int, default=_DEFAULTS["seed"], help="film selection seed")
    p.add_argument("--verbose", action="store_true",
                   help="show onnx2tf's, TensorFlow's and absl's own output (hidden otherwise)")
    return p


def _options(args: argparse.Namespace):
    if not 0 < args.false_refusal < 0.5:
        raise ConvertError(f"--false-refusal must be between 0 and 0.5, got {args.false_refusal}")
    for name in ("calibration", "heldout", "auroc_min_films", "float_check_films", "guard_films"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ConvertError(f"{flag} must be a positive number of films, got {getattr(args, name)}")
    limits = {"mean_abs_dauroc": args.max_mean_dauroc, "max_abs_dscore": args.max_dscore,
              "onnx_vs_torch": args.max_onnx_diff}
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if f.name not in ("limits", "log")}
    return Options(**given, limits=limits)


def _run(args: argparse.Namespace) -> int:
    from convert.pipeline import convert
    from convert.quiet import native_stderr_hidden

    with native_stderr_hidden(not args.verbose):
        timings = convert(_options(args))
    print(f"bundle written to {args.out} in {timings['total']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("convert", lambda: build_parser().parse_args(argv), _run, "interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(main())
