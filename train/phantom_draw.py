"""Drawing a phantom chest film: ``render(film)`` -> (uint8 image, lesion boxes), a pure function of a ``Film``.

Anatomy is drawn at half resolution in patient coordinates (midline x = 0.5, film width = 1) and
resized; grain is added at full resolution. Each finding's painter changes the attenuation map and
returns the mask of what it drew; a lesion's box is the tight box of that mask (≥ 0.3). Which films
exist and what they show is decided in ``train.phantoms`` (sampling, files, command line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["PAINTERS", "Film", "lung_margin", "render", "to_patient", "with_heart"]


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


def lung_margin(an, x, y, side, gap=0.0):
    lung = np.minimum(_hemi_margin(an, x, y, side, gap), _dome(an, x, side) - y)
    return np.minimum(lung, -_heart_margin(an, x, y))


def with_heart(an, scale_w=1.0, scale_h=1.0):
    """The anatomy with its heart scaled and sat on the diaphragm."""
    an = dict(an, hw=an["hw0"] * scale_w, hh=an["hh0"] * scale_h)
    an["hy"] = float(_dome(an, 0.5 + an["hx"], 1)) - 0.5 * an["hh"]
    return an


def _to_film(pose, x, y):
    sx, sy, scale, rot = pose
    u, v = (x - 0.5) * scale, (y - 0.5) * scale
    return 0.5 + sx + math.cos(rot) * u - math.sin(rot) * v, 0.5 + sy + math.sin(rot) * u + math.cos(rot) * v


def to_patient(pose, u, v):
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
    base = with_heart(film.anatomy)
    an = with_heart(film.anatomy, *found["Cardiomegaly"]["scale"]) if "Cardiomegaly" in found else base
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = to_patient(film.pose, grid[None, :], grid[:, None])
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
