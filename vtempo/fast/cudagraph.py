"""Batch-1 latency on a GPU: replaying a captured CUDA graph instead of launching each kernel.

A video model at batch 1 launches a few hundred small kernels per clip, and on a fast GPU the launches,
not the arithmetic, set the latency. `GraphedModel(model)` captures the model's forward once per input
shape, dtype and autocast setting into a CUDA graph (after warm-up calls on a side stream, as CUDA
requires) and from then on copies the input into the graph's static input, replays the graph and
returns a copy of its static output. Off CUDA, or with autograd on, it simply calls the model, so a
caller can wrap any model unconditionally.

Limits: the captured shapes are fixed (a new shape captures a new graph, holding its own memory); the
model must not synchronise with the CPU inside its forward (no `.item()`, no data-dependent shapes;
vtempo's models have none in eval mode).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vtempo.runtime import autocast_dtype

WARMUP_CALLS = 3


class _Captured:
    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        self.input = example.clone()
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_CALLS):  # kernel selection and workspace allocation happen here
                model(self.input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = model(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        return self.output.clone()


class GraphedModel(nn.Module):
    """`model` with its CUDA forward replayed from captured graphs (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._graphs: dict[tuple, _Captured] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda" or torch.is_grad_enabled():
            return self.model(x)
        key = (tuple(x.shape), x.dtype, x.device, autocast_dtype("cuda"))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = _Captured(self.model, x)
        return captured(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)
