"""A timeline picture: the top classes' scores over time, the action segments as a bar beneath."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from vtempo.viz.plots import GREY, LIGHT, PALETTE, draw_text, nice_step


def timeline_image(times: Sequence[float], scores: np.ndarray, labels: Sequence[str], segments, duration: float,
                   title: str = "", classes: int = 5, width: int = 1000, height: int = 420) -> np.ndarray:
    """RGB image. `scores`: (windows, classes) probabilities at window centres `times`; the `classes`
    classes with the highest peak are drawn; `segments`: objects with start, end, label."""
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bar = 50, 190, 40, 34
    bottom = bar + 62
    plot_w, plot_h = width - left - right, height - top - bottom
    duration = max(duration, max(times, default=0.0), 1e-6)
    scores = np.asarray(scores, np.float32).reshape(len(times), -1)
    if len(times) == 0:
        draw_text(image, "no windows", (width // 2, height // 2), 0.8, anchor="centre")
        return image
    shown = [int(i) for i in np.argsort(-scores.max(0))[:classes]]
    colour_of = {index: PALETTE[n % len(PALETTE)] for n, index in enumerate(shown)}

    def px(t: float, p: float = 0.0) -> tuple[int, int]:
        return round(left + t / duration * plot_w), round(top + (1 - p) * plot_h)

    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = px(0, p)
        cv2.line(image, (left, y), (left + plot_w, y), LIGHT, 1)
        draw_text(image, f"{p:g}", (left - 6, y + 5), 0.42, GREY, anchor="right")
    step = nice_step(duration, 8)
    tick = 0.0
    while tick <= duration + 1e-9:
        x, _ = px(tick)
        cv2.line(image, (x, top), (x, top + plot_h), LIGHT, 1)
        draw_text(image, f"{tick:g}", (x, height - 12), 0.42, GREY, anchor="centre")
        tick += step
    cv2.rectangle(image, (left, top), (left + plot_w, top + plot_h), GREY, 1)
    for n, index in enumerate(shown):
        points = np.array([px(t, float(p)) for t, p in zip(times, scores[:, index])], np.int32)
        cv2.polylines(image, [points], False, colour_of[index], 2, cv2.LINE_AA)
        y = top + 12 + 22 * n
        cv2.line(image, (width - right + 12, y - 4), (width - right + 40, y - 4), colour_of[index], 2, cv2.LINE_AA)
        draw_text(image, labels[index][:20], (width - right + 46, y), 0.45)
    bar_top = top + plot_h + 14
    for segment in segments:
        x0, _ = px(segment.start)
        x1, _ = px(segment.end)
        colour = colour_of.get(segment.index, (170, 170, 170))
        cv2.rectangle(image, (x0, bar_top), (max(x1 - 1, x0), bar_top + bar), colour, -1)
        cv2.rectangle(image, (x0, bar_top), (max(x1 - 1, x0), bar_top + bar), (255, 255, 255), 1)
        (text_w, _), _ = cv2.getTextSize(segment.label, cv2.FONT_HERSHEY_SIMPLEX, 0.38, 1)
        if text_w < x1 - x0 - 4:
            draw_text(image, segment.label, ((x0 + x1) // 2, bar_top + bar // 2 + 4), 0.38, (255, 255, 255), anchor="centre")
    draw_text(image, "segments", (width - right + 12, bar_top + bar // 2 + 4), 0.45, GREY)
    draw_text(image, "time (s)", (left + plot_w // 2, height - 30), 0.45, GREY, anchor="centre")
    draw_text(image, title, (left + plot_w // 2, 26), 0.55, anchor="centre")
    return image
