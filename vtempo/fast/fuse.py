"""A ResNet block's ReLUs and its residual add run inside the convolutions before them, as oneDNN post-ops.

Eager PyTorch runs a block's convolution, then its ReLU, then the residual add and the last ReLU, each
another pass over the activations in memory. oneDNN can apply them while the convolution writes its
output, as OpenVINO's compiled graph does. Once BatchNorms are folded (`fold`) and weights are packed
(`pack`), a Bottleneck is three convolutions with post-ops: conv1 + ReLU, conv2 + ReLU, conv3 + add +
ReLU (a BasicBlock two); a paper's modules in a slot before its convolution run first. A slot that a
paper changed otherwise (a temporal module around a convolution, a BatchNorm that could not be
folded) runs as the block's own forward runs it, so the block computes the same function whatever the
family. Whether a convolution with its post-ops is faster than the convolution followed by them is
measured per CPU, threads, dtype and shape by the shared `Chooser`; the separate ops are kept unless
fusion wins.
"""
from __future__ import annotations

import torch
from torch import nn

from vtempo.fast.choose import Chooser, shared_chooser
from vtempo.fast.pack import _PackedConv
from vtempo.models.resnet import BasicBlock, Bottleneck
from vtempo.runtime import cpu_name

# (convolution, the norm after it) per block type, in order; the last one's output gets the shortcut
SLOTS = {Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
         BasicBlock: (("conv1", "bn1"), ("conv2", "bn2"))}


def _packed(block: nn.Module, conv: str, norm: str) -> tuple[list[nn.Module], _PackedConv] | None:
    """Where the slot ends in a packed convolution whose norm was folded into it (a plain convolution,
    or a Sequential of a paper's modules before one): the modules before it and its packed forward."""
    module = getattr(block, conv)
    before: list[nn.Module] = []
    if type(module) is nn.Sequential and len(module):
        *before, module = list(module)
    forward = vars(module).get("forward")
    if type(module) is nn.Conv2d and type(getattr(block, norm)) is nn.Identity and isinstance(forward, _PackedConv):
        return before, forward
    return None


class _FusedBlock:
    """A block's forward that, where it runs on packed weights and measured faster, calls its
    convolutions with their ReLU and the residual add as post-ops; anything else (training, autograd,
    tracing, compiling, exporting, another device or dtype) runs the block's own forward."""

    def __init__(self, block: nn.Module, chooser: Chooser | None = None) -> None:
        self.block, self.chooser = block, chooser
        self.slots = [(conv, norm, _packed(block, conv, norm)) for conv, norm in SLOTS[type(block)]]
        self.lead = next(found[1] for _, _, found in self.slots if found is not None)
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
            before, packed = found
            for module in before:
                out = module(out)
            if packed.packed_dtype(out) == dtype and self._fuses(index, packed, out, dtype, shortcut):
                out = packed.packed(out, dtype, relu=True, add=shortcut)
            else:
                out = self._then_ops(packed(out), shortcut)
        return out

    def _then_ops(self, out: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
        if shortcut is not None:
            out += shortcut
        return self.block.relu(out)

    def _fuses(self, index: int, packed: _PackedConv, x: torch.Tensor, dtype: torch.dtype,
               shortcut: torch.Tensor | None) -> bool:
        """Whether the slot's convolution with its post-ops is faster than the convolution followed by
        them, measured once per input form. Only the convolution and its ops are timed: a paper's modules
        before it may hold state (the online shift's cache) that running them again would change."""
        form = (index, x.shape, x.stride(), dtype)
        faster = self.chosen.get(form)
        if faster is None:
            weight = packed.module.weight
            key = (f"conv post-ops | {cpu_name()} | {torch.get_num_threads()} threads | {dtype} | {tuple(x.shape)} "
                   f"{'channels-last' if x.is_contiguous(memory_format=torch.channels_last) else 'contiguous'} -> "
                   f"{tuple(weight.shape)} | stride {packed.args[1]} | padding {packed.args[0]} | "
                   f"relu{' + add' if shortcut is not None else ''}")
            chooser = self.chooser or shared_chooser()
            candidates = {"plain": lambda: self._then_ops(packed(x), shortcut),
                          "fused": lambda: packed.packed(x, dtype, relu=True, add=shortcut)}
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
                and any(_packed(module, conv, norm) for conv, norm in SLOTS[type(module)])):
            module.forward = _FusedBlock(module, chooser)
            count += 1
    return count


def unfuse_blocks(model: nn.Module) -> None:
    """Give every fused block its own forward back (for compiling)."""
    for module in model.modules():
        if isinstance(vars(module).get("forward"), _FusedBlock):
            del module.forward
