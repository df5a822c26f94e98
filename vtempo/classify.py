"""Classify videos: ranked labels for every file, with decoding overlapped with the model.

    for result in classify(["clips/"], "tsm-r50-k400"):
        print(result.path, result.top[0].label, result.top[0].prob)

Worker processes of a torch DataLoader open each video, pick the frames the model's test protocol
asks for (sampling, clips), decode them and make the views (resize, crops, normalisation); the main
process batches the views of consecutive videos into model calls of `batch_size` clips and combines
each video's view scores as the protocol says (mean of logits, or mean of probabilities). Results come
out in input order as soon as a video's views are scored; nothing but the scores of unfinished videos
is kept, so memory stays flat however many files there are. A file that fails gives a result with
`error` set and the run goes on.
"""
from __future__ import annotations

import ctypes
import gc
import os
import re
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import torch

from .errors import UsageError, VtempoError
from .registry import CROPS, ModelEntry, Protocol, labels_path, read_labels
from .video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoError, display_path, open_video
from .video.sampling import clip_indices
from .video.transforms import Preprocess, make_views

CROP_NAMES = {count: name for name, count in CROPS.items()}


# ------------------------------------------------------------------------------------------ inputs


def parse_views(text: str) -> tuple[int, str]:
    """`CLIPSxCROPS` (1x1, 2x3, 10x3) → (clips, crop name)."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", text or "")
    if not match:
        raise UsageError(f"--views must look like 1x1, 2x3 or 10x3 (clips x crops), got {text!r}")
    clips, crops = int(match.group(1)), int(match.group(2))
    if clips < 1 or crops not in CROP_NAMES:
        raise UsageError(f"--views {text}: clips must be at least 1 and crops one of 1, 3, 10")
    return clips, CROP_NAMES[crops]


def _is_frame_folder(folder: Path) -> bool:
    try:
        return any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in os.listdir(folder))
    except OSError:
        return False


def collect_videos(paths: Sequence[str | os.PathLike] | str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The inputs named by `paths`, in order.

    A file is taken as it is (a non-video is reported when it fails to decode). A folder holding
    images is one video (a frame folder); otherwise its video files (by extension) and its frame-folder
    subfolders are taken, sorted, and with `recursive` the other subfolders are searched too. A path
    that does not exist is kept, so it is reported as a failed input like any other.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    videos: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            videos.append(path)
        elif _is_frame_folder(path):
            videos.append(path)
        else:
            videos.extend(_scan_folder(path, recursive))
    return videos


def _scan_folder(folder: Path, recursive: bool) -> list[Path]:
    found: list[Path] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise VtempoError(f"{display_path(folder)}: cannot list folder ({error.strerror or error})") from None
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir():
            if _is_frame_folder(path):
                found.append(path)
            elif recursive:
                found.extend(_scan_folder(path, recursive))
        elif path.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(path)  # broken links included: they are reported, not silently skipped
    return found


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    prob: float


@dataclass
class VideoResult:
    """One input's outcome: top-k predictions, or the reason it failed."""

    path: Path
    top: list[Prediction] = field(default_factory=list)
    error: str | None = None
    num_frames: int | None = None  # frames that decode
    header_frames: int | None = None  # frames the container claims
    fps: float | None = None
    backend: str | None = None
    views: int = 0
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": display_path(self.path), "status": "ok" if self.ok else "error"}
        if self.ok:
            data["top"] = [{"label": p.label, "index": p.index, "prob": round(p.prob, 6)} for p in self.top]
            data.update(num_frames=self.num_frames, header_frames=self.header_frames, fps=self.fps,
                        backend=self.backend, views=self.views)
            if self.warning:
                data["warning"] = self.warning
        else:
            data["error"] = self.error
        return data


# ------------------------------------------------------------------------------------------ decoding


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
        # decode large inputs smaller, but keep at least twice the resize target for any aspect ratio
        return 2 * max(max(self.preprocess.resize), self.preprocess.input_size)

    @property
    def views(self) -> int:
        return self.clips * CROPS[self.crop]


