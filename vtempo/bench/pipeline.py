"""Throughput of each stage of classification (decode, views, model, end to end) and peak memory."""
from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from vtempo.errors import UsageError
from vtempo.fast import prepare
from vtempo.inference.decoding import decode_views
from vtempo.inference.recognizer import create_model, load
from vtempo.protocol import CROPS
from vtempo.runtime import autocast, default_workers, synchronize
from vtempo.video import VideoError, available_backends, display_path, open_video
from vtempo.video.discovery import collect_videos
from vtempo.video.sampling import clip_indices
from vtempo.video.transforms import Preprocess


@dataclass
class PipelineReport:
    """Throughput of each stage of `classify` on a folder, in clips (model inputs of T frames) per second."""

    model: str
    files: int
    clips: int
    views: str
    frames: int
    input_size: int
    device: str
    dtype: str
    batch_size: int
    workers: int
    decode_clips_per_s: dict[str, float]  # per reader: open + sample + decode, one process
    data_clips_per_s: float  # decode + views (resize, crop, normalise), one process
    model_clips_per_s: float  # the model alone on ready tensors
    end_to_end_clips_per_s: float  # classify(): workers decoding while the model runs
    end_to_end_vs_model: float  # median over the rounds of each round's ratio
    rounds: int  # alternating model-only and end-to-end runs; every rate is the median over them
    peak_rss_mb: float | None  # this process during the rounds
    worker_peak_rss_mb: float | None  # the largest decode worker during the rounds
    failed: int


class _RssSampler:
    """Peak resident memory of this process and of its children while in the `with` block (Linux)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self.children_peak = interval, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def _rss(pid: int | str) -> int:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    @staticmethod
    def _children() -> list[str]:
        pids: list[str] = []
        try:
            for task in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{task}/children") as handle:
                    pids.extend(handle.read().split())
        except OSError:
            pass
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss("self"))
            for pid in self._children():
                self.children_peak = max(self.children_peak, self._rss(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> _RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure_pipeline(
    model: str,
    folder: str | os.PathLike,
    *,
    device: str = "auto",
    dtype: str = "fp32",
    channels_last: bool | None = None,
    batch: int = 8,
    workers: int | None = None,
    frames: int | None = None,
    views: str = "1x1",
    size: int | None = None,
    files: int | None = None,
    readers: Sequence[str] | None = None,
    user_registry: str | os.PathLike | None = None,
    rounds: int = 3,
) -> PipelineReport:
    """Clips/s of each stage of classify on the videos in `folder` (untrained weights: speed only).

    views defaults to 1x1 so a clip is one video; `files` repeats or trims the folder's videos to that
    count (memory checks: 20 vs 200); `size` overrides the input size (resize scaled with it).
    """
    videos = collect_videos([folder], recursive=True)
    if not videos:
        raise UsageError(f"{display_path(folder)}: no videos found")
    if files:
        videos = [videos[i % len(videos)] for i in range(files)]
    net = create_model(model, frames=frames, registry=user_registry)
    recognizer = load(net, device=device, dtype=dtype, frames=frames)
    prepare(recognizer.model, recognizer.device, channels_last)  # the weights' memory format asked for
    if size:
        recognizer.preprocess = Preprocess.from_entry(recognizer.entry, size)
    plan = recognizer.plan(views)
    workers = default_workers(device=recognizer.device) if workers is None else workers

    def run(paths):
        return recognizer.classify_files(paths, views=views, batch_size=batch, workers=workers)

    decode: dict[str, float] = {}
    for backend in readers or available_backends():
        started, clips = time.perf_counter(), 0
        for path in videos:
            try:
                with open_video(path, backend, plan.max_side) as reader:
                    chosen, _ = reader.sample(lambda count: clip_indices(plan.protocol, count, plan.frames, plan.clips))
                    clips += len(chosen)
            except VideoError:
                pass
        decode[backend] = clips / (time.perf_counter() - started)

    started, clips = time.perf_counter(), 0
    for path in videos:
        item = decode_views(path, plan)
        clips += 0 if item["views"] is None else len(item["views"])
    data_rate = clips / (time.perf_counter() - started)

    size_ = plan.preprocess.input_size
    total_clips = len(videos) * plan.views
    sample = torch.randn(batch, plan.frames, 3, size_, size_)
    calls = max(1, -(-total_clips // batch))
    with torch.inference_mode(), autocast(recognizer.device, dtype):
        recognizer.model(sample.to(recognizer.device))  # warm-up
    for _ in run(videos[: batch]):  # warm-up: one-off start-up costs stay out of the rates
        pass
    # Model-only and end-to-end runs alternate and the medians are reported: on a shared machine the
    # speed drifts from minute to minute by more than the difference being measured.
    model_rates, end_to_end_rates, ratios = [], [], []
    with _RssSampler() as memory:
        for _ in range(rounds):
            with torch.inference_mode(), autocast(recognizer.device, dtype):
                synchronize(recognizer.device)
                started = time.perf_counter()
                for _ in range(calls):
                    recognizer.model(sample.to(recognizer.device)).float().cpu()
                synchronize(recognizer.device)
            model_rates.append(calls * batch / (time.perf_counter() - started))
            started, clips, failed = time.perf_counter(), 0, 0
            for result in run(videos):
                clips += result.views
                failed += not result.ok
            end_to_end_rates.append(clips / (time.perf_counter() - started))
            ratios.append(end_to_end_rates[-1] / model_rates[-1])
    mb = 1024 * 1024
    return PipelineReport(
        model=model, files=len(videos), clips=clips, views=f"{plan.clips}x{CROPS[plan.crop]}", frames=plan.frames,
        input_size=size_, device=str(recognizer.device), dtype=dtype, batch_size=batch,
        workers=workers, decode_clips_per_s=decode, data_clips_per_s=data_rate,
        model_clips_per_s=statistics.median(model_rates), end_to_end_clips_per_s=statistics.median(end_to_end_rates),
        end_to_end_vs_model=statistics.median(ratios), rounds=rounds,
        peak_rss_mb=memory.peak / mb if memory.peak else None,
        worker_peak_rss_mb=memory.children_peak / mb if memory.children_peak else None,
        failed=failed,
    )
