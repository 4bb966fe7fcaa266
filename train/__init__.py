"""Training stage: NIH ChestX-ray14 (or phantom films) -> DenseNet-121 checkpoint + metrics."""

from __future__ import annotations

__all__: list[str] = []
