"""A ResNet block's ReLUs and its residual add run inside the convolutions before them, as oneDNN post-ops.

Eager PyTorch runs a block's convolution, then its ReLU, then the residual add and the last ReLU, each
another pass over the activations in memory. oneDNN can apply them while the convolution writes its
output, as OpenVINO's compiled graph does. Once BatchNorms are folded (`fold`) and weights are packed
(`pack`), a Bottleneck is three convolutions with post-ops: conv1 + ReLU, conv2 + ReLU, conv3 + add +
ReLU (a BasicBlock two); a paper's modules in a slot before its convolution run first, and TSM's shift
stand-in (`vtempo.fast.shift`) runs its convolution with the ReLU. A slot that a paper changed
otherwise (another temporal module around a convolution, a BatchNorm that could not be folded) runs
as the block's own forward runs it, so the block computes the same function whatever the family.
Whether a convolution with its post-ops is faster than the convolution followed by them is measured
per CPU, threads, dtype and shape by the shared `Chooser`; the separate ops are kept unless fusion
wins. `prepare` applies it after `pack`; a stand-in swapped in later is not fused.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vtempo.fast.choose import Chooser, shared_chooser
from vtempo.fast.pack import _PackedConv
from vtempo.fast.shift import ShiftedPointwiseConv
from vtempo.models.resnet import BasicBlock, Bottleneck
from vtempo.runtime import cpu_name

# (convolution, the norm after it) per block type, in order; the last one's output gets the shortcut
SLOTS = {Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
         BasicBlock: (("conv1", "bn1"), ("conv2", "bn2"))}


class _Slot(NamedTuple):
    """A block's slot that ends in a packed convolution whose norm was folded into it."""
    before: list[nn.Module]  # a paper's modules before the convolution, run first
    packed: _PackedConv
    shift: ShiftedPointwiseConv | None  # TSM's shift stand-in around the convolution


def _found(block: nn.Module, conv: str, norm: str) -> _Slot | None:
    """The slot, where it ends in a packed convolution whose norm was folded into it: a plain
    convolution, a Sequential of a paper's modules before one, or TSM's shift stand-in around one."""
    module = getattr(block, conv)
    if type(getattr(block, norm)) is not nn.Identity:
        return None
    shift, before = None, []
    if type(module) is ShiftedPointwiseConv:
        shift, module = module, module.net
    elif type(module) is nn.Sequential and len(module):
        *before, module = list(module)
    packed = vars(module).get("forward")
    return _Slot(before, packed, shift) if type(module) is nn.Conv2d and isinstance(packed, _PackedConv) else None


class _FusedBlock:
    """A block's forward that, where it runs on packed weights and measured faster, calls its
    convolutions with their ReLU and the residual add as post-ops; anything else (training, autograd,
    tracing, compiling, exporting, another device or dtype) runs the block's own forward."""

    def __init__(self, block: nn.Module, chooser: Chooser | None = None) -> None:
        self.block, self.chooser = block, chooser
        self.slots = [(conv, norm, _found(block, conv, norm)) for conv, norm in SLOTS[type(block)]]
        self.lead = next(found.packed for _, _, found in self.slots if found is not None)
        self.chosen: dict[tuple, bool] = {}  # (slot, input shape, strides, dtype) → whether fusing is faster

    def __getstate__(self) -> dict:
        return {**vars(self), "chosen": {}}

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.block).forward(self.block, x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.lead.packed_dtype(x)
        if dtype is None or self.block.training:
            return self.plain(x)
        block = self.block
        out = x
        for index, (conv, norm, found) in enumerate(self.slots):
            last = index == len(self.slots) - 1
            shortcut = (x if block.downsample is None else block.downsample(x)) if last else None
            if found is None:
                out = self._then_ops(getattr(block, norm)(getattr(block, conv)(out)), shortcut)
                continue
            for module in found.before:
                out = module(out)
            if found.packed.packed_dtype(out) == dtype and self._fuses(index, found, out, dtype, shortcut):
                out = self._fused(found, out, dtype, shortcut)
            else:
                out = self._then_ops(self._unfused(found, out), shortcut)
        return out

    @staticmethod
    def _unfused(found: _Slot, x: torch.Tensor) -> torch.Tensor:
        return found.packed(x) if found.shift is None else found.shift(x)

    def _fused(self, found: _Slot, x: torch.Tensor, dtype: torch.dtype, shortcut: torch.Tensor | None) -> torch.Tensor:
        def conv_then(y: torch.Tensor) -> torch.Tensor:
            return found.packed.packed(y, dtype, relu=True, add=shortcut)

        if found.shift is None:
            return conv_then(x)
        return found.shift.then(x, conv_then, lambda out: self._then_ops(out, shortcut))

    def _then_ops(self, out: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
        if shortcut is not None:
            out += shortcut
        return self.block.relu(out)

    def _fuses(self, index: int, found: _Slot, x: torch.Tensor, dtype: torch.dtype,
               shortcut: torch.Tensor | None) -> bool:
        """Whether the slot with its post-ops is faster than the slot followed by them, measured once per
        input form. Only the convolution (or the shift and convolution) and its ops are timed: a paper's
        modules before it may hold state (the online shift's cache) that running them again would change."""
        form = (index, x.shape, x.stride(), dtype)
        faster = self.chosen.get(form)
        if faster is None:
            packed = found.packed
            weight = packed.module.weight
            layout = "channels-last" if x.is_contiguous(memory_format=torch.channels_last) else "contiguous"
            key = (f"{'conv' if found.shift is None else 'shift + conv'} post-ops | {cpu_name()} | "
                   f"{torch.get_num_threads()} threads | {dtype} | {tuple(x.shape)} {layout} -> {tuple(weight.shape)} | "
                   f"stride {packed.args[1]} | padding {packed.args[0]} | relu{' + add' if shortcut is not None else ''}")
            if found.shift is not None:
                found.shift.way(x)  # the shift's own choice, made before timing the slot's two forms
            chooser = self.chooser or shared_chooser()
            candidates = {"plain": lambda: self._then_ops(self._unfused(found, x), shortcut),
                          "fused": lambda: self._fused(found, x, dtype, shortcut)}
            faster = self.chosen[form] = chooser.choose(key, candidates) == "fused"
        return faster


def fuse_block_post_ops(model: nn.Module, device: torch.device, chooser: Chooser | None = None) -> int:
    """Give every ResNet block of a prepared CPU model with at least one packed, folded convolution a
    `_FusedBlock` forward, in place; returns how many."""
    if device.type != "cpu":
        return 0
    count = 0
    for module in model.modules():
        if (type(module) in SLOTS and "forward" not in vars(module) and isinstance(module.relu, nn.ReLU)
                and any(_found(module, conv, norm) for conv, norm in SLOTS[type(module)])):
            module.forward = _FusedBlock(module, chooser)
            count += 1
    return count


def unfuse_blocks(model: nn.Module) -> None:
    """Give every fused block its own forward back (for compiling)."""
    for module in model.modules():
        if isinstance(vars(module).get("forward"), _FusedBlock):
            del module.forward
