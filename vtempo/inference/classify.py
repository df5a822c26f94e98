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

import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from vtempo.errors import UsageError, VtempoError
from vtempo.inference.decoding import ViewPlan, video_loader
from vtempo.inference.results import Prediction, VideoResult
from vtempo.runtime import default_workers
from vtempo.video.discovery import collect_videos
from vtempo.video.transforms import Preprocess
from vtempo.weights.registry import (
    CROPS,
    ModelEntry,
    Protocol,
    labels_path,
    read_labels,
)

CROP_NAMES = {count: name for name, count in CROPS.items()}


def parse_views(text: str) -> tuple[int, str]:
    """`CLIPSxCROPS` (1x1, 2x3, 10x3) → (clips, crop name)."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", text or "")
    if not match:
        raise UsageError(f"--views must look like 1x1, 2x3 or 10x3 (clips x crops), got {text!r}")
    clips, crops = int(match.group(1)), int(match.group(2))
    if clips < 1 or crops not in CROP_NAMES:
        raise UsageError(f"--views {text}: clips must be at least 1 and crops one of 1, 3, 10")
    return clips, CROP_NAMES[crops]


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
    from vtempo.weights.checkpoint import read_file, read_state

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
        from vtempo import api
        from vtempo.fast import prepare
        from vtempo.runtime import check_dtype, pick_device

        check_dtype(dtype)
        if topk < 1 or batch_size < 1:
            raise UsageError("--topk and --batch-size must be at least 1")
        if workers is not None and workers < 0:
            raise UsageError("--workers must be 0 (decode in this process) or more")
        view_override = parse_views(views) if views else None
        from vtempo.export.recognizer import is_checkpoint, is_exported, load

        # a file written by `vtempo export` (onnxruntime or TorchScript), or a checkpoint naming its architecture
        if is_exported(model) or (str(weights) == "default" and is_checkpoint(model)):
            rec = load(model, device=device, dtype=dtype, frames=frames, labels=labels, registry=user_registry)
            clips, crop = view_override or (rec.protocol.clips, rec.protocol.crop)
            return cls(
                model=rec.model, name=rec.name, labels=rec.labels,
                plan=ViewPlan(rec.frames, rec.protocol, clips, crop, rec.preprocess, backend),
                average=rec.protocol.average, topk=min(topk, len(rec.labels)), batch_size=batch_size,
                workers=default_workers() if workers is None else workers, device=rec.device, dtype=dtype,
            )
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
                from vtempo.weights.hub import weights_path

                # before building anything: says what is missing and how to get it, or downloads
                checkpoint = weights_path(entry)
                net = api.create_model(model, weights=checkpoint, frames=frames, user_registry=user_registry)
            else:
                from vtempo.weights.checkpoint import load_weights

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
        from vtempo.runtime import autocast

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
