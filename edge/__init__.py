"""Chest X-ray findings on the edge: films in, scores and heatmaps out.

Runs on a Raspberry Pi with only numpy, Pillow, pydicom and a TFLite interpreter
(ai-edge-litert, else tflite-runtime). Never imports torch, tensorflow or onnx.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
