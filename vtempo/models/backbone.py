"""ResNet backbones in torchvision's layout (`vtempo.models.resnet`), without their classifier.

`resnet("r50")` is torchvision's ResNet-50; `resnet("r18")`, `resnet("r101")` likewise. Narrow
variants (`"r26w16"`: bottleneck blocks [2,2,2,2], base width 16) serve the small bundled demo models.
"""
from __future__ import annotations

import re

import torch.nn as nn
from vtempo.models.resnet import BasicBlock, Bottleneck, ResNet

DEPTHS: dict[int, tuple[type[nn.Module], list[int]]] = {
    10: (BasicBlock, [1, 1, 1, 1]),
    14: (Bottleneck, [1, 1, 1, 1]),
    18: (BasicBlock, [2, 2, 2, 2]),
    26: (Bottleneck, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}

BACKBONE_NAME = re.compile(r"^r(\d+)(?:w(\d+))?$")


def resnet(name: str) -> ResNet:
    """A ResNet whose `fc` is an identity: it maps (B, 3, H, W) to pooled features (B, C)."""
    match = BACKBONE_NAME.match(name)
    if not match or int(match.group(1)) not in DEPTHS:
        known = ", ".join(f"r{d}" for d in DEPTHS)
        raise ValueError(f"unknown backbone {name!r}: expected one of {known}, optionally with wN (e.g. r26w16)")
    block, layers = DEPTHS[int(match.group(1))]
    width = int(match.group(2) or 64)
    if width == 64:  # with a 1000-class fc first, like torchvision's: a seed draws the same weights
        net = ResNet(block, layers)
        net.fc = nn.Identity()
        return net
    return ResNet(block, layers, num_classes=None, base_width=width)


def feature_dim(net: ResNet) -> int:
    last = net.layer4[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


def blocks(net: ResNet):
    """(stage index 0..3, block index, block) for every residual block."""
    for stage, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
        for index, block in enumerate(layer):
            yield stage, index, block
