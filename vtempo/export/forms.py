"""Export forms: what a model computes, written so that tracing records it for any batch size.

The exporters (torch.onnx's TorchScript-based exporter and torch.jit.trace) run the model once and
record the operations. A few of the models' operations do not survive that as written; each gets an
equal formulation here, swapped into a model's modules by `apply_export_forms` (as vtempo.fast swaps in
its fast paths). None approximates: tests/test_export.py checks every one against the module it
replaces.

- TCM's correlation (`vtempo.models.correlation`) reads the rows around each row of the map through an
  `as_strided` view, which ONNX cannot express. Here those rows are gathered by slicing a padded copy
  (`banded_correlation`), then multiplied and picked exactly as before.
- STC's temporal conv and TEFE's FE module ask for a channels-last-3d layout, which the ONNX exporter
  refuses; here they run the same convolutions on the default layout (STC: its own Conv3d, of which
  the model's 2D form is a faster equivalent).
"""
from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtempo.models.base import VideoRecognizer
from vtempo.models.stc import SpatioTemporalCollaboration
from vtempo.models.tcm import TemporalDynamics, l2_normalize, soft_argmax_flow
from vtempo.models.tefe import FeatureEnhancement


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


def banded_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """`vtempo.models.correlation.spatial_correlation` without `as_strided`: (B, C, H, W) × (B, C, H, W)
    → (B, 2R+1, 2R+1, H, W), out[b, dy+R, dx+R, h, w] = Σ_c f1[b, c, h, w]·f2[b, c, h+dy, w+dx], zero
    outside the map.

    Row h of f1 is multiplied with rows h-R..h+R of f2 (all W columns of each) in one batched matrix
    product; each position then picks its 2R+1 columns, and the places outside the map are zeroed.
    """
    b, c, h, w = f1.shape
    size = 2 * radius + 1
    rows = f1.permute(0, 2, 3, 1).reshape(-1, w, c)  # (B·H, W, C)
    padded = F.pad(f2.permute(0, 2, 3, 1), (0, 0, 0, 0, radius, radius))  # (B, H+2R, W, C), zero rows
    bands = torch.stack([padded[:, dy : dy + h] for dy in range(size)], 2)  # (B, H, 2R+1, W, C)
    products = torch.bmm(rows, bands.reshape(-1, size * w, c).transpose(1, 2)).view(b, h, w, size, w)
    offsets = torch.arange(-radius, radius + 1, device=f1.device)
    key_rows = torch.arange(h, device=f1.device)[:, None] + offsets  # (H, 2R+1)
    key_cols = torch.arange(w, device=f1.device)[:, None] + offsets  # (W, 2R+1)
    out = products.gather(4, key_cols.clamp(0, w - 1).view(1, 1, w, 1, size).expand(b, h, w, size, size))
    inside = ((key_rows >= 0) & (key_rows < h))[:, None, :, None] & ((key_cols >= 0) & (key_cols < w))[None, :, None, :]
    return (out * inside.to(out.dtype)).permute(0, 3, 4, 1, 2)


def _dynamics_forward(self: TemporalDynamics, x: torch.Tensor) -> torch.Tensor:
    clip = self.split(l2_normalize(self.reduce(x)))  # (N, T, c, H, W)
    t, c, h, w = self.frames, *clip.shape[2:]
    later = clip[:, 1:]
    earlier = torch.cat([clip[:, :-1], clip[:, :1].expand_as(later)], 1)  # adjacent, then first-frame pairs
    correlation = banded_correlation(
        earlier.reshape(-1, c, h, w), torch.cat([later, later], 1).reshape(-1, c, h, w), self.radius
    )
    motion = soft_argmax_flow(F.relu(correlation)).reshape(-1, 2, t - 1, 3, h, w)
    motion = torch.cat([motion, motion[:, :, -1:]], 2)  # T-1 pairs → T frames, repeating the last
    return motion.permute(0, 2, 1, 3, 4, 5).reshape(-1, 6, h, w)


def _stc_temporal_conv(self: SpatioTemporalCollaboration, clip: torch.Tensor) -> torch.Tensor:
    return self.temporal(clip)


def _fe_forward(self: FeatureEnhancement, x: torch.Tensor) -> torch.Tensor:
    clip = self.split(x).transpose(1, 2)  # (N, C, T, H, W)
    return (self.conv1(clip) * self.conv2(clip)).transpose(1, 2).flatten(0, 1)


SWAP_INS = {
    TemporalDynamics: ("forward", _dynamics_forward),
    SpatioTemporalCollaboration: ("temporal_conv", _stc_temporal_conv),
    FeatureEnhancement: ("forward", _fe_forward),
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
