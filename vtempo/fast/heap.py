"""Freed CPU buffers kept in the heap for the next model call, instead of handed back to the OS.

glibc's malloc gives each buffer over its mmap threshold (128 KiB, raised as such buffers are freed,
to 32 MiB at most) a mapping of its own, unmaps it when freed, and trims free memory off the heap's
top. A model call allocates all its activations afresh, so each call page-faults and zero-fills
them again, in the kernel, a large share of a call's CPU time at batch 8 (docs/performance.md). With
both thresholds at 1 GiB, freed activations stay in the heap, where the next call's buffers of the same
sizes reuse them; the process keeps about the peak of one call, plus free space scattered by
allocations between calls (more with a decode worker, after thousands of files).

It is a setting of the whole process, from then on, so the process's owner chooses it: the `vtempo`
program does (`vtempo.cli.run` sets VTEMPO_KEEP_FREED_BUFFERS=1 unless it is set already); in a
process of yours, `vtempo.load` and `prepare` leave malloc as it is unless VTEMPO_KEEP_FREED_BUFFERS=1
is set. Decode workers, whose buffers vary with every video, set the opposite
(`vtempo.inference.decoding`).
"""
from __future__ import annotations

import os

import torch

from vtempo.runtime import malloc_thresholds

KEEP = 1 << 30
OPT_IN = "VTEMPO_KEEP_FREED_BUFFERS"  # "1": this process keeps freed buffers


def keep_freed_buffers(model: torch.nn.Module, device: torch.device) -> int:
    """1 when this process now keeps freed buffers (it opted in with VTEMPO_KEEP_FREED_BUFFERS=1, a CPU
    model, glibc), else 0; the model is unchanged."""
    opted_in = os.environ.get(OPT_IN, "").strip() == "1"
    return int(opted_in and device.type == "cpu" and malloc_thresholds(KEEP, KEEP))
