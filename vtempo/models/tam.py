"""TAM / TANet: Temporal Adaptive Module (Liu, Wang, Wu, Qian & Lu, ICCV 2021).

A TAM sits in every residual block after `conv1 → bn1 → relu`, and its output feeds `conv2`. From the
spatially pooled features θ (N, C, T) it learns two things per clip:

- the local branch L: a per-(channel, frame) importance map, Conv1d(C→C/4, k=3) → BN → ReLU →
  Conv1d(C/4→C, k=1) → sigmoid, that rescales the features;
- the global branch G: a per-(clip, channel) temporal kernel of size 3 that sums to one,
  Linear(T→2T) → BN → ReLU → Linear(2T→3) → softmax, applied as a depth-wise temporal convolution
  with zero padding: out[t] = k0·y[t-1] + k1·y[t] + k2·y[t+1] (elementwise here, not the reference's
  grouped conv, so it reports its MACs through `uncounted_macs`: 0.033 GMACs at R-50, 8×224²).

G's first layer is a T×2T matrix, so a model is built for one clip length (`fixed_frames`): an 8-frame
checkpoint needs an 8-frame model. TAM convs and linears are bias-free, with PyTorch's default init. Every
block of the backbone gets one (16 in R-50, all 33 in R-101, as the official code does); BasicBlock
ResNets (R-18) get one in the same place, before their second 3×3 conv. The blocks stay torchvision's:
the TAM runs on the input of `conv2` (`conv2.tam`, with the conv itself as `conv2.conv`), which is
exactly the output of `conv1 → bn1 → relu`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from vtempo.models.resnet import ResNet

from vtempo.models.backbone import blocks, resnet
from vtempo.models.base import TemporalModule, VideoRecognizer, spatial_mean
from vtempo.models.families import register
from vtempo.models.surgery import like

KERNEL_SIZE = 3


_BRANCHES = (
    (r"\.self_conv\.conv_f\.", ".tam.G."),  # TAM files from before the rename
    (r"\.self_conv\.conv_g\.", ".tam.L."),
    (r"\.tam\.G\.", ".tam.global_branch."),
    (r"\.tam\.L\.", ".tam.local_branch."),
)


class TemporalAdaptiveModule(TemporalModule):
    # vtempo wraps conv2 (`TemporalAdaptiveConv`); the official code wraps the block as `layerX.Y.net`,
    # MMAction2's TANet as `layerX.Y.block`
    checkpoint_rules = {
        "vtempo": ((r"\.conv2\.tam\.", ".tam."), (r"\.conv2\.conv\.", ".conv2.")),
        "official": ((r"^(backbone\.layer\d\.\d+)\.net\.", r"\1."), *_BRANCHES),
        "mmaction2": ((r"^(backbone\.layer\d\.\d+)\.block\.", r"\1."), *_BRANCHES),
    }
    # int8 (vtempo.fast.quantize): the branches are small ops over T-long sequences, and torch's int8
    # kernels for them fail once compiled (a 1-d conv's output length, a tiny linear's packed weight)
    int8_keeps_fp32 = True

    def __init__(self, channels: int, frames: int):
        super().__init__()
        self.fixed_frames = frames
        self.global_branch = nn.Sequential(
            nn.Linear(frames, frames * 2, bias=False),
            nn.BatchNorm1d(frames * 2),
            nn.ReLU(inplace=True),
            nn.Linear(frames * 2, KERNEL_SIZE, bias=False),
            nn.Softmax(-1),
        )
        self.local_branch = nn.Sequential(
            nn.Conv1d(channels, channels // 4, KERNEL_SIZE, padding=KERNEL_SIZE // 2, bias=False),
            nn.BatchNorm1d(channels // 4),
            nn.ReLU(inplace=True),
            nn.Conv1d(channels // 4, channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = self.split(x)  # (N, T, C, H, W)
        n, t, c = clip.shape[:3]
        theta = spatial_mean(clip).transpose(1, 2)  # (N, C, T)
        kernel = self.global_branch(theta.reshape(n * c, t))  # (N·C, 3)
        importance = self.local_branch(theta)  # (N, C, T)
        return like(adaptive_temporal_conv(clip, kernel.view(n, c, KERNEL_SIZE), importance).flatten(0, 1), x)

    def uncounted_macs(self, input_shape: torch.Size) -> float:
        """The temporal conv is elementwise arithmetic here (the reference's grouped conv, which FLOP counters
        see): K MACs per output element."""
        return KERNEL_SIZE * input_shape.numel()


def adaptive_temporal_conv(clip: torch.Tensor, kernel: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """out[t] = k0·y[t-1] + k1·y[t] + k2·y[t+1] with y = gate·clip, zero past the ends, per (clip, channel).

    clip (N, T, C, H, W); kernel (N, C, 3); gate (N, C, T). The gate folds into the weight of each (source
    frame, tap), so the clip is read three times and written once, in its own (channels-last) layout; a
    grouped conv over (N·C, T, H·W) needed two more reshaping copies. TAM and TEFE's TE both use it.
    """
    # (3, N, T source, C, 1, 1): each tap's weights contiguous, or the elementwise kernels run several times slower
    taps = (kernel.permute(2, 0, 1).unsqueeze(2) * gate.transpose(1, 2)).to(clip.dtype).contiguous()[..., None, None]
    out = clip * taps[1]
    out[:, 1:].addcmul_(clip[:, :-1], taps[0, :, :-1])
    out[:, :-1].addcmul_(clip[:, 1:], taps[2, :, 1:])
    return out


class TemporalAdaptiveConv(nn.Module):
    """A block's `conv2`, run on the TAM's output: conv1 → bn1 → relu → TAM → conv2 → ..."""

    def __init__(self, conv: nn.Conv2d, frames: int):
        super().__init__()
        self.tam = TemporalAdaptiveModule(conv.in_channels, frames)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.tam(x))

    def output_conv(self) -> nn.Conv2d | None:
        return self.conv


def add_temporal_adaptive_modules(net: ResNet, frames: int) -> ResNet:
    for _, _, block in blocks(net):
        block.conv2 = TemporalAdaptiveConv(block.conv2, frames)
    return net


@register("tam")
def build_tam(backbone: str, num_classes: int, frames: int, dropout: float = 0.5) -> VideoRecognizer:
    return VideoRecognizer(add_temporal_adaptive_modules(resnet(backbone), frames), num_classes, dropout)
