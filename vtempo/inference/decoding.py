"""Decoding in worker processes: from a path to the model's views, under the model's test protocol."""
from __future__ import annotations

import gc
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import torch

from vtempo.protocol import CROPS, Protocol
from vtempo.runtime import available_cores, malloc_thresholds, malloc_trim
from vtempo.video import VideoError, open_video
from vtempo.video.discovery import FailedInput
from vtempo.video.sampling import clip_indices
from vtempo.video.transforms import Preprocess, make_views


@dataclass(frozen=True)
class ViewPlan:
    """Everything a worker needs to turn a path into model input: picklable, no model."""

    frames: int
    protocol: Protocol
    clips: int
    crop: str
    preprocess: Preprocess
    backend: str = "auto"

    @property
    def max_side(self) -> int:
        return self.preprocess.decode_side

    @property
    def views(self) -> int:
        return self.clips * CROPS[self.crop]

    def decode(self, path: Path) -> dict[str, Any]:
        """`decode_views(path, self)`."""
        return decode_views(path, self)


def decode_views(path: Path, plan: ViewPlan) -> dict[str, Any]:
    """Decode one video into its views (V, T, 3, S, S); failures become an `error` entry (and the
    decoder's own words, when the error puts them plainly, a `detail` entry)."""
    item: dict[str, Any] = {"views": None, "error": None}
    if isinstance(path, FailedInput):  # found unusable while collecting the inputs
        item["error"] = path.reason
        return item
    try:
        with open_video(path, plan.backend, plan.max_side) as reader:
            clips, decoded = reader.sample(lambda count: clip_indices(plan.protocol, count, plan.frames, plan.clips))
            # after the read: `auto` may have moved the file to another backend on the way
            item.update(num_frames=reader.num_frames, header_frames=reader.header_frames, fps=reader.fps,
                        backend=reader.backend)
        decoded = decoded.reshape(len(clips), plan.frames, *decoded.shape[1:])
        item["views"] = torch.cat([make_views(clip, plan.preprocess, plan.crop) for clip in decoded])
        if reader.num_frames < plan.frames:
            item["warning"] = f"only {reader.num_frames} decodable frame(s) for {plan.frames}: frames repeat"
    except VideoError as error:
        item["error"] = error.reason
        if error.detail:
            item["detail"] = error.detail
    except Exception as error:  # noqa: BLE001 - one odd file must never end a batch
        item["error"] = f"unexpected {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return item


class VideoViews(torch.utils.data.Dataset):
    def __init__(self, videos: Sequence[Path], plan: ViewPlan):
        self.videos, self.plan = list(videos), plan

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = decode_views(self.videos[index], self.plan)
        item["index"] = index
        return item


def _keep(item):
    return item


def return_freed_buffers() -> None:
    """Serve every buffer over 128 KiB from its own mapping, returned to the OS when freed, and trim the
    heap's free top beyond 128 KiB: a decode worker's frames differ in size from video to video, and a
    heap that kept them (glibc's own adjustment, or the model process's `fast.heap` it inherits) would
    fragment and grow with every file decoded."""
    malloc_thresholds(1 << 17, 1 << 17)


def _quiet_when_the_reader_left(kind, value, trace) -> None:
    """The hook for errors of a worker's helper threads (multiprocessing's resource sharer calls it).
    One that was handing a decoded batch over when the main process stopped (Ctrl-C, SIGTERM) finds the
    pipe closed: nothing went wrong that the user should see."""
    if not issubclass(kind, (BrokenPipeError, ConnectionResetError)):
        sys.__excepthook__(kind, value, trace)


def _init_worker(_: int) -> None:
    # Objects inherited from the parent stay out of the worker's garbage collector: collecting them
    # writes to their pages, and the copy-on-write grows the worker's memory with every file it decodes.
    gc.freeze()
    # The command's SIGTERM handler (raise KeyboardInterrupt, to finish the output) is for the main
    # process; a worker the loader terminates at shutdown just ends.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.excepthook = _quiet_when_the_reader_left
    torch.set_num_threads(1)
    return_freed_buffers()
    # The model runs as many threads as there are cores and they meet at a barrier after every op: a
    # worker that preempts one of them stalls them all. At the lowest priority the workers decode in
    # the gaps the model leaves.
    os.nice(19)


def cap_workers(requested: int, files: int) -> int:
    """Decode workers actually started: what was asked for, but no more than there are files to decode
    or cores to run them (more only cost memory and start-up time)."""
    return max(0, min(requested, files, available_cores()))


def video_loader(videos: Sequence[Path], plan: ViewPlan, workers: int, pin_memory: bool = False):
    """A DataLoader yielding one decoded item per video, in order; `workers` is capped by `cap_workers`."""
    return decode_loader(VideoViews(videos, plan), cap_workers(workers, len(videos)), pin_memory)


def decode_loader(dataset: torch.utils.data.Dataset, workers: int, pin_memory: bool = False):
    """A DataLoader yielding `dataset`'s items one by one, in order, decoded by `workers` processes
    (0: in this process)."""
    if workers:
        # The workers fork from this process at the loader's first item. Pages of this process's heap
        # that exist then are shared with them copy-on-write, so the model's next writes to the freed
        # activations it keeps (`fast.heap`) would copy them page by page: handed back to the OS first,
        # they are mapped afresh as zeros instead, at a fraction of the cost.
        malloc_trim()
        # One OpenCV thread, set here before the fork: the workers already run in parallel, and a
        # worker that reconfigures a thread pool it inherited from a fork can deadlock on its lock.
        cv2.setNumThreads(1)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep,
        pin_memory=pin_memory,
        worker_init_fn=_init_worker if workers else None,
        prefetch_factor=2 if workers else None,
    )
