"""`vtempo robustness`: accuracy as the visual tempo changes (TCM paper §IV-F, Fig. 5; TPN's protocol).

Models trained on T frames at a fixed stride (the paper: 4 frames × stride 4) are tested on the same
clips re-sampled at strides τ = 2..8: T frames at stride τ, so the action plays τ/4 times as fast as
in training. Every stride starts at the same frame (the start that centres the longest window in the
video) and a video too short for a window repeats its last frame, as the paper does.

Each video is decoded once: the frames of all strides come out of one read of the longest window,
are resized and cropped once, and sliced per stride; every model scores every stride in one batch.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vtempo import distributed
from vtempo.data.dataset import VideoSet, read_video_set
from vtempo.errors import UsageError, VtempoError
from vtempo.evaluation.evaluate import LoadedModel, align_classes, load_model
from vtempo.fast import prepare
from vtempo.runtime import autocast
from vtempo.video import VideoError, open_video, stride_indices
from vtempo.video.transforms import Preprocess, make_views


def parse_strides(text: str) -> list[int]:
    """`2..8`, `2-8`, `2,4,8` or `4` → sorted distinct strides ≥ 1."""
    try:
        strides: set[int] = set()
        for part in text.replace(" ", "").split(","):
            for sep in ("..", "-"):
                if sep in part:
                    low, high = (int(v) for v in part.split(sep))
                    strides.update(range(low, high + 1))
                    break
            else:
                strides.add(int(part))
    except ValueError:
        raise UsageError(f"--stride must look like 2..8, 2-8 or 2,4,8; got {text!r}") from None
    if not strides or min(strides) < 1:
        raise UsageError(f"--stride needs strides of at least 1, got {text!r}")
    return sorted(strides)


def sweep_indices(num_frames: int, frames: int, strides: Sequence[int]) -> dict[int, list[int]]:
    """The frames of each stride's clip: one shared start (centring the longest window), last frame
    repeated past the end."""
    span = (frames - 1) * max(strides) + 1
    start = max(num_frames - span, 0) // 2
    return {stride: stride_indices(num_frames, frames, stride, start) for stride in strides}


class StrideSweepDataset(torch.utils.data.Dataset):
    """Item: ({preprocess: (S, T, 3, H, W)} for each distinct preprocessing, label, index, None), or
    (None, label, index, reason) for a video that fails to decode."""

    def __init__(self, videos: VideoSet, frames: int, strides: Sequence[int], pres: Sequence[Preprocess]):
        self.videos, self.frames, self.strides, self.pres = videos, frames, list(strides), list(dict.fromkeys(pres))

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int):
        path, label = self.videos.videos[index]
        try:
            with open_video(path) as reader:
                per_stride = sweep_indices(reader.num_frames, self.frames, self.strides)
                needed = sorted({i for clip in per_stride.values() for i in clip})
                decoded = reader.get(needed)
        except VideoError as error:
            return None, label, index, str(error)
        position = {frame: n for n, frame in enumerate(needed)}
        out = {}
        for pre in self.pres:
            ready = make_views(decoded, pre, "centre")[0]  # each decoded frame resized, cropped, normalised once
            out[pre] = torch.stack([ready[[position[i] for i in per_stride[s]]] for s in self.strides])
        return out, label, index, None


def _collate(items: list):
    good = [item for item in items if item[0] is not None]
    failed = [(item[2], item[3]) for item in items if item[0] is None]
    if not good:
        return None, None, [], failed
    batch = {pre: torch.stack([item[0][pre] for item in good]) for pre in good[0][0]}
    return batch, torch.tensor([item[1] for item in good]), [item[2] for item in good], failed


@dataclass
class RobustnessResult:
    data: str
    frames: int
    strides: list[int]
    videos: int
    models: list[str]
    train_stride: dict[str, int | None]
    top1: dict[str, dict[int, float]]
    top5: dict[str, dict[int, float]]
    drop: dict[str, dict[int, float | None]]  # top-1 at τ minus top-1 at the training stride
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        return data


def sweep(data: str, models: Sequence[LoadedModel], strides: Sequence[int], frames: int = 4,
          train_stride: int | None = None, labels: str | None = None, batch_size: int = 8,
          workers: int | None = None, ranks: distributed.Ranks | None = None, dtype: str = "fp32",
          progress: Callable[[int], None] | None = None) -> RobustnessResult:
    """Top-1/top-5 of every model at every stride on the same clips."""
    from vtempo.runtime import default_workers

    if not models:
        raise UsageError("robustness needs at least one --model")
    ranks = ranks or distributed.Ranks(0, 1, torch.device("cpu"))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UsageError(f"a model is given twice: {names}")
    reference = models[0]
    videos = align_classes(read_video_set(data, labels), reference.classes, reference.model.fc.out_features)
    for m in models[1:]:
        if m.model.fc.out_features != reference.model.fc.out_features or (m.classes and reference.classes and m.classes != reference.classes):
            raise VtempoError(f"{m.name} and {reference.name} do not share their classes: compare models of one label set")
    for m in models:
        m.model.set_frames(frames)  # fails early, naming the model, when it was built for another T
        prepare(m.model, ranks.device)
    dataset = StrideSweepDataset(videos, frames, strides, [m.pre for m in models])
    shard = list(range(ranks.rank, len(dataset), ranks.world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard), batch_size=batch_size,
        num_workers=default_workers() if workers is None else workers, collate_fn=_collate,
    )
    correct1 = np.zeros((len(models), len(strides)))
    correct5 = np.zeros((len(models), len(strides)))
    count, failed = 0, []
    k = min(5, reference.model.fc.out_features)
    with torch.inference_mode():
        for batch, label, _, bad in loader:
            failed += [(str(videos.videos[i][0]), reason) for i, reason in bad]
            if batch is not None:
                label = label.to(ranks.device)
                for m_index, m in enumerate(models):
                    clips = batch[m.pre].to(ranks.device)
                    with autocast(ranks.device, dtype):
                        logits = m.model(clips.flatten(0, 1)).float().view(len(label), len(strides), -1)
                    top = logits.topk(k, dim=-1).indices
                    correct1[m_index] += (top[..., 0] == label[:, None]).sum(0).cpu().numpy()
                    correct5[m_index] += (top == label[:, None, None]).any(-1).sum(0).cpu().numpy()
                count += len(label)
            if progress is not None:
                progress(len(bad) + (0 if label is None else len(label)))
    summed = distributed.all_sum([count, *correct1.ravel(), *correct5.ravel()], ranks)
    count = int(summed[0])
    size = correct1.size
    correct1 = np.array(summed[1 : 1 + size]).reshape(correct1.shape)
    correct5 = np.array(summed[1 + size :]).reshape(correct5.shape)
    failed = [f for part in distributed.all_gather_objects(failed, ranks) for f in part]
    if count == 0:
        raise VtempoError(f"{data}: no video could be decoded")
    top1 = {m.name: {s: float(100 * correct1[i, j] / count) for j, s in enumerate(strides)} for i, m in enumerate(models)}
    top5 = {m.name: {s: float(100 * correct5[i, j] / count) for j, s in enumerate(strides)} for i, m in enumerate(models)}
    trained = {}
    for m in models:
        own = m.protocol.stride if m.protocol.sampling == "stride" else None
        trained[m.name] = train_stride or own
    drop = {name: {s: (top1[name][s] - top1[name][trained[name]] if trained[name] in top1[name] else None)
                   for s in strides} for name in top1}
    return RobustnessResult(str(data), frames, list(strides), count, names, trained, top1, top5, drop, failed)


def run(data: str, model_specs: Sequence[str], weights: Sequence[str] = (), strides: Sequence[int] = range(2, 9),
        frames: int = 4, train_stride: int | None = None, labels: str | None = None, batch_size: int = 8,
        workers: int | None = None, device: str = "auto", dtype: str = "fp32",
        progress_factory=None) -> RobustnessResult:
    """Load the models and sweep. A model is a registry name, a checkpoint written by `vtempo train`,
    `LABEL=CHECKPOINT` (the same, shown as LABEL), or an architecture whose checkpoint is the `weights`
    entry in the same position."""
    if weights and len(weights) > len(model_specs):
        raise UsageError("more --weights than --model")
    ranks = distributed.start(device)
    try:
        loaded = []
        for number, spec in enumerate(model_specs):
            label, _, checkpoint = spec.partition("=")
            if checkpoint:  # LABEL=CHECKPOINT: a checkpoint that records its architecture, shown as LABEL
                model = load_model(checkpoint, None, frames)
                model.name = label
            else:
                model = load_model(spec, weights[number] if number < len(weights) else None, frames)
            loaded.append(model)
        total = len(range(ranks.rank, len(read_video_set(data, labels)), ranks.world))
        if progress_factory is not None and ranks.main:
            with progress_factory(total) as advance:
                return sweep(data, loaded, strides, frames, train_stride, labels, batch_size, workers, ranks, dtype, advance)
        return sweep(data, loaded, strides, frames, train_stride, labels, batch_size, workers, ranks, dtype)
    finally:
        distributed.stop(ranks)


def save(result: RobustnessResult, out: str | os.PathLike) -> dict[str, Path]:
    """robustness.json, robustness.csv and robustness.png (top-1 against stride, one line per model)."""
    from vtempo.viz.plots import line_plot, write_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "robustness.json", "csv": out / "robustness.csv", "png": out / "robustness.png"}
    paths["json"].write_text(json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "stride", "top1", "top5", "drop_from_train_stride", "train_stride"])
        for name in result.models:
            for s in result.strides:
                drop = result.drop[name][s]
                writer.writerow([name, s, f"{result.top1[name][s]:.2f}", f"{result.top5[name][s]:.2f}",
                                 "" if drop is None else f"{drop:.2f}", result.train_stride[name] or ""])
    trained = {v for v in result.train_stride.values() if v}
    image = line_plot(
        {name: [(s, result.top1[name][s]) for s in result.strides] for name in result.models},
        f"Top-1 vs sampling stride ({result.frames} frames, {result.videos} videos)", "stride (frames)", "top-1 (%)",
        marker_x=trained.pop() if len(trained) == 1 else None,
    )
    write_png(paths["png"], image)
    return paths
