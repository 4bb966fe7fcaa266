"""Deterministic phantom chest films with drawn findings of known place, in the NIH ChestX-ray14 layout.

``python -m train.phantoms --out DIR --patients N --seed S [--size 1024] [--quiet]`` writes
``DIR/images/{patient:08d}_{followup:03d}.png`` (8-bit gray, size×size), ``Data_Entry_2017.csv``
(NIH v2020 columns), ``BBox_List_2017.csv`` (NIH box format, one row per drawn lesion, in image
pixels), ``train_val_list.txt`` / ``test_list.txt`` (split by patient) and ``phantoms.json``.

Everything comes from ``numpy.random.Generator`` objects seeded with ``(seed, patient, …)``, so a
seed gives byte-identical files and patient k looks the same whatever N is. A patient has 1-4
films: the same anatomy, a slightly different position, exposure and noise, and findings that
persist or change between films. Drawn findings (``DRAWN_LABELS``) are meant to be learnt by a
briefly trained network, so they are conspicuous at 224 px, and every box is the tight box of
what was drawn. This module decides which films exist and what they show (sampling) and writes
them; ``train.phantom_draw`` draws one film (``render``).

Focal lesions (Nodule, Mass, Consolidation) are centred near the centre of a cell of a
``cam_grid``×``cam_grid`` grid over the film (default 7, the 7×7 feature map of DenseNet-121 at
224 px): a nodule of 57-72 px is smaller than one 146 px cell, and the peak of a 7×7 heatmap is
known only to within part of a cell (edge.cam refines it by at most half a cell from the hottest
cell's centre), so without this "peak inside the box" could not be scored for small lesions.
``cam_grid=None`` places them anywhere in the lungs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np

from edge.cli import run_main
from edge.errors import XrayError
from edge.runtime import usable_cores
from train.phantom_draw import Film, lung_margin, render, to_patient, with_heart

__all__ = ["DRAWN_LABELS", "ENTRY_HEADER", "BBOX_HEADER", "VERSION", "Film", "PhantomError", "film_specs",
           "generate", "main", "render"]

VERSION = 1
DRAWN_LABELS = ("Cardiomegaly", "Effusion", "Pneumothorax", "Nodule", "Mass", "Consolidation")
ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
FIELD_MM = 430.0                      # a 43 cm detector: pixel spacing = FIELD_MM / size
FINDINGS_PER_FILM = (0.37, 0.48, 0.15)  # P(0, 1, 2 findings) -> ~37% No Finding, ~13% per label
KEEP_FINDINGS = 0.5                   # P(a follow-up keeps the previous film's findings)
FOCAL = {  # label: (radius range, margin inside the lung needed as a fraction of the radius + constant)
    "Mass": ((0.062, 0.095), 0.9, 0.0),
    "Consolidation": ((0.08, 0.12), 0.55, 0.0),
    "Nodule": ((0.028, 0.035), 1.0, 0.012),  # 57-72 px across at 1024: 2.4-3 cm, the largest nodules
}


class PhantomError(XrayError):
    """A bad request to the phantom generator (output path, patient count, size)."""


# ---------------------------------------------------------------- sampling

def _anatomy(rng):
    u = rng.uniform
    t = u(0.34, 0.39)
    an = {"T": t, "apex": u(0.12, 0.165), "dbase": u(0.745, 0.785), "hd": u(0.045, 0.07), "mw": u(0.045, 0.056),
          "hw0": u(0.42, 0.48) * t, "hh0": u(0.115, 0.135), "hx": u(0.03, 0.05), "hrot": u(-0.35, -0.15),
          "B": t + u(0.03, 0.05), "rib_sp": u(0.052, 0.062), "rib_c1": u(0.15, 0.3), "rib_c2": u(0.5, 1.0),
          "tissue": u(0.42, 0.48), "med": u(0.66, 0.72), "lung": u(0.12, 0.16), "bubble": bool(rng.random() < 0.7),
          "texture": int(rng.integers(2**31))}
    an["rib_y0"] = an["apex"] + u(-0.03, 0.0)
    return an


def _cell_points(pose, cam_grid, rng):
    if cam_grid:
        centres = [((i + 0.5) / cam_grid, (j + 0.5) / cam_grid) for j in range(cam_grid) for i in range(cam_grid)]
    else:
        centres = [tuple(p) for p in rng.uniform(0.1, 0.9, (60, 2))]
    return [(to_patient(pose, u, v), (u, v)) for u, v in centres]


def _place_focal(an, pose, geo, cam_grid, rng):
    """Centres for Mass, Consolidation and Nodule, inside the lungs (also when collapsed or beside a big heart)."""
    worst, ptx = with_heart(an, *geo["Cardiomegaly"]["scale"]), geo["Pneumothorax"]
    points, taken = _cell_points(pose, cam_grid, rng), []
    margins = [max(float(lung_margin(worst, px, py, s, ptx["gap"] if s == ptx["side"] else 0.0)) for s in (-1, 1))
               for (px, py), _ in points]
    for label, ((r_lo, r_hi), k, c) in FOCAL.items():
        r = float(rng.uniform(r_lo, r_hi))
        spread = 1.9 / cam_grid if cam_grid else 2.2 * r
        free = [i for i in range(len(points)) if i not in taken]
        ok = [i for i in free if margins[i] >= k * r + c]
        far = [i for i in ok if all(math.dist(points[i][1], points[j][1]) >= spread for j in taken)]
        i = int(rng.choice(far or ok)) if ok else max(free, key=margins.__getitem__)
        taken.append(i)
        jitter = rng.uniform(-0.4, 0.4, 2) * (min(r, 0.3 / cam_grid) if cam_grid else 0)
        geo[label] = {"x": points[i][0][0] + float(jitter[0]), "y": points[i][0][1] + float(jitter[1]), "r": r}


def _geometry(an, pose, cam_grid, rng):
    """Where and how big each finding is for this patient, whenever it is present."""
    u = rng.uniform
    geo = {"Cardiomegaly": {"scale": (u(1.38, 1.55), u(1.08, 1.16))},
           "Effusion": [{"side": s, "h": u(0.14, 0.25), "amp": u(0.5, 0.58)}
                        for s in [[-1], [1], [-1, 1]][int(rng.choice(3, p=[0.4, 0.35, 0.25]))]],
           "Pneumothorax": {"side": int(rng.choice([-1, 1])), "gap": u(0.07, 0.13), "dark": u(0.03, 0.06)}}
    _place_focal(an, pose, geo, cam_grid, rng)
    geo["Nodule"]["amp"] = u(0.45, 0.55)  # calcified-dense: still visible at 128 px
    geo["Mass"].update(amp=u(0.34, 0.42), seed=int(rng.integers(2**31)),
                       lobes=[(k, u(0.03, 0.08), u(0, 2 * np.pi)) for k in range(3, 8)])
    geo["Consolidation"].update(amp=u(0.36, 0.42), aspect=u(0.75, 1.25), seed=int(rng.integers(2**31)))
    return geo


def _label_sets(rng, count):
    sets, current = [], None
    for _ in range(count):
        if current is None or rng.random() >= KEEP_FINDINGS:
            k = int(rng.choice(3, p=FINDINGS_PER_FILM))
            current = tuple(sorted(DRAWN_LABELS[i] for i in rng.choice(len(DRAWN_LABELS), k, replace=False)))
        sets.append(current)
    return sets


def _patient_films(seed, patient, cam_grid):
    rng = np.random.default_rng([seed, patient])
    an = _anatomy(rng)
    pose0 = (rng.uniform(-0.025, 0.025), rng.uniform(-0.02, 0.025), rng.uniform(0.93, 1.04), rng.uniform(-0.03, 0.03))
    geo = _geometry(an, pose0, cam_grid, rng)
    age, sex, ap = int(rng.integers(18, 86)), str(rng.choice(["M", "F"])), rng.uniform(0, 0.8)
    films = []
    for k, labels in enumerate(_label_sets(rng, int(rng.integers(1, 5)))):
        fr = np.random.default_rng([seed, patient, 1 + k])
        jitter = fr.uniform(-1, 1, 4) * (0.006, 0.006, 0.008, 0.008)
        pose = tuple(float(p + d) for p, d in zip(pose0, jitter, strict=True))
        view = "AP" if fr.random() < ap else "PA"
        lo = fr.uniform(0.02, 0.07) + (0.03 if view == "AP" else 0.0)
        exposure = (float(lo), float(fr.uniform(0.88, 1.0)), float(fr.uniform(0.8, 1.25)), float(fr.uniform(1.5, 4.0)))
        findings = tuple((lab, p) for lab in labels for p in (geo[lab] if lab == "Effusion" else [geo[lab]]))
        films.append(Film(patient, k, min(95, age + k // 2), sex, view, an, pose, exposure, findings,
                          int(fr.integers(2**31))))
    return films


def film_specs(patients: int, seed: int, cam_grid: int | None = 7) -> list[Film]:
    """The films of patients 1..N for a seed (patient k's films do not depend on N)."""
    return [f for p in range(1, patients + 1) for f in _patient_films(seed, p, cam_grid)]


# ---------------------------------------------------------------- files

def _write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename, so a crash never leaves a truncated file under the real name."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png(img: np.ndarray) -> bytes:
    """8-bit gray PNG, every row with the Up filter and fast zlib (2x faster than Pillow's adaptive filters)."""
    h, w = img.shape
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 2
    rows[:, 1:] = img
    rows[1:, 1:] -= img[:-1]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
            + chunk(b"IEND", b""))


