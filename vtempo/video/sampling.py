"""Which frames a clip is made of: pure functions from a video length to lists of frame indices.

Every function returns valid indices into a video of `num_frames` frames (0 ≤ i < num_frames) and
never fails on a short video: indices repeat instead. The protocols follow the reference code of the
TSN family (the official TSN/TSM code and MMAction2's test pipelines):

- uniform (TSN segments): split the video into T equal segments; test takes each segment's centre,
  training a random frame of each.
- twice: the uniform test clip plus the segment starts (2T frames, two clips), as TSM's `--twice_sample`.
- dense: T frames at stride 64 // T inside a 64-frame window; test takes `clips` evenly spaced windows
  (10 in the papers), training one random window; short videos wrap around.
- stride: T frames at a fixed stride from `start`; a video too short repeats its last frame (the
  tempo-robustness protocol compares strides on the same clips).
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vtempo.protocol import Protocol

DENSE_WINDOW = 64


def _check(num_frames: int, frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")


def uniform_indices(num_frames: int, frames: int, train: bool = False, rng: random.Random | None = None) -> list[int]:
    """TSN segment sampling: one frame from each of `frames` equal segments."""
    _check(num_frames, frames)
    segment = num_frames / frames
    if not train:
        return [min(int(segment * i + segment / 2), num_frames - 1) for i in range(frames)]
    rng = rng or random.Random()
    indices = []
    for i in range(frames):
        start = int(segment * i)
        end = max(int(segment * (i + 1)), start + 1)  # a segment shorter than a frame still holds one
        indices.append(min(rng.randrange(start, end), num_frames - 1))
    return indices


def twice_indices(num_frames: int, frames: int) -> list[int]:
    """Test-time `twice` sampling: segment centres followed by segment starts (2 × frames indices)."""
    _check(num_frames, frames)
    segment = num_frames / frames
    starts = [min(int(segment * i), num_frames - 1) for i in range(frames)]
    return uniform_indices(num_frames, frames) + starts


def dense_window_starts(num_frames: int, clips: int = 1) -> list[int]:
    """Start frames of `clips` dense windows spread evenly over the video (floor of a linspace, as the
    reference code does); a single test clip takes the centre window."""
    last_start = max(num_frames - DENSE_WINDOW, 0)
    if clips == 1:
        return [last_start // 2]
    return [last_start * c // (clips - 1) for c in range(clips)]


def dense_indices(
    num_frames: int, frames: int, clips: int = 1, train: bool = False, rng: random.Random | None = None
) -> list[int]:
    """Dense sampling: `frames` frames at stride 64 // frames in 64-frame windows; at test `clips`
    windows, concatenated. A video shorter than the window wraps around, as the reference code does."""
    _check(num_frames, frames)
    stride = max(DENSE_WINDOW // frames, 1)
    if train:
        rng = rng or random.Random()
        starts = [rng.randrange(0, max(num_frames - DENSE_WINDOW, 0) + 1)]
    else:
        starts = dense_window_starts(num_frames, clips)
    return [(start + stride * i) % num_frames for start in starts for i in range(frames)]


def stride_indices(num_frames: int, frames: int, stride: int, start: int = 0) -> list[int]:
    """`frames` frames at a fixed stride from `start`; past the end the last frame repeats."""
    _check(num_frames, frames)
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    start = min(max(start, 0), num_frames - 1)
    return [min(start + stride * i, num_frames - 1) for i in range(frames)]


def clip_indices(
    protocol: Protocol,
    num_frames: int,
    frames: int,
    clips: int | None = None,
    train: bool = False,
    rng: random.Random | None = None,
) -> list[list[int]]:
    """The clips (each a list of `frames` indices) a registry `Protocol` takes from one video.

    `clips` overrides the protocol's clip count (`--views`). Uniform sampling with several clips gives
    each clip its own offset inside every segment, evenly spaced ((c + 0.5) / clips; one clip: the
    centre). Dense and stride sampling spread the clips' windows evenly over the video. `twice` gives
    its two clips (centres, starts), or the centres alone for clips=1. Training takes one random clip.
    """
    clips = clips or protocol.clips
    sampling = protocol.sampling
    if train:
        clips = 1
    if sampling == "dense":
        flat = dense_indices(num_frames, frames, clips, train, rng)
        return [flat[c * frames : (c + 1) * frames] for c in range(clips)]
    if sampling == "stride":
        if not protocol.stride:
            raise ValueError("stride sampling needs protocol.stride")
        span = protocol.stride * (frames - 1) + 1
        if train:
            rng = rng or random.Random()
            starts = [rng.randrange(0, max(num_frames - span, 0) + 1)]
        else:
            last_start = max(num_frames - span, 0)
            starts = [last_start // 2] if clips == 1 else [last_start * c // (clips - 1) for c in range(clips)]
        return [stride_indices(num_frames, frames, protocol.stride, s) for s in starts]
    if sampling == "twice":
        if train:
            return [uniform_indices(num_frames, frames, True, rng)]
        both = twice_indices(num_frames, frames)
        return [both[:frames], both[frames:]] if clips >= 2 else [both[:frames]]
    if sampling != "uniform":
        raise ValueError(f"unknown sampling {sampling!r}")
    if train or clips == 1:
        return [uniform_indices(num_frames, frames, train, rng)]
    return [segment_offset_indices(num_frames, frames, (c + 0.5) / clips) for c in range(clips)]


def segment_offset_indices(num_frames: int, frames: int, offset: float) -> list[int]:
    """One frame per segment at a relative position `offset` in [0, 1) of each segment."""
    _check(num_frames, frames)
    segment = num_frames / frames
    return [min(int(segment * (i + offset)), num_frames - 1) for i in range(frames)]
