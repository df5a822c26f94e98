"""Compiled inference: `compile_model(model)` runs a prepared model through torch.compile (inductor).

On CPU with freezing: inductor treats the weights as constants, folds what depends only on them (BN
folding if it were still there, autocast's weight casts, oneDNN's weight packing) and fuses the
elementwise work around the convolutions into C++ kernels; TSM's shift stays one op that runs the
eager copy (`vtempo.fast.shift.compiled_shift`). The compiled C++ kernels go to inductor's cache under
vtempo's cache folder (`<vtempo home>/inductor`, unless TORCHINDUCTOR_CACHE_DIR is set), so a later
process does not compile them again. Whole graphs are not cached: inductor (torch 2.14) cannot store
graphs holding packed oneDNN weights, so each process lowers the graph again (a few seconds for an
R-50). Measured compile times and speeds: docs/performance.md.

Compilation happens at the first call for each input shape and dtype, so `compile_pays` tells a caller
whether a run is long enough to repay it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from vtempo.fast.casts import CastOnce
from vtempo.fast.fuse import unfuse_blocks
from vtempo.fast.pack import unpack_conv_weights


def cache_folder() -> Path:
    """Where inductor keeps its compiled graphs and kernels: $TORCHINDUCTOR_CACHE_DIR, else
    `<vtempo home>/inductor`."""
    from vtempo.paths import home

    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or home() / "inductor")


def use_cache_folder() -> None:
    folder = cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # inductor reads it when it first needs the folder


def drop_forward_caches(model: nn.Module) -> None:
    """The cast cache (`vtempo.fast.casts`), the packed weights (`vtempo.fast.pack`) and the fused blocks
    (`vtempo.fast.fuse`) keep Python state that compilation cannot trace; freezing makes the same casts
    and packs once, as constants."""
    unfuse_blocks(model)
    unpack_conv_weights(model)
    for module in model.modules():
        if isinstance(vars(module).get("forward"), CastOnce):
            del module.forward


def compile_model(model: nn.Module, device: torch.device | None = None, *, dynamic: bool | None = False) -> nn.Module:
    """The prepared `model` (`vtempo.fast.prepare`), compiled for inference on `device` (default: where
    its parameters are). Returns the compiled module; call it under `torch.inference_mode()` (and
    `runtime.autocast` for bf16) like the model. Compilation is lazy: the first call of each input shape
    and dtype compiles (or loads from the cache). `dynamic=False` compiles each shape for itself, which
    gives the fastest kernels for the fixed clip shape inference uses."""
    device = device or next(model.parameters()).device
    quiet_torch_notices()
    use_cache_folder()
    drop_forward_caches(model)
    compiled = torch.compile(model, dynamic=dynamic)
    return _Freezing(compiled) if device.type == "cpu" else compiled


class _Freezing(nn.Module):
    """Calls a compiled module with inductor's freezing on, so the graphs it compiles (lazily, at a call)
    take the weights as constants and pack them. `torch.compile(options={"freezing": True})` leaves them
    as graph inputs in torch 2.14 (the convolutions unpacked), and a global setting would also reach
    graphs that must not be frozen (int8's, `vtempo.fast.quantize`). Other attributes are the model's."""

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, *args, **kwargs):
        import torch._inductor.config

        with torch._inductor.config.patch(freezing=True):
            return self.compiled(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.compiled, name)


def compile_pays(clips: int, eager_seconds_per_clip: float, compile_seconds: float, speedup: float) -> bool:
    """Whether compiling saves time over `clips` clips: the time saved per clip, eager × (1 − 1/speedup),
    times the clips, exceeds the compile time (small when the cache already holds the model)."""
    if speedup <= 1:
        return False
    return clips * eager_seconds_per_clip * (1 - 1 / speedup) > compile_seconds


# What `AutoCompile` assumes, conservatively (the measured compile times and gains: docs/performance.md,
# "Compiled inference"): a run must be long enough to repay a minute of compiling at a 1.1x gain.
ASSUMED_COMPILE_SECONDS = 60.0
ASSUMED_SPEEDUP = 1.1


class AutoCompile(nn.Module):
    """The prepared `model`, run eagerly on its first call, which is timed; then compiled when
    `compile_pays` says the `clips` still to come repay it (`ASSUMED_COMPILE_SECONDS`,
    `ASSUMED_SPEEDUP`). `compiled` (None until the first call) and `reason` say what it chose and why."""

    def __init__(self, model: nn.Module, clips: int):
        super().__init__()
        self.model, self.clips = model, clips
        self.compiled: bool | None = None
        self.reason = "not run yet"

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            return vars(self)["compiled_model"](clips) if self.compiled else self.model(clips)
        import time

        start = time.perf_counter()
        logits = self.model(clips)
        per_clip = (time.perf_counter() - start) / max(1, len(clips))
        left = max(0, self.clips - len(clips))
        self.compiled = compile_pays(left, per_clip, ASSUMED_COMPILE_SECONDS, ASSUMED_SPEEDUP)
        verdict = "repay" if self.compiled else "would not repay"
        self.reason = (f"{left} clip(s) left at {per_clip:.3g} s each (eager) {verdict} ~{ASSUMED_COMPILE_SECONDS:.0f} s "
                       f"of compiling at an assumed {ASSUMED_SPEEDUP}x")
        if self.compiled:  # kept outside the module's children: it holds the same weights
            vars(self)["compiled_model"] = compile_model(self.model)
        return logits


class _Drop(logging.Filter):
    """Drops the log records whose message (before its arguments) holds `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


# Notices torch logs while it compiles that a user cannot act on: torchao registers its Enums the way
# torch now deprecates (at torchao's import), and a CUDA_HOME without a GPU is named on a CPU-only host.
_NOTICES = {"torch.utils._pytree": "is an Enum subclass and is now natively supported",
            "torch.utils.cpp_extension": "No CUDA runtime is found"}


def quiet_torch_notices() -> None:
    """Keep torch's `_NOTICES` off stderr (its other warnings stay)."""
    for name, text in _NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.text == text for f in logger.filters):
            logger.addFilter(_Drop(text))
