"""Folding eval-mode BatchNorm into the convolution before it, for inference.

An eval-mode BN is a per-channel affine map, y = γ·(x − μ)/√(σ² + ε) + β, so after a convolution it
can be merged into the convolution's weights and bias, and the BN pass over the feature map (a full
read and write of it) disappears. `fold_batch_norms(model)` does this wherever a
BatchNorm2d is fed directly by a Conv2d: the BN of each torchvision block's convs (also when a temporal
module wraps the conv but returns the conv's output unchanged and says so through `output_conv()`:
TSM's shift, TANet's TAM; the modules that `surgery` inserts before a block's output conv), the downsample shortcut, the stem, and any
Sequential holding conv → BN (TCM's, TSI's). Where something else feeds the BN (STC's concatenation,
TEFE's FE product) the BN stays. The folded model computes the same function up to rounding; it
cannot be trained any more (its BNs are gone), so only inference paths fold (`vtempo.fast.prepare`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from vtempo.models.resnet import BasicBlock, Bottleneck, ResNet


def _output_conv(module: nn.Module) -> nn.Conv2d | None:
    """The Conv2d whose output `module` returns unchanged, if there is one: the module itself, the last
    of a Sequential, or what a wrapper names through `output_conv()` (`models.base.TemporalModule`)."""
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, nn.Sequential) and len(module):
        return _output_conv(module[-1])
    output_conv = getattr(module, "output_conv", None)
    return _output_conv(output_conv()) if callable(output_conv) and output_conv() is not None else None


def _pairs(model: nn.Module):
    """(module holding the BN, the BN's attribute name, the module feeding it) for every conv → BN."""
    for parent in model.modules():
        if isinstance(parent, (ResNet, Bottleneck, BasicBlock)):
            for index in (1, 2, 3):
                if hasattr(parent, f"bn{index}"):
                    yield parent, f"bn{index}", getattr(parent, f"conv{index}")
        elif isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for before, name in zip(names, names[1:]):
                yield parent, name, parent._modules[before]


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Merge `bn` (eval mode: its running statistics) into `conv`'s weight and bias, in place."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)  # keeps the weight's memory layout
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


def fold_batch_norms(model: nn.Module, device: torch.device | None = None) -> int:
    """Fold every BatchNorm2d fed directly by a Conv2d into it (model in eval mode); returns how many.
    (`device` is unused: the signature of every fast path, `vtempo.fast.FastPath`.)"""
    if model.training:
        raise ValueError("fold BatchNorm only in eval mode: training needs the batch statistics")
    folded = 0
    for parent, name, producer in list(_pairs(model)):
        bn, conv = parent._modules[name], _output_conv(producer)
        if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and conv is not None \
                and conv.out_channels == bn.num_features:
            fold_batch_norm(conv, bn)
            parent._modules[name] = nn.Identity()
            folded += 1
    return folded