def decode_views(path: Path, plan: ViewPlan) -> dict[str, Any]:
    """Decode one video into its views (V, T, 3, S, S); failures become an `error` entry."""
    item: dict[str, Any] = {"views": None, "error": None}
    try:
        with open_video(path, plan.backend, plan.max_side) as reader:
            item.update(num_frames=reader.num_frames, header_frames=reader.header_frames, fps=reader.fps,
                        backend=reader.backend)
            clips = clip_indices(plan.protocol, reader.num_frames, plan.frames, plan.clips)
            decoded = reader.get([index for clip in clips for index in clip])
        decoded = decoded.reshape(len(clips), plan.frames, *decoded.shape[1:])
        item["views"] = torch.cat([make_views(clip, plan.preprocess, plan.crop) for clip in decoded])
        if reader.num_frames < plan.frames:
            item["warning"] = f"only {reader.num_frames} decodable frame(s) for {plan.frames}: frames repeat"
    except VideoError as error:
        item["error"] = error.reason
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


def _fixed_mmap_threshold(threshold: int = 1 << 17) -> None:
    """Serve every buffer over 128 KiB from its own mapping, returned to the OS when freed.

    glibc raises its mmap threshold each time such a buffer is freed, after which decoded frames and
    views land on the heap and fragment it: memory then grows with every file decoded.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc


def _init_worker(_: int) -> None:
    # Objects inherited from the parent stay out of the worker's garbage collector: collecting them
    # writes to their pages, and the copy-on-write grows the worker's memory with every file it decodes.
    gc.freeze()
    torch.set_num_threads(1)
    # The model runs as many threads as there are cores and they meet at a barrier after every op: a
    # worker that preempts one of them stalls them all. At the lowest priority the workers decode in
    # the gaps the model leaves.
    os.nice(19)


def default_workers() -> int:
    """Decode workers: half the cores (the model needs the rest), at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def video_loader(videos: Sequence[Path], plan: ViewPlan, workers: int, pin_memory: bool = False):
    """A DataLoader yielding one decoded item per video, in order."""
    _fixed_mmap_threshold()  # before the workers fork, so they inherit it
    if workers:
        # One OpenCV thread, set here before the fork: the workers already run in parallel, and a
        # worker that reconfigures a thread pool it inherited from a fork can deadlock on its lock.
        cv2.setNumThreads(1)
    return torch.utils.data.DataLoader(
        VideoViews(videos, plan),
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep,
        pin_memory=pin_memory,
        worker_init_fn=_init_worker if workers else None,
        prefetch_factor=2 if workers else None,
    )


# ------------------------------------------------------------------------------------------ the model


@dataclass
class _Pending:
    """A video whose views are queued for the model; its scores gather here until all are in."""

    item: dict[str, Any]
    path: Path
    total: int = 0
    scores: list[torch.Tensor] = field(default_factory=list)
    scored: int = 0

    @property
    def done(self) -> bool:
        return self.scored == self.total


def _model_spec(path: str | os.PathLike) -> tuple[Any, dict[str, Any], int]:
    """(loaded checkpoint, its metadata, its number of classes) without building a model."""
    from .checkpoint import read_file, read_state

    loaded = read_file(path)
    state, meta, _ = read_state(loaded)
    classes = meta.get("num_classes")
    if not isinstance(classes, int):
        heads = [v for k, v in state.items() if k.endswith(("fc.weight", "fc_cls.weight")) and v.dim() >= 2]
        if not heads:
            raise VtempoError(f"{path}: cannot tell the number of classes (no classifier weights found)")
        classes = int(heads[-1].shape[0])
    return loaded, meta, classes


