"""TSM's shift followed by a 1×1 conv, for inference: `conv(temporal_shift(x))` with a choice of ways.

`models.tsm.TemporalShift` computes its reference: a shifted copy of the block's input, then the conv.
The copy is a full read and write of every shifted block's input. Two ways avoid it. `shifted_in_place`
shifts the quarter of the channels that move inside x itself, runs the conv on x and puts them back:
three passes over that quarter (3/4 of the copy's bytes) and no new block-sized buffer, for any conv.
For a 1×1, stride-1 conv on a channels-last input there is also a way without any copy
(`shifted_gemm`): per clip the (N·T, C, H, W) batch is a (T·H·W, C) matrix whose rows run frame by
frame, the conv is that matrix times the (C, C_out) weight, and shifting a channel group by one frame
offsets its rows by H·W, so its product is added into the output rows one frame away. Every operand
is a strided view of x, read in place by the BLAS GEMM.

Which way is faster depends on the CPU (the GEMM library's kernels for it against oneDNN's 1×1 conv),
the threads, the shape and the dtype, so `ShiftedPointwiseConv` times them on the first input of each
shape and keeps the fastest (`vtempo.fast.choose`). All give the reference's result up to rounding.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtempo.fast.choose import Chooser, shared_chooser
from vtempo.models.base import TemporalModule
from vtempo.models.tsm import TemporalShift, temporal_shift
from vtempo.runtime import autocast_dtype, cpu_name, full_precision


def shifted_copy(x: torch.Tensor, conv: Callable[[torch.Tensor], torch.Tensor], frames: int, fold_div: int) -> torch.Tensor:
    """The reference: the shifted copy, then the conv."""
    return conv(temporal_shift(x, frames, fold_div))


def shifted_in_place(x: torch.Tensor, conv: Callable[[torch.Tensor], torch.Tensor], frames: int,
                     fold_div: int) -> torch.Tensor:
    """`conv(temporal_shift(x))` with the shifted channels moved inside x for the conv, then moved back:
    x is the same after the call (also when the conv raises), but not during it, so only for inference
    on an x that nothing else reads meanwhile (a block's input inside the model's own forward)."""
    clip, fold = x.view(-1, frames, *x.shape[1:]), x.shape[1] // fold_div
    moving = clip[:, :, : 2 * fold].clone()
    clip[:, :-1, :fold] = moving[:, 1:, :fold]  # frame t sees frame t+1
    clip[:, -1:, :fold] = 0
    clip[:, 1:, fold : 2 * fold] = moving[:, :-1, fold:]  # and t-1
    clip[:, :1, fold : 2 * fold] = 0
    try:
        return conv(x)
    finally:
        clip[:, :, : 2 * fold] = moving


def shifted_gemm(x: torch.Tensor, conv: nn.Conv2d, frames: int, fold_div: int) -> torch.Tensor:
    """`conv(temporal_shift(x))` for a 1×1 stride-1 conv and a channels-last x, as three strided GEMMs per
    clip (see the module docstring), in x's dtype; the output is channels-last, like the conv's."""
    nt, channels, height, width = x.shape
    clips, area, fold = nt // frames, height * width, channels // fold_div
    rows = x.permute(0, 2, 3, 1).reshape(clips, frames * area, channels)  # a view: x is channels-last
    weight = conv.weight.to(x.dtype).flatten(1).t().expand(clips, -1, -1)  # (N, C, C_out)
    unshifted, unshifted_weight = rows[..., 2 * fold :], weight[:, 2 * fold :]
    with full_precision(x.device):  # x's dtype throughout: the in-place products would not autocast
        if conv.bias is None:
            out = torch.bmm(unshifted, unshifted_weight)
        else:
            out = torch.baddbmm(conv.bias.to(x.dtype), unshifted, unshifted_weight)
        out[:, :-area].baddbmm_(rows[:, area:, :fold], weight[:, :fold])  # frame t sees frame t+1
        out[:, area:].baddbmm_(rows[:, :-area, fold : 2 * fold], weight[:, fold : 2 * fold])  # and t-1
    return out.view(nt, height, width, -1).permute(0, 3, 1, 2)


def shift_by_concatenation(x: torch.Tensor, frames: int, fold_div: int) -> torch.Tensor:
    """`temporal_shift` as out-of-place ops (slice, pad, concatenate): what an exported graph wants.
    The reference writes slices of an empty tensor, which an exported (functional) graph turns into a
    full copy per slice, and which the int8 quantizer cannot see through."""
    nt, channels = x.shape[:2]
    clip, fold = x.view(-1, frames, *x.shape[1:]), channels // fold_div
    following = F.pad(clip[:, 1:, :fold], (0, 0, 0, 0, 0, 0, 0, 1))  # frame t sees t+1, zeros after the end
    preceding = F.pad(clip[:, :-1, fold : 2 * fold], (0, 0, 0, 0, 0, 0, 1, 0))  # and t-1, zeros before
    return torch.cat([following, preceding, clip[:, :, 2 * fold :]], 2).view(x.shape)


@torch.library.custom_op("vtempo::temporal_shift", mutates_args=(), tags=(torch.Tag.flexible_layout,))
def compiled_shift(x: torch.Tensor, frames: int, fold_div: int, fill: float = 0.0) -> torch.Tensor:
    """`temporal_shift` as one opaque op for torch.compile: inductor runs the eager copy (memory speed)
    and keeps the channels-last layout its packed convolutions need. Traced through, the shift's slice
    writes become kernels slower than the whole R-50 around them. `fill` is what enters past the ends of
    the clip: 0, or on int8 codes the zero point (the code of 0.0)."""
    out = temporal_shift(x, frames, fold_div)
    if fill:
        clip, fold = out.view(-1, frames, *x.shape[1:]), x.shape[1] // fold_div
        clip[:, -1, :fold] = fill
        clip[:, 0, fold : 2 * fold] = fill
    return out


@compiled_shift.register_fake
def _(x: torch.Tensor, frames: int, fold_div: int, fill: float = 0.0) -> torch.Tensor:
    return torch.empty_like(x)


class ExportableShift(TemporalModule):
    """Inference-only stand-in for a `TemporalShift` (or `ShiftedPointwiseConv`) in graphs made by
    torch.export: the shift by `shift_by_concatenation` (standard ops, for ONNX and other runtimes) or,
    `as_one_op`, by `compiled_shift` (for graphs vtempo runs itself: the int8 one), then the wrapped
    layer, kept as `net`."""

    def __init__(self, shift: nn.Module, as_one_op: bool = False) -> None:
        super().__init__()
        self.net, self.fold_div, self.frames = shift.net, shift.fold_div, shift.frames
        self.as_one_op = as_one_op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.as_one_op:
            return self.net(compiled_shift(x, self.frames, self.fold_div))
        return self.net(shift_by_concatenation(x, self.frames, self.fold_div))

    def output_conv(self) -> nn.Conv2d | None:
        return self.net if isinstance(self.net, nn.Conv2d) else None


def swap_shifts_for_export(model: nn.Module, as_one_op: bool = False) -> int:
    """Replace every TSM shift module by an `ExportableShift`, in place; returns how many."""
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) in (TemporalShift, ShiftedPointwiseConv)]
    for name, module in targets:
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attribute, ExportableShift(module, as_one_op))
    return len(targets)


Way = Callable[[torch.Tensor, nn.Conv2d, int, int], torch.Tensor]
# The first is the one `Chooser` keeps unless another is measured clearly faster: the in-place shift,
# the least memory moved and no block-sized buffer allocated.
WAYS: dict[str, Way] = {"in_place": shifted_in_place, "copy": shifted_copy, "gemm": shifted_gemm}


def is_pointwise(layer: nn.Module) -> bool:
    return (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.stride == (1, 1)
        and layer.padding == (0, 0)
        and layer.dilation == (1, 1)
        and layer.groups == 1
    )


class ShiftedPointwiseConv(TemporalModule):
    """Inference-only stand-in for a `TemporalShift` that wraps a 1×1 conv: the same function, computed
    the faster of `WAYS` for each input shape and dtype. It keeps the conv as `net`, so the state dict's
    keys stay those of the TSM model. With autograd on, off the CPU, for a contiguous (not channels-last)
    input or while torch.compile or torch.export traces (inductor fuses the copy itself) it runs the
    reference."""

    def __init__(self, shift: TemporalShift, chooser: Chooser | None = None) -> None:
        super().__init__()
        self.net, self.fold_div, self.frames = shift.net, shift.fold_div, shift.frames
        self.chooser = chooser

    def way(self, x: torch.Tensor) -> str:
        if (
            torch.is_grad_enabled()
            or x.device.type != "cpu"
            or not x.is_contiguous(memory_format=torch.channels_last)
            or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()
            or autocast_dtype(x.device.type) not in (None, x.dtype)  # the conv would cast x: keep its dtype
        ):
            return "copy"
        conv = self.net
        key = (f"shift+conv1x1 | {cpu_name()} | {torch.get_num_threads()} threads | {x.dtype} | "
               f"{tuple(x.shape)} -> {conv.out_channels} | frames {self.frames} | fold 1/{self.fold_div} | "
               f"bias {conv.bias is not None} | ways {','.join(WAYS)}")  # a new way is measured, not skipped
        chooser = self.chooser or shared_chooser()
        return chooser.choose(key, {name: (lambda way=way: way(x, conv, self.frames, self.fold_div))
                                    for name, way in WAYS.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            return self.net(compiled_shift(x, self.frames, self.fold_div))
        return WAYS[self.way(x)](x, self.net, self.frames, self.fold_div)

    def then(self, x: torch.Tensor, conv_then: Callable[[torch.Tensor], torch.Tensor],
             after: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`after(self(x))` for inference, where `conv_then(y)` computes `after(self.net(y))` in one pass
        (the conv with `after` as its post-op, `vtempo.fast.fuse`): the ways that call the conv on the
        shifted input call `conv_then` instead; the GEMMs' way applies `after` to its output."""
        way = self.way(x)
        if way == "gemm":
            return after(shifted_gemm(x, self.net, self.frames, self.fold_div))
        return WAYS[way](x, conv_then, self.frames, self.fold_div)

    def output_conv(self) -> nn.Conv2d:
        return self.net

    def extra_repr(self) -> str:
        return f"fold_div={self.fold_div}"


def shifted_pointwise_conv(shift: TemporalShift, device: torch.device | None = None,
                           chooser: Chooser | None = None) -> ShiftedPointwiseConv | None:
    """The stand-in for a `TemporalShift` around a 1×1 conv (`TemporalShift.fast_swaps` names it); a
    shift around another layer (BasicBlock's 3×3 conv) keeps the reference: None."""
    del device  # the choice is made per input, on the input's device
    return ShiftedPointwiseConv(shift, chooser) if is_pointwise(shift.net) else None
