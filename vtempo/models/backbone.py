"""ResNet backbones built from torchvision's blocks, without their classifier.

`resnet("r50")` is torchvision's ResNet-50; `resnet("r18")`, `resnet("r101")` likewise. Narrow
variants (`"r26w16"`: bottleneck blocks [2,2,2,2], base width 16) serve the small bundled demo models.
"""
from __future__ import annotations

import re

import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

DEPTHS: dict[int, tuple[type[nn.Module], list[int]]] = {
    10: (BasicBlock, [1, 1, 1, 1]),
    14: (Bottleneck, [1, 1, 1, 1]),
    18: (BasicBlock, [2, 2, 2, 2]),
    26: (Bottleneck, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}

_NAME = re.compile(r"^r(\d+)(?:w(\d+))?$")


class NarrowResNet(ResNet):
    """torchvision's ResNet with the stage widths scaled by `base_width / 64`."""

    def __init__(self, block, layers, base_width: int):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = base_width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base_width, layers[0])
        self.layer2 = self._make_layer(block, base_width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, base_width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, base_width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def resnet(name: str) -> ResNet:
    """A ResNet whose `fc` is an identity: it maps (B, 3, H, W) to pooled features (B, C)."""
    match = _NAME.match(name)
    if not match or int(match.group(1)) not in DEPTHS:
        known = ", ".join(f"r{d}" for d in DEPTHS)
        raise ValueError(f"unknown backbone {name!r}: expected one of {known}, optionally with wN (e.g. r26w16)")
    block, layers = DEPTHS[int(match.group(1))]
    width = int(match.group(2) or 64)
    if width == 64:
        net = ResNet(block, layers)
        net.fc = nn.Identity()
        return net
    return NarrowResNet(block, layers, width)


def feature_dim(net: ResNet) -> int:
    last = net.layer4[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


def blocks(net: ResNet):
    """(stage index 0..3, block index, block) for every residual block."""
    for stage, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
        for index, block in enumerate(layer):
            yield stage, index, block
