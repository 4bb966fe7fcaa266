"""Conversion stage: checkpoint -> ONNX -> TFLite fp32 + full-int8 -> Edge TPU -> model bundle."""

from __future__ import annotations

__all__: list[str] = []
