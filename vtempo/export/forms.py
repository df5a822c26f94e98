"""Export forms: what a model computes, written so that tracing records it for any batch size.

The exporters (torch.onnx's TorchScript-based exporter and torch.jit.trace) run the model once and
record the operations. A few of the models' operations do not survive that as written; each gets an
equal formulation, which the module's own class names (`TemporalModule.export_swap`, in each paper's
file) and `apply_export_forms` swaps into a model's modules (as vtempo.fast swaps in its fast paths).
None approximates: tests/test_export.py checks every one against the module it replaces.
"""
from __future__ import annotations

import types

import torch
import torch.nn as nn

from vtempo.models.base import VideoRecognizer, module_classes
from vtempo.models.correlation import banded_correlation  # noqa: F401  (TCM's export form of the correlation)


class ExportForm(nn.Module):
    """A VideoRecognizer with its clip length fixed: `forward` gives logits (N, classes), `features` the
    per-frame pooled features (N, T, C), for any batch size N. The frame count is a Python constant,
    so a trace records no comparison against it."""

    def __init__(self, model: VideoRecognizer, frames: int):
        super().__init__()
        model.set_frames(frames)
        self.model = model
        self.frames = frames
        self.channels = model.fc.in_features
        self.eval()

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model.backbone(clips.flatten(0, 1)).view(-1, self.frames, self.channels)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.fc(self.model.dropout(features)).mean(1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(clips))


class LogitsAndFeatures(nn.Module):
    """One graph with both outputs (ONNX): the backbone runs once."""

    def __init__(self, form: ExportForm):
        super().__init__()
        self.form = form
        # eval, not the default training mode: the ONNX exporter puts a module back into the mode it found
        # it in, and in training mode the BatchNorms of `form` would change with every later call
        self.eval()

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.form.features(clips)
        return self.form.head(features), features


# ------------------------------------------------------------------------------------------ swap-ins

# {module class: (method, its export form)}, from each temporal module's `export_swap`
SWAP_INS = {
    cls: (cls.export_swap[0], getattr(cls, cls.export_swap[1]))
    for cls in module_classes()
    if "export_swap" in vars(cls) and cls.export_swap is not None
}


def apply_export_forms(model: nn.Module) -> int:
    """Give every module with an export form that form, in place; returns how many were swapped."""
    if model.training:
        raise ValueError("export forms are for inference: call model.eval() first")
    swapped = 0
    for module in model.modules():
        if type(module) in SWAP_INS:
            name, function = SWAP_INS[type(module)]
            setattr(module, name, types.MethodType(function, module))
            swapped += 1
    return swapped
