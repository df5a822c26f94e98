"""Device, dtype, memory-format and thread choices shared by every command that runs a model.

Defaults: fp32 for exactness, with bf16 one flag away (`--dtype bf16`: autocast, weights stay fp32);
channels-last weights, because oneDNN (CPU) and cuDNN (GPU) run convolutions in NHWC without reorders
(`vtempo profile --no-channels-last` compares; docs/performance.md); torch's own thread count (one per
physical core).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform

import torch

from vtempo.errors import UsageError, param

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# int8 is a quantized model (vtempo.fast.quantize), not autocast: it runs with autocast off, like fp32
QUANTIZED = ("int8",)
AUTOCAST_DEVICES = ("cpu", "cuda")  # elsewhere (the meta device that MAC counting uses) autocast is absent
CHANNELS_LAST = True


def check_dtype(name: str, parameter: str = "dtype") -> str:
    """The dtype name itself, or a one-line UsageError naming the choices (and `parameter`, the name
    the dtype came in by)."""
    if name not in DTYPES and name not in QUANTIZED:
        raise UsageError(f"unknown {param(parameter)} {name!r}: choose one of {', '.join((*DTYPES, *QUANTIZED))}")
    return name


def pick_device(name: str = "auto") -> torch.device:
    """`auto` → cuda when available, else cpu; `cpu`, `cuda`, `cuda:1`, … as given, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown {param('device', name)}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{param('device', name)}: no CUDA device is available here (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"{param('device', name)}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"{param('device', name)}: only cpu and cuda are supported")
    return device


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


def autocast(device: torch.device, dtype: str = "fp32"):
    """Mixed precision for bf16/fp16; a no-op for fp32 and for int8 (the quantized model's own kernels)."""
    if check_dtype(dtype) == "fp32" or dtype in QUANTIZED:
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
            raise UsageError(f"{param('threads')} must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_workers(files: int | None = None, device: torch.device | None = None) -> int:
    """Decode workers for a model on `device` (default the CPU), at most 8 and never more than there are
    files. A model on the CPU runs torch's threads, one per physical core, and needs them all: the
    workers get the cores those threads leave free (hyperthreads), and where they leave none, decoding
    runs in the model's process between batches. A worker there would decode only while the model
    waits for it, at the priority below the model's, and its frames would cross between processes on
    top (docs/performance.md). A model on a GPU leaves the CPU to them: half the cores."""
    cores = available_cores()
    free = cores // 2 if device is not None and device.type != "cpu" else cores - torch.get_num_threads()
    workers = max(0, min(8, free))
    return workers if files is None else max(0, min(workers, files))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def malloc_thresholds(mmap: int, trim: int) -> bool:
    """Set glibc malloc's M_MMAP_THRESHOLD (buffers from this size up get a mapping of their own,
    unmapped when freed) and M_TRIM_THRESHOLD (free memory kept at the heap's top) for this process.
    False where malloc is not glibc's; fixing the thresholds turns off glibc's own adjustment of them."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(-3, mmap)) and bool(libc.mallopt(-1, trim))


def malloc_trim() -> None:
    """Hand the free memory of glibc's heap back to the OS (elsewhere nothing happens)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