def _csv(header: str, rows: list[list]) -> bytes:
    buf = io.StringIO()
    buf.write(header + "\n")
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def _entry_row(film: Film, labels: list[str], size: int) -> list:
    spacing = repr(FIELD_MM / size)
    return [film.name, "|".join(labels) or "No Finding", film.followup, film.patient, film.age, film.sex,
            film.view, size, size, spacing, spacing]


def _split(patients: int, seed: int, test_fraction: float) -> set[int]:
    rng = np.random.default_rng([seed, 0])
    count = min(patients - 1, max(1, round(test_fraction * patients)))
    return {int(p) for p in rng.choice(np.arange(1, patients + 1), count, replace=False)}


def _summary(records: list[dict], test: set[int], args: dict) -> dict:
    labels = {lab: sum(lab in r["labels"] for r in records) for lab in DRAWN_LABELS}
    boxes = {lab: sum(b["label"] == lab for r in records for b in r["lesions"]) for lab in DRAWN_LABELS}
    return {"generator": "train.phantoms", "version": VERSION, **args,
            "counts": {"patients": args["patients"], "films": len(records), "test_patients": len(test),
                       "test_films": sum(r["patient"] in test for r in records),
                       "no_finding": sum(not r["labels"] for r in records), "films_with": labels, "boxes": boxes},
            "films": records}


