"""The seed paper's augmentations, on whole batches, on the batch's device.

Input and output: float N×C×H×W images on the 0-1 scale (before normalisation). Every
random draw comes from a ``torch.Generator`` the caller seeds per step (``step_generator``),
so a run is repeatable and a resumed run draws what the uninterrupted run would have; the
global RNGs are never touched.

* rotation: uniform in ±``rotation`` degrees;
* zoom: with probability ``zoom_p``, zoom in by a factor uniform in [1, ``zoom``] about a
  random centre that keeps the view inside the film (fastai's ``zoom``);
* horizontal flip with probability ``hflip_p`` (CheXNet's only augmentation);
* brightness and contrast as fastai does them, in logit space: brightness adds
  ``logit(b)`` with b uniform in 0.5 ± brightness/2; contrast multiplies the logit by a
  factor log-uniform in [1 - contrast, 1 / (1 - contrast)].

Rotation, zoom and flip are one affine warp (``affine_grid`` + bilinear ``grid_sample``);
areas warped in from outside the film are black, like the padding of edge.preprocess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentParams", "augment_batch", "step_generator"]

_EPS = 1e-4


@dataclass(frozen=True)
class AugmentParams:
    rotation: float = 30.0
    zoom: float = 1.3
    zoom_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    hflip_p: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> AugmentParams:
        return cls(rotation=cfg.rotation, zoom=cfg.zoom, zoom_p=cfg.zoom_p, brightness=cfg.brightness,
                   contrast=cfg.contrast, hflip_p=cfg.hflip_p)


def step_generator(seed: int, step: int, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one training step, seeded from (seed, step, rank) only."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1))
    return g


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _affine(n: int, p: AugmentParams, g: torch.Generator, device) -> torch.Tensor:
    """N×2×3 matrices mapping output to input coordinates (affine_grid's convention)."""
    angle = _uniform(n, -p.rotation, p.rotation, g, device) * (math.pi / 180)
    zoomed = torch.rand(n, generator=g, device=device) < p.zoom_p
    scale = torch.where(zoomed, _uniform(n, 1.0, p.zoom, g, device), torch.ones(n, device=device))
    room = 1.0 - 1.0 / scale                              # how far the centre may move and stay inside
    tx = (torch.rand(n, generator=g, device=device) * 2 - 1) * room
    ty = (torch.rand(n, generator=g, device=device) * 2 - 1) * room
    flip = torch.where(torch.rand(n, generator=g, device=device) < p.hflip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    row0 = torch.stack([cos * flip, -sin, tx], 1)
    row1 = torch.stack([sin * flip, cos, ty], 1)
    return torch.stack([row0, row1], 1)


def _lighting(x: torch.Tensor, p: AugmentParams, g: torch.Generator) -> torch.Tensor:
    n, device = x.shape[0], x.device
    shape = (n,) + (1,) * (x.dim() - 1)
    b = _uniform(n, 0.5 * (1 - p.brightness), 0.5 * (1 + p.brightness), g, device).clamp(_EPS, 1 - _EPS)
    low = math.log(1 - p.contrast) if p.contrast > 0 else 0.0
    c = torch.exp(_uniform(n, low, -low, g, device))
    logit = torch.logit(x.clamp(_EPS, 1 - _EPS))
    return torch.sigmoid(logit * c.view(shape) + torch.logit(b).view(shape))


def augment_batch(x: torch.Tensor, p: AugmentParams, g: torch.Generator) -> torch.Tensor:
    """Augment a float batch (N×C×H×W, 0-1) with one generator; returns a new tensor."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float N×C×H×W batch, got {x.dtype} {tuple(x.shape)}")
    n = x.shape[0]
    if p.rotation > 0 or p.zoom_p > 0 or p.hflip_p > 0:
        theta = _affine(n, p, g, x.device).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if p.brightness > 0 or p.contrast > 0:
        x = _lighting(x, p, g)
    return x
