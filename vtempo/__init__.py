"""vtempo: video action recognition with temporal-module CNNs.

    import vtempo
    rec = vtempo.load("tsm-demo")
    rec.classify("clip.mp4")

The names below are imported on first use, so `import vtempo` (and `vtempo --version`) stays quick.
"""
from __future__ import annotations

import importlib

# OpenCV before torch: with torch's libraries loaded first, OpenCV's FFmpeg never opens a udp:// stream.
import cv2  # noqa: F401,I001

__version__ = "0.1.0"

_EXPORTS = {
    "load": "vtempo.inference.recognizer",
    "Recognizer": "vtempo.inference.recognizer",
    "create_model": "vtempo.inference.recognizer",
    "list_models": "vtempo.inference.recognizer",
    "Prediction": "vtempo.inference.results",
    "VideoResult": "vtempo.inference.results",
    "get_entry": "vtempo.weights.registry",
    "load_registry": "vtempo.weights.registry",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vtempo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
