"""Freed CPU buffers kept in the heap for the next model call, instead of handed back to the OS.

glibc's malloc gives each buffer over its mmap threshold (128 KiB, raised as such buffers are freed,
to 32 MiB at most) a mapping of its own, unmaps it when freed, and trims free memory off the heap's
top. A model call allocates all its activations afresh, so each call page-faults and zero-fills
them again: at batch 8 an R-50 call on 2 cores spent 27–34% of its CPU time in the kernel doing so,
and ran 1.6× faster without (docs/performance.md). With both thresholds at 1 GiB, freed activations
stay in the heap, where the next call's buffers of the same sizes reuse them; the process keeps about
the peak of one call, plus free space scattered by allocations between calls (with a decode worker,
up to 90 MB more after thousands of files for a small model, measured by the peak RSS of `classify`).

It is a setting of the whole process, from then on. Decode workers, whose buffers vary with every
video, set the opposite (`vtempo.inference.decoding`).
"""
from __future__ import annotations

import torch

from vtempo.runtime import malloc_thresholds

KEEP = 1 << 30


def keep_freed_buffers(model: torch.nn.Module, device: torch.device) -> int:
    """1 when this process now keeps freed buffers (a CPU model, glibc), else 0; the model is unchanged."""
    return int(device.type == "cpu" and malloc_thresholds(KEEP, KEEP))
