"""Drawing Grad-CAM maps (`vtempo.inference.cam`) and writing them: a contact sheet (raw frames on the
first row, one row per model), a video or GIF with the models side by side, and the maps as .npz."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vtempo.errors import UsageError, VtempoError
from vtempo.inference.cam import Box, ClipCam, ModelCam

OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".mp4", ".gif")

BAND_HEIGHT = 20  # the text band above every row of tiles
MAX_TILE_HEIGHT = 360  # tiles taller than this are scaled down in the sheet and videos (maps are not)
VIDEO_FPS = 2  # sampled frames are far apart: show each for half a second


def overlay(frame: np.ndarray, heat: np.ndarray, crop: Box, alpha: float = 0.5) -> np.ndarray:
    """A JET heat map blended over one RGB frame inside the crop box; outside it the frame is darkened."""
    colours = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (frame.astype(np.float32) * 0.5).astype(np.uint8)
    x0, y0, x1, y1 = crop
    blended[y0:y1, x0:x1] = cv2.addWeighted(frame[y0:y1, x0:x1], 1 - alpha, colours[y0:y1, x0:x1], alpha, 0)
    return blended


def tile_size(frame_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of one tile: the frame's own size, scaled down to at most MAX_TILE_HEIGHT."""
    height, width = frame_size
    if height <= MAX_TILE_HEIGHT:
        return height, width
    return MAX_TILE_HEIGHT, max(1, round(width * MAX_TILE_HEIGHT / height))


def _tile(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _band(width: int, text: str) -> np.ndarray:
    """A dark strip with white text, shrunk (then cut) to fit the width."""
    band = np.full((BAND_HEIGHT, width, 3), 32, np.uint8)
    text = text.encode("ascii", "replace").decode()
    scale = 0.45
    while scale > 0.3 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 6:
        scale -= 0.05
    while len(text) > 1 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 6:
        text = text[:-2] + "~"
    cv2.putText(band, text, (3, BAND_HEIGHT - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return band


def caption(result: ModelCam) -> str:
    text = f"{result.name}: {result.top_label} {result.top_score:.2f}"
    if result.target != result.top:
        text += f" | map for {result.target_label} {result.target_score:.2f}"
    return text


def overlays(clip: ClipCam, alpha: float = 0.5) -> list[list[np.ndarray]]:
    """Rows of tiles: the raw frames, then one row of overlays per model."""
    size = tile_size(clip.frames.shape[1:3])
    rows = [[_tile(frame, size) for frame in clip.frames]]
    for result in clip.models:
        rows.append(
            [_tile(overlay(frame, heat, result.crop, alpha), size) for frame, heat in zip(clip.frames, result.maps)]
        )
    return rows


def contact_sheet(clip: ClipCam, alpha: float = 0.5) -> np.ndarray:
    """One RGB image: a row per model under a row of raw frames, one column per sampled frame, each row
    under a band naming the model with its top label and score (raw row: the frame indices)."""
    rows = overlays(clip, alpha)
    width = rows[0][0].shape[1]
    raw_band = np.concatenate([_band(width, f"frame {index}") for index in clip.indices], axis=1)
    bands = [raw_band] + [_band(width * len(clip.indices), caption(result)) for result in clip.models]
    return np.concatenate([part for band, row in zip(bands, rows) for part in (band, np.concatenate(row, axis=1))])


def side_by_side(clip: ClipCam, alpha: float = 0.5) -> list[np.ndarray]:
    """One RGB image per sampled frame: the raw frame and each model's overlay next to each other."""
    rows = overlays(clip, alpha)
    width = rows[0][0].shape[1]
    images = []
    for t, index in enumerate(clip.indices):
        bands = [_band(width, f"frame {index}")] + [_band(width, caption(result)) for result in clip.models]
        panels = [np.concatenate([band, row[t]]) for band, row in zip(bands, rows)]
        images.append(np.concatenate(panels, axis=1))
    return images


def check_output(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"{path}: unsupported output type; use .png or .jpg (contact sheet), .mp4 or .gif")
    return path


def check_maps_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise UsageError(f"{path}: maps are saved as .npz")
    return path


def write(clip: ClipCam, path: str | os.PathLike, alpha: float = 0.5) -> Path:
    """A contact sheet (.png, or .jpg where size matters more than exact colours) or a side-by-side
    video (.mp4, .gif) with one frame per sampled frame."""
    path = check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        sheet = cv2.cvtColor(contact_sheet(clip, alpha), cv2.COLOR_RGB2BGR)
        quality = [cv2.IMWRITE_PNG_COMPRESSION, 9] if suffix == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 90]
        ok = cv2.imwrite(str(path), sheet, quality)
    elif suffix == ".gif":
        ok = _write_gif(side_by_side(clip, alpha), path)
    else:
        ok = _write_mp4(side_by_side(clip, alpha), path)
    if not ok:
        raise VtempoError(f"{path}: could not write the file")
    return path


def _write_gif(images: list[np.ndarray], path: Path) -> bool:
    pictures = [Image.fromarray(image) for image in images]
    try:
        pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=1000 // VIDEO_FPS, loop=0)
    except OSError:
        return False
    return True


def _write_mp4(images: list[np.ndarray], path: Path) -> bool:
    # mp4v is what OpenCV's wheels can encode; MPEG-4 part 2 wants even sizes, so pad by a pixel if needed
    height, width = images[0].shape[:2]
    padded = (height + height % 2, width + width % 2)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (padded[1], padded[0]))
    if not writer.isOpened():
        return False
    for image in images:
        canvas = np.zeros((*padded, 3), np.uint8)
        canvas[:height, :width] = image
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    writer.release()
    return path.is_file() and path.stat().st_size > 0


def save_maps(clip: ClipCam, path: str | os.PathLike) -> Path:
    """An .npz with `indices` (T,), `models` (names) and, per model NAME: `NAME` (T, H, W) float32 maps at
    the decoded frames' resolution, `NAME.crop` (x0, y0, x1, y1) of the region the network saw, `NAME.grid`
    (h, w) of the layer's maps before upsampling, `NAME.target` and `NAME.score`."""
    path = check_maps_path(path)
    arrays: dict[str, np.ndarray] = {
        "indices": clip.indices,
        "models": np.array([result.name for result in clip.models]),
        "method": np.array(clip.method),
        "norm": np.array(clip.norm),
    }
    for result in clip.models:
        arrays[result.name] = result.maps.astype(np.float32)
        arrays[f"{result.name}.crop"] = np.array(result.crop, np.int64)
        arrays[f"{result.name}.grid"] = np.array(result.grid, np.int64)
        arrays[f"{result.name}.target"] = np.array(result.target, np.int64)
        arrays[f"{result.name}.score"] = np.array(result.target_score, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    except OSError as error:
        raise VtempoError(f"{path}: could not write the maps ({error.strerror or error})") from None
    return path
