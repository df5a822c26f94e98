"""Front-to-back frame sources: a video file, a camera or a stream URL, read one frame at a time.

The random-access readers (`vtempo.video.readers`) count or index a file's frames before the first
one is returned; a two-hour file or a live stream needs the opposite: decode once, in order, and hold
nothing but the frame just read. `grab()` advances one frame (decoding it, without the colour
conversion), `retrieve()` returns that frame as RGB, so frames nobody needs cost only their decode.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import cv2
import numpy as np

from vtempo.video.images import ImageError, check_pixels, pixel_limit
from vtempo.video.readers import (
    OPENCV_FAILURES_AT_END,
    CannotOpen,
    VideoError,
    display_path,
    quiet_stderr,
    scaled_size,
)

STREAM_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
OPEN_TIMEOUT_MS, READ_TIMEOUT_MS = 30_000, 5_000  # a thin stream takes seconds to probe


def _valid_fps(value: float) -> float | None:
    return float(value) if value and 0.1 < value < 1000 else None


class SequentialVideo:
    """Frames in decode order from anything OpenCV/FFmpeg opens: a file path, a camera index
    (`0`) or a stream URL (rtsp://, http://, udp://, tcp://...).

    `fps` is the container's rate (None when it gives none); `header_frames` what the container claims
    (a hint: live sources have none); `index` the number of the frame last grabbed (-1 before the first);
    `position` its timestamp in seconds as the decoder reports it (index / fps when it reports none).
    `live` is true for cameras and URLs: their end means the source stopped, not the video ended.
    """

    def __init__(self, source: str | int | os.PathLike, max_side: int | None = None, quiet: bool = True,
                 max_pixels: int | None = None):
        self.source = source
        self.quiet = quiet  # silence the decoder's stderr around each grab (not from a thread: it swaps fd 2)
        self.max_side = max_side
        text = str(source)
        self.live = isinstance(source, int) or text.isdigit() or bool(STREAM_URL.match(text))
        self.name = text if self.live else display_path(source)
        try:
            self._pixel_limit = pixel_limit(max_pixels)
        except ImageError as error:
            raise VideoError(self.name, str(error)) from None
        if not self.live:
            path = Path(source)
            if not path.exists():
                raise CannotOpen(path, "no such file")
            if path.is_dir():
                raise CannotOpen(path, "is a folder, not a video file")
        with quiet_stderr():
            if isinstance(source, int) or text.isdigit():
                self._capture = cv2.VideoCapture(int(text))
            elif self.live:  # a URL: give up on a silent server instead of waiting for ever
                self._capture = cv2.VideoCapture(text, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                                                                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS])
            else:
                self._capture = cv2.VideoCapture(text, cv2.CAP_FFMPEG)
        if not self._capture.isOpened():
            self._capture.release()
            raise CannotOpen(text if self.live else Path(source),
                             "OpenCV cannot open it" + (" (no such camera or nothing served there)" if self.live else ""))
        # the same limit as the random-access readers, from the container before the first decode
        self._check_pixels(int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
        self.fps = _valid_fps(self._capture.get(cv2.CAP_PROP_FPS))
        header = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.header_frames = header if header > 0 and not self.live else None
        self.index = -1
        self.position = 0.0

    def _check_pixels(self, height: int, width: int) -> None:
        try:
            check_pixels(height, width, self._pixel_limit)
        except ImageError as error:
            self.close()
            raise VideoError(self.name, str(error)) from None

    def grab(self) -> bool:
        """Advance one frame; False at the end of the video or when the source stops."""
        if self._capture is None:
            return False
        # a file's grab fails on a packet that does not decode and goes on after it, as the ffmpeg
        # program does: only failures in a row end it; a live source's failure means it stopped
        with quiet_stderr() if self.quiet else contextlib.nullcontext():
            ok = any(self._capture.grab() for _ in range(1 if self.live else OPENCV_FAILURES_AT_END))
        if not ok:
            return False
        self.index += 1
        msec = self._capture.get(cv2.CAP_PROP_POS_MSEC)
        self.position = msec / 1000 if msec and msec > 0 else self.index / (self.fps or 25.0)
        return True

    def retrieve(self) -> np.ndarray:
        """The frame last grabbed, RGB uint8 (H, W, 3), its longer side at most `max_side`."""
        ok, frame = self._capture.retrieve()
        if not ok or frame is None:
            raise VideoError(self.name, f"frame {self.index} does not decode")
        self._check_pixels(frame.shape[0], frame.shape[1])  # a stream may change size part-way
        height, width = scaled_size(frame.shape[0], frame.shape[1], self.max_side)
        if (height, width) != frame.shape[:2]:
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def read(self) -> np.ndarray | None:
        """grab() and retrieve(); None at the end."""
        return self.retrieve() if self.grab() else None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> SequentialVideo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
