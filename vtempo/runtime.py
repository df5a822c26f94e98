"""Device, dtype and memory-format choices shared by every command that runs a model."""
from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare(model: torch.nn.Module, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
    """Move to the device in eval mode; weights stay fp32 (reduced precision comes from autocast)."""
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def autocast(device: torch.device, dtype: str = "fp32"):
    """Mixed precision for bf16/fp16; a no-op for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])
