"""TCM: Temporal Correlation Module (Liu, Yuan & Tu, "Motion-driven Visual Tempo Learning for
Video-based Action Recognition").

A TSM network (shift in every residual block, also in R-101, as the official TCM code does) with one
TCM after layer2 (appended to the stage as `layer2.tcm`), fused as `x + attention(dynamics(x))`. The
reference is the official code, whose released weights were trained with it. Where it departs from the
paper vtempo follows the code: displacement radius 7 (a 15×15 window) instead of the paper's
R = INT(H/2), and 23.94M parameters / 33.14 GMACs of convolutions and head, plus 0.158 GMACs of correlation,
for R-50 at 8×224² instead of the paper's 24.5M / 35.3G. The correlation runs as a banded matrix product
(see `correlation`) that computes whole rows of the 28×28 map, 0.295 GMACs, which FLOP counters see:
`count_macs` gives 33.43 in all. The dynamics (reduction, normalisation, correlation, soft-argmax) run
in fp32 also under bf16 autocast: the soft-argmax's temperature of 100 amplifies rounding.

Temporal dynamics (the paper's MTDM), on layer2's output (N·T, C, H, W):
1. 1×1 conv C→64 + BN + ReLU, then L2 normalisation over channels (x / sqrt(Σx² + 1e-6)).
2. Two correlation passes: adjacent pairs (t, t+1) and first-frame pairs (0, t+1), t = 0..T-2.
   Correlation over a 15×15 window (radius 7, zero outside the map), then ReLU.
3. Confidence = the maximum correlation. Flow = soft-argmax: a Gaussian (σ = 5, in window cells)
   centred on the hard argmax multiplies the correlation, × temperature 100, softmax over the 225
   displacements; the expected horizontal and vertical displacement (of the later frame relative to
   the earlier one), divided by 7, are u and v in [-1, 1].
4. Each pass gives T-1 maps, padded to T by repeating the last. Per frame, 6 channels:
   [u_adj, v_adj, conf_adj, u_first, v_first, conf_first].

Temporal attention (the paper's TAM, unrelated to TANet's): bias-free convs, each followed by BN + ReLU:
three grouped 3×3 convs 6→6 (groups 3), 1×1 6→16; depth-wise 3×3 + 1×1 16→32; depth-wise 3×3 + 1×1
32→64; depth-wise 3×3 + 1×1 64→C. Then an ECA-style gate over time: the spatial mean of each (clip,
channel) is a sequence over T, convolved by a bias-free Conv1d(1→1, k), sigmoid, multiply. k =
int(log2 T), made odd by adding one (8 frames → 3, 16 → 5), so a model serves one clip length.

Other backbones: C is layer2's output width (512 for R-50/R-101, 128 for R-18, as the official code
builds it). For narrow ResNets (`r26w16`…) the fixed widths 64 (reduction) and 16/32/64 (attention)
scale with the base width (e.g. 16, 4/8/16 for w16), so a narrow model stays narrow throughout.
The head is vtempo's Linear; the official Conv1d(2048, classes, 1) head is the same map (the
checkpoint converter squeezes its last dimension).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from vtempo.models.resnet import ResNet

from vtempo.models.backbone import resnet
from vtempo.models.base import TemporalModule, VideoRecognizer, spatial_mean
from vtempo.models.correlation import banded_correlation, spatial_correlation
from vtempo.models.families import register
from vtempo.models.tsm import add_temporal_shift
from vtempo.runtime import full_precision

RADIUS = 7  # 15×15 window
SIGMA = 5.0
TEMPERATURE = 100.0
EPS = 1e-6
SUBNORMAL_FLOOR = 80.0  # see soft_argmax_flow


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(1, keepdim=True) + EPS).sqrt()


def soft_argmax_flow(correlation: torch.Tensor) -> torch.Tensor:
    """(..., P, P, H, W) non-negative correlation → (..., 3, H, W): [u, v, confidence].

    Worked on with the P·P displacements innermost, as `spatial_correlation` lays them out (there the
    permute below is a view). The Gaussian depends only on where the hard argmax is, one of P·P cells, so
    its P·P × P·P values are a table whose rows are gathered instead of taking an exponential per element.
    The largest logit is known, the argmax's 100·confidence, so the softmax is written out: the logits less
    that, exponentiated in place, then one matrix product with (u offset, v offset, 1) gives the expected
    displacements and the softmax's denominator together.
    """
    *lead, p, _, h, w = correlation.shape
    radius = (p - 1) // 2
    n = len(lead)  # dims counted from the front: ONNX export refuses negative ones in a permute
    flat = correlation.permute(*range(n), n + 2, n + 3, n, n + 1).reshape(*lead, h, w, p * p)
    confidence, best = flat.max(-1)
    cells = torch.arange(p, device=correlation.device, dtype=correlation.dtype)
    cell_y, cell_x = cells.repeat_interleave(p), cells.repeat(p)  # of each of the P·P displacements
    squared = (cell_x[None, :] - cell_x[:, None]) ** 2 + (cell_y[None, :] - cell_y[:, None]) ** 2
    # row: the hard argmax; column: the displacement; the temperature folded in
    gaussians = torch.exp(-squared / (2 * SIGMA**2)) * TEMPERATURE
    logits = gaussians.index_select(0, best.flatten()).view_as(flat).mul_(flat)
    shifted = logits.sub_(confidence[..., None] * TEMPERATURE)  # less the largest, the argmax's
    # Logits more than 80 below the largest are raised to that floor: their weights, e^-87 to e^-103
    # otherwise, would be subnormal floats, which x86 multiplies far more slowly, and
    # e^-80 ≈ 2e-35 changes no fp32 sum.
    weights = shifted.clamp_min_(-SUBNORMAL_FLOOR).exp_()
    # (3, P·P), multiplied transposed: faster on CPU than the same product with a (P·P, 3) matrix
    rows = torch.stack([cell_x - radius, cell_y - radius, torch.ones_like(cells).repeat(p)])
    with full_precision(correlation.device):  # autocast would multiply the weights in bf16
        moments = weights @ rows.t()  # (..., H, W, 3): Σ weight·u offset, Σ weight·v offset, Σ weight
    flow = moments[..., :2] / (moments[..., 2:] * radius)
    return torch.cat([flow, confidence[..., None]], -1).permute(*range(n), n + 2, n, n + 1)


class TemporalDynamics(TemporalModule):
    """MTDM: correlation-based motion (flow + confidence) to the next frame and from the first frame."""

    export_swap = ("forward", "export_forward")
    # its reduction conv feeds the correlation and a soft-argmax with a temperature of 100, which
    # amplifies rounding: int8 would wreck it
    int8_keeps_fp32 = True
    # the official code keeps its one TCM beside the blocks, as `tcm_layer`
    checkpoint_rules = {
        "official": ((r"^backbone\.tcm_layer\.mtdm\.chnl_reduction\.", "backbone.layer2.tcm.dynamics.reduce."),),
    }

    def __init__(self, channels: int, reduced: int = 64, radius: int = RADIUS):
        super().__init__()
        self.radius = radius
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, reduced, 1, bias=False), nn.BatchNorm2d(reduced), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 also under autocast: the soft-argmax multiplies by a temperature of 100, which amplifies
        # the rounding of bf16 features in the logits (docs/performance.md).
        if self.frames < 2:
            raise ValueError("TCM needs at least 2 frames per clip")
        with full_precision(x.device):
            x = x.to(torch.promote_types(x.dtype, torch.float32))
            clip = self.split(l2_normalize(self.reduce(x)))  # (N, T, c, H, W)
        n, t, c, h, w = clip.shape
        # frame t+1 against two earlier ones: the adjacent frame t, then the first frame
        earlier = torch.stack([clip[:, :-1], clip[:, :1].expand(-1, t - 1, -1, -1, -1)], 2)
        keys = clip[:, 1:].reshape(-1, c, h, w)
        correlation = spatial_correlation(earlier.reshape(-1, 2, c, h, w), keys, self.radius)
        motion = soft_argmax_flow(F.relu(correlation, inplace=True)).reshape(n, t - 1, 6, h, w)
        motion = torch.cat([motion, motion[:, -1:]], 1)  # T-1 pairs → T frames, repeating the last
        return motion.reshape(n * t, 6, h, w)

    def export_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` with the banded correlation, which slices a padded copy where `spatial_correlation`
        reads an `as_strided` view."""
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


