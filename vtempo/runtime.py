"""Device, dtype, memory-format and thread choices shared by every command that runs a model.

Defaults: fp32 for exactness, with bf16 one flag away (`--dtype bf16`: autocast, weights stay fp32);
channels-last weights, because oneDNN (CPU) and cuDNN (GPU) run convolutions in NHWC without reorders:
on this project's 2-core AVX512-BF16 test machine, ResNet-50 (1 frame, 224², 1 thread, interleaved)
took the same time in fp32 either way and 14 % less in bf16 with channels-last; torch's own thread
count (one per physical core). `vtempo profile` measures all of these; see the README's Performance.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCAST_DEVICES = ("cpu", "cuda")  # elsewhere (the meta device that MAC counting uses) autocast is absent
CHANNELS_LAST = True


def check_dtype(name: str) -> str:
    """The dtype name itself, or a one-line UsageError naming the choices."""
    if name not in DTYPES:
        raise UsageError(f"unknown --dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return name


def pick_device(name: str = "auto") -> torch.device:
    """`auto` → cuda when available, else cpu; `cpu`, `cuda`, `cuda:1`, … as given, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown --device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return device


def prepare(model: torch.nn.Module, device: torch.device, channels_last: bool | None = None) -> torch.nn.Module:
    """Ready a model for inference, in place: eval mode on the device, every BatchNorm that follows a
    conv folded into it (`models.fuse`; the model can no longer be trained), weights in fp32 (reduced
    precision comes from autocast, with each weight's cast made once: `cache_autocast_casts`).

    channels_last=None takes the default (`CHANNELS_LAST`). Inputs need no conversion: the first
    convolution's channels-last weights make every later activation channels-last.
    """
    from .models.fuse import fold_batch_norms

    channels_last = CHANNELS_LAST if channels_last is None else channels_last
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).eval()
    fold_batch_norms(model)
    # Only 4-D tensors (Conv2d weights) take this layout; `model.to(memory_format=)` would fail on the
    # 5-D weights of a Conv3d.
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=layout)
    cache_autocast_casts(model)
    return model


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast gives `device_type`'s matmuls and convs right now, or None when it is off
    (always None on devices without autocast, such as meta)."""
    if device_type not in AUTOCAST_DEVICES:
        return None
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class _CastOnce:
    """A conv's or linear's forward that, under autocast without autograd, uses weights cast to the
    autocast dtype once instead of on every call. Autocast would make exactly these casts (the logits
    are bit-identical), but remaking them reads and writes every weight each forward: ~150 MB per
    ResNet-50 clip, 5-10% of its bf16 time on CPU. A weight changed in place (`load_state_dict`) is
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


def cache_autocast_casts(model: torch.nn.Module) -> None:
    """Give every Conv2d, Conv3d and Linear of an inference model a `_CastOnce` forward, in place."""
    for module in model.modules():
        if type(module) in (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear) and "forward" not in vars(module):
            module.forward = _CastOnce(module)


def autocast(device: torch.device, dtype: str = "fp32"):
    """Mixed precision for bf16/fp16; a no-op for fp32."""
    if check_dtype(dtype) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def full_precision(device: torch.device):
    """Autocast off inside (for numerically sensitive parts of a model run under `autocast`); a no-op on
    devices without autocast, such as the meta device that MAC counting uses."""
    if device.type in AUTOCAST_DEVICES:
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None keeps torch's default); returns the count in use."""
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
