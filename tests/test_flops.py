"""MACs per clip on the meta device: the counted total, the head, analytic extras, and uncounted ops."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtempo.bench.flops import RESNET_UNCOUNTED, count_macs
from vtempo.models import TemporalModule, VideoRecognizer, build
from vtempo.models.backbone import resnet


def meta_model(arch: str, num_classes: int, frames: int) -> VideoRecognizer:
    with torch.device("meta"):  # no weight initialisation work: counting needs shapes only
        return build(arch, num_classes=num_classes, frames=frames)


def test_tsn_r50_counts_the_published_conv_and_matmul_macs():
    for classes in (400, 174):
        macs = count_macs(meta_model("tsn-r50", classes, 8), frames=8, size=224)
        assert macs.head == 8 * 2048 * classes
        assert abs(macs.backbone / 1e9 - 32.697) < 0.001  # conv MACs of 8 ResNet-50 frames at 224²
        assert abs(macs.total / 1e9 - 32.70) < 0.01
        assert macs.analytic == {} and macs.complete == macs.total


def test_macs_scale_with_frames_and_a_plain_resnet_has_only_conventional_uncounted_ops():
    eight, sixteen = (count_macs(meta_model("tsn-r10w8", 10, t), frames=t, size=64) for t in (8, 16))
    assert sixteen.total == 2 * eight.total and sixteen.head == 2 * eight.head == 16 * 64 * 10
    assert {"batch_norm", "relu", "add", "max_pool2d"} <= set(eight.uncounted) <= RESNET_UNCOUNTED
    assert eight.unusual_uncounted == {}


class Gate(TemporalModule):
    """Elementwise work the counter cannot see: a sigmoid channel gate and a softmax over time."""

    def forward(self, x):
        gate = torch.sigmoid(x.mean((2, 3), keepdim=True))
        weights = self.split(x.mean((1, 2, 3))).softmax(1)  # (N, T)
        return x * gate * weights.reshape(-1, 1, 1, 1)


def tiny_with(module: nn.Module) -> VideoRecognizer:
    backbone = resnet("r10w8")
    backbone.avgpool = nn.Sequential(module, backbone.avgpool)  # sees layer4's output: 64 channels, 2×2 at 64²
    return VideoRecognizer(backbone, num_classes=10)


def test_elementwise_ops_no_counter_sees_are_reported_by_type_and_size():
    frames = 4
    macs = count_macs(tiny_with(Gate()), frames=frames, size=64)
    plain = count_macs(tiny_with(nn.Identity()), frames=frames, size=64)
    assert macs.total == plain.total  # the gate adds no counted MACs ...
    assert {"sigmoid", "softmax", "mul"} <= set(macs.unusual_uncounted)  # ... but is reported
    assert macs.uncounted["sigmoid"] == frames * 64  # one gate value per frame and channel
    assert macs.uncounted["softmax"] == frames
    assert macs.uncounted["mul"] == 2 * frames * 64 * 2 * 2  # two full-size products


class Correlation(TemporalModule):
    """A correlation of adjacent frames built from unfold · multiply · sum, as TCM-style modules do."""

    def __init__(self, radius: int = 1, analytic: bool = False):
        super().__init__()
        self.radius, self.analytic = radius, analytic

    def forward(self, x):
        clip = self.split(x)
        first, second = clip[:, :-1], clip[:, 1:].flatten(0, 1)
        d = 2 * self.radius + 1
        patches = F.unfold(second, d, padding=self.radius).view(*first.shape[:3], d * d, *x.shape[2:])
        self.scores = (first.unsqueeze(3) * patches).sum(2)  # (N, T-1, D², H, W)
        return x

    def uncounted_macs(self, input_shape: torch.Size) -> float:
        if not self.analytic:
            return 0.0
        channels, height, width = input_shape[1:]
        clips = input_shape[0] // self.frames
        return clips * (self.frames - 1) * channels * (2 * self.radius + 1) ** 2 * height * width


def test_unfold_multiply_sum_correlation_shows_up_as_mul_and_sum():
    frames, radius = 4, 1
    macs = count_macs(tiny_with(Correlation(radius)), frames=frames, size=64)
    products = (frames - 1) * 64 * (2 * radius + 1) ** 2 * 2 * 2
    assert macs.uncounted["mul"] == products
    assert macs.uncounted["sum"] == products
    assert macs.analytic == {"Correlation": 0.0}


def test_modules_can_add_the_macs_the_counter_misses():
    frames = 4
    counted = count_macs(tiny_with(Correlation(analytic=True)), frames=frames, size=64)
    expected = (frames - 1) * 64 * 9 * 2 * 2
    assert counted.analytic == {"Correlation": expected}
    assert counted.complete == counted.total + expected
    model = tiny_with(Correlation(analytic=True))
    count_macs(model, frames=frames, size=64)
    assert not any(m._forward_pre_hooks for m in model.modules())  # the caller's model is untouched
