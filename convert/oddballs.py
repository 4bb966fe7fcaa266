"""Pictures that are not chest films like the training films, made to measure the guard (and for the demo).

Nothing here is downloaded or committed: far kinds are generated (rendered text, noise, smooth gradients)
or found in installed packages (matplotlib's ``grace_hopper.jpg``, scikit-learn's ``china.jpg`` and
``flower.jpg``, with crops and resizes of them); near kinds are made from given phantom films (negative,
rotated 90° and 180°, a corner quarter enlarged).

``python -m convert.oddballs --out DIR [--films FILM...] [--per-kind N]`` writes them as PNG/JPEG files.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["FAR_KINDS", "NEAR_KINDS", "far", "main", "natural_photos", "near", "photo_sources", "write"]

FAR_KINDS = ("photo", "text", "noise", "gradient")
NEAR_KINDS = ("negative", "rotated 90", "rotated 180", "corner quarter")
_PHOTOS = (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"), ("sklearn", "datasets/images/china.jpg"),
           ("sklearn", "datasets/images/flower.jpg"))
_WORDS = ("the patient was seen in clinic today with a cough of three weeks and no fever report follows "
          "chest film normal heart size lungs clear no effusion signed radiology department page of").split()


def photo_sources() -> list[Path]:
    """The photographs shipped with the installed matplotlib and scikit-learn (those installed)."""
    found = []
    for package, rel in _PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / rel
            if path.is_file():
                found.append(path)
    return found


def natural_photos(per_source: int = 8) -> Iterator[tuple[str, np.ndarray]]:
    """Each photo whole, four corner crops (60%), the centre and smaller resizes, RGB uint8."""
    for path in photo_sources():
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        w, h = rgb.size
        cw, ch = int(w * 0.6), int(h * 0.6)
        boxes = [(0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h),
                 ((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2)]
        variants = [("whole", rgb)] + [(f"crop{i}", rgb.crop(b)) for i, b in enumerate(boxes)]
        variants += [(f"resize{s}", rgb.resize((int(w * s / 100), int(h * s / 100)))) for s in (50, 30)]
        for name, im in variants[:per_source]:
            yield f"{path.stem}-{name}", np.asarray(im)


def _text_page(rng: np.random.Generator) -> np.ndarray:
    w, h = 850, 1100
    img = Image.new("L", (w, h), int(rng.integers(225, 256)))
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(14, 30))
    font = ImageFont.load_default(size=size)
    y = int(rng.integers(40, 90))
    while y < h - 60:
        line = " ".join(rng.choice(_WORDS, size=int(rng.integers(4, 12))))
        draw.text((int(rng.integers(40, 80)), y), line, fill=int(rng.integers(0, 60)), font=font)
        y += int(size * rng.uniform(1.3, 2.0))
    return np.asarray(img)


def _noise(rng: np.random.Generator, i: int) -> np.ndarray:
    shape = (int(rng.integers(224, 700)), int(rng.integers(224, 700)))
    kinds = (lambda: rng.integers(0, 256, shape), lambda: rng.normal(128, 50, shape),
             lambda: rng.choice([0, 255], shape), lambda: rng.integers(0, 256, (*shape, 3)))
    return np.clip(kinds[i % len(kinds)](), 0, 255).astype(np.uint8)


def _gradient(rng: np.random.Generator, i: int) -> np.ndarray:
    h, w = int(rng.integers(224, 700)), int(rng.integers(224, 700))
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    if i % 2:
        angle = rng.uniform(0, 2 * np.pi)
        g = x * np.cos(angle) + y * np.sin(angle)
    else:
        cy, cx = rng.uniform(0, 1, 2)
        g = np.hypot(x - cx, y - cy)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-9)
    lo, hi = sorted(rng.uniform(0, 255, 2))
    return np.round(lo + (hi - lo + 20) * g).clip(0, 255).astype(np.uint8)


def far(per_kind: int = 10, seed: int = 0, photos: int | None = None) -> Iterator[tuple[str, str, np.ndarray]]:
    """(kind, name, picture) for every far kind: photos (all those installed, or the first ``photos``), text,
    noise, gradients."""
    rng = np.random.default_rng(seed)
    for n, (name, arr) in enumerate(natural_photos()):
        if photos is not None and n >= photos:
            break
        yield "photo", name, arr
    for i in range(per_kind):
        yield "text", f"text-{i}", _text_page(rng)
    for i in range(per_kind):
        yield "noise", f"noise-{i}", _noise(rng, i)
    for i in range(per_kind):
        yield "gradient", f"gradient-{i}", _gradient(rng, i)


def near(films: Sequence[np.ndarray], seed: int = 0) -> Iterator[tuple[str, int, np.ndarray]]:
    """(kind, film index, picture) for every near kind of each 2-D uint8 film."""
    rng = np.random.default_rng(seed)
    for i, film in enumerate(films):
        h, w = film.shape
        r, c = int(rng.integers(0, 2)), int(rng.integers(0, 2))
        yield "negative", i, 255 - film
        yield "rotated 90", i, np.ascontiguousarray(np.rot90(film))
        yield "rotated 180", i, np.ascontiguousarray(film[::-1, ::-1])
        yield "corner quarter", i, np.ascontiguousarray(film[r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2])


def write(folder: Path, name: str, picture: np.ndarray) -> Path:
    """PNG (JPEG for photos, as a camera writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name.replace(" ", "-") + (".jpg" if picture.ndim == 3 else ".png"))
    Image.fromarray(picture).save(path, quality=90) if picture.ndim == 3 else Image.fromarray(picture).save(path)
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert.oddballs", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--films", type=Path, nargs="*", default=[], help="phantom films to make near kinds from")
    p.add_argument("--per-kind", type=int, default=10, help="generated pictures per far kind (default 10)")
    p.add_argument("--photos", type=int, default=None, help="at most this many photos (default: all)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _run(args: argparse.Namespace) -> int:
    from edge.films import load_film

    n = 0
    for kind, name, pic in far(args.per_kind, args.seed, args.photos):
        write(args.out, f"{kind}-{name}" if not name.startswith(kind) else name, pic)
        n += 1
    for kind, i, pic in near([load_film(f) for f in args.films], args.seed):
        write(args.out, f"{args.films[i].stem}-{kind}", pic)
        n += 1
    print(f"{n} pictures unlike the training films in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from edge.cli import run_main

    return run_main("convert.oddballs", lambda: _parser().parse_args(argv), _run, "stopped")


if __name__ == "__main__":
    raise SystemExit(main())
