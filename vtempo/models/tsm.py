"""TSM: Temporal Shift Module (Lin, Gan & Han, ICCV 2019), "blockres" placement.

Inside a residual block, the input of the residual branch (just before `conv1`) is shifted along time:
with `fold = C // 8`, channels [0, fold) take the next frame's values, channels [fold, 2·fold) the
previous frame's, and the frames past either end of the clip contribute zeros. The identity and
downsample paths see unshifted features. The shift has no parameters, so one checkpoint serves any T.

Placement follows the official code: every block of R-18/R-50 (BasicBlock or Bottleneck alike); when
layer3 has 23 or more blocks (R-101), only the even-indexed blocks of each stage. The shifted conv is
wrapped as `conv1.net`, the same module path as the official checkpoints.

This is the reference computation (a shifted copy, then the layer). Inference can skip the copy where
the layer is a 1×1 conv: `vtempo.fast.shift` swaps in an equivalent module for that.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import ResNet

from vtempo.models import register
from vtempo.models.backbone import blocks, resnet
from vtempo.models.base import TemporalModule, VideoRecognizer

FOLD_DIV = 8


def shift_clip(clip: torch.Tensor, fold: int) -> torch.Tensor:
    """(N, T, C, ...): channels [0, fold) take frame t+1, [fold, 2·fold) frame t-1, zeros past the ends."""
    out = torch.empty_like(clip)  # every element is written once below: no clone-then-overwrite
    out[:, :-1, :fold] = clip[:, 1:, :fold]  # frame t sees frame t+1
    out[:, -1:, :fold] = 0
    out[:, 1:, fold : 2 * fold] = clip[:, :-1, fold : 2 * fold]  # frame t sees frame t-1
    out[:, :1, fold : 2 * fold] = 0
    out[:, :, 2 * fold :] = clip[:, :, 2 * fold :]
    return out


def temporal_shift(x: torch.Tensor, frames: int, fold_div: int = FOLD_DIV) -> torch.Tensor:
    """Shift C//fold_div channels of an (N·T, C, H, W) batch one frame back and as many one frame forward."""
    return shift_clip(x.view(-1, frames, *x.shape[1:]), x.shape[1] // fold_div).view(x.shape)


class TemporalShift(TemporalModule):
    """Runs the wrapped layer (`net`) on temporally shifted input."""

    def __init__(self, net: nn.Module, fold_div: int = FOLD_DIV):
        super().__init__()
        self.net = net
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_shift(x, self.frames, self.fold_div))

    def output_conv(self) -> nn.Conv2d | None:
        return self.net if isinstance(self.net, nn.Conv2d) else None

    def extra_repr(self) -> str:
        return f"fold_div={self.fold_div}"


def add_temporal_shift(net: ResNet, every: int | None = None) -> ResNet:
    """Wrap `conv1` of the shifted blocks in place; `every=None` applies the official R-101 rule."""
    if every is None:
        every = 2 if len(net.layer3) >= 23 else 1
    for _, index, block in blocks(net):
        if index % every == 0:
            block.conv1 = TemporalShift(block.conv1)
    return net


@register("tsm")
def build_tsm(backbone: str, num_classes: int, frames: int, dropout: float = 0.5) -> VideoRecognizer:
    del frames  # the shift has no T-shaped parameters: any clip length works
    return VideoRecognizer(add_temporal_shift(resnet(backbone)), num_classes, dropout)