def _render_png(film: Film, size: int) -> tuple[bytes, list]:
    img, lesions = render(film, size)
    return _png(img), lesions


def _rendered(films: list[Film], size: int):
    """(PNG bytes, lesions) per film, in order: rendered in one process per core (each film is a function of its
    spec alone, so the files are the same bits whatever the count)."""
    cores = min(usable_cores(), 8)
    if cores < 2 or len(films) < 8:
        yield from (_render_png(f, size) for f in films)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a caller may hold threads (PyTorch's, a test runner's) that a forked child must not inherit
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_render_png, films, [size] * len(films), chunksize=4)


def _write_set(out: Path, films: list[Film], size: int, test: set[int]) -> list[dict]:
    """Render and write every film, then the CSVs and split lists; returns the per-film records."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, boxes, entries = [], [], []
    for film, (png, lesions) in zip(films, _rendered(films, size), strict=True):
        _write_bytes(out / "images" / film.name, png)
        labels = sorted({label for label, _ in lesions})  # only what was drawn and boxed
        boxes += [[film.name, label, *box] for label, box in lesions]
        entries.append(_entry_row(film, labels, size))
        records.append({"image": film.name, "patient": film.patient, "followup": film.followup, "view": film.view,
                        "labels": labels, "lesions": [{"label": lab, "box": list(box)} for lab, box in lesions]})
    _write_bytes(out / "Data_Entry_2017.csv", _csv(ENTRY_HEADER, entries))
    _write_bytes(out / "BBox_List_2017.csv", _csv(BBOX_HEADER, sorted(boxes, key=lambda r: (r[1], r[0]))))
    for name, part in (("train_val_list.txt", False), ("test_list.txt", True)):
        _write_bytes(out / name, "\n".join(sorted(f.name for f in films if (f.patient in test) == part)).encode())
    return records


def generate(out_dir: str | Path, patients: int, seed: int, size: int = 1024, *, test_fraction: float = 0.2,
             cam_grid: int | None = 7) -> Path:
    """Write a phantom set in NIH layout to ``out_dir`` and return it. See the module docstring."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out}: --out is a file, not a folder")
    if patients < 2:
        raise PhantomError(f"--patients must be at least 2 (one for training, one for test), got {patients}")
    if not 64 <= size <= 4096:
        raise PhantomError(f"--size must be between 64 and 4096 pixels, got {size}")
    if not 0 < test_fraction < 1:
        raise PhantomError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    test = _split(patients, seed, test_fraction)
    args = {"seed": seed, "size": size, "patients": patients, "cam_grid": cam_grid, "test_fraction": test_fraction}
    try:
        records = _write_set(out, film_specs(patients, seed, cam_grid), size, test)
        _write_bytes(out / "phantoms.json", json.dumps(_summary(records, test, args), indent=1).encode() + b"\n")
    except OSError as err:
        raise PhantomError(f"{err.filename or out}: cannot write: {err.strerror or err}") from err
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.phantoms",
                                description="Write deterministic phantom chest films with drawn findings "
                                            "(NIH ChestX-ray14 layout). For demonstration and tests, not diagnosis.")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--patients", required=True, type=int, help="number of phantom patients (1-4 films each)")
    p.add_argument("--seed", required=True, type=int, help="random seed: the same seed gives identical files")
    p.add_argument("--size", type=int, default=1024, help="film width and height in pixels (default 1024)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="fraction of patients in test_list.txt, the held-out split (default 0.2)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return p


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = generate(args.out, args.patients, args.seed, args.size, test_fraction=args.test_fraction)
    if not args.quiet:
        c = json.loads((out / "phantoms.json").read_text())["counts"]
        print(f"phantoms: {c['films']} films of {c['patients']} patients ({c['test_films']} test films, "
              f"{c['no_finding']} without findings) in {out} [seed {args.seed}, {args.size} px, "
              f"{time.perf_counter() - start:.1f} s]")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("train.phantoms", lambda: _parser().parse_args(argv), _run)


if __name__ == "__main__":
    raise SystemExit(main())