@dataclass
class Classifier:
    """A model ready to classify videos with its test protocol."""

    model: torch.nn.Module
    name: str
    labels: list[str]
    plan: ViewPlan
    average: str = "logits"
    topk: int = 5
    batch_size: int = 8
    workers: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: str = "fp32"

    @classmethod
    def create(
        cls,
        model: str | torch.nn.Module,
        *,
        weights: str | os.PathLike | None = "default",
        labels: str | os.PathLike | Sequence[str] | None = None,
        frames: int | None = None,
        views: str | None = None,
        topk: int = 5,
        batch_size: int = 8,
        workers: int | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        backend: str = "auto",
        channels_last: bool | None = None,
        user_registry: str | os.PathLike | None = None,
    ) -> Classifier:
        """Build the model (loading and checking its weights) and the protocol; decodes nothing.

        model: a registry name (weights "default": its published checkpoint), an architecture name
        with `weights=FILE` (class names from `labels`, else from the file when it carries them), or a
        ready nn.Module. weights=None runs an untrained model (only for timing).
        """
        from . import api
        from .runtime import check_dtype, pick_device, prepare

        check_dtype(dtype)
        if topk < 1 or batch_size < 1:
            raise UsageError("--topk and --batch-size must be at least 1")
        if workers is not None and workers < 0:
            raise UsageError("--workers must be 0 (decode in this process) or more")
        view_override = parse_views(views) if views else None
        if weights is not None and str(weights) != "default" and not Path(weights).is_file():
            raise UsageError(f"--weights {weights}: no such file")
        meta: dict[str, Any] = {}
        if isinstance(model, torch.nn.Module):
            net, entry = model, getattr(model, "entry", None)
            name = entry.name if entry else getattr(model, "arch", type(model).__name__)
        else:
            name = model
            _, entry = api.resolve(model, user_registry)
            if weights is None:
                net = api.create_model(model, frames=frames, user_registry=user_registry)
            elif str(weights) == "default":
                if entry is None:
                    raise UsageError(
                        f"{model} is an architecture, not a trained model: pass --weights FILE (and --labels FILE), "
                        f"or use a registry model (`vtempo models` lists them)"
                    )
                from .hub import weights_path

                # before building anything: says what is missing and how to get it, or downloads
                checkpoint = weights_path(entry)
                net = api.create_model(model, weights=checkpoint, frames=frames, user_registry=user_registry)
            else:
                from .checkpoint import load_weights

                loaded, meta, num_classes = _model_spec(weights)
                net = api.create_model(model, num_classes=num_classes, frames=frames or meta.get("frames"),
                                       user_registry=user_registry)
                load_weights(net, loaded, layout=entry.weights.layout if entry and entry.weights else None)
        frames = frames or meta.get("frames") or (entry.frames if entry else None) or 8
        try:
            net.set_frames(frames)
        except ValueError as error:
            raise UsageError(f"--frames {frames}: {error}") from None
        except AttributeError:
            pass

        protocol = entry.protocol if entry else _protocol_from(meta)
        clips, crop = view_override or (protocol.clips, protocol.crop)
        preprocess = _preprocess_from(meta) if meta.get("input_size") and not entry else Preprocess.from_entry(entry)
        num_classes = net.fc.out_features if hasattr(net, "fc") else None
        names = _labels(labels, meta, entry, num_classes, name)
        device_ = pick_device(device)
        net = prepare(net, device_, channels_last)
        return cls(
            model=net, name=name, labels=names,
            plan=ViewPlan(frames, protocol, clips, crop, preprocess, backend),
            average=protocol.average, topk=min(topk, len(names)), batch_size=batch_size,
            workers=default_workers() if workers is None else workers, device=device_, dtype=dtype,
        )

    def run(self, videos: Sequence[Path]) -> Iterator[VideoResult]:
        """Results for `videos`, in order, each as soon as it is complete.

        The decode workers start here, before the caller iterates (and perhaps starts a progress-bar
        thread: forking a process with more threads risks deadlocked children)."""
        loader = iter(video_loader(videos, self.plan, self.workers, pin_memory=self.device.type == "cuda"))
        return self._results(loader, videos)

    def _results(self, loader, videos: Sequence[Path]) -> Iterator[VideoResult]:
        pending: deque[_Pending] = deque()
        batch: list[tuple[_Pending, torch.Tensor]] = []
        filled = 0
        for item in loader:
            views = item.pop("views")  # only the batch holds the pixels from here on
            entry = _Pending(item, Path(videos[item["index"]]), 0 if views is None else len(views))
            pending.append(entry)
            start = 0
            while views is not None and start < len(views):
                take = min(self.batch_size - filled, len(views) - start)
                batch.append((entry, views[start : start + take]))
                filled += take
                start += take
                if filled == self.batch_size:
                    self._score(batch)
                    batch, filled = [], 0
            while pending and pending[0].done:
                yield self._result(pending.popleft())
        if batch:
            self._score(batch)
        while pending:
            yield self._result(pending.popleft())

    def _score(self, batch: list[tuple[_Pending, torch.Tensor]]) -> None:
        from .runtime import autocast

        clips = torch.cat([views for _, views in batch]).to(self.device, non_blocking=True)
        # entered per call, not around the generator: the caller's code between results must not run
        # under inference mode or autocast
        with torch.inference_mode(), autocast(self.device, self.dtype):
            logits = self.model(clips).float().cpu()
        start = 0
        for entry, views in batch:
            entry.scores.append(logits[start : start + len(views)])
            entry.scored += len(views)
            start += len(views)

    def _result(self, entry: _Pending) -> VideoResult:
        item = entry.item
        if item["error"] is not None:
            return VideoResult(entry.path, error=item["error"], num_frames=item.get("num_frames"),
                               header_frames=item.get("header_frames"), backend=item.get("backend"))
        logits = torch.cat(entry.scores)
        if self.average == "prob":
            probs = logits.softmax(-1).mean(0)
        else:
            probs = logits.mean(0).softmax(-1)
        values, indices = probs.topk(self.topk)
        top = [Prediction(self.labels[i], int(i), float(v)) for v, i in zip(values.tolist(), indices.tolist())]
        return VideoResult(entry.path, top, None, item["num_frames"], item["header_frames"], item["fps"],
                           item["backend"], len(logits), item.get("warning"))


