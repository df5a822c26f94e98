"""Autocast's weight casts made once per weight version, for inference."""
from __future__ import annotations

import torch

from vtempo.runtime import autocast_dtype


class CastOnce:
    """A conv's or linear's forward that, under autocast without autograd, uses weights cast to the
    autocast dtype once instead of on every call. Autocast would make exactly these casts (the logits
    are bit-identical), but remaking them reads and writes every weight each forward (~150 MB per
    ResNet-50 clip). A weight changed in place (`load_state_dict`) is
    cast again: the cache is keyed by the tensor's version."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.casts: dict[torch.dtype, tuple] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        dtype = autocast_dtype(x.device.type)
        # Autograd needs the real parameters; inference tensors (made under inference_mode) keep no version.
        if dtype is None or torch.is_grad_enabled() or module.weight.is_inference():
            return type(module).forward(module, x)
        key = tuple((p._version, p.data_ptr()) for p in (module.weight, module.bias) if p is not None)
        cached = self.casts.get(dtype)
        if cached is None or cached[0] != key:
            bias = None if module.bias is None else module.bias.to(dtype)
            cached = self.casts[dtype] = (key, module.weight.to(dtype), bias)
        _, weight, bias = cached
        if isinstance(module, torch.nn.Linear):
            return torch.nn.functional.linear(x, weight, bias)
        return module._conv_forward(x, weight, bias)


def cache_autocast_casts(model: torch.nn.Module, device: torch.device | None = None) -> int:
    """Give every Conv2d, Conv3d and Linear of an inference model a `CastOnce` forward, in place; returns
    how many. (`device` is unused: the signature of every fast path.)"""
    count = 0
    for module in model.modules():
        if type(module) in (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear) and "forward" not in vars(module):
            module.forward = CastOnce(module)
            count += 1
    return count
