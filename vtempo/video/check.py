"""`check-videos`: open and decode a video the way classification does, and report what was found."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vtempo.video import VideoError, VideoReader, open_video
from vtempo.video.discovery import FailedInput
from vtempo.video.readers import SequentialReader
from vtempo.video.sampling import uniform_indices
from vtempo.video.transforms import Preprocess


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
    verdict: str | None = None  # random access against sequential decoding, when verified
    detail: str | None = None  # the decoder's own words, when `error` puts them plainly

    @property
    def ok(self) -> bool:
        return self.error is None


VERIFY_SAMPLES = 16
"""Frames `check_video(verify=True)` compares: the first, the last and others drawn at random."""
COLOUR_TOLERANCE = 3
"""The largest mean absolute difference (0–255) between a frame and FFmpeg's own RGB conversion of it
that still counts as the same frame: OpenCV and decord convert colours their own way."""


def check_video(path: str | os.PathLike, frames: int = 8, backend: str = "auto", verify: bool = False,
                seed: int = 0) -> VideoCheck:
    """Open and decode a video the way `classify` does (uniform test sampling of `frames` frames).

    verify: also read `VERIFY_SAMPLES` frames by random access with that backend and compare them, and
    the frame count, with sequential decoding (`SequentialReader`: FFmpeg's frames in presentation
    order). A difference is an error: that backend would misread the file.
    """
    if isinstance(path, FailedInput):  # found unusable while collecting the inputs
        return VideoCheck(path.path, error=path.reason)
    path = Path(path)
    check = VideoCheck(path)
    max_side = Preprocess().decode_side
    try:
        with open_video(path, backend, max_side) as reader:
            reader.sample(lambda count: uniform_indices(count, frames))
            if verify:
                check.verdict = _verify(reader, max_side, random.Random(seed))
            check.backend, check.header_frames, check.num_frames = reader.backend, reader.header_frames, reader.num_frames
            check.fps, check.height, check.width = reader.fps, reader.height, reader.width
    except VideoError as error:
        check.error, check.detail = error.reason, error.detail
    except Exception as error:  # noqa: BLE001 - a check reports every failure, whatever raised it
        check.error = f"unexpected {type(error).__name__}: {error}"
    if check.verdict and not check.verdict.startswith("verified"):
        check.error = check.verdict
    if check.ok and check.header_frames and check.num_frames and check.header_frames != check.num_frames:
        check.note = check.note or f"header claims {check.header_frames} frames, {check.num_frames} decode"
    if check.ok and check.num_frames is not None and check.num_frames < frames:
        check.note = check.note or f"only {check.num_frames} frame(s): clips repeat frames"
    return check


def _verify(reader: VideoReader, max_side: int, rng: random.Random) -> str:
    """The verdict on `reader`'s random access against sequential decoding of the same file."""
    if reader.backend in ("frames", "sequential"):
        return f"verified: {reader.backend} reads every frame in order"

    def choose(count: int) -> list[int]:
        others = rng.sample(range(1, count - 1), min(VERIFY_SAMPLES - 2, max(count - 2, 0)))
        return sorted({0, count - 1, *others})

    indices, frames = reader.sample(choose)
    with SequentialReader(reader.path, max_side) as sequential:
        if sequential.num_frames != reader.num_frames:
            return (f"{reader.backend} counts {reader.num_frames} frames, sequential decoding "
                    f"{sequential.num_frames}")
        truth = sequential.get(indices)
    exact = reader.backend == "pyav"  # the same decoder and converter: the same bytes
    for index, frame, expected in zip(indices, frames, truth):
        difference = np.abs(frame.astype(np.int16) - expected).mean()
        if (difference > 0) if exact else (difference > COLOUR_TOLERANCE):
            return f"{reader.backend} returns a wrong frame {index} (mean difference {difference:.1f} from sequential decoding)"
    return f"verified: {len(indices)} frames read by {reader.backend} match sequential decoding"
