"""A loaded model under the Recognizer's attribute names.

`load(...)` takes `vtempo.load`'s arguments and returns an object with the attributes export and
embed read (model, name, arch, labels, frames, protocol, preprocess, entry, checkpoint, weights_sha256,
device, dtype), so either can switch to `vtempo.load` by changing its import. Registry names,
architectures with a checkpoint and checkpoints written by `vtempo train` go through
`Classifier.create`; exported files (.onnx, .ts) through `load_exported`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vtempo.errors import UsageError
from vtempo.video.transforms import Preprocess
from vtempo.weights.registry import ModelEntry, Protocol

EXPORTED_SUFFIXES = (".onnx", ".ts")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    name: str
    arch: str | None
    labels: list[str]
    frames: int
    protocol: Protocol
    preprocess: Preprocess
    entry: ModelEntry | None
    checkpoint: Path | None
    weights_sha256: str | None
    device: torch.device
    dtype: str


def is_exported(model: object) -> bool:
    return isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() in EXPORTED_SUFFIXES


def is_checkpoint(model: object) -> bool:
    """A checkpoint file (such as `vtempo train`'s best.pt), not a registry or architecture name."""
    return isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() in (".pt", ".pth") and Path(model).is_file()


def load(
    model: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    *,
    registry: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    frames: int | None = None,
    labels: str | os.PathLike | list[str] | None = None,
) -> LoadedModel:
    """A registry name, an architecture with `weights=FILE`, a checkpoint written by `vtempo train`, or
    an exported file (.onnx, .ts)."""
    if is_exported(model):
        return _load_exported(Path(model), device, dtype, frames, labels)
    from vtempo.api import resolve
    from vtempo.inference.classify import Classifier
    from vtempo.weights.hub import sha256_file, weights_path

    path = Path(model)
    if weights is None and is_checkpoint(path):  # a checkpoint that names its architecture
        from vtempo.inference.classify import _model_spec

        _, meta, _ = _model_spec(path)
        if not isinstance(meta.get("arch"), str):
            raise UsageError(f"{model}: the checkpoint does not name its architecture; pass the architecture and weights=FILE")
        model, weights = meta["arch"], path
    classifier = Classifier.create(
        str(model), weights="default" if weights is None else weights, labels=labels, frames=frames,
        workers=0, device=device, dtype=dtype, user_registry=registry,
    )
    plan = classifier.plan
    arch, entry = resolve(str(model), registry)
    checkpoint = Path(weights) if weights is not None else weights_path(entry)
    return LoadedModel(classifier.model, classifier.name, arch, classifier.labels, plan.frames, plan.protocol,
                       plan.preprocess, entry, checkpoint, sha256_file(checkpoint), classifier.device, dtype)


def _load_exported(path: Path, device: str, dtype: str, frames: int | None, labels) -> LoadedModel:
    from vtempo.export.loading import load_exported, preprocess_of, protocol_of
    from vtempo.inference.classify import _labels
    from vtempo.runtime import pick_device

    if dtype != "fp32":
        raise UsageError(f"{path}: an exported model runs in fp32 (it was exported so); drop --dtype {dtype}")
    device_ = pick_device(device)
    model, meta = load_exported(path, device=device_)
    if frames is not None and frames != meta["frames"]:
        raise UsageError(f"{path}: exported for {meta['frames']} frames per clip, not {frames}")
    names = _labels(labels, {"classes": meta["labels"]}, None, len(meta["labels"]), path.name)
    return LoadedModel(model, meta.get("model") or path.stem, meta.get("arch"), names, int(meta["frames"]),
                       protocol_of(meta), preprocess_of(meta), None, path, meta.get("weights_sha256"), device_, dtype)
