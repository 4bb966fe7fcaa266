"""The heatmap side of a scan: the ``Explainer`` the service path calls, and ``CamExplainer``, the
real one (edge.cam's CPU Grad-CAM on the bundle's head, edge.overlay's pictures)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["OVERLAY_SIDE", "CamExplainer", "Explainer"]

OVERLAY_SIDE = 512  # px, longer side of an overlay: the 7×7 heatmap needs no more, and it fits a Pi's screen
_HEAT_STEP = 8  # the heatmap is spread over the overlay at 1/8 of its pixels, then scaled up as uint8 (Pillow)


class Explainer(Protocol):
    """CPU Grad-CAM for one model (edge.cam), and the overlay writer (edge.overlay).

    An explainer may also offer ``overlay_suffix`` (the file extension of its overlays, ".png" when absent)
    and ``render_overlays(film, film_shape, cams) -> [bytes]`` (every overlay of one film, encoded, no file
    written: edge.service then writes the bytes); without it the service calls ``write_overlay`` per overlay.
    """

    def cam(self, features: np.ndarray, label_index: int) -> np.ndarray: ...
    def peaks(self, cam: np.ndarray, film_shape: tuple[int, int]) -> list[tuple[int, int]]: ...
    def write_overlay(self, path: Path, film: np.ndarray, cam: np.ndarray, label: str,
                      peaks: list[tuple[int, int]]) -> None: ...


class CamExplainer:
    """The real Explainer: edge.cam's Grad-CAM on the bundle's head, edge.overlay's JPEG overlays."""

    overlay_suffix = ".jpg"

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

    def render_overlays(self, film: np.ndarray, film_shape: tuple[int, int],
                        cams: Sequence[tuple[str, np.ndarray, list]]) -> list[bytes]:
        """JPEGs at most OVERLAY_SIDE px of each (label, 7×7 cam, peaks) over the film, which is scaled once.

        ``film_shape``: the film's full (H, W), in whose pixels the peaks are (``film`` may be a reduced decode).
        """
        ov = self._overlay
        shape = ov.overlay_shape(film_shape, OVERLAY_SIDE)
        view, scale = ov.film_view(film, shape), shape[1] / film_shape[1]
        grid = (max(1, -(-shape[0] // _HEAT_STEP)), max(1, -(-shape[1] // _HEAT_STEP)))
        return [ov.jpeg_bytes(ov.overlay_image(view, self._cam.upsample(cam, grid), scale, label=label, peak=peaks[0],
                                               others=peaks[1:]))
                for label, cam, peaks in cams]

    def write_overlay(self, path: Path, film: np.ndarray, cam: np.ndarray, label: str,
                      peaks: list[tuple[int, int]]) -> None:
        """One overlay of a full-size film, as ``render_overlays`` makes it, written atomically."""
        from edge.fsio import atomic_write_bytes
        atomic_write_bytes(path, self.render_overlays(film, film.shape, [(label, cam, peaks)])[0])
