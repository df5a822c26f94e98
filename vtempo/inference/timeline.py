"""Label a long video over time: the model's clip slid over the whole video, and action segments.

    rec = vtempo.load("tsm-demo")
    with SequentialVideo("match.mp4", rec.max_side) as video:
        for window in score_windows(video, rec, window_frames=26, hop_frames=13):
            print(window.start, window.end, window.top[0].label)

Window k covers frames [k·hop, k·hop + window) and takes its `frames` frames from them under the
model's own test protocol (fixed stride, centred; or one frame per segment), as a clip of that
length would be sampled. The video is decoded once, front to back: every frame of the earliest
window not yet scored is held (resized and cropped, uint8) and nothing older, so memory is bounded by
the window, never by the video; each frame is decoded and preprocessed once and used by every window
that contains it. A complete window's clip is copied out for the model, which scores `batch_size`
of them at a time. For models whose per-frame outputs do not depend on other frames (TSN: a 2D network,
then the mean of per-frame logits), each frame's logits are computed once and shared by every window.
A window at the end, shorter than the others, covers what the last full window left out.

Segments: each window speaks for the stretch of time closest to its centre (from the midpoint with
the previous window's centre to the midpoint with the next one's; the first from 0, the last to the
end), with its class scores averaged over `smooth` windows centred on it (3: it and its neighbours,
fewer at the ends); consecutive windows with the same top label, scored at least `threshold`, make one segment;
a segment shorter than `min_duration` is taken as a blip: its time goes to its neighbours (split at
its middle), and same-label neighbours join.
"""
from __future__ import annotations

import bisect
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence
from typing import Protocol as TypingProtocol

import cv2
import numpy as np
import torch

from vtempo import limits
from vtempo.errors import UsageError, VtempoError, param
from vtempo.inference.recognizer import Recognizer
from vtempo.inference.results import Prediction
from vtempo.inference.sink import Sink
from vtempo.models.base import TemporalModule, VideoRecognizer
from vtempo.runtime import autocast
from vtempo.video import display_path
from vtempo.video.readers import VideoError
from vtempo.video.sampling import DENSE_WINDOW, clip_indices
from vtempo.video.sequential import SequentialVideo
from vtempo.video.transforms import (
    Preprocess,
    apply_crop,
    crop_boxes,
    normalise,
    pad_to,
    resize_frames,
)

# How long the clips were that a model was tested on, when its protocol does not say (uniform
# segments span the whole test video): typical lengths of each dataset's videos, in seconds.
DATASET_SECONDS = {"kinetics400": 10.0, "sthv1": 4.0, "sthv2": 4.0, "vtempo-synth": 32 / 12}
DEFAULT_SECONDS = 8.0


# --------------------------------------------------------------------------------------- the model


def default_window_seconds(rec: Recognizer, fps: float) -> float:
    """The span the model was tested on: its stride or dense window; for segment sampling, the usual
    length of its dataset's videos."""
    if rec.protocol.sampling == "stride" and rec.protocol.stride:
        return (rec.protocol.stride * (rec.frames - 1) + 1) / fps
    if rec.protocol.sampling == "dense":
        return DENSE_WINDOW / fps
    return DATASET_SECONDS.get(rec.dataset or "", DEFAULT_SECONDS)


def check_seconds(**durations: float | None) -> None:
    """Each duration given (window=, hop=, min_duration=, ...) is a finite number of seconds, positive
    (min_duration: at least 0) and at most MAX_SECONDS: a UsageError naming it otherwise."""
    for name, value in durations.items():
        limits.check_number(name, value, 0, "MAX_SECONDS", above=name != "min_duration")


def frames_per_window(rec: Recognizer, fps: float, window: float | None, hop: float | None) -> tuple[int, int]:
    """(window, hop) in frames from seconds (defaults: the model's span, half of it)."""
    check_seconds(window=window, hop=hop)
    window = default_window_seconds(rec, fps) if window is None else window
    hop = window / 2 if hop is None else hop
    window_frames = max(1, round(window * fps))
    most = limits.get("MAX_WINDOW_FRAMES")
    if window_frames > most:
        raise UsageError(f"{param('window', text=f'{window:g}')}: {window_frames} frames at {fps:g} fps, more than "
                         f"the {most} a window may hold at once ({limits.hint('MAX_WINDOW_FRAMES')})")
    return window_frames, max(1, min(round(hop * fps), window_frames))


