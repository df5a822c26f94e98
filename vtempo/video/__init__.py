"""Video input: frame-accurate readers, frame sampling and the transforms that make model views."""
from __future__ import annotations

from vtempo.video.readers import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    FrameCountChanged,
    VideoError,
    VideoReader,
    auto_backends,
    available_backends,
    display_path,
    open_video,
)
from vtempo.video.sampling import (
    clip_indices,
    dense_indices,
    stride_indices,
    twice_indices,
    uniform_indices,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FrameCountChanged",
    "VideoError",
    "VideoReader",
    "auto_backends",
    "available_backends",
    "clip_indices",
    "dense_indices",
    "display_path",
    "open_video",
    "stride_indices",
    "twice_indices",
    "uniform_indices",
]
