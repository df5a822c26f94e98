"""Live labels from a camera, a stream URL or a file played as it would be delivered.

    summary = run_stream("rtsp://camera/stream", vtempo.load("tsm-demo"), every=1.0, on_label=print)

A capture thread reads the source as fast as it delivers (a file with `realtime=True` is released frame
by frame at its own rate, as a camera would deliver it) and keeps, of the frames the model samples
(every `stride`-th frame for fixed-stride models; one per segment of the tested span for segment
models), only the model's cropped input. It hands them over through a small queue: the latest frames
win, and a frame pushed out before the model took it is counted as dropped. So when the model is
slower than the source it drops frames and never falls behind. The main thread keeps a ring of the
last `frames` sampled frames and gives a label every `every` seconds from the newest clip; a
uni-directional TSM (`tsm-online-…`) instead steps each sampled frame through `OnlineTSM` and labels
from the mean of its last `frames` per-frame logits.

A file that is not played in real time is read as fast as the model takes it (nothing is dropped) and
labelled every `every` seconds of video time. A file ends with reason "end of file" (`live` False);
a camera or URL whose frames stop ends with the reason it stopped (`live` True).
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch

from vtempo import limits
from vtempo.errors import UsageError, param
from vtempo.inference.recognizer import Recognizer
from vtempo.inference.results import Prediction
from vtempo.inference.timeline import _Crops, default_window_seconds
from vtempo.models.tsm import OnlineShift, OnlineTSM
from vtempo.runtime import autocast
from vtempo.video.sequential import SequentialVideo
from vtempo.video.transforms import normalise

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own warnings would break the live display


@dataclass(frozen=True)
class SampledFrame:
    crop: np.ndarray  # the model's input crop, uint8 (S, S, 3)
    index: int  # frame number in the source
    media_time: float  # the source's timestamp, seconds
    captured: float  # wall-clock time (time.time()) it was read or released


@dataclass
class StreamLabel:
    number: int
    time: float  # wall-clock time the label was given
    captured: float  # wall-clock capture time of the newest frame it used
    media_time: float  # that frame's timestamp in the source
    top: list[Prediction]
    dropped: int  # frames dropped so far
    # How far the newest frame trailed the source's clock when the model took it: the wall-clock time
    # since the first frame minus the video time since it. It grows only if the run falls behind.
    lag: float = 0.0

    @property
    def latency(self) -> float:
        return self.time - self.captured

    def to_dict(self) -> dict:
        return {"label": self.number, "time": round(self.time, 3), "captured": round(self.captured, 3),
                "media_time": round(self.media_time, 3), "latency": round(self.latency, 4), "lag": round(self.lag, 4),
                "dropped": self.dropped,
                "top": [{"label": p.label, "index": p.index, "prob": round(p.prob, 6)} for p in self.top]}


@dataclass
class StreamSummary:
    source: str
    live: bool
    reason: str  # why it ended: "end of file", "interrupted", or what stopped a live source
    labels: int = 0
    frames: int = 0  # frames read from the source
    sampled: int = 0  # frames the model's sampling took
    dropped: int = 0  # sampled frames the model never saw (it was busy)
    latencies: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """A file read to its end or a run stopped by the user; not a live source that stopped."""
        return not self.live or self.reason == "interrupted"

    def latency(self, quantile: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] if quantile != 0.5 else statistics.median(ordered)

    def to_dict(self) -> dict:
        median, p90 = self.latency(0.5), self.latency(0.9)
        return {"summary": True, "source": self.source, "reason": self.reason, "labels": self.labels,
                "frames": self.frames, "sampled": self.sampled, "dropped": self.dropped,
                "latency_median": None if median is None else round(median, 4),
                "latency_p90": None if p90 is None else round(p90, 4)}


def sampling_interval(rec: Recognizer, fps: float) -> int:
    """Source frames between two frames the model takes."""
    if rec.protocol.sampling == "stride" and rec.protocol.stride:
        return rec.protocol.stride
    return max(1, round(default_window_seconds(rec, fps) * fps / rec.frames))


class _Capture(threading.Thread):
    """Reads the source, samples and crops frames, hands them over (see the module doc)."""

    def __init__(self, source, rec: Recognizer, interval: int, keep: int, fps: float, realtime: bool, blocking: bool):
        super().__init__(daemon=True, name="vtempo-capture")
        self.source, self.interval, self.fps, self.realtime, self.blocking = source, interval, fps, realtime, blocking
        self.crop = _Crops(rec.preprocess)
        self.queue: deque[SampledFrame] = deque()
        self.keep = keep
        self.ready = threading.Condition()
        self.stop = threading.Event()
        self.frames = self.sampled = self.dropped = 0
        self.reason: str | None = None  # set when the source ends
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._read()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            self.error, self.reason = error, f"capture failed: {error}"
        finally:
            with self.ready:
                if self.reason is None:
                    self.reason = "stopped"
                self.ready.notify_all()

    def _read(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            if not self.source.grab():
                self.reason = ("stream ended: no frame from the source" if self.source.live else "end of file")
                return
            index = self.source.index
            self.frames += 1
            if self.realtime:  # release the frame when its time comes, as a camera would deliver it
                delay = start + index / self.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if index % self.interval:
                continue
            frame = SampledFrame(self.crop(self.source.retrieve()), index,
                                 index / self.fps if not self.source.live else self.source.position, time.time())
            with self.ready:
                while self.blocking and len(self.queue) >= self.keep and not self.stop.is_set():
                    self.ready.wait(0.1)
                self.queue.append(frame)
                self.sampled += 1
                if len(self.queue) > self.keep:  # the model is behind: the oldest frame goes
                    self.queue.popleft()
                    self.dropped += 1
                self.ready.notify_all()

    def take(self, timeout: float) -> tuple[list[SampledFrame], bool]:
        """The frames handed over since the last call (waiting up to `timeout` for one), and whether the
        source has ended."""
        with self.ready:
            if not self.queue and self.reason is None:
                self.ready.wait(timeout)
            frames = list(self.queue)
            self.queue.clear()
            self.ready.notify_all()
            return frames, self.reason is not None and not self.queue


def run_stream(
    source: str | int | os.PathLike,
    rec: Recognizer,
    *,
    every: float = 1.0,
    realtime: bool = False,
    topk: int = 5,
    on_label: Callable[[StreamLabel], None] | None = None,
    stop: threading.Event | None = None,
    fps: float | None = None,
) -> StreamSummary:
    """Label `source` every `every` seconds until it ends, `stop` is set, or KeyboardInterrupt (which
    ends the run cleanly: the summary says "interrupted"). Returns the summary."""
    limits.check_number("every", every, 0, "MAX_SECONDS", above=True)
    video = SequentialVideo(source, rec.max_side, quiet=False)
    live = video.live
    if realtime and live:
        raise UsageError(f"{param('realtime')} plays a file at its own rate; a camera or stream is already live")
    rate = fps or video.fps or 25.0
    online = any(isinstance(m, OnlineShift) for m in rec.model.modules())
    runner = OnlineTSM(rec.model) if online else None
    interval = sampling_interval(rec, rate)
    paced = live or realtime  # the source sets the pace: frames the model cannot take in time are dropped
    capture = _Capture(video, rec, interval, 1 if online else rec.frames, rate, realtime, blocking=not paced)
    summary = StreamSummary(video.name, live, "")
    ring: deque[SampledFrame] = deque(maxlen=rec.frames)
    logits_ring: deque[torch.Tensor] = deque(maxlen=rec.frames)
    topk = min(topk, len(rec.labels))
    stop = stop or threading.Event()
    first: SampledFrame | None = None
    labelled: SampledFrame | None = None  # the newest frame of the last label
    next_label: float | None = None  # wall-clock (paced) or media time (a file read as fast as it goes)

    def normalised(crops: np.ndarray) -> torch.Tensor:
        return normalise(crops, rec.preprocess.mean, rec.preprocess.std).to(rec.device)

    def label(newest: SampledFrame) -> None:
        taken = time.time()
        with torch.inference_mode(), autocast(rec.device, rec.dtype):
            if online:
                logits = torch.stack(list(logits_ring)).mean(0)
            else:
                logits = rec.model(normalised(np.stack([f.crop for f in ring]))[None])[0].float().cpu()
        probs = logits.softmax(-1)
        values, classes = probs.topk(topk)
        now = time.time()
        top = [Prediction(rec.labels[i], int(i), float(v)) for v, i in zip(values.tolist(), classes.tolist())]
        lag = (taken - first.captured) - (newest.media_time - first.media_time)
        result = StreamLabel(summary.labels, now, newest.captured, newest.media_time, top, capture.dropped, lag)
        summary.labels += 1
        summary.latencies.append(result.latency)
        if on_label is not None:
            on_label(result)

    if paced:  # the model's first call (allocations, kernel choices) before the source's clock starts
        try:
            with torch.inference_mode(), autocast(rec.device, rec.dtype):
                size = rec.preprocess.input_size
                if online:
                    runner.step(torch.zeros(3, size, size, device=rec.device))
                    runner.reset()
                else:
                    rec.model(torch.zeros(1, rec.frames, 3, size, size, device=rec.device))
        except BaseException:
            video.close()
            raise
    # OpenCV warns on stderr as a live source times out ("Stream timeout triggered"); the summary says so
    opencv_log_level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    capture.start()
    try:
        while not stop.is_set():
            frames, ended = capture.take(timeout=0.05)
            for frame in frames:
                first = first or frame
                ring.append(frame)
                if online:
                    with torch.inference_mode(), autocast(rec.device, rec.dtype):
                        logits_ring.append(runner.step(normalised(frame.crop[None])[0]).float().cpu())
                if not paced and len(ring) == rec.frames:  # a file read as fast as it goes: video time
                    next_label = frame.media_time if next_label is None else next_label
                    if frame.media_time >= next_label:
                        label(frame)
                        next_label += every
            if paced and len(ring) == rec.frames and ring[-1] is not labelled:  # only new frames are labelled
                now = time.monotonic()
                if next_label is None:
                    next_label = now
                if now >= next_label:
                    labelled = ring[-1]
                    label(labelled)
                    next_label = max(next_label + every, now - every)  # a slow model skips ticks, not time
            if ended:
                break
        summary.reason = "interrupted" if stop.is_set() else capture.reason or "stopped"
    except KeyboardInterrupt:
        summary.reason = "interrupted"
    finally:
        capture.stop.set()
        capture.join(timeout=5)
        video.close()
        cv2.utils.logging.setLogLevel(opencv_log_level)
        summary.frames, summary.sampled, summary.dropped = capture.frames, capture.sampled, capture.dropped
    if capture.error is not None and summary.reason.startswith("capture failed"):
        summary.live = True  # a broken source is reported like a live one that stopped
    return summary
