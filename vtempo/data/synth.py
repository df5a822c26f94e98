"""A synthetic video benchmark where temporal order and tempo decide the class.

In the spirit of Something-Something, the classes come in mirrored pairs that differ only in the
direction of time: `move_right` is `move_left` played backwards, `grow` is `shrink` played backwards,
and so on. A model that looks at frames one at a time (TSN) sees the same distribution of frames for
both classes of a pair and cannot do better than chance between them; a temporal model can.

Every clip has its own tempo (drawn from `speed`), object shape, colour, size, start position and
orientation, a textured background with static clutter, and a small per-frame camera jitter. The
motion runs through the whole clip, so any window of it shows the action, and a larger sampling
stride shows the same action at a faster apparent tempo (the TCM paper's robustness protocol).

`render_clip` returns the frames and the moving object's bounding box in every frame (for Grad-CAM
checks); `generate` writes a labelled set of .mp4 files (MPEG-4 Part 2, which decord and OpenCV read
frame-accurately), a `list.txt` of `path label` lines and a `labels.txt`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from vtempo.errors import UsageError

# Mirrored pairs: the second class of each pair is the first one played backwards.
PAIRS: tuple[tuple[str, str], ...] = (
    ("move_right", "move_left"),
    ("move_down", "move_up"),
    ("rotate_cw", "rotate_ccw"),
    ("grow", "shrink"),
    ("separate", "approach"),
)
CLASSES: tuple[str, ...] = tuple(name for pair in PAIRS for name in pair)
MIRROR: dict[str, str] = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}

# Per-frame rates at tempo 1.0, as fractions of the frame size (rotation in degrees, scale in log units).
TRANSLATION_RATE = 0.014
ROTATION_RATE = 10.0
SCALE_RATE = 0.035
APPROACH_RATE = 0.008  # per object, so the gap changes at twice this rate
CLUTTER_OPACITY = 0.55

DEFAULT_FRAMES = 32
DEFAULT_SIZE = 128
DEFAULT_SPEED = (0.5, 1.5)
FPS = 12  # Something-Something V1 was released at 12 fps

_SHAPES: dict[str, np.ndarray] = {
    # Unit polygons (x right, y down), none of them symmetric under rotation so orientation is visible.
    "triangle": np.array([[0.0, -1.0], [0.75, 0.8], [-0.75, 0.8]]),
    "arrow": np.array([[1.0, 0.0], [0.1, -0.8], [0.1, -0.35], [-1.0, -0.35], [-1.0, 0.35], [0.1, 0.35], [0.1, 0.8]]),
    "ell": np.array([[-0.8, -1.0], [-0.2, -1.0], [-0.2, 0.4], [0.8, 0.4], [0.8, 1.0], [-0.8, 1.0]]),
    "kite": np.array([[0.0, -1.0], [0.6, -0.2], [0.0, 1.0], [-0.6, -0.2]]),
    "flag": np.array([[-0.9, -1.0], [0.9, -0.5], [-0.3, 0.0], [-0.3, 1.0], [-0.9, 1.0]]),
    "house": np.array([[0.0, -1.0], [0.9, -0.2], [0.9, 1.0], [-0.9, 1.0], [-0.9, -0.2]]),
}


@dataclass(frozen=True)
class Clip:
    """One rendered clip: RGB frames (T, H, W, 3) uint8 and the moving object's box per frame.

    `boxes` is (T, 4) int [x0, y0, x1, y1] in pixel coordinates of each frame (camera jitter included),
    inclusive-exclusive and clipped to the frame; for the two-object classes it is the union of both.
    """

    frames: np.ndarray
    boxes: np.ndarray
    label: int
    name: str
    tempo: float


def class_names(classes: int | str | Sequence[str] = len(CLASSES)) -> list[str]:
    """The first N benchmark classes, or the classes named (a list or a comma-separated string)."""
    if isinstance(classes, int):
        if not 2 <= classes <= len(CLASSES):
            raise UsageError(f"classes must be between 2 and {len(CLASSES)}, got {classes}")
        return list(CLASSES[:classes])
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    unknown = [n for n in names if n not in CLASSES]
    if unknown or len(set(names)) != len(names) or len(names) < 2:
        raise UsageError(f"classes must be at least two distinct names from {', '.join(CLASSES)}; got {names}")
    return names


def _colour(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> tuple[int, ...]:
    hsv = np.uint8([[[rng.integers(0, 180), 255 * rng.uniform(*saturation), 255 * rng.uniform(*value)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth, weakly coloured noise with static clutter (lines, blobs, small polygons) drawn on it."""
    cells = (int(rng.integers(3, 7)), int(rng.integers(3, 7)))
    grey = rng.uniform(60, 190, size=(*cells, 1))
    tint = rng.uniform(-30, 30, size=(*cells, 3))
    base = cv2.resize((grey + tint).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.normal(0, 8, size=(height // 4, width // 4, 3)).astype(np.float32), (width, height))
    plain = np.clip(base + fine, 0, 255).astype(np.uint8)
    canvas = plain.copy()
    scale = min(height, width)
    for _ in range(rng.integers(6, 14)):
        colour = _colour(rng, (0.0, 0.45), (0.25, 0.85))
        kind = rng.integers(0, 3)
        if kind == 0:
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(canvas, p1, p2, colour, int(rng.integers(1, max(2, scale // 40))), cv2.LINE_AA)
        elif kind == 1:
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(2, scale // 10 + 3)), int(rng.integers(2, scale // 10 + 3)))
            cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            shape = _SHAPES[list(_SHAPES)[rng.integers(0, len(_SHAPES))]]
            points = _place(shape, (rng.uniform(0, width), rng.uniform(0, height)), rng.uniform(0.03, 0.07) * scale,
                            rng.uniform(0, 360))
            cv2.fillPoly(canvas, [np.round(points * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)
    # clutter at part opacity: visible texture, but fainter than the (opaque, outlined) moving objects
    return cv2.addWeighted(canvas, CLUTTER_OPACITY, plain, 1 - CLUTTER_OPACITY, 0)


def _place(shape: np.ndarray, centre: tuple[float, float], radius: float, angle_deg: float) -> np.ndarray:
    angle = math.radians(angle_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return shape @ rotation.T * radius + np.asarray(centre)


@dataclass
class _Sprite:
    shape: np.ndarray
    colour: tuple[int, ...]
    marker: tuple[int, ...]
    centres: np.ndarray  # (T, 2)
    radii: np.ndarray  # (T,)
    angles: np.ndarray  # (T,) degrees

    def reversed(self) -> "_Sprite":
        return _Sprite(self.shape, self.colour, self.marker, self.centres[::-1], self.radii[::-1], self.angles[::-1])


def _sprite(rng: np.random.Generator, frames: int, size: int, tempo: float, kind: str) -> list[_Sprite]:
    """The object(s) of the first class of a pair, as per-frame centre, radius and angle."""
    steps = np.arange(frames, dtype=np.float64)
    shape = _SHAPES[list(_SHAPES)[rng.integers(0, len(_SHAPES))]]
    colour = _colour(rng, (0.65, 1.0), (0.7, 1.0))
    marker = tuple(255 - c for c in colour)
    radius = rng.uniform(0.07, 0.11) * size
    angle0 = rng.uniform(0, 360)
    spin = rng.uniform(-0.5, 0.5) * (kind != "rotate")  # a little idle rotation hides nothing
    angles = angle0 + spin * steps
    margin = 1.15 * radius
    if kind == "translate":  # along +x; the caller swaps axes for the vertical pair
        travel = TRANSLATION_RATE * tempo * size * (frames - 1)
        drift = rng.uniform(-0.15, 0.15) * travel
        x0 = rng.uniform(margin, max(margin, size - margin - travel))
        y0 = rng.uniform(margin + max(0.0, -drift), size - margin - max(0.0, drift))
        centres = np.stack([x0 + travel * steps / (frames - 1), y0 + drift * steps / (frames - 1)], 1)
        return [_Sprite(shape, colour, marker, centres, np.full(frames, radius), angles)]
    if kind == "rotate":  # clockwise on screen (y points down, so a growing angle turns clockwise)
        angles = angle0 + ROTATION_RATE * tempo * steps
        centre = rng.uniform(margin + 0.1 * size, size - margin - 0.1 * size, size=2)
        radius = rng.uniform(0.12, 0.18) * size
        return [_Sprite(shape, colour, marker, np.tile(centre, (frames, 1)), np.full(frames, radius), angles)]
    if kind == "scale":  # growing
        growth = SCALE_RATE * tempo * (frames - 1)
        r_end = rng.uniform(0.16, 0.22) * size
        radii = r_end * np.exp(growth * (steps / (frames - 1) - 1.0))
        centre = rng.uniform(1.1 * r_end, size - 1.1 * r_end, size=2)
        return [_Sprite(shape, colour, marker, np.tile(centre, (frames, 1)), radii, angles)]
    if kind == "separate":  # two objects moving apart along a random axis
        radius = rng.uniform(0.06, 0.085) * size
        gap0 = rng.uniform(2.6, 3.4) * radius
        gap = gap0 + 2 * APPROACH_RATE * tempo * size * steps
        direction = rng.uniform(0, 2 * math.pi)
        unit = np.array([math.cos(direction), math.sin(direction)])
        half = np.abs(unit) * gap[-1] / 2 + 1.15 * radius  # extent of the pair around its midpoint at the end
        mid = np.array([rng.uniform(min(half[0], size / 2), max(size - half[0], size / 2)),
                        rng.uniform(min(half[1], size / 2), max(size - half[1], size / 2))])
        colour2 = _colour(rng, (0.65, 1.0), (0.7, 1.0))
        shape2 = _SHAPES[list(_SHAPES)[rng.integers(0, len(_SHAPES))]]
        return [
            _Sprite(shape, colour, marker, mid - np.outer(gap / 2, unit), np.full(frames, radius), angles),
            _Sprite(shape2, colour2, tuple(255 - c for c in colour2), mid + np.outer(gap / 2, unit),
                    np.full(frames, radius), angles[::-1] + 90),
        ]
    raise ValueError(kind)


_PAIR_KIND = {"move_right": "translate", "move_down": "translate", "rotate_cw": "rotate", "grow": "scale",
              "separate": "separate"}


def render_clip(
    name: str | int,
    seed: int | Sequence[int] | np.random.Generator = 0,
    frames: int = DEFAULT_FRAMES,
    size: int = DEFAULT_SIZE,
    speed: tuple[float, float] = DEFAULT_SPEED,
) -> Clip:
    """Render one clip of class `name` (or its index in CLASSES): frames, per-frame boxes, tempo."""
    if isinstance(name, int):
        name = CLASSES[name]
    if name not in MIRROR:
        raise UsageError(f"unknown synthetic class {name!r}; known: {', '.join(CLASSES)}")
    if frames < 2 or size < 32:
        raise UsageError(f"a clip needs at least 2 frames and 32 pixels, got {frames} frames of {size} px")
    if not 0 < speed[0] <= speed[1]:
        raise UsageError(f"speed range must be 0 < low <= high, got {speed}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    forward = name in _PAIR_KIND
    base = name if forward else MIRROR[name]
    tempo = float(rng.uniform(*speed))
    sprites = _sprite(rng, frames, size, tempo, _PAIR_KIND[base])
    if base == "move_down":  # the horizontal trajectory with x and y swapped, flipped so +x becomes +y
        sprites = [_Sprite(s.shape, s.colour, s.marker, s.centres[:, ::-1].copy(), s.radii, s.angles) for s in sprites]
    if not forward:
        sprites = [s.reversed() for s in sprites]

    jitter = max(1, round(0.012 * size))
    background = _background(rng, size + 2 * jitter, size + 2 * jitter)
    offsets = rng.integers(-jitter, jitter + 1, size=(frames, 2))
    video = np.empty((frames, size, size, 3), np.uint8)
    boxes = np.empty((frames, 4), np.int64)
    for t in range(frames):
        canvas = background.copy()
        box = [math.inf, math.inf, -math.inf, -math.inf]
        for sprite in sprites:
            centre = sprite.centres[t] + jitter
            points = _place(sprite.shape, centre, sprite.radii[t], sprite.angles[t])
            polygon = [np.round(points * 16).astype(np.int32)]
            cv2.fillPoly(canvas, polygon, sprite.colour, cv2.LINE_AA, shift=4)
            cv2.polylines(canvas, polygon, True, (20, 20, 20), max(1, size // 96), cv2.LINE_AA, shift=4)
            tip = _place(sprite.shape[:1] * 0.55, centre, sprite.radii[t], sprite.angles[t])[0]
            cv2.circle(canvas, (int(round(tip[0] * 16)), int(round(tip[1] * 16))),
                       max(16, int(sprite.radii[t] * 0.22 * 16)), sprite.marker, -1, cv2.LINE_AA, shift=4)
            box = [min(box[0], points[:, 0].min()), min(box[1], points[:, 1].min()),
                   max(box[2], points[:, 0].max()), max(box[3], points[:, 1].max())]
        dx, dy = offsets[t]
        y0, x0 = jitter + dy, jitter + dx
        video[t] = canvas[y0 : y0 + size, x0 : x0 + size]
        boxes[t] = [math.floor(box[0]) - x0, math.floor(box[1]) - y0, math.ceil(box[2]) - x0 + 1, math.ceil(box[3]) - y0 + 1]
    np.clip(boxes, 0, size, out=boxes)
    return Clip(video, boxes, CLASSES.index(name), name, tempo)


@dataclass(frozen=True)
class SynthSet:
    root: Path
    list_file: Path
    labels_file: Path
    classes: list[str]
    videos: list[tuple[Path, int]]


def write_video(path: Path, frames: np.ndarray, fps: float = FPS) -> None:
    """Write RGB uint8 frames as MPEG-4 Part 2 (`mp4v`) in .mp4: OpenCV's wheel writes it everywhere,
    decord and OpenCV read it frame-accurately, it is smaller than MJPG, and the bytes depend only
    on the frames (no timestamps in the header)."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot open an mp4v writer")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def clip_seed(seed: int, label: int, index: int) -> list[int]:
    """Each clip's own random stream, so a clip does not depend on how many others are generated."""
    return [seed, label, index]


def generate(
    out: str | Path,
    classes: int | str | Sequence[str] = len(CLASSES),
    clips_per_class: int = 40,
    frames: int = DEFAULT_FRAMES,
    size: int = DEFAULT_SIZE,
    speed: tuple[float, float] = DEFAULT_SPEED,
    seed: int = 0,
    progress=None,
) -> SynthSet:
    """Write class folders of clips, `list.txt` (`path label`, paths relative to it) and `labels.txt`.

    Labels index the chosen classes in order; the same arguments always write the same bytes.
    """
    names = class_names(classes)
    if clips_per_class < 1:
        raise UsageError(f"clips per class must be at least 1, got {clips_per_class}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    videos: list[tuple[Path, int]] = []
    lines = []
    for label, name in enumerate(names):
        (root / name).mkdir(exist_ok=True)
        for index in range(clips_per_class):
            clip = render_clip(name, clip_seed(seed, CLASSES.index(name), index), frames, size, speed)
            relative = f"{name}/{name}_{index:04d}.mp4"
            write_video(root / relative, clip.frames)
            videos.append((root / relative, label))
            lines.append(f"{relative} {label}\n")
            if progress is not None:
                progress()
    list_file, labels_file = root / "list.txt", root / "labels.txt"
    list_file.write_text("".join(lines), encoding="utf-8")
    labels_file.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    settings = {"classes": names, "clips_per_class": clips_per_class, "frames": frames, "size": size,
                "speed": list(speed), "seed": seed, "fps": FPS, "codec": "mp4v"}
    (root / "synth.json").write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    return SynthSet(root, list_file, labels_file, names, videos)
