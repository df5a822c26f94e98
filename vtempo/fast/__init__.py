"""Inference-only fast paths, swapped into a model by `prepare`.

The models (`vtempo.models`) hold the papers' reference computations. Each fast path here is a function
`(model, device) -> count` that replaces or changes modules, in place, by inference-only equivalents
that compute the same function up to rounding, and returns how many it changed; none can be trained.
They find what they replace by the models' one interface for it, `TemporalModule.output_conv()` (the
conv whose output a wrapper returns unchanged), and by the modules' own types; a model needs no flag or
branch for them. A paper's own temporal module names the stand-ins written for it in its class
(`TemporalModule.fast_swaps`, in the paper's file), each an entry of `STAND_INS` here, kept in this
package beside the other fast paths. `FAST_PATHS` lists them all in the order `prepare` applies them.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from vtempo.fast.casts import cache_autocast_casts
from vtempo.fast.fold import fold_batch_norms
from vtempo.fast.fuse import fuse_block_post_ops
from vtempo.fast.heap import keep_freed_buffers
from vtempo.fast.pack import pack_conv_weights
from vtempo.fast.shift import shifted_pointwise_conv
from vtempo.models.base import TemporalModule
from vtempo.runtime import CHANNELS_LAST

FastPath = Callable[[torch.nn.Module, torch.device], int]
# (a paper's temporal module, the device) -> the inference module that replaces it, or None to keep it
StandIn = Callable[..., torch.nn.Module | None]

# by the names the modules' classes list in `TemporalModule.fast_swaps`
STAND_INS: dict[str, StandIn] = {
    "shift": shifted_pointwise_conv,  # TSM's shift + 1×1 conv without the copy where that is faster
}


def swap_in(model: torch.nn.Module, name: str, device: torch.device, **options: Any) -> int:
    """Replace, in place, every module whose own class lists `name` in its `fast_swaps` by the stand-in
    `STAND_INS[name](module, device, **options)` gives for it; returns how many were replaced."""
    targets = [(path, module) for path, module in model.named_modules()
               if isinstance(module, TemporalModule) and name in vars(type(module)).get("fast_swaps", ())]
    swapped = 0
    for path, module in targets:
        stand_in = STAND_INS[name](module, device, **options)
        if stand_in is not None:
            parent, _, attribute = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attribute, stand_in)
            swapped += 1
    return swapped


def _swapping(name: str) -> FastPath:
    return lambda model, device: swap_in(model, name, device)


FAST_PATHS: dict[str, FastPath] = {
    "fold": fold_batch_norms,  # BatchNorm after a conv merged into it (the model's BNs are gone)
    **{name: _swapping(name) for name in STAND_INS},  # the papers' modules' stand-ins
    "casts": cache_autocast_casts,  # autocast's weight casts made once per weight version
    "pack": pack_conv_weights,  # CPU convolutions (fp32, bf16 autocast) on weights packed once in oneDNN's layout
    "fuse": fuse_block_post_ops,  # a block's ReLUs and residual add as post-ops of its packed convolutions
    "heap": keep_freed_buffers,  # freed activations kept for the next call (CPU; a process that opted in)
}


def prepare(model: torch.nn.Module, device: torch.device, channels_last: bool | None = None,
            skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Ready a model for inference, in place: eval mode on the device, weights in fp32 in the memory
    layout (channels-last unless `channels_last=False`; default `runtime.CHANNELS_LAST`), then every
    fast path of `FAST_PATHS` but those named in `skip`. Reduced precision comes from autocast.

    Inputs need no conversion: the first convolution's channels-last weights make every later
    activation channels-last. The counts of what each fast path changed are in `model.fast_paths`.
    """
    unknown = set(skip) - set(FAST_PATHS)
    if unknown:
        raise ValueError(f"unknown fast path(s) {', '.join(sorted(unknown))}: choose from {', '.join(FAST_PATHS)}")
    channels_last = CHANNELS_LAST if channels_last is None else channels_last
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).eval()
    # Only 4-D tensors (Conv2d weights) take this layout; `model.to(memory_format=)` would fail on the
    # 5-D weights of a Conv3d.
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=layout)
    applied = {name: path(model, device) for name, path in FAST_PATHS.items() if name not in skip}
    model.fast_paths = {**getattr(model, "fast_paths", {}), **applied}
    return model
