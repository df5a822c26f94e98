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
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from vtempo import distributed
from vtempo.api import create_model, resolve
from vtempo.data.dataset import ClipDataset, VideoSet, read_video_set
from vtempo.errors import UsageError, VtempoError
from vtempo.fast import prepare
from vtempo.inference.classify import parse_views
from vtempo.runtime import autocast
from vtempo.video.transforms import Preprocess
from vtempo.weights.registry import CROPS, Protocol, labels_path, read_labels


@dataclass
class LoadedModel:
    """A model ready to test, with what testing it needs: classes, clip length, protocol, pixels."""

    name: str
    model: nn.Module
    classes: list[str] | None
    frames: int
    protocol: Protocol
    pre: Preprocess
    checkpoint: str | None = None


def _protocol_from_meta(raw: Any, default: Protocol) -> Protocol:
    if not isinstance(raw, dict):
        return default
    known = {f.name for f in dataclasses.fields(Protocol)}
    return dataclasses.replace(default, **{k: v for k, v in raw.items() if k in known and v is not None})


def load_model(name: str, weights: str | os.PathLike | None = None, frames: int | None = None) -> LoadedModel:
    """A registry model (its own weights unless `weights` is given), an architecture with `weights`, or
    a checkpoint file written by `vtempo train` (`--model runs/x/best.pt`)."""
    from vtempo.weights.checkpoint import load_weights, read_state

    if weights is None and Path(name).is_file():
        name, weights = "", name
    meta: dict[str, Any] = {}
    if weights is not None:
        state, meta, _ = read_state(weights)
        head = next((v for k, v in state.items() if k.endswith("fc.weight") or k.endswith("fc_cls.weight")), None)
        meta.setdefault("num_classes", int(head.shape[0]) if head is not None else None)
    name = name or meta.get("arch") or ""
    if not name:
        raise UsageError(f"{weights}: the checkpoint does not name its architecture; pass --model ARCH")
    arch, entry = resolve(name)
    frames = frames or meta.get("frames") or (entry.frames if entry else 8)
    num_classes = meta.get("num_classes") or (entry.num_classes if entry else None)
    if num_classes is None:
        raise UsageError(f"{name}: an architecture needs --weights (a trained checkpoint) to be evaluated")
    model = create_model(name, num_classes=num_classes, frames=frames)
    if weights is not None:
        load_weights(model, weights, layout=entry.weights.layout if entry and entry.weights else None)
    elif entry is not None and entry.weights is not None:
        from vtempo.weights.hub import weights_path

        load_weights(model, weights_path(entry), layout=entry.weights.layout)
    else:
        raise UsageError(f"{name}: no weights; pass --weights FILE")
    classes = meta.get("classes")
    if classes is None and entry is not None and labels_path(entry) is not None:
        classes = read_labels(labels_path(entry))
    protocol = _protocol_from_meta(meta.get("protocol"), entry.protocol if entry else Protocol())
    if "input_size" in meta:
        size = int(meta["input_size"])
        pre = Preprocess(tuple(int(v) for v in meta.get("resize") or (round(size * 256 / 224),)), size,
                         tuple(meta.get("mean") or Preprocess.mean), tuple(meta.get("std") or Preprocess.std))
    else:
        pre = Preprocess.from_entry(entry)
    display = name if weights is None else f"{name} ({Path(weights).name})"
    return LoadedModel(display, model, list(classes) if classes else None, int(frames), protocol, pre,
                       str(weights) if weights is not None else None)


