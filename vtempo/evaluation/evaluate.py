"""`vtempo evaluate`: top-1/top-5, per-class accuracy and the confusion matrix of a model on a video set.

Each video is tested with the model's own protocol (its registry entry's, or what `vtempo train`
recorded in the checkpoint): the same frames, crops and score averaging as `classify`; `--views
CLIPSxCROPS` overrides the views. Under `torchrun` every rank tests a shard of the set and rank 0
gathers the scores, so the figures are exactly those of one process.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from vtempo import distributed
from vtempo.data.dataset import ClipDataset, VideoSet, read_video_set
from vtempo.errors import VtempoError
from vtempo.inference.engine import Engine
from vtempo.inference.recognizer import Recognizer, at_least, load
from vtempo.inference.sink import write_file
from vtempo.protocol import CROPS
from vtempo.runtime import default_workers
from vtempo.viz.plots import confusion_image, write_png


def unnamed(labels: Sequence[str] | None) -> bool:
    """True for no labels or the numbered stand-ins `load` gives a model without class names."""
    return labels is None or list(labels) == [f"class {i}" for i in range(len(labels))]


def align_classes(videos: VideoSet, model_classes: list[str] | None, num_classes: int) -> VideoSet:
    """Relabel the set to the model's class indices, matching by name when both sides have names."""
    numeric = videos.classes == [str(i) for i in range(len(videos.classes))]
    if unnamed(model_classes):
        model_classes = None
    if model_classes is None or numeric:
        if len(videos.classes) > num_classes:
            raise VtempoError(f"{videos.source}: labels reach {len(videos.classes) - 1} but the model has {num_classes} classes")
        return VideoSet(videos.videos, model_classes or [str(i) for i in range(num_classes)], videos.source)
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [c for c in videos.classes if c not in index]
    if unknown:
        raise VtempoError(f"{videos.source}: class {unknown[0]!r} is not one the model knows")
    mapping = [index[c] for c in videos.classes]
    return VideoSet([(path, mapping[label]) for path, label in videos.videos], list(model_classes), videos.source)


# --------------------------------------------------------------------------- scoring


