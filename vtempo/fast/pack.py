"""CPU convolutions, in fp32 and under bf16 autocast, with their weights in oneDNN's layout, packed once.

An eager `Conv2d` on CPU hands oneDNN a weight in PyTorch's layout, and oneDNN reorders it into its
internal layout on every call: for a ResNet-50 that is every weight read and written once per forward
(under autocast, after casting it to bf16). Over a clip of 8 frames the reorder is a few percent of the
time; over one frame (online TSM, a batch of one image) it is a third. Packing the weight once (cast
first, under autocast) and calling oneDNN's convolution with it, as inductor's freezing does, gives the
same outputs without the reorder. Whether it is faster is measured, per CPU, shape and dtype, by the
shared `Chooser` (the plain convolution is kept unless packing wins), so no rule from one CPU decides
for another. The packed weight is remade when the weight changes in place (`load_state_dict`): the
cache is keyed by the tensor's version.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from vtempo.fast.choose import Chooser, shared_chooser
from vtempo.runtime import autocast_dtype, cpu_name


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


@functools.cache
def bf16_packing_available() -> bool:
    """oneDNN reorders bf16 weights only on CPUs with AVX512-BW/VL/DQ or AVX-NE-CONVERT; elsewhere the
    reorder raises, and bf16 convolutions run plain."""
    return packing_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class _PackedConv:
    """A Conv2d's forward that, for CPU inference (no autograd, no tracing) in fp32 or under bf16 autocast,
    runs oneDNN's convolution on the packed weight; anything else goes to the forward it replaced
    (`previous`, or the class's own). oneDNN packs for an input shape, and a weight packed for one batch
    size runs another at half speed, so a few shapes are kept per dtype."""

    SHAPES = 4

    def __init__(self, module: torch.nn.Conv2d, previous: Callable[[torch.Tensor], torch.Tensor] | None,
                 chooser: Chooser | None = None) -> None:
        self.module = module
        self.previous = previous
        self.chooser = chooser
        self.chosen: dict[tuple, bool] = {}  # input (shape, strides, dtype) → whether packing is faster
        self.args = (list(module.padding), list(module.stride), list(module.dilation), module.groups)
        self.key: tuple | None = None  # the weights' (version, data pointer) the packs were made from
        self.packs: dict[tuple[torch.Size, torch.dtype], tuple[torch.Tensor, torch.Tensor | None]] = {}
        # Forms met once: packing costs a reorder and a copy, so the first call of a form (all that a
        # one-clip run makes) runs plain, which reorders anyway; the outputs are the same bits.
        self.met: set[tuple] = set()

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed weights behind (oneDNN's opaque tensors have no storage
        to copy); they are packed again on first use."""
        return {**vars(self), "key": None, "packs": {}, "met": set()}

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        return self.previous(x) if self.previous is not None else type(self.module).forward(self.module, x)

    def packed_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype this call would run in packed (fp32, or bf16 under bf16 autocast, which would cast
        an fp32 input), or None where only the plain forward applies."""
        weight = self.module.weight
        if (type(x) is not torch.Tensor or x.device.type != "cpu" or x.dim() != 4 or weight.dtype != torch.float32
                or torch.is_grad_enabled() or weight.is_inference() or torch.compiler.is_compiling()
                or torch.compiler.is_exporting() or torch.jit.is_tracing()):
            return None
        dtype = autocast_dtype("cpu") or torch.float32
        packable = dtype == torch.float32 or (dtype == torch.bfloat16 and bf16_packing_available())
        return dtype if packable and x.dtype in (torch.float32, dtype) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.packed_dtype(x)
        if dtype is None:
            return self.plain(x)
        form = (x.shape, x.stride(), dtype)
        faster = self.chosen.get(form)
        if faster is None:
            faster = self.chosen[form] = self._choose(x, dtype)
        if faster and form not in self.met and (x.shape, dtype) not in self.packs:
            self.met.add(form)
            return self.plain(x)
        return self.packed(x, dtype) if faster else self.plain(x)

    def _choose(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        module = self.module
        key = (f"conv packed | {cpu_name()} | {torch.get_num_threads()} threads | {dtype} | {tuple(x.shape)} "
               f"{'channels-last' if x.is_contiguous(memory_format=torch.channels_last) else 'contiguous'} -> "
               f"{tuple(module.weight.shape)} | stride {self.args[1]} | padding {self.args[0]} | groups {self.args[3]}")
        chooser = self.chooser or shared_chooser()
        return chooser.choose(key, {"plain": lambda: self.plain(x), "packed": lambda: self.packed(x, dtype)}) == "packed"

    def packed(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        module, weight = self.module, self.module.weight
        key = tuple((p._version, p.data_ptr()) for p in (weight, module.bias) if p is not None)
        if key != self.key:
            self.key, self.packs = key, {}
        pack = self.packs.get((x.shape, dtype))
        if pack is None:
            same_dtype = [form for form in self.packs if form[1] == dtype]  # oldest first
            if len(same_dtype) >= self.SHAPES:
                del self.packs[same_dtype[0]]
            bias = None if module.bias is None else module.bias.detach().to(dtype)
            pack = self.packs[x.shape, dtype] = (torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight.detach().to(dtype).to_mkldnn(), *self.args, list(x.shape)), bias)
        return torch.ops.mkldnn._convolution_pointwise(x.to(dtype), pack[0], pack[1], *self.args, "none", [], "")


def pack_conv_weights(model: torch.nn.Module, device: torch.device, chooser: Chooser | None = None) -> int:
    """Give every zero-padded Conv2d of an inference model on CPU a `_PackedConv` forward, in place (over
    any forward another fast path gave it); returns how many."""
    if device.type != "cpu" or not packing_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Conv2d and module.padding_mode == "zeros" and isinstance(module.padding, tuple):
            module.forward = _PackedConv(module, vars(module).get("forward"), chooser)
            count += 1
    return count


def unpack_conv_weights(model: torch.nn.Module) -> None:
    """Give every packed convolution back the forward it had before (for compiling)."""
    for module in model.modules():
        packed = vars(module).get("forward")
        if isinstance(packed, _PackedConv):
            del module.forward
            if packed.previous is not None:
                module.forward = packed.previous
