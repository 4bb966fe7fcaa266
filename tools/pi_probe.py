"""Each film's model input and feature map, as ``edge`` computes them: for comparing architectures exactly.

``python pi_probe.py --bundle DIR --out PROBE.npz FILM...`` (run by tools.pi_check with the installed
package, on x86 and inside the emulated arm64 root). Each film: edge.films.load_film -> edge.preprocess
(saved as ``input:NAME``) -> the int8 model's dequantised last feature map (``features:NAME``), NAME the
film's file name. A film that does not decode is left out (the scan's store says why). Standalone: it
imports only the installed edge package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edge.errors import XrayError
from edge.films import load_film
from edge.preprocess import preprocess
from edge.runtime import open_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pi_probe.py", description=__doc__.splitlines()[0])
    p.add_argument("films", nargs="+", type=Path)
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    model = open_model(args.bundle, device="cpu", threads=1)
    arrays = {}
    for path in args.films:
        try:
            x = preprocess(load_film(path))
        except XrayError:
            continue
        arrays[f"input:{path.name}"] = np.asarray(x)
        arrays[f"features:{path.name}"] = np.asarray(model.predict(x).features)
    with args.out.open("wb") as f:
        np.savez(f, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
