"""TSM: Temporal Shift Module (Lin, Gan & Han, ICCV 2019), "blockres" placement.

Inside a residual block, the input of the residual branch (just before `conv1`) is shifted along time:
with `fold = C // 8`, channels [0, fold) take the next frame's values, channels [fold, 2·fold) the
previous frame's, and the frames past either end of the clip contribute zeros. The identity and
downsample paths see unshifted features. The shift has no parameters, so one checkpoint serves any T.

Placement follows the official code: every block of R-18/R-50 (BasicBlock or Bottleneck alike); when
layer3 has 23 or more blocks (R-101), only the even-indexed blocks of each stage. The shifted conv is
wrapped as `conv1.net`, the same module path as the official checkpoints.

This is the reference computation (a shifted copy, then the layer). Inference can skip the copy where
the layer is a 1×1 conv: `vtempo.fast.shift` has an equivalent module for that, which
`TemporalShift.fast_swaps` names.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from vtempo.models.resnet import ResNet

from vtempo.models.backbone import blocks, resnet
from vtempo.models.base import TemporalModule, VideoRecognizer
from vtempo.models.families import register

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

    # the shift wrapper around conv1 disappears (MMAction2 wraps it inside its ConvModule)
    checkpoint_rules = {
        "vtempo": ((r"\.conv1\.net\.", ".conv1."),),
        "official": ((r"\.conv1\.net\.", ".conv1."),),
        "mmaction2": ((r"\.conv(\d)\.conv\.net\.", r".conv\1."),),
    }
    fast_swaps = ("shift",)  # around a 1×1 conv, the shift without the copy (`vtempo.fast.shift`)

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
def build_tsm(backbone: str, num_classes: int, frames: int, dropout: float = 0.5,
              shift: str = "bidirectional") -> VideoRecognizer:
    """shift="online": the uni-directional shift of the paper's online mode (see `OnlineTSM`)."""
    del frames  # the shift has no T-shaped parameters: any clip length works
    if shift == "online":
        return build_tsm_online(backbone, num_classes, 0, dropout)
    if shift != "bidirectional":
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, got {shift!r}")
    return VideoRecognizer(add_temporal_shift(resnet(backbone)), num_classes, dropout)


# ------------------------------------------------------------------------------------------ online TSM
# The paper's online mode (Sec. 4.3): the shift is uni-directional, channels [0, fold) of frame t take
# frame t-1's values (zeros for the first frame) and no channel looks at the future. The offline form
# below runs a whole clip with that shift (training, testing on clips); `OnlineTSM` runs the same
# weights one frame at a time, each shifted layer keeping the `fold` channels of the frame before.

SHIFTS = ("bidirectional", "online")


def shift_past(x: torch.Tensor, frames: int, fold: int) -> torch.Tensor:
    """(N·T, C, H, W): channels [0, fold) take frame t-1 (zeros for t = 0); the others stay."""
    clip = x.view(-1, frames, *x.shape[1:])
    out = torch.empty_like(clip)
    out[:, 1:, :fold] = clip[:, :-1, :fold]
    out[:, :1, :fold] = 0
    out[:, :, fold:] = clip[:, :, fold:]
    return out.view(x.shape)


class OnlineShift(TemporalShift):
    """Uni-directional shift: offline over (N·T, ...) clips, or frame by frame while `streaming`.

    While streaming, each call is one frame of each of N streams (N, C, H, W) and `cache` holds the
    previous frame's `fold` channels. A TemporalShift subclass so BN folding and checkpoint placement
    treat it as TSM's shift; it has its own forward (no bidirectional fast path)."""

    def __init__(self, net: nn.Module, fold_div: int = FOLD_DIV):
        super().__init__(net, fold_div)
        self.streaming = False
        self.cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fold = x.shape[1] // self.fold_div
        if not self.streaming:
            return self.net(shift_past(x, self.frames, fold))
        past = self.cache
        if past is None:
            past = torch.zeros_like(x[:, :fold])
        elif past.shape != x[:, :fold].shape:
            raise ValueError(f"online TSM: a frame of shape {tuple(x.shape)} after one of another batch or size; "
                             "call reset() between streams")
        self.cache = x[:, :fold].clone()
        return self.net(torch.cat((past, x[:, fold:]), 1))

    def extra_repr(self) -> str:
        return f"fold_div={self.fold_div}, uni-directional"


def add_online_shift(net: ResNet, every: int | None = None) -> ResNet:
    """`add_temporal_shift` with the uni-directional shift, at the same places."""
    if every is None:
        every = 2 if len(net.layer3) >= 23 else 1
    for _, index, block in blocks(net):
        if index % every == 0:
            block.conv1 = OnlineShift(block.conv1)
    return net


@register("tsm-online")
def build_tsm_online(backbone: str, num_classes: int, frames: int, dropout: float = 0.5) -> VideoRecognizer:
    """`tsm-online-r50`: TSM with the uni-directional shift (same as `build("tsm-r50", shift="online")`)."""
    del frames
    model = VideoRecognizer(add_online_shift(resnet(backbone)), num_classes, dropout)
    model.arch = f"tsm-online-{backbone}"  # also when built as build("tsm-r50", shift="online")
    return model


def online_arch(arch: str) -> str:
    """The uni-directional architecture name of a TSM one: tsm-r50 → tsm-online-r50."""
    family, _, backbone = arch.rpartition("-")
    if family not in ("tsm", "tsm-online"):
        raise ValueError(f"{arch}: only TSM has an online (uni-directional) shift")
    return f"tsm-online-{backbone}"


class OnlineTSM:
    """Runs a uni-directional TSM frame by frame: `step(frame)` → that frame's logits.

    A frame costs one pass of the 2D network; each shifted layer takes its past channels from the
    cache of the previous frame. `step`'s outputs equal the per-frame logits of the same weights run
    offline over the clip of every frame so far (`model.fc(model.features(clip))`). Each runner holds
    its own caches, so several streams can share one model (one step at a time: a step puts the
    shift layers in streaming mode and restores them after)."""

    def __init__(self, model: VideoRecognizer):
        self.model = model
        self.shifts = [m for m in model.modules() if isinstance(m, OnlineShift)]
        if not self.shifts:
            raise ValueError(f"{getattr(model, 'arch', type(model).__name__)} has no uni-directional shift: "
                             "build it with shift='online' (e.g. tsm-online-r50) to run it frame by frame")
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next frame is the first of a new stream."""
        self.caches: list[torch.Tensor | None] = [None] * len(self.shifts)
        self.steps = 0

    def step(self, frame: torch.Tensor) -> torch.Tensor:
        """One new frame (3, H, W) or one per stream (N, 3, H, W) → logits (classes,) or (N, classes)."""
        single = frame.dim() == 3
        batch = frame.unsqueeze(0) if single else frame
        if batch.dim() != 4:
            raise ValueError(f"expected a frame (3, H, W) or frames (N, 3, H, W), got {tuple(frame.shape)}")
        # The caches live here, not in the layers, so several runners can share one model.
        for shift, cache in zip(self.shifts, self.caches):
            shift.streaming, shift.cache = True, cache
        try:
            logits = self.model.fc(self.model.dropout(self.model.backbone(batch)))
            self.caches = [shift.cache for shift in self.shifts]
        finally:
            for shift in self.shifts:
                shift.streaming, shift.cache = False, None
        self.steps += 1
        return logits[0] if single else logits