def align_classes(videos: VideoSet, model_classes: list[str] | None, num_classes: int) -> VideoSet:
    """Relabel the set to the model's class indices, matching by name when both sides have names."""
    numeric = videos.classes == [str(i) for i in range(len(videos.classes))]
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

    Views of one video (clips × crops) are averaged as logits or probabilities (`average`). Under DDP
    each rank scores every world-th video and the results are gathered on all ranks.
    """
    ranks = ranks or distributed.Ranks(0, 1, next(model.parameters()).device)
    shard = list(range(ranks.rank, len(dataset), ranks.world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard), batch_size=batch_size, num_workers=workers,
        collate_fn=_collate_views, pin_memory=ranks.device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    indices, scores, failures = [], [], []
    with torch.inference_mode():
        for clips, _, batch_indices, failed in loader:
            failures += [(str(dataset.videos.videos[i][0]), reason) for i, reason in failed]
            if clips is not None:
                batch, views = clips.shape[:2]
                with autocast(ranks.device, dtype):
                    logits = model(clips.flatten(0, 1).to(ranks.device, non_blocking=True)).float()
                logits = logits.view(batch, views, -1)
                combined = logits.softmax(-1).mean(1) if average == "prob" else logits.mean(1)
                scores.append(combined.cpu().numpy())
                indices += batch_indices.tolist()
            if progress is not None:
                progress(len(batch_indices) + len(failed))
    model.train(was_training)
    part = (indices, np.concatenate(scores) if scores else None, failures)
    gathered = distributed.all_gather_objects(part, ranks)
    all_indices = [i for g in gathered for i in g[0]]
    all_scores = [g[1] for g in gathered if g[1] is not None]
    order = np.argsort(all_indices, kind="stable")
    matrix = np.concatenate(all_scores)[order] if all_scores else np.zeros((0, 0), np.float32)
    labels = np.array([dataset.videos.videos[i][1] for i in np.array(all_indices, dtype=np.int64)[order]], np.int64)
    return matrix, labels, [f for g in gathered for f in g[2]]


def _collate_views(items: list):
    from vtempo.data.dataset import collate

    return collate(items)


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


def evaluate(data: str, model: str, weights: str | None = None, views: str | None = None, frames: int | None = None,
             labels: str | None = None, batch_size: int = 8, workers: int | None = None, device: str = "auto",
             dtype: str = "fp32", progress_factory=None) -> Evaluation:
    from vtempo.runtime import default_workers

    ranks = distributed.start(device)
    try:
        loaded = load_model(model, weights, frames)
        num_classes = loaded.model.fc.out_features
        videos = align_classes(read_video_set(data, labels), loaded.classes, num_classes)
        clips, crop = parse_views(views) if views else (loaded.protocol.clips, loaded.protocol.crop)
        dataset = ClipDataset(videos, loaded.frames, loaded.protocol, loaded.pre, train=False, clips=clips, crop=crop)
        prepare(loaded.model, ranks.device)
        shard_size = len(range(ranks.rank, len(dataset), ranks.world))
        with (progress_factory(shard_size) if progress_factory and ranks.main else _nothing()) as advance:
            scores, truth, failed = predict(
                loaded.model, dataset, batch_size=batch_size, workers=default_workers() if workers is None else workers,
                ranks=ranks, dtype=dtype, average=loaded.protocol.average, progress=advance,
            )
        top1, top5, per_class, confusion = summarise(scores, truth, videos.classes)
        view_text = f"{clips}x{CROPS[crop]}"
        sampling = f"stride {loaded.protocol.stride}" if loaded.protocol.sampling == "stride" else loaded.protocol.sampling
        return Evaluation(loaded.name, str(data), videos.classes, view_text, loaded.frames, sampling,
                          len(truth), top1, top5, per_class, confusion.tolist(), failed)
    finally:
        distributed.stop(ranks)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def save_evaluation(evaluation: Evaluation, out: str | os.PathLike) -> tuple[Path, Path]:
    """`OUT/evaluation.json` (everything) and `OUT/confusion.png`."""
    from vtempo.viz.plots import confusion_image, write_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "evaluation.json", out / "confusion.png"
    json_path.write_text(json.dumps(evaluation.to_json(), indent=1) + "\n", encoding="utf-8")
    title = f"{evaluation.model}: top-1 {evaluation.top1:.1f}% on {evaluation.videos} videos"
    write_png(png_path, confusion_image(np.array(evaluation.confusion), evaluation.classes, title))
    return json_path, png_path