def per_frame_model(model: torch.nn.Module) -> bool:
    """True when each frame's logits depend on that frame alone (no temporal module: TSN)."""
    return isinstance(model, VideoRecognizer) and not any(isinstance(m, TemporalModule) for m in model.modules())


# ------------------------------------------------------------------------------------------ windows


class FrameSource(TypingProtocol):
    index: int

    def grab(self) -> bool: ...

    def retrieve(self) -> np.ndarray: ...


@dataclass
class Window:
    """One window's scores: frames [first, first + length), times in seconds."""

    number: int
    first: int
    length: int
    start: float
    end: float
    probs: torch.Tensor
    top: list[Prediction]
    features: torch.Tensor | None = None  # (C,): the window's pooled features, with `pooled=True`

    @property
    def centre(self) -> float:
        return (self.start + self.end) / 2


@dataclass
class WindowStats:
    """Counters a caller can watch: frames decoded, frames held at most, model calls, frames sent
    through the network (per-frame models: each frame once)."""

    frames: int = 0
    held_peak: int = 0
    windows: int = 0
    network_frames: int = 0


class _Crops:
    """Frame → the model's centre crop (S, S, 3) uint8, with the resize fixed by the first frame."""

    def __init__(self, preprocess: Preprocess):
        self.preprocess = preprocess
        self.box = None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        resized = pad_to(resize_frames(frame[None], self.preprocess.resize), self.preprocess.input_size)
        if self.box is None:
            self.box = crop_boxes(resized.shape[1], resized.shape[2], self.preprocess.input_size, 1)[0]
        return apply_crop(resized, self.box)[0]


