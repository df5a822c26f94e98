"""Where a temporal module goes inside a torchvision residual block, for both block types.

The papers place their modules around the bottleneck's 3×3 convolution (`conv2`): replacing it
(STC, TEFE's FE), or between it (with its BN and ReLU) and the final 1×1 (`conv3`) (TEFE's TE, TSI).
A BasicBlock (ResNet-18/34, r10w8) has two 3×3 convolutions and no 1×1. We map the bottleneck's roles
onto it one to one: its first 3×3 (`conv1`, which carries the stride like the bottleneck's `conv2`) is
the spatial convolution, and its second 3×3 (`conv2`) is the output convolution that follows the
module. So in both block types the module sits at the same point of the residual branch: after the
first spatial convolution, before the convolution that produces the branch's output.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from vtempo.models.resnet import BasicBlock, Bottleneck


def _names(block: nn.Module) -> tuple[str, str]:
    if isinstance(block, Bottleneck):
        return "conv2", "conv3"
    if isinstance(block, BasicBlock):
        return "conv1", "conv2"
    raise TypeError(f"expected a torchvision Bottleneck or BasicBlock, got {type(block).__name__}")


def spatial_conv(block: nn.Module) -> nn.Conv2d:
    """The block's spatial 3×3 convolution: Bottleneck.conv2, BasicBlock.conv1."""
    return getattr(block, _names(block)[0])


def replace_spatial_conv(block: nn.Module, module: nn.Module) -> None:
    setattr(block, _names(block)[0], module)


def insert_before_output_conv(block: nn.Module, **modules: nn.Module) -> None:
    """Run `modules` (in order) on the spatial conv's BN+ReLU output, just before the output conv.

    The output conv becomes `<name>.conv` of a Sequential, e.g. `layer1.0.conv3.conv.weight`, with
    the inserted modules beside it (`layer1.0.conv3.te.…`).
    """
    name = _names(block)[1]
    setattr(block, name, nn.Sequential(OrderedDict(**modules, conv=getattr(block, name))))


def spatial_width(block: nn.Module) -> int:
    """Channels leaving the spatial conv: what an inserted module sees."""
    return spatial_conv(block).out_channels


def like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`out` in `x`'s memory format: a module that reshapes through (N, C, T, H, W) must hand a
    channels-last input back as channels-last, or every following conv falls off oneDNN's fast path
    (a mixed-layout 1×1 conv runs several times slower on CPU)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()
