"""vtempo: video action recognition with temporal-module CNNs."""
# OpenCV before torch: with torch's libraries loaded first, OpenCV's FFmpeg never opens a udp:// stream.
import cv2  # noqa: F401,I001
from vtempo.api import create_model, list_models
from vtempo.weights.registry import get_entry, load_registry

__version__ = "0.1.0"
__all__ = ["create_model", "get_entry", "list_models", "load_registry"]