def score_windows(
    source: FrameSource,
    rec: Recognizer,
    window_frames: int,
    hop_frames: int,
    fps: float,
    *,
    topk: int = 5,
    batch_size: int = 8,
    stats: WindowStats | None = None,
    pooled: bool = False,
) -> Iterator[Window]:
    """Every window's scores, in order, while the video is read front to back (see the module doc).
    `pooled`: each window also carries `features`, `model.features` of its clip averaged over the frames
    (what the head scores: the logits are then the head applied to each frame's features, averaged)."""
    if window_frames < 1 or not 1 <= hop_frames <= window_frames:
        raise UsageError(f"a window needs at least one frame and a hop of 1..window frames, got {window_frames}, {hop_frames}")
    stats = stats if stats is not None else WindowStats()
    offsets = clip_indices(rec.protocol, window_frames, rec.frames, clips=1)[0]
    shared = per_frame_model(rec.model)
    crop = _Crops(rec.preprocess)
    held: dict[int, np.ndarray] = {}  # frame index → crop, for every frame of the earliest open window on
    frame_logits: dict[int, torch.Tensor] = {}  # per-frame models: index → logits, computed once
    frame_features: dict[int, torch.Tensor] = {}  # and, with `pooled`, index → features
    pending: list[tuple[int, int, np.ndarray]] = []  # complete windows' clips (copies) waiting for a batch
    topk = min(topk, len(rec.labels))
    number = 0

    def normalised(crops: np.ndarray) -> torch.Tensor:
        return normalise(crops, rec.preprocess.mean, rec.preprocess.std)

    def make_windows(spans: list[tuple[int, int]], logits: torch.Tensor, features: torch.Tensor | None = None) -> list[Window]:
        nonlocal number
        probs = logits.softmax(-1)
        values, classes = probs.topk(topk, -1)
        windows = []
        for n, ((first, length), p, v, c) in enumerate(zip(spans, probs, values.tolist(), classes.tolist())):
            top = [Prediction(rec.labels[i], int(i), float(s)) for s, i in zip(v, c)]
            windows.append(Window(number, first, length, first / fps, (first + length) / fps, p, top,
                                  None if features is None else features[n]))
            number += 1
        stats.windows += len(spans)
        return windows

    def run_clips() -> list[Window]:
        with torch.inference_mode(), autocast(rec.device, rec.dtype):
            x = torch.stack([normalised(clip) for _, _, clip in pending]).to(rec.device)
            if pooled:
                per_frame = rec.model.features(x)
                logits = rec.model.fc(per_frame).mean(1).float().cpu()
                features = per_frame.float().mean(1).cpu()
            else:
                logits, features = rec.model(x).float().cpu(), None
        stats.network_frames += x.shape[0] * x.shape[1]
        windows = make_windows([(first, length) for first, length, _ in pending], logits, features)
        pending.clear()
        return windows

    def run_shared(first: int, length: int, indices: list[int]) -> list[Window]:
        missing = sorted(set(indices) - frame_logits.keys())
        if missing:
            with torch.inference_mode(), autocast(rec.device, rec.dtype):
                x = normalised(np.stack([held[i] for i in missing])).to(rec.device)[None]
                per_frame = rec.model.features(x)
                frame_logits.update(zip(missing, rec.model.fc(per_frame)[0].float().cpu()))
                if pooled:
                    frame_features.update(zip(missing, per_frame[0].float().cpu()))
            stats.network_frames += len(missing)
        logits = torch.stack([frame_logits[i] for i in indices]).mean(0, keepdim=True)
        features = torch.stack([frame_features[i] for i in indices]).mean(0, keepdim=True) if pooled else None
        return make_windows([(first, length)], logits, features)

    def complete(first: int, length: int, indices: list[int]) -> list[Window]:
        if shared:
            return run_shared(first, length, indices)
        pending.append((first, length, np.stack([held[i] for i in indices])))
        return run_clips() if len(pending) == batch_size else []

    next_first = 0  # the earliest window not yet complete
    covered = 0  # frames before this one are inside some complete window
    index = -1
    while source.grab():
        index += 1
        stats.frames += 1
        held[index] = crop(source.retrieve())
        stats.held_peak = max(stats.held_peak, len(held))
        if index == next_first + window_frames - 1:  # the window is complete
            yield from complete(next_first, window_frames, [next_first + o for o in offsets])
            covered = index + 1
            next_first += hop_frames
            for old in [i for i in held if i < next_first]:  # no later window needs them
                del held[old]
                frame_logits.pop(old, None)
                frame_features.pop(old, None)
    total = index + 1
    if total > covered:  # the tail the full windows left out, or a video shorter than one window
        first = min(next_first, total - 1)
        length = total - first
        tail = clip_indices(rec.protocol, length, rec.frames, clips=1)[0]
        yield from complete(first, length, [first + o for o in tail])
    if pending:
        yield from run_clips()


# ----------------------------------------------------------------------------------------- segments


@dataclass
class Segment:
    start: float
    end: float
    label: str
    index: int
    score: float  # mean top-1 probability of its windows
    windows: int = 1

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "label": self.label,
                "index": self.index, "score": round(self.score, 4)}


def check_smooth(smooth: int) -> None:
    if smooth < 1 or smooth % 2 == 0:
        raise UsageError(f"{param('smooth')} must be an odd number of windows (1: none), got {smooth}")


