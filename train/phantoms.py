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
what was drawn. Anatomy is drawn at half resolution in patient coordinates (midline x = 0.5,
film width = 1) and resized; grain is added at full resolution.

Focal lesions (Nodule, Mass, Consolidation) are centred near the centre of a cell of a
``cam_grid``×``cam_grid`` grid over the film (default 7, the 7×7 feature map of DenseNet-121 at
224 px): a nodule of 57-72 px is smaller than one 146 px cell, and a peak of an upsampled 7×7
heatmap always lies at a cell centre, so without this "peak inside the box" could not be scored
for small lesions. ``cam_grid=None`` places them anywhere in the lungs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edge.errors import EdgeError

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


class PhantomError(EdgeError):
    """A bad request to the phantom generator (output path, patient count, size)."""


@dataclass(frozen=True)
class Film:
    """Everything needed to draw one film; ``render`` is a pure function of it."""

    patient: int
    followup: int
    age: int
    sex: str
    view: str
    anatomy: dict
    pose: tuple[float, float, float, float]      # shift x, shift y, scale, rotation (radians)
    exposure: tuple[float, float, float, float]  # low, high, gamma, grain sigma (gray levels)
    findings: tuple[tuple[str, dict], ...]
    noise_seed: int

    @property
    def name(self) -> str:
        return f"{self.patient:08d}_{self.followup:03d}.png"

    @property
    def labels(self) -> list[str]:
        return sorted({label for label, _ in self.findings})


# ---------------------------------------------------------------- geometry (numpy, patient coordinates)

def _soft(margin, e):
    m = margin * (1.0 / e)
    m += 0.5
    return np.clip(m, 0.0, 1.0, out=m)


def _hypot(u, v):
    return np.sqrt(u * u + v * v)


def _ellipse_margin(u, v, a, b):
    """Approximate signed distance to the ellipse (u/a)² + (v/b)² = 1, positive inside: (1 - r) / |∇r|."""
    au, av = np.abs(u) / a, np.abs(v) / b
    r = np.sqrt(au * au + av * av)
    g = np.sqrt((au / a) ** 2 + (av / b) ** 2) / np.maximum(r, 1e-6)
    return (1.0 - r) / np.maximum(g, 0.5 / max(a, b))


def _hemi_margin(an, x, y, side, gap=0.0):
    """Hemithorax (lung without its diaphragm) of one side (-1: image left); ``gap`` collapses it."""
    t = side * (x - 0.5)
    tc, ax = (an["T"] + 0.02 - gap) / 2, (an["T"] - 0.02 - gap) / 2
    yc = an["dbase"] + 0.1
    ell = _ellipse_margin(t - tc, y - yc, ax, yc - an["apex"] - 0.8 * gap)
    return np.minimum(ell, t - an["mw"])


def _dome(an, x, side):
    t = side * (x - 0.5)
    base = an["dbase"] + (0.015 if side > 0 else 0.0)
    return base - an["hd"] * np.clip(1 - ((t - 0.5 * an["T"]) / (0.6 * an["T"])) ** 2, 0, 1)


def _heart_margin(an, x, y):
    c, s = math.cos(an["hrot"]), math.sin(an["hrot"])
    u, v = x - 0.5 - an["hx"], y - an["hy"]
    return _ellipse_margin(c * u + s * v, c * v - s * u, an["hw"], an["hh"])


def _lung_margin(an, x, y, side, gap=0.0):
    lung = np.minimum(_hemi_margin(an, x, y, side, gap), _dome(an, x, side) - y)
    return np.minimum(lung, -_heart_margin(an, x, y))


def _with_heart(an, scale_w=1.0, scale_h=1.0):
    """The anatomy with its heart scaled and sat on the diaphragm."""
    an = dict(an, hw=an["hw0"] * scale_w, hh=an["hh0"] * scale_h)
    an["hy"] = float(_dome(an, 0.5 + an["hx"], 1)) - 0.5 * an["hh"]
    return an


def _to_film(pose, x, y):
    sx, sy, scale, rot = pose
    u, v = (x - 0.5) * scale, (y - 0.5) * scale
    return 0.5 + sx + math.cos(rot) * u - math.sin(rot) * v, 0.5 + sy + math.sin(rot) * u + math.cos(rot) * v


