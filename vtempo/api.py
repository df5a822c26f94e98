"""The Python API: `create_model` and `list_models`."""
from __future__ import annotations

import os

from vtempo import models
from vtempo.errors import UsageError
from vtempo.weights.registry import ModelEntry, load_registry


def list_models(user_registry: str | os.PathLike | None = None) -> list[str]:
    """Registry checkpoint names, then architecture names."""
    return sorted(load_registry(user_registry)) + models.architecture_names()


def resolve(name: str, user_registry: str | os.PathLike | None = None) -> tuple[str, ModelEntry | None]:
    """(architecture name, registry entry or None) for a checkpoint or architecture name."""
    entries = load_registry(user_registry)
    if name in entries:
        return entries[name].arch, entries[name]
    try:
        models.split_name(name)
    except ValueError:
        raise UsageError(f"unknown model {name!r}: not a registry entry nor an architecture (see `vtempo models`)") from None
    return name, None


def create_model(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    frames: int | None = None,
    user_registry: str | os.PathLike | None = None,
    **options,
) -> models.VideoRecognizer:
    """Build a model by registry or architecture name.

    weights: None (random init), "default" (the registry entry's checkpoint, downloaded and verified on
    first use), or a checkpoint file in any supported layout. `num_classes` and `frames` default to the
    registry entry's (else 400 and 8). The registry entry, if any, is kept as `model.entry`.
    """
    arch, entry = resolve(name, user_registry)
    num_classes = num_classes or (entry.num_classes if entry else 400)
    frames = frames or (entry.frames if entry else 8)
    model = models.build(arch, num_classes=num_classes, frames=frames, **options)
    model.entry = entry
    if weights is None:
        return model
    from vtempo.weights.checkpoint import load_weights

    if str(weights) == "default":
        if entry is None or entry.weights is None:
            raise UsageError(f"{name}: no published weights; pass a checkpoint file with weights=")
        from vtempo.weights.hub import weights_path

        weights = weights_path(entry)
    load_weights(model, weights, layout=entry.weights.layout if entry and entry.weights else None)
    return model