@dataclass
class SegmentBuilder:
    """Feed windows in order (`add`), then `finish(duration)` gives the segments.

    `smooth` windows' scores are averaged for each window's label (odd; 1: each window's own). A
    window straddling a change of action mixes two actions, and a single window can be misread; the
    average with its neighbours settles both. Only the last `smooth` windows' scores are held."""

    threshold: float = 0.0
    min_duration: float = 0.0
    smooth: int = 1
    labels: Sequence[str] = ()  # class names by index, for labels that no window ranked first
    _windows: list[tuple[float, int, str, float]] = field(default_factory=list)  # (centre, class, label, score)
    _recent: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # (centre, probs) not yet labelled
    _names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_smooth(self.smooth)

    def add(self, window: Window) -> None:
        for prediction in window.top:
            self._names.setdefault(prediction.index, prediction.label)
        if self.smooth == 1:
            best = window.top[0]
            self._windows.append((window.centre, best.index, best.label, best.prob))
            return
        self._recent.append((window.centre, window.probs.detach().float().cpu()))
        half = self.smooth // 2
        if len(self._recent) > half:  # the window `half` back has its neighbours on both sides now
            self._label(len(self._recent) - 1 - half)
        if len(self._recent) > self.smooth:
            self._recent.pop(0)

    def _label(self, position: int) -> None:
        half = self.smooth // 2
        centre = self._recent[position][0]
        around = self._recent[max(0, position - half) : position + half + 1]
        mean = torch.stack([probs for _, probs in around]).mean(0)
        index = int(mean.argmax())
        label = self.labels[index] if index < len(self.labels) else self._names.get(index, str(index))
        self._windows.append((centre, index, label, float(mean[index])))

    def finish(self, duration: float) -> list[Segment]:
        if self.smooth > 1:  # the last windows, with the neighbours they have
            half = self.smooth // 2
            for position in range(max(0, len(self._recent) - half), len(self._recent)):
                self._label(position)
            self._recent.clear()
        if not self._windows:
            return []
        centres = [c for c, *_ in self._windows]
        bounds = [0.0] + [(a + b) / 2 for a, b in zip(centres, centres[1:])] + [max(duration, centres[-1])]
        # runs of windows with the same top label; below the threshold: None (no action)
        runs: list[list] = []  # [start, end, index or None, label, score sum, windows]
        for n, (_, index, label, score) in enumerate(self._windows):
            key = index if score >= self.threshold else None
            if runs and runs[-1][2] == key:
                runs[-1][1] = bounds[n + 1]
                runs[-1][4] += score
                runs[-1][5] += 1
            else:
                runs.append([bounds[n], bounds[n + 1], key, label, score, 1])
        # a labelled run shorter than min_duration is a blip: its time goes to its labelled neighbours
        # (split at the middle; all of it to one neighbour at the video's edge or next to no action)
        short = [r[2] is not None and r[1] - r[0] < self.min_duration for r in runs]
        kept: list[list] = []
        n = 0
        while n < len(runs):
            if not short[n]:
                kept.append(runs[n])
                n += 1
                continue
            first = n
            while n < len(runs) and short[n]:
                n += 1
            start, end = runs[first][0], runs[n - 1][1]
            left = kept[-1] if kept and kept[-1][2] is not None and abs(kept[-1][1] - start) < 1e-9 else None
            right = runs[n] if n < len(runs) and runs[n][2] is not None else None
            if left is not None and right is not None:
                left[1] = right[0] = (start + end) / 2
            elif left is not None and n == len(runs):
                left[1] = end
            elif right is not None and first == 0:
                right[0] = start
        merged: list[list] = []
        for run in kept:
            if run[2] is None:
                continue
            if merged and merged[-1][2] == run[2] and abs(merged[-1][1] - run[0]) < 1e-9:
                merged[-1][1] = run[1]
                merged[-1][4] += run[4]
                merged[-1][5] += run[5]
            else:
                merged.append(run)
        return [Segment(start, end, label, index, total / count, count) for start, end, index, label, total, count in merged]


def segments(windows: Iterable[Window], duration: float, threshold: float = 0.0, min_duration: float = 0.0,
             smooth: int = 1) -> list[Segment]:
    builder = SegmentBuilder(threshold, min_duration, smooth)
    for window in windows:
        builder.add(window)
    return builder.finish(duration)


# ------------------------------------------------------------------------------------------- a video


@dataclass
class Timeline:
    """What `timeline` gives for one video once it has been read to the end."""

    video: str
    fps: float
    frames: int
    window_frames: int
    hop_frames: int
    segments: list[Segment]
    stats: WindowStats

    @property
    def duration(self) -> float:
        return self.frames / self.fps