def predict(model: nn.Module, dataset: ClipDataset, *, batch_size: int = 8, workers: int = 0,
            ranks: distributed.Ranks | None = None, dtype: str = "fp32", average: str = "logits",
            progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Scores (videos that decoded × classes, in set order), their labels, and (path, reason) failures.

    Views of one video (clips × crops) are averaged as logits or probabilities (`average`) by the
    inference engine, `batch_size` clips per model call. Under DDP each rank scores every world-th
    video and the results are gathered on all ranks. `progress(n)` is called as n more videos are done.
    """
    ranks = ranks or distributed.Ranks(0, 1, next(model.parameters()).device)
    shard = list(range(ranks.rank, len(dataset), ranks.world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard), batch_size=None, num_workers=workers,
        collate_fn=_keep, pin_memory=ranks.device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    indices, scores, failures = [], [], []
    items = (((index, reason), views) for views, _, index, reason in loader)
    for (index, reason), combined in Engine(model, ranks.device, dtype, batch_size).scores(items, average):
        if combined is None:
            failures.append((str(dataset.videos.videos[index][0]), reason))
        else:
            scores.append(combined.numpy())
            indices.append(index)
        if progress is not None:
            progress(1)
    model.train(was_training)
    part = (indices, np.stack(scores) if scores else None, failures)
    gathered = distributed.all_gather_objects(part, ranks)
    all_indices = [i for g in gathered for i in g[0]]
    all_scores = [g[1] for g in gathered if g[1] is not None]
    order = np.argsort(all_indices, kind="stable")
    matrix = np.concatenate(all_scores)[order] if all_scores else np.zeros((0, 0), np.float32)
    labels = np.array([dataset.videos.videos[i][1] for i in np.array(all_indices, dtype=np.int64)[order]], np.int64)
    return matrix, labels, [f for g in gathered for f in g[2]]


def _keep(item):
    return item


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Percent of rows whose label is among the k highest scores."""
    if len(labels) == 0:
        return math.nan
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(100.0 * (top == labels[:, None]).any(1).mean())


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


@dataclass
class Evaluation:
    model: str
    data: str
    classes: list[str]
    views: str
    frames: int
    sampling: str
    videos: int
    top1: float
    top5: float
    per_class: dict[str, float | None]
    confusion: list[list[int]]
    failed: list[tuple[str, str]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        return data


def summarise(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[float, float, dict[str, float | None], np.ndarray]:
    """top-1, top-5, per-class top-1 (None for classes absent from the set), confusion counts."""
    predicted = scores.argmax(1) if len(scores) else np.zeros(0, np.int64)
    confusion = confusion_matrix(predicted, labels, len(classes))
    totals = confusion.sum(1)
    per_class = {c: (float(100.0 * confusion[i, i] / totals[i]) if totals[i] else None) for i, c in enumerate(classes)}
    top5 = topk_accuracy(scores, labels, min(5, len(classes)))
    return topk_accuracy(scores, labels, 1), top5, per_class, confusion


def evaluate(data: str | os.PathLike, model: str | os.PathLike | Recognizer, weights: str | os.PathLike | None = None, *,
             registry: str | os.PathLike | None = None, views: str | None = None, frames: int | None = None,
             labels: str | os.PathLike | None = None, batch_size: int = 8, workers: int | None = None,
             device: str = "auto", dtype: str = "fp32",
             progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Top-1/top-5, per-class accuracy and confusion of a model (anything `vtempo.load` takes, or a
    Recognizer) on a labelled video set, tested with the model's own protocol; `views` overrides its
    views. `labels` names the classes of a list file with numeric labels. `progress(done, total)`
    follows this process's share of the set."""
    at_least("batch_size", batch_size, 1)
    at_least("workers", workers, 0)
    ranks = distributed.start(device)
    try:
        recognizer = model if isinstance(model, Recognizer) else load(
            model, weights, registry=registry, device=ranks.device, dtype=dtype, frames=frames)
        num_classes = recognizer.num_classes
        videos = align_classes(read_video_set(data, labels), recognizer.labels, num_classes)
        clips, crop = recognizer.views(views)
        protocol = recognizer.protocol
        dataset = ClipDataset(videos, recognizer.frames, protocol, recognizer.preprocess, train=False, clips=clips,
                              crop=crop)
        shard_size = len(range(ranks.rank, len(dataset), ranks.world))
        done = [0]

        def advance(count: int) -> None:
            done[0] += count
            if progress is not None and ranks.main:
                progress(done[0], shard_size)

        scores, truth, failed = predict(
            recognizer.model, dataset, batch_size=batch_size, workers=default_workers(device=recognizer.device) if workers is None else workers,
            ranks=ranks, dtype=recognizer.dtype, average=protocol.average, progress=advance,
        )
        top1, top5, per_class, confusion = summarise(scores, truth, videos.classes)
        view_text = f"{clips}x{CROPS[crop]}"
        sampling = f"stride {protocol.stride}" if protocol.sampling == "stride" else protocol.sampling
        return Evaluation(recognizer.name, str(data), videos.classes, view_text, recognizer.frames, sampling,
                          len(truth), top1, top5, per_class, confusion.tolist(), failed,
                          recognizer.provenance(views))
    finally:
        distributed.stop()


def save_evaluation(evaluation: Evaluation, out: str | os.PathLike) -> tuple[Path, Path]:
    """`OUT/evaluation.json` (everything) and `OUT/confusion.png`."""
    out = Path(out)
    json_path, png_path = out / "evaluation.json", out / "confusion.png"
    write_file(json_path, json.dumps(evaluation.to_json(), indent=1) + "\n", "out")
    title = f"{evaluation.model}: top-1 {evaluation.top1:.1f}% on {evaluation.videos} videos"
    write_png(png_path, confusion_image(np.array(evaluation.confusion), evaluation.classes, title), "out")
    return json_path, png_path
