"""The heatmap side of a scan: the ``Explainer`` the service path calls, and ``CamExplainer``, the
real one (edge.cam's CPU Grad-CAM on the bundle's head, edge.overlay's PNGs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["OVERLAY_SIDE", "CamExplainer", "Explainer"]

OVERLAY_SIDE = 512  # px, longer side of an overlay PNG: the 7×7 heatmap needs no more, and it fits a Pi's screen


class Explainer(Protocol):
    """CPU Grad-CAM for one model (edge.cam), and the overlay writer (edge.overlay)."""

    def cam(self, features: np.ndarray, label_index: int) -> np.ndarray: ...
    def peaks(self, cam: np.ndarray, film_shape: tuple[int, int]) -> list[tuple[int, int]]: ...
    def write_overlay(self, path: Path, film: np.ndarray, cam: np.ndarray, label: str,
                      peaks: list[tuple[int, int]]) -> None: ...


class CamExplainer:
    """The real Explainer: edge.cam's Grad-CAM on the bundle's head, edge.overlay's PNGs."""

    def __init__(self, bundle: Any, head: Any = None):
        """``head``: the model's own (edge.runtime.Model.head, the one for its features) when it has one."""
        from edge import cam, overlay
        self._cam, self._overlay = cam, overlay
        self.head, self.task = head if head is not None else cam.load_head(bundle), bundle.task

    def cam(self, features: np.ndarray, label_index: int) -> np.ndarray:
        return self._cam.grad_cam(self.head, features, label_index, self.task)

    def peaks(self, cam: np.ndarray, film_shape: tuple[int, int]) -> list[tuple[int, int]]:
        """The heatmap's peaks in film pixels, hottest first (edge.cam.cam_peaks)."""
        return [(int(x), int(y)) for x, y in self._cam.cam_peaks(cam, film_shape)]

    def write_overlay(self, path: Path, film: np.ndarray, cam: np.ndarray, label: str,
                      peaks: list[tuple[int, int]]) -> None:
        """PNG at most OVERLAY_SIDE px, fast zlib level (a large level-6 PNG costs more than an invoke)."""
        cam_film = self._cam.upsample(cam, self._overlay.overlay_shape(film.shape, OVERLAY_SIDE))
        self._overlay.save_overlay_png(path, film, cam_film, label=label, peak=peaks[0], others=peaks[1:],
                                       max_side=OVERLAY_SIDE)