def timeline(
    video: str | os.PathLike,
    rec: Recognizer,
    *,
    window: float | None = None,
    hop: float | None = None,
    threshold: float = 0.0,
    min_duration: float | None = None,
    smooth: int = 3,
    topk: int = 5,
    batch_size: int = 8,
    on_window: Callable[[Window], None] | None = None,
    fps: float | None = None,
) -> Timeline:
    """Score every window of `video` (each passed to `on_window` as soon as it is scored) and merge
    them into segments. `min_duration` defaults to one window: shorter runs are blips of the windows
    that straddle a change of action. `smooth`: windows averaged for each window's label. `fps`
    overrides a rate the container does not give (else 25)."""
    limits.check_number("threshold", threshold, 0, 1)
    check_seconds(min_duration=min_duration)
    check_smooth(smooth)
    with SequentialVideo(video, rec.max_side) as source:
        rate = fps or source.fps or 25.0
        window_frames, hop_frames = frames_per_window(rec, rate, window, hop)
        stats = WindowStats()
        builder = SegmentBuilder(threshold, window_frames / rate if min_duration is None else min_duration, smooth,
                                 rec.labels)
        for scored in score_windows(source, rec, window_frames, hop_frames, rate, topk=topk, batch_size=batch_size,
                                    stats=stats):
            builder.add(scored)
            if on_window is not None:
                on_window(scored)
    if stats.frames == 0:
        raise VideoError(video, "no frame decodes")
    return Timeline(source.name, rate, stats.frames, window_frames, hop_frames,
                    builder.finish(stats.frames / rate), stats)


# ------------------------------------------------------------------------------------------ writing


def window_dict(video: str, window: Window) -> dict:
    return {"video": video, "kind": "window", "window": window.number, "start": round(window.start, 3),
            "end": round(window.end, 3),
            "top": [{"label": p.label, "index": p.index, "prob": round(p.prob, 6)} for p in window.top]}


