"""TSI: Temporal Saliency Integration (Su et al., 2021).

No official code exists; the paper is the reference. Every residual block becomes
1×1 → 3×3 → SME → CTI → 1×1 (+ the block's shortcut).

- SME (Salient Motion Excitation, eqs. 3-7): 1×1 reduction by r = 16 (+BN); saliency alignment of
  frame t+1 to frame t: scaled dot-product spatial attention with query = frame t, key = value =
  frame t+1, whose output multiplies frame t+1 elementwise (= S); pyramidal feature difference with
  K = 4 depth-wise 3×3 convs in cascade, D_0 = conv_0(S), D_k = conv_k(D_{k-1} + S), M = Σ_k (D_k − X_t);
  1×1 expansion (+BN); spatial mean → sigmoid → channel attention; output X + X·A.
- CTI (Cross-scale Temporal Integration, eqs. 8-10): G = 4 channel groups; group 0 passes
  through; group g is a depth-wise temporal conv (k=3) of α⊙X_g + (1−α)⊙T_{g−1}, where α comes
  from spatial pooling of (T_{g−1} + X_g) → FC → softmax. Outputs are concatenated.

Choices where the paper is silent (each also noted at the code):
- The motion of the pair (t, t+1) is assigned to frame t; the last frame has no successor and gets
  zero motion (as STM and TEA pad), so its attention is sigmoid of the expansion applied to zeros.
- Saliency attention: softmax over frame t+1's positions (the keys), scale 1/sqrt(C/r), as in
  F.scaled_dot_product_attention; its output is indexed by frame t's positions.
- Softmax axis of CI: the FC gives, per frame and channel, one logit for each of the two scales being
  mixed (X_g and T_{g−1}); the softmax runs over that pair (SK-Net's selection rule), so α and 1−α
  of eq. 10 are its two outputs. The FC has no bias.
- The depth-wise temporal convs start as identity (centre tap 1), so an ImageNet-initialised TSI
  starts near its 2D network; SME's convs use PyTorch's default init.
- SME's reduction keeps at least 4 channels (R-50's smallest, 64/16), so narrow backbones never hit
  0 channels and R-50 is unaffected. CTI needs the width divisible by 4.
- Strided blocks keep torchvision's projection shortcut (the paper's "identity shortcut" cannot
  change width); SME/CTI see the 3×3 conv's output, already at the new resolution.
- BasicBlock (ResNet-18): SME → CTI follow conv1-bn1-relu, before conv2 (see `surgery`).

Cost at R-50, 8 frames, 224², 174 classes (`count_macs`): 34.84 GMACs (paper: 34G, 1.03× ResNet-50;
+2.5%) and 24,518,310 parameters (the paper gives none). Of these, 32.86 are convolutions and the head
and 1.98 the attention (F.scaled_dot_product_attention, which the counter sees; mostly res2, where
56² = 3136 positions attend to each other with 4 channels). In eval mode SME expands the spatially
pooled motion instead of pooling the expanded one (the 1×1 conv and an eval-mode BN are affine per
position, so the two orders are equal); counted in the paper's order the total is 34.94. A counter
that skips matmuls (thop does) would give 33. Uncounted here: the saliency product, the differences,
the gates and the CI blend (0.03 G elementwise ops) and the attention's softmax (0.225 G elements).
Time is another matter: that softmax over 3136×3136 scores per frame pair, which no choice of kernel
made cheaper (F.scaled_dot_product_attention's fused CPU kernel beat bmm + softmax, chunked or not),
is a large share of a CPU forward and makes TSI slower than its MACs suggest (measured figures:
docs/performance.md); the paper's own Table 8 shows 1.85× TSN's time (44 vs 81.5 clips/s on a GPU).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtempo.models.backbone import blocks, resnet
from vtempo.models.base import TemporalModule, VideoRecognizer, spatial_mean
from vtempo.models.families import register
from vtempo.models.surgery import insert_before_output_conv, like, spatial_width

REDUCTION = 16
MIN_REDUCED = 4
PYRAMID_LEVELS = 4
GROUPS = 4


class SalientMotionExcitation(TemporalModule):
    """SME on (N·T, C, H, W): X + X·A, A a per-(frame, channel) motion attention."""

    def __init__(self, channels: int):
        super().__init__()
        reduced = min(channels, max(MIN_REDUCED, channels // REDUCTION))
        self.reduce = nn.Sequential(nn.Conv2d(channels, reduced, 1, bias=False), nn.BatchNorm2d(reduced))
        self.pyramid = nn.ModuleList(
            nn.Conv2d(reduced, reduced, 3, padding=1, groups=reduced, bias=False)
            for _ in range(PYRAMID_LEVELS)
        )
        self.expand = nn.Sequential(nn.Conv2d(reduced, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def align(self, current: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
        """Saliency alignment (eq. 3) of (B, C, H, W) frame pairs: query t, key and value t+1."""
        b, c, h, w = current.shape
        query = current.flatten(2).transpose(1, 2)  # (B, HW, C)
        key_value = following.flatten(2).transpose(1, 2)
        attended = F.scaled_dot_product_attention(query, key_value, key_value)  # (B, HW, C)
        return following * attended.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.split(self.reduce(x))  # (N, T, C/r, H, W)
        current = reduced[:, :-1].flatten(0, 1)
        aligned = self.align(current, reduced[:, 1:].flatten(0, 1))
        difference = self.pyramid[0](aligned)
        motion = difference - current
        for conv in self.pyramid[1:]:
            difference = conv(difference + aligned)
            motion = motion + difference - current
        # Motion of (t, t+1) belongs to frame t; the last frame gets zero motion.
        motion = motion.view(-1, self.frames - 1, *motion.shape[1:])  # -1, not len(): a trace keeps it general
        motion = F.pad(motion, (0, 0, 0, 0, 0, 0, 0, 1))
        motion = motion.flatten(0, 1)
        if self.training:
            attention = torch.sigmoid(spatial_mean(self.expand(motion))[..., None, None])
        else:  # the 1×1 conv and an eval-mode BN are affine per position, so they commute with the mean
            attention = torch.sigmoid(self.expand(spatial_mean(motion)[..., None, None]))
        return x + x * attention


class CrossScaleTemporalIntegration(TemporalModule):
    """CTI on (N·T, C, H, W): cascaded depth-wise temporal convs over 4 channel groups."""

    def __init__(self, channels: int):
        super().__init__()
        if channels % GROUPS:
            raise ValueError(f"TSI's CTI needs a width divisible by {GROUPS}, got {channels}")
        width = channels // GROUPS
        self.temporal = nn.ModuleList(
            nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0), groups=width, bias=False)
            for _ in range(GROUPS - 1)
        )
        self.select = nn.ModuleList(nn.Linear(width, 2 * width, bias=False) for _ in range(GROUPS - 1))
        with torch.no_grad():
            for conv in self.temporal:  # identity at init (see module docstring)
                conv.weight.zero_()
                conv.weight[:, :, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.split(x).transpose(1, 2).chunk(GROUPS, 1)  # each (N, C/G, T, H, W)
        outputs = [groups[0]]
        for conv, select, group in zip(self.temporal, self.select, groups[1:]):
            previous = outputs[-1]
            pooled = spatial_mean(previous + group).transpose(1, 2)  # (N, T, C/G)
            logits = select(pooled).unflatten(-1, (2, -1))  # (N, T, 2, C/G): one per scale
            # (N, C/G, T, 1, 1) with channels innermost in memory, like the channels-last features it weighs
            alpha = logits.softmax(2)[:, :, 0].contiguous().transpose(1, 2)[..., None, None]
            outputs.append(conv(alpha * group + (1 - alpha) * previous))
        return like(torch.cat(outputs, 1).transpose(1, 2).flatten(0, 1), x)


def add_tsi(net: nn.Module) -> nn.Module:
    for _, _, block in blocks(net):
        width = spatial_width(block)
        insert_before_output_conv(
            block, sme=SalientMotionExcitation(width), cti=CrossScaleTemporalIntegration(width)
        )
    return net


@register("tsi")
def build_tsi(backbone: str, num_classes: int, frames: int, dropout: float = 0.5) -> VideoRecognizer:
    del frames  # no T-shaped parameters
    return VideoRecognizer(add_tsi(resnet(backbone)), num_classes, dropout)
