"""TSM: Temporal Shift Module (Lin, Gan & Han, ICCV 2019), "blockres" placement.

Inside a residual block, the input of the residual branch (just before `conv1`) is shifted along time:
with `fold = C // 8`, channels [0, fold) take the next frame's values, channels [fold, 2·fold) the
previous frame's, and the frames past either end of the clip contribute zeros. The identity and
downsample paths see unshifted features. The shift has no parameters, so one checkpoint serves any T.

Placement follows the official code: every block of R-18/R-50 (BasicBlock or Bottleneck alike); when
layer3 has 23 or more blocks (R-101), only the even-indexed blocks of each stage. The shifted conv is
wrapped as `conv1.net`, the same module path as the official checkpoints.

fp32 inference on CPU never materialises the shifted copy when the wrapped layer is a 1×1 conv (every
Bottleneck's `conv1`): see `shifted_pointwise_conv`. The copy is a full read and write of every
block's input, ~360 MB per R-50 clip in fp32, and it was what kept TSM from the speed of TSN.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import ResNet

from vtempo.models import register
from vtempo.models.backbone import blocks, resnet
from vtempo.models.base import TemporalModule, VideoRecognizer
from vtempo.runtime import full_precision

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


def shifted_pointwise_conv(x: torch.Tensor, conv: nn.Conv2d, frames: int, fold_div: int = FOLD_DIV) -> torch.Tensor:
    """`conv(temporal_shift(x))` for a 1×1, stride-1 conv and a channels-last x, without the shifted copy.

    In channels-last memory the (N·T, C, H, W) batch is, per clip, a (T·H·W, C) matrix whose rows run
    frame by frame, and a 1×1 conv is that matrix times the (C, C_out) weight. Shifting a channel group
    by one frame offsets its rows by H·W, so its product is added into the output rows one frame away;
    the rows past either end of the clip, the shift's zeros, are simply not added. Every operand is a
    strided view of x; the output is channels-last, like the conv's.
    """
    nt, channels, height, width = x.shape
    clips, area, fold = nt // frames, height * width, channels // fold_div
    rows = x.permute(0, 2, 3, 1).reshape(clips, frames * area, channels)  # a view: x is channels-last
    weight = conv.weight.flatten(1).t().expand(clips, -1, -1)  # (N, C, C_out)
    unshifted, unshifted_weight = rows[..., 2 * fold :], weight[:, 2 * fold :]
    with full_precision(x.device):  # x's dtype throughout: the in-place products would not autocast
        if conv.bias is None:
            out = torch.bmm(unshifted, unshifted_weight)
        else:
            out = torch.baddbmm(conv.bias, unshifted, unshifted_weight)
        out[:, :-area].baddbmm_(rows[:, area:, :fold], weight[:, :fold])  # frame t sees frame t+1
        out[:, area:].baddbmm_(rows[:, :-area, fold : 2 * fold], weight[:, fold : 2 * fold])  # and t-1
    return out.view(nt, height, width, -1).permute(0, 3, 1, 2)


def is_pointwise(layer: nn.Module) -> bool:
    return (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.stride == (1, 1)
        and layer.padding == (0, 0)
        and layer.groups == 1
    )


class TemporalShift(TemporalModule):
    """Runs the wrapped layer (`net`) on temporally shifted input."""

    def __init__(self, net: nn.Module, fold_div: int = FOLD_DIV):
        super().__init__()
        self.net = net
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 inference on CPU only. There the copy is bandwidth-bound and MKL's GEMMs read strided
        # views in place; oneDNN's bf16 GEMMs copy them, which costs more than the shift. Training and
        # Grad-CAM keep the plain path for autograd, MAC counting (meta device) the conv it counts.
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and is_pointwise(self.net)
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            return shifted_pointwise_conv(x, self.net, self.frames, self.fold_div)
        return self.net(temporal_shift(x, self.frames, self.fold_div))

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