def _to_patient(pose, u, v):
    sx, sy, scale, rot = pose
    du, dv = u - 0.5 - sx, v - 0.5 - sy
    c, s = math.cos(rot), math.sin(rot)
    return 0.5 + (c * du + s * dv) / scale, 0.5 + (c * dv - s * du) / scale


def _noise(rng, shape, cells):
    """Smooth noise with unit variance: a cells×cells normal grid resized bicubically to shape."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    a = np.asarray(Image.fromarray(grid).resize((shape[1], shape[0]), Image.Resampling.BICUBIC))
    return (a - a.mean()) / (a.std() + 1e-6)


# ---------------------------------------------------------------- anatomy layers

def _markings(an, x, y, n):
    rng = np.random.default_rng(an["texture"])
    lines = np.exp(-(_noise(rng, (n, n), 14) / 0.2) ** 2) + 0.6 * np.exp(-(_noise(rng, (n, n), 30) / 0.25) ** 2)
    dx, dy = np.abs(x - 0.5) - an["mw"] - 0.035, y - an["hy"] + 0.8 * an["hh"]
    near = np.exp(-np.sqrt(dx * dx + dy * dy) / 0.12)
    return 0.06 * lines * (0.4 + near) + 0.09 * np.exp(-(dx * dx + dy * dy) / 0.0012)


def _soft_tissue(an, x, y, e):
    """Attenuation of body, abdomen, mediastinum and heart; returns (A, fields: margins and masks)."""
    dome = np.where(x < 0.5, _dome(an, x, -1), _dome(an, x, 1))
    below = _soft(y - dome, 3 * e)
    b = an["B"]
    outline = np.interp(y, [0, 0.03, 0.08, 0.14, 0.3, 1], [0.09, 0.11, b + 0.03, b + 0.06, b + 0.02, b])
    outline = outline.astype(np.float32)
    body = _soft(outline - np.abs(x - 0.5), 2 * e)
    heart_m = _heart_margin(an, x, y)
    heart = _soft(heart_m, e) * (1 - below)
    med = _soft(np.minimum(an["mw"] - np.abs(x - 0.5), an["hy"] - y), e)
    knob = _soft(0.026 - _hypot(x - 0.5 - an["mw"] - 0.006, y - an["hy"] + an["hh"] + 0.035), e)
    med = np.maximum(np.maximum(med, knob) * (1 - below), heart)
    a = body * (an["tissue"] + 0.12 * below)
    a += (an["med"] - a) * med * body
    a -= 0.12 * _soft(0.011 - np.abs(x - 0.5), e) * _soft(an["apex"] + 0.13 - y, e) * body  # trachea
    if an["bubble"]:
        a -= 0.22 * _soft(0.028 - _hypot(x - 0.68, y - dome - 0.045), e) * below
    hemi = [_hemi_margin(an, x, y, side) for side in (-1, 1)]
    lung_m = [np.minimum(np.minimum(h, _dome(an, x, s) - y), -heart_m) for h, s in zip(hemi, (-1, 1), strict=True)]
    return a, {"hemi": hemi, "lung_m": lung_m, "lungs": [_soft(m, e) * (1 - med) for m in lung_m], "heart": heart}


def _segment_distance(x, y, p0, p1):
    ux, uy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * ux + (y - p0[1]) * uy) / (ux * ux + uy * uy), 0, 1)
    return _hypot(x - p0[0] - t * ux, y - p0[1] - t * uy)


def _bones(an, x, y, e, fields):
    out = (0.035 + 0.025 * np.cos(y * (2 * np.pi / 0.045)) ** 2) * _soft(0.03 - np.abs(x - 0.5), e)  # spine
    for side in (-1, 1):
        t = side * (x - 0.5)
        inside = _soft(fields["hemi"][(side + 1) // 2] + 0.025, 2 * e) * (1 - 0.6 * fields["heart"])
        ph = (y - an["rib_y0"] - an["rib_c1"] * t - an["rib_c2"] * t * t) / an["rib_sp"]
        q = ph - np.floor(ph)
        post = np.clip(q / 0.05, 0, 1) * np.clip((0.42 - q) / 0.05, 0, 1) * (ph > 0) * (ph < 10)
        post *= 0.55 + 0.45 * np.abs(q / 0.21 - 1) ** 3  # brighter cortex
        pa = (y - an["rib_y0"] - 0.06 + 0.5 * t) / (1.15 * an["rib_sp"])
        qa = pa - np.floor(pa)
        ant = np.clip(qa / 0.1, 0, 1) * np.clip((0.4 - qa) / 0.1, 0, 1) * (pa > 0) * (pa < 7)
        out += inside * (0.075 * post + 0.035 * ant)
        p0, p1 = (0.5 + side * 0.035, an["apex"] + 0.045), (0.5 + side * (an["T"] + 0.07), an["apex"] - 0.035)
        out += 0.13 * _soft(0.012 - _segment_distance(x, y, p0, p1), e)
    return out


# ---------------------------------------------------------------- findings: painters change A, return a mask

def _window(ctx, cx, cy, radius):
    n = ctx["n"]
    u, v = _to_film(ctx["pose"], cx, cy)
    half = radius * ctx["pose"][2] * 1.3 + 3 / n
    return np.s_[max(0, int((v - half) * n)):min(n, int((v + half) * n) + 1),
                 max(0, int((u - half) * n)):min(n, int((u + half) * n) + 1)]


def _nodule(a, ctx, p):
    win = _window(ctx, p["x"], p["y"], p["r"])
    d = _hypot(ctx["x"][win] - p["x"], ctx["y"][win] - p["y"])
    m = _soft(p["r"] - d, ctx["e"])
    a[win] += p["amp"] * m * (0.8 + 0.2 * np.sqrt(np.clip(1 - (d / p["r"]) ** 2, 0, 1)))
    return m, win


def _mass(a, ctx, p):
    win = _window(ctx, p["x"], p["y"], p["r"] * 1.3)
    dx, dy = ctx["x"][win] - p["x"], ctx["y"][win] - p["y"]
    theta = np.arctan2(dy, dx)
    rr = p["r"] * (1 + sum(amp * np.cos(k * theta + ph) for k, amp, ph in p["lobes"]))
    m = _soft(rr - _hypot(dx, dy), ctx["e"])
    tex = _noise(np.random.default_rng(p["seed"]), m.shape, 6)
    a[win] += p["amp"] * m * (0.9 + 0.08 * tex)
    return m, win


def _consolidation(a, ctx, p):
    win = _window(ctx, p["x"], p["y"], p["r"] * 1.2)
    rng = np.random.default_rng(p["seed"])
    dx, dy = ctx["x"][win] - p["x"], ctx["y"][win] - p["y"]
    env = _soft(_ellipse_margin(dx, dy, p["r"], p["r"] * p["aspect"]), 0.6 * p["r"])
    lung = ctx["lungs"][0][win] + ctx["lungs"][1][win]
    alpha = np.clip((env + 0.3 * _noise(rng, env.shape, 6) - 0.3) * 4, 0, 1) * lung  # patchy, irregular edge
    bronchi = np.exp(-(_noise(rng, env.shape, 9) / 0.2) ** 2)
    mottle = 0.8 + 0.2 * np.clip(_noise(rng, env.shape, 24), -1.5, 1.5)
    a[win] += p["amp"] * alpha * mottle * (1 - 0.6 * bronchi)
    return alpha, win


def _effusion(a, ctx, p):
    an, x, y, side = ctx["an"], ctx["x"], ctx["y"], p["side"]
    t = np.clip(side * (x - 0.5) / an["T"], 0, 1)
    base = an["dbase"] + (0.015 if side > 0 else 0.0)
    level = base - p["h"] * (0.45 + 0.55 * t * t)
    fluid = ctx["lungs"][(side + 1) // 2] * _soft(y - level, 2 * ctx["e"])  # hides the dome: abdomen-bright
    a += (p["amp"] + 0.05 * (y - level) / p["h"] - a) * fluid
    return fluid, np.s_[:, :]


def _pneumothorax(a, ctx, p):
    an, x, y, e, side = ctx["an"], ctx["x"], ctx["y"], ctx["e"], p["side"]
    lung = ctx["lungs"][(side + 1) // 2]
    mc = _hemi_margin(an, x, y, side, p["gap"])
    ptx = lung * (1 - _soft(mc, e))
    a += (p["dark"] - a) * ptx + 0.05 * lung * (1 - ptx)  # no markings outside, a denser collapsed lung
    line = np.exp(-(mc / (1.6 * e)) ** 2) * _soft(ctx["lung_m"][(side + 1) // 2] + 2 * e, e)
    a += 0.35 * line
    return np.maximum(ptx, line), np.s_[:, :]


PAINTERS = {"Effusion": _effusion, "Consolidation": _consolidation, "Mass": _mass, "Nodule": _nodule,
            "Pneumothorax": _pneumothorax}  # drawn in this order; Cardiomegaly changes the anatomy


def _box(mask, win, n, size):
    rows, cols = np.flatnonzero(mask.max(axis=1) >= 0.3), np.flatnonzero(mask.max(axis=0) >= 0.3)
    if rows.size == 0:
        return None
    f = size / n
    r0, c0 = rows[0] + (win[0].start or 0), cols[0] + (win[1].start or 0)
    x, y = float(c0 * f), float(r0 * f)
    w, h = float((cols[-1] - cols[0] + 1) * f), float((rows[-1] - rows[0] + 1) * f)
    return round(x, 1), round(y, 1), round(min(w, size - x), 1), round(min(h, size - y), 1)


# ---------------------------------------------------------------- rendering

def render(film: Film, size: int = 1024) -> tuple[np.ndarray, list[tuple[str, tuple[float, float, float, float]]]]:
    """One film -> (size×size uint8, [(label, (x, y, w, h)) in image pixels]). Pure and deterministic."""
    n = max(32, size // 2)
    found = dict(film.findings)
    base = _with_heart(film.anatomy)
    an = _with_heart(film.anatomy, *found["Cardiomegaly"]["scale"]) if "Cardiomegaly" in found else base
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = _to_patient(film.pose, grid[None, :], grid[:, None])
    x, y = x.astype(np.float32), y.astype(np.float32)
    e = 1.0 / (n * film.pose[2])
    a, fields = _soft_tissue(an, x, y, e)
    a += (an["lung"] + _markings(base, x, y, n) - a) * (fields["lungs"][0] + fields["lungs"][1])
    ctx = {"an": an, "x": x, "y": y, "e": e, "n": n, "pose": film.pose, **fields}
    lesions = []
    if "Cardiomegaly" in found:
        lesions.append(("Cardiomegaly", _box(fields["heart"], np.s_[:, :], n, size)))
    for label, paint in PAINTERS.items():
        for params in (p for lab, p in film.findings if lab == label):
            lesions.append((label, _box(*paint(a, ctx, params), n, size)))
    a += _bones(an, x, y, e, fields)
    return _expose(a, film, size), [(label, box) for label, box in lesions if box is not None]


def _expose(a, film, size):
    lo, hi, gamma, sigma = film.exposure
    rng = np.random.default_rng(film.noise_seed)
    img = 255 * (lo + (hi - lo) * np.clip(a, 0, 1) ** gamma)
    img += rng.standard_normal(img.shape, dtype=np.float32) * sigma
    big = np.asarray(Image.fromarray(img.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR))
    grain = (rng.random((size, size), dtype=np.float32) - 0.5) * (2.0 * sigma)  # uniform, sd 0.58 sigma
    return np.clip(big + grain + 0.5, 0, 255).astype(np.uint8)


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
    return [(_to_patient(pose, u, v), (u, v)) for u, v in centres]


def _place_focal(an, pose, geo, cam_grid, rng):
    """Centres for Mass, Consolidation and Nodule, inside the lungs (also when collapsed or beside a big heart)."""
    worst, ptx = _with_heart(an, *geo["Cardiomegaly"]["scale"]), geo["Pneumothorax"]
    points, taken = _cell_points(pose, cam_grid, rng), []
    margins = [max(float(_lung_margin(worst, px, py, s, ptx["gap"] if s == ptx["side"] else 0.0)) for s in (-1, 1))
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


def _write_set(out: Path, films: list[Film], size: int, test: set[int]) -> list[dict]:
    """Render and write every film, then the CSVs and split lists; returns the per-film records."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, boxes, entries = [], [], []
    for film in films:
        img, lesions = render(film, size)
        _write_bytes(out / "images" / film.name, _png(img))
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate(args.out, args.patients, args.seed, args.size, test_fraction=args.test_fraction)
    except EdgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if not args.quiet:
        c = json.loads((out / "phantoms.json").read_text())["counts"]
        print(f"phantoms: {c['films']} films of {c['patients']} patients ({c['test_films']} test films, "
              f"{c['no_finding']} without findings) in {out} [seed {args.seed}, {args.size} px, "
              f"{time.perf_counter() - start:.1f} s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