def _conv_bn_relu(cin: int, cout: int, kernel: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class TemporalAttention(TemporalModule):
    """TCM's attention: motion maps (N·T, 6, H, W) → a C-channel residual, gated per channel over time."""

    checkpoint_rules = {
        "official": (
            (r"^backbone\.tcm_layer\.tam\.ETA\.conv\.", "backbone.layer2.tcm.attention.temporal_gate."),
            (r"^backbone\.tcm_layer\.tam\.", "backbone.layer2.tcm.attention."),
        ),
    }

    def __init__(self, channels: int, frames: int, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.fixed_frames = frames
        w1, w2, w3 = widths
        self.conv1 = nn.Sequential(
            *_conv_bn_relu(6, 6, 3, groups=3), *_conv_bn_relu(6, 6, 3, groups=3), *_conv_bn_relu(6, 6, 3, groups=3),
            *_conv_bn_relu(6, w1, 1),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(w1, w1, 3, groups=w1), *_conv_bn_relu(w1, w2, 1))
        self.conv3 = nn.Sequential(*_conv_bn_relu(w2, w2, 3, groups=w2), *_conv_bn_relu(w2, w3, 1))
        self.conv4 = nn.Sequential(*_conv_bn_relu(w3, w3, 3, groups=w3), *_conv_bn_relu(w3, channels, 1))
        k = eca_kernel_size(frames)
        self.temporal_gate = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = self.split(self.conv4(self.conv3(self.conv2(self.conv1(x)))))  # (N, T, C, H, W)
        n, t, c = clip.shape[:3]
        sequence = spatial_mean(clip).transpose(1, 2).reshape(n * c, 1, t)
        gate = torch.sigmoid(self.temporal_gate(sequence)).view(n, c, t).transpose(1, 2).contiguous()  # dense: fast product
        return (clip * gate.view(n, t, c, 1, 1)).view(-1, *clip.shape[2:])


def eca_kernel_size(frames: int) -> int:
    k = int(math.log2(frames))
    return k + 1 if k % 2 == 0 else k


class TemporalCorrelationModule(nn.Module):
    def __init__(self, channels: int, frames: int, reduced: int = 64, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.dynamics = TemporalDynamics(channels, reduced)
        self.attention = TemporalAttention(channels, frames, widths)
        for m in self.modules():  # the official code initialises these with the backbone's ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.dynamics(x))


def add_temporal_correlation(net: ResNet, frames: int) -> ResNet:
    """Append a TCM to layer2 (as `layer2.tcm`), sized from layer2's width and the base width."""
    last = net.layer2[-1]
    channels = (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
    scale = net.conv1.out_channels / 64
    reduced = max(1, round(64 * scale))
    widths = tuple(max(1, round(width * scale)) for width in (16, 32, 64))
    net.layer2.add_module("tcm", TemporalCorrelationModule(channels, frames, reduced, widths))
    return net


@register("tcm")
def build_tcm(backbone: str, num_classes: int, frames: int, dropout: float = 0.5) -> VideoRecognizer:
    if frames < 2:
        raise ValueError(f"TCM correlates frames with each other and needs frames >= 2, got {frames}")
    net = add_temporal_correlation(add_temporal_shift(resnet(backbone), every=1), frames)
    return VideoRecognizer(net, num_classes, dropout)
