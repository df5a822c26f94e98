"""The two figures vtempo draws (the robustness curves and confusion matrices), drawn with OpenCV.

OpenCV is already a dependency for video; drawing a line chart and a heat map with it avoids adding
matplotlib (and its second-long import) for two simple pictures. Images are RGB uint8 arrays.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (0, 0, 0), (110, 110, 110), (225, 225, 225)
# matplotlib's "tab10" colours, RGB
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def write_png(path: str | os.PathLike, image: np.ndarray, parameter: str = "output") -> Path:
    """The RGB `image` as a PNG file, written as every result file is (`vtempo.inference.sink`)."""
    from vtempo.inference.sink import write_file

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: cannot encode PNG")
    return write_file(path, encoded.tobytes(), parameter)


def draw_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.5, colour=BLACK,
          thickness: int = 1, anchor: str = "left") -> None:
    """Draw text with its baseline at origin; anchor left, right or centre."""
    (width, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    x, y = origin
    x -= {"left": 0, "centre": width // 2, "right": width}[anchor]
    cv2.putText(image, text, (int(x), int(y)), FONT, scale, colour, thickness, cv2.LINE_AA)


def nice_step(span: float, target_ticks: int = 6) -> float:
    raw = span / max(target_ticks, 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def line_plot(series: dict[str, Sequence[tuple[float, float]]], title: str, x_label: str, y_label: str,
              marker_x: float | None = None, width: int = 900, height: int = 560) -> np.ndarray:
    """A line chart of several named series of (x, y) points, with a legend and an optional dashed
    vertical line at `marker_x` (e.g. the training stride)."""
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 80, 230, 50, 70
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points if not math.isnan(y)]
    if not xs or not ys:
        draw_text(image, "no data", (width // 2, height // 2), 0.8, anchor="centre")
        return image
    x_min, x_max = min(xs), max(xs)
    if x_max == x_min:
        x_min, x_max = x_min - 1, x_max + 1
    step = nice_step(max(ys) - min(ys) or 10)
    y_min = math.floor((min(ys) - 0.5 * step) / step) * step
    y_max = math.ceil((max(ys) + 0.5 * step) / step) * step
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_px(x: float, y: float) -> tuple[int, int]:
        return (round(left + (x - x_min) / (x_max - x_min) * plot_w),
                round(top + (1 - (y - y_min) / (y_max - y_min)) * plot_h))

    tick = y_min
    while tick <= y_max + 1e-9:
        _, py = to_px(x_min, tick)
        cv2.line(image, (left, py), (left + plot_w, py), LIGHT, 1)
        draw_text(image, f"{tick:g}", (left - 8, py + 5), 0.45, GREY, anchor="right")
        tick += step
    for x in sorted(set(xs)):
        px, _ = to_px(x, y_min)
        cv2.line(image, (px, top), (px, top + plot_h), LIGHT, 1)
        draw_text(image, f"{x:g}", (px, top + plot_h + 20), 0.45, GREY, anchor="centre")
    if marker_x is not None and x_min <= marker_x <= x_max:
        px, _ = to_px(marker_x, y_min)
        for y in range(top, top + plot_h, 12):
            cv2.line(image, (px, y), (px, min(y + 6, top + plot_h)), GREY, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (left + plot_w, top + plot_h), GREY, 1)
    for number, (name, points) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        pixels = [to_px(x, y) for x, y in sorted(points) if not math.isnan(y)]
        for a, b in zip(pixels, pixels[1:]):
            cv2.line(image, a, b, colour, 2, cv2.LINE_AA)
        for p in pixels:
            cv2.circle(image, p, 4, colour, -1, cv2.LINE_AA)
        ly = top + 12 + 24 * number
        cv2.line(image, (width - right + 15, ly - 4), (width - right + 45, ly - 4), colour, 2, cv2.LINE_AA)
        cv2.circle(image, (width - right + 30, ly - 4), 4, colour, -1, cv2.LINE_AA)
        draw_text(image, name[:24], (width - right + 52, ly), 0.45)
    draw_text(image, title, (left + plot_w // 2, 30), 0.6, anchor="centre", thickness=1)
    draw_text(image, x_label, (left + plot_w // 2, height - 20), 0.5, anchor="centre")
    label = np.full((30, plot_h, 3), 255, np.uint8)
    draw_text(label, y_label, (plot_h // 2, 20), 0.5, anchor="centre")
    image[top : top + plot_h, 10:40] = np.rot90(label)
    return image


def confusion_image(counts: np.ndarray, classes: Sequence[str], title: str = "", cell: int = 44) -> np.ndarray:
    """A heat map of counts[true, predicted], coloured by the row-normalised rate, counts written in."""
    n = len(classes)
    label_w = max(60, max(cv2.getTextSize(c, FONT, 0.45, 1)[0][0] for c in classes) + 16)
    top = label_w + 40
    width, height = label_w + n * cell + 30, top + n * cell + 40
    image = np.full((height, width, 3), 255, np.uint8)
    totals = counts.sum(1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, np.float64), where=totals > 0)
    colours = cv2.applyColorMap((rates * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    for i in range(n):
        for j in range(n):
            x0, y0 = label_w + j * cell, top + i * cell
            colour = tuple(int(c) for c in colours[i, j])
            cv2.rectangle(image, (x0, y0), (x0 + cell - 1, y0 + cell - 1), colour, -1)
            ink = BLACK if rates[i, j] > 0.6 else WHITE
            draw_text(image, str(int(counts[i, j])), (x0 + cell // 2, y0 + cell // 2 + 5), 0.42, ink, anchor="centre")
        draw_text(image, classes[i], (label_w - 8, top + i * cell + cell // 2 + 5), 0.45, anchor="right")
    strip = np.full((n * cell, label_w, 3), 255, np.uint8)  # one band per column, rotated upright below
    for j, name in enumerate(classes):
        draw_text(strip, name, (8, j * cell + cell // 2 + 5), 0.45)
    image[top - label_w : top, label_w : label_w + n * cell] = np.rot90(strip)
    draw_text(image, "predicted", (label_w + n * cell // 2, 20), 0.5, anchor="centre")
    draw_text(image, "true", (10, top - 8), 0.5)
    if title:
        draw_text(image, title, (width // 2, height - 14), 0.5, anchor="centre")
    return image