def _protocol_from(meta: dict[str, Any]) -> Protocol:
    raw = meta.get("protocol")
    if not isinstance(raw, dict):
        return Protocol()
    known = {k: raw[k] for k in ("sampling", "clips", "crop", "average", "stride") if raw.get(k) is not None}
    try:
        return Protocol(**known)
    except TypeError:
        return Protocol()


def _preprocess_from(meta: dict[str, Any]) -> Preprocess:
    resize = meta.get("resize") or [round(meta["input_size"] * 256 / 224)]
    defaults = Preprocess()
    return Preprocess(tuple(int(v) for v in resize), int(meta["input_size"]),
                      tuple(meta.get("mean") or defaults.mean), tuple(meta.get("std") or defaults.std))


def _labels(labels, meta: dict[str, Any], entry: ModelEntry | None, num_classes: int | None, name: str) -> list[str]:
    if labels is not None and not isinstance(labels, (str, os.PathLike)):
        names, source = [str(label) for label in labels], "the given labels"
    elif labels is not None:
        try:
            names, source = read_labels(labels), str(labels)
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--labels {labels}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    elif isinstance(meta.get("classes"), (list, tuple)):
        names, source = [str(c) for c in meta["classes"]], "the checkpoint"
    elif entry is not None and labels_path(entry) is not None:
        names, source = read_labels(labels_path(entry)), str(labels_path(entry))
    else:
        if num_classes is None:
            raise UsageError(f"{name}: pass --labels FILE")
        return [f"class {i}" for i in range(num_classes)]
    if num_classes is not None and len(names) != num_classes:
        raise UsageError(f"{source} lists {len(names)} classes but {name} has {num_classes} outputs")
    return names