class TimelineWriter:
    """Windows and segments to .jsonl (a line each), .csv (a row each) or .json (a list of videos, each
    with its windows and segments), every one written and flushed as it comes, through a `Sink`
    (`vtempo.inference.sink`): into `<path>.part`, renamed over `path` at close; a write error is one
    line naming the file and the part that holds what was written.

    In JSON Lines a video's records are its windows, its segments, then one `"kind": "summary"` record
    (or a single `"kind": "error"` record when it cannot be read): a video is complete once that last
    record is there (`is_final`), which is what `--resume` and the merge of shards go by. `emit`, when
    given, takes the JSON Lines records instead of a file (a sharded or resumed run writes them)."""

    FORMATS = (".jsonl", ".json", ".csv")

    @staticmethod
    def is_final(record: dict) -> bool:
        """Whether a JSON Lines record is its video's last."""
        return record.get("kind") in ("summary", "error")

    def __init__(self, path: str | os.PathLike, emit: Callable[[dict], None] | None = None):
        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        if self.kind not in self.FORMATS:
            raise UsageError(f"{param('output', display_path(self.path))}: the name must end in .jsonl, .json or .csv")
        if emit is not None and self.kind != ".jsonl":
            raise UsageError(f"{param('output', display_path(self.path))}: only a .jsonl output is written record by "
                             f"record")
        self._emit = emit
        self._videos = 0
        self._windows = 0
        self._open = False  # a .json video whose windows list is not closed yet
        self.sink = None if emit is not None else Sink(self.path)
        if self.kind == ".csv":
            self._row(["video", "kind", "start", "end", "label", "score", "top"])
        elif self.kind == ".json":
            self._line("[")

    def _line(self, text: str) -> None:
        self.sink.write(text)

    def _row(self, row: list) -> None:
        text = io.StringIO(newline="")
        csv.writer(text).writerow(row)
        self._line(text.getvalue())

    def _record(self, record: dict) -> None:
        if self._emit is not None:
            self._emit(record)
        else:
            self._line(json.dumps(record, ensure_ascii=False) + "\n")

    def start_video(self, video: str) -> None:
        if self.kind == ".json":
            self._line(("," if self._videos else "") + f'\n{{"video": {json.dumps(video, ensure_ascii=False)}, "windows": [')
            self._open = True
        self._videos += 1
        self._windows = 0
        if self.sink is not None:
            self.sink.records += 1

    def window(self, video: str, window: Window) -> None:
        data = window_dict(video, window)
        if self.kind == ".jsonl":
            self._record(data)
        elif self.kind == ".csv":
            top = ";".join(f"{p.label}:{p.prob:.4f}" for p in window.top)
            self._row([video, "window", data["start"], data["end"], window.top[0].label, f"{window.top[0].prob:.4f}", top])
        else:
            del data["video"], data["kind"]
            self._line(("," if self._windows else "") + "\n  " + json.dumps(data, ensure_ascii=False))
        self._windows += 1

    def finish_video(self, result: Timeline) -> None:
        rows = [{"video": result.video, "kind": "segment", **s.to_dict()} for s in result.segments]
        if self.kind == ".jsonl":
            for r in rows:
                self._record(r)
            self._record({"video": result.video, "kind": "summary", "fps": result.fps, "frames": result.frames,
                          "window_frames": result.window_frames, "hop_frames": result.hop_frames,
                          "windows": self._windows, "segments": len(result.segments)})
        elif self.kind == ".csv":
            for r in rows:
                self._row([r["video"], "segment", r["start"], r["end"], r["label"], f"{r['score']:.4f}", ""])
        else:
            info = {"fps": result.fps, "frames": result.frames, "window_frames": result.window_frames,
                    "hop_frames": result.hop_frames, "segments": [s.to_dict() for s in result.segments]}
            self._line("],\n " + json.dumps(info, ensure_ascii=False)[1:])
            self._open = False

    def finish_failed(self, video: str, reason: str) -> None:
        if self.kind == ".jsonl":
            self._record({"video": video, "kind": "error", "error": reason})
        elif self.kind == ".csv":
            self._row([video, "error", "", "", reason, "", ""])
        else:
            self._line("], " + json.dumps({"error": reason}, ensure_ascii=False)[1:])
            self._open = False

    def close(self, complete: bool = True) -> None:
        """Finish the file and put it in place; after an interruption (`complete=False`) what was
        written replaces the old file all the same, a .json video cut off marked "interrupted"."""
        if self.sink is None or self.sink.handle.closed:
            return
        if self.kind == ".json" and not self.sink.failed:
            try:
                if self._open:
                    self.finish_failed("", "interrupted")
                self._line("\n]\n")
            except VtempoError:
                self.sink.close()
                raise
        self.sink.close(complete)

    def __enter__(self) -> TimelineWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(complete=exc_type is None)


def annotate_video(video: str | os.PathLike, out: str | os.PathLike, windows: Sequence[tuple[float, str, float]],
                   segments: Sequence[Segment], fps: float) -> Path:
    """Write `video` again with the current label drawn on every frame: the top label of the window
    whose stretch of time holds the frame (`windows`: (centre, label, prob)), and the segment's.
    A second front-to-back decode: the labels are known only once their windows are scored."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    centres = [c for c, _, _ in windows]
    bounds = [(a + b) / 2 for a, b in zip(centres, centres[1:])]
    writer = None
    try:
        with SequentialVideo(video) as source:
            while (frame := source.read()) is not None:
                t = source.index / fps
                if writer is None:
                    height, width = frame.shape[:2]
                    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                    if not writer.isOpened():
                        raise UsageError(f"{out}: OpenCV cannot write it (use a .mp4 name)")
                image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                if windows:
                    _, label, prob = windows[bisect.bisect_right(bounds, t)]
                    segment = next((s.label for s in segments if s.start <= t < s.end), None)
                    _caption(image, f"{label} {100 * prob:.0f}%", f"segment: {segment or '-'}  {t:.1f}s")
                writer.write(image)
    finally:
        if writer is not None:
            writer.release()
    return out


def _caption(image: np.ndarray, line: str, second: str) -> None:
    scale = max(image.shape[1] / 640, 0.35)
    height = int(26 * scale) + 4
    cv2.rectangle(image, (0, 0), (image.shape[1], 2 * height), (0, 0, 0), -1)
    for n, text in enumerate((line, second)):
        cv2.putText(image, text, (4, height * (n + 1) - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
