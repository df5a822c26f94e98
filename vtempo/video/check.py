"""`check-videos`: open and decode a video the way classification does, and report what was found."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vtempo.inference.decoding import ViewPlan
from vtempo.video import VideoError, open_video
from vtempo.video.discovery import FailedInput
from vtempo.video.transforms import Preprocess
from vtempo.weights.registry import Protocol


@dataclass
class VideoCheck:
    """What `check-videos` found for one input."""

    path: Path
    error: str | None = None
    backend: str | None = None
    header_frames: int | None = None
    num_frames: int | None = None  # decodable frames
    fps: float | None = None
    height: int | None = None
    width: int | None = None
    note: str | None = None
    detail: str | None = None  # the decoder's own words, when `error` puts them plainly

    @property
    def ok(self) -> bool:
        return self.error is None


def check_video(path: str | os.PathLike, frames: int = 8, backend: str = "auto", thorough: bool = False) -> VideoCheck:
    """Open and decode a video the way `classify` does (uniform test sampling of `frames` frames).

    thorough: also decode every frame in order (OpenCV) and compare the count with the header's.
    """
    from vtempo.video.readers import OpenCVReader
    from vtempo.video.sampling import uniform_indices

    if isinstance(path, FailedInput):  # found unusable while collecting the inputs
        return VideoCheck(path.path, error=path.reason)
    path = Path(path)
    check = VideoCheck(path)
    try:
        with open_video(path, backend, ViewPlan(frames, Protocol(), 1, "centre", Preprocess()).max_side) as reader:
            check.backend, check.header_frames, check.num_frames = reader.backend, reader.header_frames, reader.num_frames
            check.fps, check.height, check.width = reader.fps, reader.height, reader.width
            reader.get(uniform_indices(reader.num_frames, frames))
        if thorough and reader.backend not in ("frames", "opencv"):
            with OpenCVReader(path) as sequential:
                if sequential.num_frames != reader.num_frames:
                    check.note = f"{sequential.num_frames} frames decode in order, {reader.backend} reads {reader.num_frames}"
                check.num_frames = min(check.num_frames, sequential.num_frames)
    except VideoError as error:
        check.error, check.detail = error.reason, error.detail
    except Exception as error:  # noqa: BLE001 - a check reports every failure, whatever raised it
        check.error = f"unexpected {type(error).__name__}: {error}"
    if check.ok and check.header_frames and check.num_frames and check.header_frames != check.num_frames:
        check.note = check.note or f"header claims {check.header_frames} frames, {check.num_frames} decode"
    if check.ok and check.num_frames is not None and check.num_frames < frames:
        check.note = check.note or f"only {check.num_frames} frame(s): clips repeat frames"
    return check