def classify(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    model: str | torch.nn.Module,
    *,
    recursive: bool = False,
    **options: Any,
) -> Iterator[VideoResult]:
    """Classify videos (files, frame folders, or folders of them). Returns an iterator of `VideoResult`,
    in input order, produced while the rest is still decoding.

    The model is built and its weights checked before this returns, so a missing checkpoint fails at
    once. Options: weights, labels, frames, views ("2x3"), topk, batch_size (clips per model call),
    workers (decode processes; 0 decodes in this process), device, dtype, backend, user_registry.
    """
    videos = collect_videos(paths, recursive)
    return Classifier.create(model, **options).run(videos)


# ------------------------------------------------------------------------------------------ measuring


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
    from . import api
    from .runtime import autocast, synchronize
    from .video import available_backends

    videos = collect_videos([folder], recursive=True)
    if not videos:
        raise UsageError(f"{display_path(folder)}: no videos found")
    if files:
        videos = [videos[i % len(videos)] for i in range(files)]
    net = api.create_model(model, frames=frames, user_registry=user_registry)
    classifier = Classifier.create(net, weights=None, frames=frames, views=views, batch_size=batch, workers=workers,
                                   device=device, dtype=dtype, channels_last=channels_last)
    if size:
        plan = classifier.plan
        classifier.plan = ViewPlan(plan.frames, plan.protocol, plan.clips, plan.crop,
                                   Preprocess.from_entry(getattr(net, "entry", None), size), plan.backend)
    plan = classifier.plan

    decode: dict[str, float] = {}
    for backend in readers or available_backends():
        started, clips = time.perf_counter(), 0
        for path in videos:
            try:
                with open_video(path, backend, plan.max_side) as reader:
                    chosen = clip_indices(plan.protocol, reader.num_frames, plan.frames, plan.clips)
                    reader.get([i for clip in chosen for i in clip])
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
    sample = torch.randn(classifier.batch_size, plan.frames, 3, size_, size_)
    calls = max(1, -(-total_clips // classifier.batch_size))
    with torch.inference_mode(), autocast(classifier.device, dtype):
        classifier.model(sample.to(classifier.device))  # warm-up
    for _ in classifier.run(videos[: classifier.batch_size]):  # warm-up: one-off start-up costs stay out of the rates
        pass
    # Model-only and end-to-end runs alternate and the medians are reported: on a shared machine the
    # speed drifts by ±20% from minute to minute, more than the difference being measured.
    model_rates, end_to_end_rates, ratios = [], [], []
    with _RssSampler() as memory:
        for _ in range(rounds):
            with torch.inference_mode(), autocast(classifier.device, dtype):
                synchronize(classifier.device)
                started = time.perf_counter()
                for _ in range(calls):
                    classifier.model(sample.to(classifier.device)).float().cpu()
                synchronize(classifier.device)
            model_rates.append(calls * classifier.batch_size / (time.perf_counter() - started))
            started, clips, failed = time.perf_counter(), 0, 0
            for result in classifier.run(videos):
                clips += result.views
                failed += not result.ok
            end_to_end_rates.append(clips / (time.perf_counter() - started))
            ratios.append(end_to_end_rates[-1] / model_rates[-1])
    mb = 1024 * 1024
    return PipelineReport(
        model=model, files=len(videos), clips=clips, views=f"{plan.clips}x{CROPS[plan.crop]}", frames=plan.frames,
        input_size=size_, device=str(classifier.device), dtype=dtype, batch_size=classifier.batch_size,
        workers=classifier.workers, decode_clips_per_s=decode, data_clips_per_s=data_rate,
        model_clips_per_s=statistics.median(model_rates), end_to_end_clips_per_s=statistics.median(end_to_end_rates),
        end_to_end_vs_model=statistics.median(ratios), rounds=rounds,
        peak_rss_mb=memory.peak / mb if memory.peak else None,
        worker_peak_rss_mb=memory.children_peak / mb if memory.children_peak else None,
        failed=failed,
    )


# ------------------------------------------------------------------------------------------ writing


class ResultWriter:
    """Writes results to .jsonl (a line per result, flushed as it comes), .csv (a row per result,
    likewise) or .json (one document, written when closed, also after an interruption)."""

    FORMATS = (".jsonl", ".json", ".csv")

    def __init__(self, path: str | os.PathLike, topk: int):
        self.path, self.topk = Path(path), topk
        self.kind = self.path.suffix.lower()
        if self.kind not in self.FORMATS:
            raise UsageError(f"--output {display_path(self.path)}: the name must end in .jsonl, .json or .csv")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "w", encoding="utf-8", newline="")
        except OSError as error:
            raise UsageError(f"--output {display_path(self.path)}: cannot write ({error.strerror or error})") from None
        self._rows: list[dict[str, Any]] = []
        if self.kind == ".csv":
            import csv

            self._csv = csv.writer(self._handle)
            ranks = [f"top{r}_{part}" for r in range(1, topk + 1) for part in ("label", "prob")]
            self._csv.writerow(["path", "status", *ranks, "num_frames", "header_frames", "backend", "error"])

    def write(self, result: VideoResult) -> None:
        import json

        data = result.to_dict()
        if self.kind == ".jsonl":
            self._handle.write(json.dumps(data, ensure_ascii=False) + "\n")
        elif self.kind == ".csv":
            ranks: list[Any] = []
            for rank in range(self.topk):
                p = result.top[rank] if rank < len(result.top) else None
                ranks += [p.label, f"{p.prob:.6f}"] if p else ["", ""]
            self._csv.writerow([data["path"], data["status"], *ranks, result.num_frames or "",
                                result.header_frames or "", result.backend or "", result.error or ""])
        else:
            self._rows.append(data)
            return
        self._handle.flush()

    def close(self) -> None:
        import json

        if self._handle.closed:
            return
        if self.kind == ".json":
            json.dump(self._rows, self._handle, ensure_ascii=False, indent=2)
            self._handle.write("\n")
        self._handle.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ checking


@dataclass
class VideoCheck:
    """What `check-videos` found for one input."""

    path: Path
    error: str | None = None
    backend: str | None = None
    header_frames: int | None = None
    num_frames: int | None = None  # decodable frames
    fps: float | None = None
    height: int | None = None
    width: int | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_video(path: str | os.PathLike, frames: int = 8, backend: str = "auto", thorough: bool = False) -> VideoCheck:
    """Open and decode a video the way `classify` does (uniform test sampling of `frames` frames).

    thorough: also decode every frame in order (OpenCV) and compare the count with the header's.
    """
    from .video.readers import OpenCVReader
    from .video.sampling import uniform_indices

    path = Path(path)
    check = VideoCheck(path)
    try:
        with open_video(path, backend, ViewPlan(frames, Protocol(), 1, "centre", Preprocess()).max_side) as reader:
            check.backend, check.header_frames, check.num_frames = reader.backend, reader.header_frames, reader.num_frames
            check.fps, check.height, check.width = reader.fps, reader.height, reader.width
            reader.get(uniform_indices(reader.num_frames, frames))
        if thorough and reader.backend not in ("frames", "opencv"):
            with OpenCVReader(path) as sequential:
                if sequential.num_frames != reader.num_frames:
                    check.note = f"{sequential.num_frames} frames decode in order, {reader.backend} reads {reader.num_frames}"
                check.num_frames = min(check.num_frames, sequential.num_frames)
    except VideoError as error:
        check.error = error.reason
    except Exception as error:  # noqa: BLE001 - a check reports every failure, whatever raised it
        check.error = f"unexpected {type(error).__name__}: {error}"
    if check.ok and check.header_frames and check.num_frames and check.header_frames != check.num_frames:
        check.note = check.note or f"header claims {check.header_frames} frames, {check.num_frames} decode"
    if check.ok and check.num_frames is not None and check.num_frames < frames:
        check.note = check.note or f"only {check.num_frames} frame(s): clips repeat frames"
    return check
