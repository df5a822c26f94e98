"""TEFE: Temporal Extraction and Feature Enhancement (Jiang & Zhang, IEEE Access 2022).

No official code exists; the paper is the reference.

- TE block: 1×1 → 3×3 → TE module → 1×1. TE works on spatial means (N, C, T):
  short-term: Conv1d(C→C/4, k=3) → Conv1d(C/4→C) → sigmoid = M, X0 = M·X (eqs. 2-4);
  long-term: FC(T→2T) → ReLU → FC(2T→3) → softmax: a kernel of size 3 per (clip, channel), applied
  to X0 as a channel-wise temporal convolution with zero padding (eqs. 5-6).
- FE block: 1×1 → FE module → 1×1, the FE module replacing the 3×3 conv: Y = U(Conv1(X) ⊙ Conv2(X))
  (eq. 10) with 3×3×3 convs. Conv1 holds the 2D kernel in its middle temporal slice (the others 0),
  Conv2 has weights 0 and bias 1, so at initialisation the FE block equals the 2D block (eq. 11).
  U is the block's own following layers (BN, ReLU, the 1×1 conv): the "u" of eq. 9.
- Placement (Table 5, best row): per stage res2..res5 TE = 1, 1, 1, 1 and FE = 0, 3, 5, 2; other
  blocks stay 2D. For R-50 that is: TE in the first block of every stage, FE in all other blocks of
  res3..res5, res2's other blocks plain.

Choices where the paper is silent (each also noted at the code):
- Order inside a stage: TE first (block 0, which also carries the stride), then FE, since FE
  "enhances the features extracted by TE". The rule "block 0 TE, the rest FE except in the first
  stage" gives the paper's 0/3/5/2 on R-50 and extends to R-18 and R-101 (FE = 0, 3, 22, 2).
- TE's short-term convs have no nonlinearity between them (eq. 3 has none) and no bias; Conv_exp
  has kernel 1. The long-term FCs have a ReLU between them and no bias, and are T-shaped, so a TEFE
  model is built for one clip length (`fixed_frames`).
- TE's reduction keeps at least 8 channels so narrow backbones never reach 0.
- BasicBlock (ResNet-18): TE follows conv1-bn1-relu and FE replaces conv1 (see `surgery`).
- `add_tefe(net, frames)` inflates whatever 2D weights `net` holds at that moment: to start from
  ImageNet as the paper does, load the 2D weights into the ResNet first, then call it.

Cost at R-50, 8 frames, 174 classes, measured with FlopCounterMode (conv + matmul MACs): 78.95
GMACs at 224² (`count_macs`), 64,766,510 parameters (the paper gives none; each FE block holds two
3×3×3 convs, 6× the 2D 3×3's weights). The paper reports 90 GFLOPs (its FLOPs are MACs: TSN is 33
in its table). The gap is the input size: the paper's inference resizes frames to 224×256 and feeds
them uncropped; at 224×256 every feature map is 8/7 larger and we measure 90.22 GMACs (16 frames:
180.44 vs the paper's 181). At 224² the paper's 90 is missed by −12.3%. Uncounted by FlopCounterMode:
TE's 3-tap channel-wise temporal conv, built from elementwise ops, which TE reports through
`uncounted_macs` (0.009 GMACs), and the gate and Hadamard products (0.017 G multiplies).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vtempo.models.backbone import blocks, resnet
from vtempo.models.base import TemporalModule, VideoRecognizer, spatial_mean
from vtempo.models.families import register
from vtempo.models.surgery import (
    insert_before_output_conv,
    like,
    replace_spatial_conv,
    spatial_conv,
    spatial_width,
)
from vtempo.models.tam import adaptive_temporal_conv

REDUCTION = 4
MIN_REDUCED = 8
KERNEL_SIZE = 3


class TemporalExtraction(TemporalModule):
    """TE module on (N·T, C, H, W); built for a fixed T because its long-term FCs map T → 2T → 3."""

    def __init__(self, channels: int, frames: int):
        super().__init__()
        self.fixed_frames = frames
        reduced = min(channels, max(MIN_REDUCED, channels // REDUCTION))
        self.reduce = nn.Conv1d(channels, reduced, 3, padding=1, bias=False)
        self.expand = nn.Conv1d(reduced, channels, 1, bias=False)
        self.kernel = nn.Sequential(
            nn.Linear(frames, 2 * frames, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(2 * frames, KERNEL_SIZE, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = self.split(x)  # (N, T, C, H, W)
        means = spatial_mean(clip).transpose(1, 2)  # (N, C, T)
        motion = torch.sigmoid(self.expand(self.reduce(means)))  # M, eq. 3
        kernel = self.kernel(means).softmax(-1)  # (N, C, 3), eq. 5
        # X0 = M ⊙ X (eq. 4), then the channel-wise temporal convolution of X0 with each channel's kernel,
        # zero padding (eq. 6): out[t] = k0·X0[t-1] + k1·X0[t] + k2·X0[t+1]. TANet's TAM does the same.
        return like(adaptive_temporal_conv(clip, kernel, motion).flatten(0, 1), x)

    def uncounted_macs(self, input_shape: torch.Size) -> float:
        """The channel-wise temporal conv above is elementwise arithmetic: K MACs per output element."""
        return KERNEL_SIZE * input_shape.numel()


class FeatureEnhancement(TemporalModule):
    """FE module: Conv1(X) ⊙ Conv2(X) with 3×3×3 convs, inflated from a 2D 3×3 conv."""

    export_swap = ("forward", "export_forward")

    def __init__(self, conv2d: nn.Conv2d):
        super().__init__()
        stride, padding = conv2d.stride[0], conv2d.padding[0]
        shape = dict(
            in_channels=conv2d.in_channels,
            out_channels=conv2d.out_channels,
            kernel_size=(3, *conv2d.kernel_size),
            stride=(1, stride, stride),
            padding=(1, padding, padding),
        )
        # Conv1 and Conv2 are the paper's names (eq. 10).
        self.conv1 = nn.Conv3d(**shape, bias=conv2d.bias is not None)
        self.conv2 = nn.Conv3d(**shape, bias=True)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[:, :, 1].copy_(conv2d.weight)
            if conv2d.bias is not None:
                self.conv1.bias.copy_(conv2d.bias)
            self.conv2.weight.zero_()
            self.conv2.bias.fill_(1.0)
        # oneDNN runs these 3×3×3 convs faster with weights and input both channels-last-3d;
        # a contiguous weight would be reordered on every call.
        for conv in (self.conv1, self.conv2):
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = self.split(x).transpose(1, 2)  # (N, C, T, H, W)
        clip = clip.contiguous(memory_format=torch.channels_last_3d)  # free when x is channels-last
        y = self.conv1(clip) * self.conv2(clip)
        return like(y.transpose(1, 2).flatten(0, 1), x)

    def export_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` on the default layout: the ONNX exporter refuses channels-last-3d."""
        clip = self.split(x).transpose(1, 2)  # (N, C, T, H, W)
        return (self.conv1(clip) * self.conv2(clip)).transpose(1, 2).flatten(0, 1)


def add_tefe(net: nn.Module, frames: int) -> nn.Module:
    for stage, index, block in blocks(net):
        if index == 0:
            insert_before_output_conv(block, te=TemporalExtraction(spatial_width(block), frames))
        elif stage > 0:
            replace_spatial_conv(block, FeatureEnhancement(spatial_conv(block)))
    return net


@register("tefe")
def build_tefe(backbone: str, num_classes: int, frames: int, dropout: float = 0.5) -> VideoRecognizer:
    return VideoRecognizer(add_tefe(resnet(backbone), frames), num_classes, dropout)
