"""From decoded frames to model input: resize, crop into views, normalise. Pure functions.

Frames are (T, H, W, 3) uint8 RGB arrays as the readers return them. The test-time protocol follows
the official test scripts: resize the short side (or to an exact
height × width), then take one centre crop, three crops along the long side, or ten crops (four
corners and the centre, each also flipped). Every crop is described by a `CropBox` in the resized
frame, and `crop_boxes_in_frame` maps the boxes back onto the original frame (for Grad-CAM overlays).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch

from vtempo.protocol import CROPS, IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from vtempo.weights.registry import ModelEntry


@dataclass(frozen=True)
class Preprocess:
    """How frames become network input: the registry entry's resize, crop size and normalisation."""

    resize: tuple[int, ...] = (256,)  # one number: short side; two: exact (height, width)
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_entry(cls, entry: ModelEntry | None, input_size: int | None = None) -> Preprocess:
        """The entry's preprocessing (defaults for an architecture without one); `input_size`
        overrides the crop size and scales the resize with it (tiny test models)."""
        spec = cls() if entry is None else cls(tuple(entry.resize), entry.input_size, tuple(entry.mean), tuple(entry.std))
        if input_size is None or input_size == spec.input_size:
            return spec
        factor = input_size / spec.input_size
        return cls(tuple(max(round(side * factor), input_size) for side in spec.resize), input_size, spec.mean, spec.std)

    @property
    def decode_side(self) -> int:
        """The longest side to decode frames at: large inputs are decoded smaller, but at least twice
        the resize target for any aspect ratio."""
        return 2 * max(max(self.resize), self.input_size)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of a frame after the resize step."""
        if len(self.resize) == 2:
            return self.resize[0], self.resize[1]
        short = self.resize[0]
        if height <= width:
            return short, max(round(width * short / height), short)
        return max(round(height * short / width), short), short


@dataclass(frozen=True)
class CropBox:
    """A crop of a (resized) frame: rows top..top+height, columns left..left+width, maybe mirrored."""

    top: float
    left: float
    height: float
    width: float
    flip: bool = False


def crop_count(crops: str | int) -> int:
    """Number of crops for a registry crop name ("centre", "three", "ten") or a count (1, 3, 10)."""
    if isinstance(crops, str):
        if crops not in CROPS:
            raise ValueError(f"unknown crop {crops!r}: choose one of {', '.join(CROPS)}")
        return CROPS[crops]
    if crops not in CROPS.values():
        raise ValueError(f"crops must be 1, 3 or 10, got {crops}")
    return crops


def resize_frames(frames: np.ndarray, resize: Sequence[int]) -> np.ndarray:
    """Resize (T, H, W, 3) frames: one number sets the short side, two the exact (height, width)."""
    height, width = frames.shape[1:3]
    new_height, new_width = Preprocess(tuple(resize)).resized_size(height, width)
    if (new_height, new_width) == (height, width):
        return frames
    return np.stack([cv2.resize(f, (new_width, new_height), interpolation=cv2.INTER_LINEAR) for f in frames])


def crop_boxes(height: int, width: int, size: int, crops: str | int) -> list[CropBox]:
    """Square crops of side `size` from a height × width frame, as the reference test code takes them.

    1: the centre. 3: start, end and middle along the long side, centred on the short side.
    10: the four corners and the centre (steps of a quarter of the slack), each also mirrored.
    A frame smaller than `size` is handled by the caller padding it first (`pad_to`).
    """
    count = crop_count(crops)
    spare_h, spare_w = height - size, width - size
    if spare_h < 0 or spare_w < 0:
        raise ValueError(f"a {size}-pixel crop does not fit a {height}x{width} frame")
    if count == 1:
        offsets = [(spare_h // 2, spare_w // 2)]
    elif count == 3:
        if spare_w >= spare_h:  # landscape: left, right, middle
            step = spare_w // 2
            offsets = [(spare_h // 2, 0), (spare_h // 2, 2 * step), (spare_h // 2, step)]
        else:  # portrait: top, bottom, middle
            step = spare_h // 2
            offsets = [(0, spare_w // 2), (2 * step, spare_w // 2), (step, spare_w // 2)]
    else:
        step_h, step_w = spare_h // 4, spare_w // 4
        corners = [(0, 0), (0, 4 * step_w), (4 * step_h, 0), (4 * step_h, 4 * step_w), (2 * step_h, 2 * step_w)]
        boxes = [CropBox(top, left, size, size) for top, left in corners]
        return boxes + [CropBox(top, left, size, size, flip=True) for top, left in corners]
    return [CropBox(top, left, size, size) for top, left in offsets]


def pad_to(frames: np.ndarray, size: int) -> np.ndarray:
    """Pad (T, H, W, 3) frames with black so both sides are at least `size` (for exact resizes
    smaller than the crop)."""
    height, width = frames.shape[1:3]
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if not pad_h and not pad_w:
        return frames
    return np.pad(frames, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))


def apply_crop(frames: np.ndarray, box: CropBox) -> np.ndarray:
    top, left, height, width = int(box.top), int(box.left), int(box.height), int(box.width)
    crop = frames[:, top : top + height, left : left + width]
    return crop[:, :, ::-1] if box.flip else crop


def normalise(frames: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(..., H, W, 3) uint8 RGB → (..., 3, H, W) float32 normalised.

    mean/std given for [0, 1] pixels (TSM style: 0.485...) or for 0–255 pixels (MMAction2 style:
    123.675...); the scale is told apart by the mean's magnitude.
    """
    # The layout changes on the bytes, then one product converts and scales, and the offset is added in
    # place: faster than converting first (this runs once per clip, between model calls).
    pixels = torch.as_tensor(frames).movedim(-1, -3).contiguous()
    scale = 255.0 if max(mean) <= 1.0 else 1.0
    std_t = torch.tensor(std, dtype=torch.float64) * scale
    gain = (1.0 / std_t).float().view(3, 1, 1)
    offset = (-torch.tensor(mean, dtype=torch.float64) * scale / std_t).float().view(3, 1, 1)
    return torch.mul(pixels, gain).add_(offset).float()  # a new tensor even for float input: the caller's stays


def make_views(frames: np.ndarray, spec: Preprocess | ModelEntry | None, crops: str | int = 1) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames → (V, T, 3, S, S) float32 network input, one view per crop."""
    if not isinstance(spec, Preprocess):
        spec = Preprocess.from_entry(spec)
    resized = pad_to(resize_frames(frames, spec.resize), spec.input_size)
    boxes = crop_boxes(resized.shape[1], resized.shape[2], spec.input_size, crops)
    views = np.stack([apply_crop(resized, box) for box in boxes])
    return normalise(views, spec.mean, spec.std)


def crop_boxes_in_frame(height: int, width: int, spec: Preprocess | ModelEntry | None, crops: str | int = 1) -> list[CropBox]:
    """The crops `make_views` takes, in the coordinates of the original height × width frame."""
    if not isinstance(spec, Preprocess):
        spec = Preprocess.from_entry(spec)
    new_height, new_width = spec.resized_size(height, width)
    pad_top = max(spec.input_size - new_height, 0) // 2
    pad_left = max(spec.input_size - new_width, 0) // 2
    scale_h, scale_w = height / new_height, width / new_width
    boxes = crop_boxes(max(new_height, spec.input_size), max(new_width, spec.input_size), spec.input_size, crops)
    return [
        CropBox((box.top - pad_top) * scale_h, (box.left - pad_left) * scale_w, box.height * scale_h,
                box.width * scale_w, box.flip)
        for box in boxes
    ]
