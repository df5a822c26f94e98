"""STC and STC-Light: Spatio-Temporal Collaborative module (Hao et al., IEEE TNNLS 2022).

No official code exists; the paper is the reference. An STC module replaces the spatial 3×3 conv of
every residual block. Its input and output channels are split α = 3/4 to S_T and 1/4 to T_S:

- S_T: TSM-style temporal shift of 1/8 of its channels (1/16 forward, 1/16 backward) → 2D 3×3 conv →
  temporal refinement (TR): spatial mean → Conv1d over T (k=3, pad 1) → sigmoid → multiply.
- T_S: temporal conv (3×1×1) → spatial refinement (SR): temporal mean → 2D 3×3 conv (pad 1) →
  sigmoid → multiply, broadcast over T. The SR gate is computed once per clip.
- output: concat[S_T, T_S] along channels, then the block's own BN.

STC-Light puts a 1×1 reduction by r = 4 (at least 8 channels, the paper's max(8, ·)) and a ReLU in
front of each gate conv. Per-module parameters (Table I, C = width, all convs bias-free):
STC 12[α² + (1-α)²]C²; STC-Light [(9 + 4/r)α² + (3 + 10/r)(1-α)²]C² while (1-α)C/r ≥ 8. Table I
itself ignores the paper's max(8, ·) rule; at C = 64 it lifts the T_S-Light reduction from 4 to 8
channels and the count from 24,448 to 25,088.

Choices where the paper is silent (each also noted at the code):
- Table I counts no biases, so every conv of the module is bias-free (the gates' sigmoid works
  without a bias because the block's BN follows).
- Strided blocks (first block of layer2..4): S_T's 3×3 conv takes the stride; T_S's 3×3×1 temporal
  conv takes spatial stride 2 as well (it subsamples like ResNet's own 1×1 downsample shortcut).
- The shift fold is `S_T channels // 8`, TSM's rule; it is 0 (no shift) below 8 channels.
- BasicBlock (ResNet-18): STC replaces its first 3×3 conv (see `surgery`), whose input and output
  widths can differ; each is split by α on its own.
- Widths: S_T gets round(αC) channels, at least 1, at most C-1.

Size and cost at R-50, 8 frames, 224², 174 classes (`count_macs`, conv + matmul MACs):
STC 21,978,350 parameters, 26.67 GMACs (paper 22.0M, 26.9G: −0.1%, −0.9%); STC-Light 20,054,766,
26.58 GMACs (paper 20.1M, 26.8G: −0.2%, −0.8%). Uncounted by FlopCounterMode: the TR/SR gate
products (0.011 G multiplies, in `count_macs(...).uncounted`), the means and the shift (data
movement). The paper counted with thop, whose rules for BN, ReLU and pooling differ from
FlopCounterMode's; which it applied is not stated, so the −0.9% remainder is not attributed further.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtempo.models.backbone import blocks, resnet
from vtempo.models.base import TemporalModule, VideoRecognizer, spatial_mean
from vtempo.models.families import register
from vtempo.models.surgery import like, replace_spatial_conv, spatial_conv
from vtempo.models.tsm import shift_clip

ALPHA = 0.75
LIGHT_REDUCTION = 4
MIN_REDUCED = 8  # the paper's max(8, αC/r), after SK-Net


def split_width(channels: int, alpha: float = ALPHA) -> int:
    return min(max(round(alpha * channels), 1), channels - 1)


def reduced_width(channels: int) -> int:
    return max(MIN_REDUCED, channels // LIGHT_REDUCTION)


class TemporalRefinement(nn.Module):
    """TR: (N, C, T) spatial means → per-(frame, channel) gate in (0, 1)."""

    def __init__(self, channels: int, light: bool):
        super().__init__()
        if light:
            hidden = reduced_width(channels)
            self.gate = nn.Sequential(
                nn.Conv1d(channels, hidden, 1, bias=False),
                nn.ReLU(inplace=True),
                nn.Conv1d(hidden, channels, 3, padding=1, bias=False),
            )
        else:
            self.gate = nn.Conv1d(channels, channels, 3, padding=1, bias=False)

    def forward(self, means: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(means))


class SpatialRefinement(nn.Module):
    """SR: (N, C, H, W) temporal means → per-(pixel, channel) gate in (0, 1), shared by all frames."""

    def __init__(self, channels: int, light: bool):
        super().__init__()
        if light:
            hidden = reduced_width(channels)
            self.gate = nn.Sequential(
                nn.Conv2d(channels, hidden, 1, bias=False),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, channels, 3, padding=1, bias=False),
            )
        else:
            self.gate = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, means: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(means))


class SpatioTemporalCollaboration(TemporalModule):
    """Drop-in replacement for a 3×3 conv on (N·T, C_in, H, W) → (N·T, C_out, H/s, W/s)."""

    export_swap = ("temporal_conv", "export_temporal_conv")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, light: bool = False):
        super().__init__()
        self.spatial_in = split_width(in_channels)
        spatial_out = split_width(out_channels)
        temporal_in, temporal_out = in_channels - self.spatial_in, out_channels - spatial_out
        self.fold = self.spatial_in // 8
        # S_T
        self.spatial = nn.Conv2d(self.spatial_in, spatial_out, 3, stride, 1, bias=False)
        self.temporal_refinement = TemporalRefinement(spatial_out, light)
        # T_S: the spatial stride of a strided block subsamples here (see module docstring).
        self.temporal = nn.Conv3d(
            temporal_in, temporal_out, (3, 1, 1), (1, stride, stride), (1, 0, 0), bias=False
        )
        self.spatial_refinement = SpatialRefinement(temporal_out, light)
        # channels-last weights (see `temporal_conv`), or oneDNN reorders them on every call
        self.temporal.weight.data = self.temporal.weight.data.contiguous(memory_format=torch.channels_last_3d)

    def export_temporal_conv(self, clip: torch.Tensor) -> torch.Tensor:
        """`temporal_conv` as the Conv3d itself, on the default layout: the ONNX exporter refuses
        channels-last-3d."""
        return self.temporal(clip)

    def temporal_conv(self, clip: torch.Tensor) -> torch.Tensor:
        """`self.temporal` (3×1×1, spatial stride s) on (N, C, T, H, W), run as the equal 2D conv (3×1) over
        (T, H·W) of the subsampled clip: PyTorch sends a batch-1 Conv3d with a 1×1 spatial kernel to its
        slow reference kernel, while oneDNN takes the 2D form in channels-last without copies."""
        stride = self.temporal.stride[1]
        clip = clip[..., ::stride, ::stride].contiguous(memory_format=torch.channels_last_3d)
        height, width = clip.shape[-2:]
        out = F.conv2d(clip.flatten(3), self.temporal.weight.squeeze(-1), padding=(1, 0))
        return out.unflatten(3, (height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial_part, temporal_part = x[:, : self.spatial_in], x[:, self.spatial_in :]

        shifted = shift_clip(self.split(spatial_part), self.fold).flatten(0, 1)
        y_st = self.spatial(shifted)
        gate = self.temporal_refinement(spatial_mean(self.split(y_st)).transpose(1, 2))  # (N, C, T)
        z_st = y_st * gate.transpose(1, 2).contiguous().view(-1, gate.shape[1], 1, 1)  # dense, or the product crawls

        y_ts = self.temporal_conv(self.split(temporal_part).transpose(1, 2))  # (N, C, T, H, W)
        z_ts = y_ts * self.spatial_refinement(y_ts.sum(2) / y_ts.shape[2]).unsqueeze(2)
        z_ts = z_ts.transpose(1, 2).flatten(0, 1)

        return like(torch.cat([z_st, z_ts], 1), x)


def add_stc(net: nn.Module, light: bool) -> nn.Module:
    for _, _, block in blocks(net):
        conv = spatial_conv(block)
        replace_spatial_conv(
            block, SpatioTemporalCollaboration(conv.in_channels, conv.out_channels, conv.stride[0], light)
        )
    return net


@register("stc")
def build_stc(backbone: str, num_classes: int, frames: int, dropout: float = 0.5) -> VideoRecognizer:
    del frames  # no T-shaped parameters
    return VideoRecognizer(add_stc(resnet(backbone), light=False), num_classes, dropout)


@register("stc-light")
def build_stc_light(backbone: str, num_classes: int, frames: int, dropout: float = 0.5) -> VideoRecognizer:
    del frames
    return VideoRecognizer(add_stc(resnet(backbone), light=True), num_classes, dropout)
