"""Labelled video sets for `train`, `evaluate` and `robustness`.

A set is either a folder of class folders (`DATA/<class>/<video>`; class order from `DATA/labels.txt`
when present, else sorted folder names) or a list file of `path label` lines (paths relative to the
list file; labels are class indices, or class names when a labels file is known: `--labels`, else
`labels.txt` beside the list file).

`ClipDataset` decodes the frames a sampling protocol picks and returns a float tensor ready for the
model; test views are made exactly as `classify` makes them (`vtempo.video.transforms`), training
clips get a random multi-scale crop (never a horizontal flip unless asked: the direction of motion is
the label in Something-Something and in the synthetic benchmark).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from vtempo.errors import UsageError, VtempoError
from vtempo.protocol import CROPS, Protocol
from vtempo.video import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoError,
    clip_indices,
    open_video,
)
from vtempo.video.transforms import Preprocess, make_views, normalise, resize_frames

TRAIN_SCALES = (1.0, 0.875, 0.75, 0.66)  # TSM's multi-scale crop


@dataclass(frozen=True)
class VideoSet:
    """Videos with integer labels and the class names those labels index."""

    videos: list[tuple[Path, int]]
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.videos)

    def subset(self, indices: Sequence[int], source: str) -> "VideoSet":
        return VideoSet([self.videos[i] for i in indices], self.classes, source)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise VtempoError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise VtempoError(f"{path}: cannot read ({error.strerror or error})") from None


def read_class_names(path: str | os.PathLike) -> list[str]:
    names = [line.strip() for line in _read_lines(Path(path)) if line.strip()]
    if not names:
        raise VtempoError(f"{path}: no class names in the labels file")
    if len(set(names)) != len(names):
        raise VtempoError(f"{path}: class names repeat")
    return names


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS or (
        path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())
    )


def read_video_set(data: str | os.PathLike, labels: str | os.PathLike | None = None) -> VideoSet:
    """A set from class folders or a `path label` list file; errors name the file and the reason."""
    path = Path(data)
    if not path.exists():
        raise VtempoError(f"{path}: no such file or folder")
    if path.is_dir():
        return _class_folders(path, labels)
    return _list_file(path, labels)


def _class_folders(root: Path, labels: str | os.PathLike | None) -> VideoSet:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    label_file = Path(labels) if labels else root / "labels.txt"
    if label_file.is_file():
        classes = read_class_names(label_file)
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise VtempoError(f"{root}: no folder for class {missing[0]!r} listed in {label_file}")
    else:
        classes = [p.name for p in folders]
    videos = []
    for label, name in enumerate(classes):
        videos += [(p, label) for p in sorted((root / name).iterdir()) if _is_video(p)]
    if not videos:
        raise UsageError(f"{root}: no videos found in class folders (expected {root}/<class>/<video>)")
    return VideoSet(videos, classes, str(root))


def _list_file(path: Path, labels: str | os.PathLike | None) -> VideoSet:
    label_file = Path(labels) if labels else path.parent / "labels.txt"
    classes = read_class_names(label_file) if label_file.is_file() else None
    index = {name: i for i, name in enumerate(classes or [])}
    videos = []
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise VtempoError(f"{path}:{number}: expected `path label`, got {line.strip()!r}")
        name, label_text = parts
        if label_text.lstrip("-").isdigit():
            label = int(label_text)
        elif label_text in index:
            label = index[label_text]
        else:
            raise VtempoError(f"{path}:{number}: label {label_text!r} is neither a class index nor a class name")
        if label < 0 or classes is not None and label >= len(classes):
            raise VtempoError(f"{path}:{number}: label {label} is outside 0..{len(classes or [0]) - 1}")
        video = Path(name.strip())
        videos.append((video if video.is_absolute() else path.parent / video, label))
    if not videos:
        raise UsageError(f"{path}: no `path label` lines in the list file")
    if classes is None:
        classes = [str(i) for i in range(max(label for _, label in videos) + 1)]
    return VideoSet(videos, classes, str(path))


def split_video_set(videos: VideoSet, fraction: float, seed: int = 0) -> tuple[VideoSet, VideoSet]:
    """A stratified (train, validation) split holding out `fraction` of every class, seeded."""
    if not 0 < fraction < 1:
        raise UsageError(f"the validation split must be between 0 and 1, got {fraction}")
    rng = random.Random(seed)
    train, val = [], []
    for label in range(len(videos.classes)):
        members = [i for i, (_, lab) in enumerate(videos.videos) if lab == label]
        rng.shuffle(members)
        held = round(len(members) * fraction) if len(members) > 1 else 0
        val += members[:held]
        train += members[held:]
    if not val:
        raise UsageError(f"{videos.source}: too few videos to hold out {fraction:.0%} for validation")
    return videos.subset(sorted(train), f"{videos.source} (train split)"), videos.subset(sorted(val), f"{videos.source} (val split)")


# --------------------------------------------------------------------------- pixels


def train_crop(frames: np.ndarray, pre: Preprocess, rng: random.Random, flip: bool = False,
               scales: Sequence[float] = TRAIN_SCALES) -> np.ndarray:
    """TSM's multi-scale crop: crop sides drawn from `scales` of the short side (their aspect ratio
    distorted by at most one scale step), placed at one of 13 fixed positions, resized to the input size."""
    frames = resize_frames(frames, pre.resize)
    height, width = frames.shape[1:3]
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
    crop_h, crop_w = rng.choice(pairs)
    step_h, step_w = (height - crop_h) // 4, (width - crop_w) // 4
    positions = [(a * step_h, b * step_w) for a, b in
                 [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (0, 2), (4, 2), (2, 0), (2, 4), (1, 1), (1, 3), (3, 1), (3, 3)]]
    top, left = rng.choice(positions)
    size = pre.input_size
    out = np.stack([cv2.resize(f[top : top + crop_h, left : left + crop_w], (size, size),
                               interpolation=cv2.INTER_LINEAR) for f in frames])
    if flip and rng.random() < 0.5:
        out = out[:, :, ::-1]
    return out


# --------------------------------------------------------------------------- datasets


class ClipDataset(torch.utils.data.Dataset):
    """Decodes one clip per video (training) or the protocol's test views (evaluation).

    Training items are (T, 3, H, W); test items are (V, T, 3, H, W) with V = clips × crops. Randomness
    comes from (seed, epoch, index), so a run is reproducible whatever the number of workers or ranks.
    Items are (tensor, label, index, None), or (None, label, index, reason) for a video that fails to
    decode, so one bad file never ends a run.
    """

    def __init__(self, videos: VideoSet, frames: int, protocol: Protocol, pre: Preprocess, train: bool,
                 clips: int | None = None, crop: str | None = None, seed: int = 0, flip: bool = False,
                 cache: bool = False, scales: Sequence[float] = TRAIN_SCALES):
        if crop is not None and crop not in CROPS:
            raise UsageError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
        self.videos, self.frames, self.protocol, self.pre, self.train = videos, frames, protocol, pre, train
        self.clips, self.crop = clips or protocol.clips, crop or protocol.crop
        self.seed, self.flip, self.scales, self.epoch = seed, flip, tuple(scales), 0
        # cache: every frame of each video, decoded once and kept (small sets, in-process loading only)
        self.cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.videos)

    def _decode(self, index: int, rng: random.Random) -> tuple[list[list[int]], np.ndarray]:
        def choose(count: int) -> list[list[int]]:
            return clip_indices(self.protocol, count, self.frames, self.clips, self.train, rng)

        if self.cache is None:
            with open_video(self.videos.videos[index][0]) as reader:
                return reader.sample(choose)
        if index not in self.cache:
            with open_video(self.videos.videos[index][0]) as reader:
                self.cache[index] = reader.sample(range)[1]
        every = self.cache[index]
        clips = choose(len(every))
        return clips, every[[i for clip in clips for i in clip]]

    def __getitem__(self, index: int):
        label = self.videos.videos[index][1]
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
        try:
            clips, decoded = self._decode(index, rng)
        except VideoError as error:
            return None, label, index, str(error)
        clips_frames = decoded.reshape(len(clips), self.frames, *decoded.shape[1:])
        if self.train:
            crop = train_crop(clips_frames[0], self.pre, rng, self.flip, self.scales)
            return normalise(crop, self.pre.mean, self.pre.std), label, index, None
        views = torch.cat([make_views(clip, self.pre, self.crop) for clip in clips_frames])
        return views, label, index, None


__all__ = ["ClipDataset", "VideoSet", "read_class_names", "read_video_set", "split_video_set", "train_crop"]


def collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """Stack the clips that decoded; failures travel as (index, reason) so the run can report them."""
    good = [item for item in items if item[0] is not None]
    failed = [(item[2], item[3]) for item in items if item[0] is None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), failed
    clips = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good])
    indices = torch.tensor([item[2] for item in good])
    return clips, labels, indices, failed
