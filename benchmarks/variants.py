"""Eager fp32 against a faster variant of the same model, clips/s, timed alternately:
`python -m benchmarks.variants {compile,int8,heap,pack,fuse} [--dtype fp32] [--rounds 5] [--batch 1] [--clock wall|cpu] [ARCH...]`
(default tsn-r50 tsm-r50; random weights: speed only). Reports the variant's setup time (compiling,
or calibrating and lowering), its first call, and the median over rounds of each round's speed ratio;
int8 is timed with bf16 eager beside it. `heap` times the same model with freed buffers kept in the
heap (`fast.heap`) against every buffer over 128 KiB mapped afresh (glibc's way for buffers over its
threshold, at most 32 MiB), switching between the two before each call. `pack` times the model with
its convolutions on packed weights (`fast.pack`) against the same model without (neither with `fast.fuse`,
which needs packed weights); `fuse` the model with its blocks' ReLUs and residual adds as post-ops of
those convolutions where measured faster (`fast.fuse`, as `prepare` applies it) against the same model
without. `--clock cpu` times the process's CPU time instead of the wall clock (less
disturbed by other processes on a busy machine).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from benchmarks import as_the_program
from vtempo.fast import prepare
from vtempo.fast.compile import compile_model
from vtempo.fast.fuse import fuse_block_post_ops
from vtempo.fast.heap import keep_freed_buffers
from vtempo.fast.pack import pack_conv_weights
from vtempo.fast.quantize import quantize
from vtempo.models import build
from vtempo.runtime import autocast, malloc_thresholds, malloc_trim


def map_afresh() -> None:
    malloc_thresholds(1 << 17, 1 << 17)
    malloc_trim()


def as_before() -> None:
    pass


def keep_and_refill(model: torch.nn.Module, clip: torch.Tensor) -> None:
    """Keep freed buffers from now on, and make one call that fills the heap (after `map_afresh` it is
    empty) for the timed call to reuse."""
    keep_freed_buffers(model, torch.device("cpu"))
    model(clip)


def make_variant(kind: str, model: torch.nn.Module, clip: torch.Tensor) -> torch.nn.Module:
    if kind == "heap":
        return model
    if kind == "pack":
        packed = copy.deepcopy(model)
        pack_conv_weights(packed, torch.device("cpu"))
        return packed
    if kind == "fuse":
        fused = copy.deepcopy(model)
        fuse_block_post_ops(fused, torch.device("cpu"))
        return fused
    if kind == "compile":
        return compile_model(copy.deepcopy(model))
    return quantize(copy.deepcopy(model), [torch.randn_like(clip) for _ in range(2)], cache=False)


def main() -> None:
    as_the_program()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("compile", "int8", "heap", "pack", "fuse"))
    parser.add_argument("archs", nargs="*", default=["tsn-r50", "tsm-r50"])
    parser.add_argument("--dtype", default="fp32", help="autocast dtype of both arms (not int8)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.manual_seed(0)
    clip = torch.randn(args.batch, args.frames, 3, args.size, args.size)
    dtype = args.dtype if args.kind != "int8" else "fp32"
    cpu = torch.device("cpu")
    for arch in args.archs:
        skip = {"pack": ("pack", "fuse"), "fuse": ("fuse",)}.get(args.kind, ())
        eager = prepare(build(arch, frames=args.frames), cpu, skip=skip)
        started = time.perf_counter()
        variant = make_variant(args.kind, eager, clip)
        setup = time.perf_counter() - started
        # (model, autocast dtype, what runs before each call) per arm; int8 has bf16 eager beside it
        heap = args.kind == "heap"
        bf16 = {"bf16": (eager, "bf16", as_before)} if args.kind == "int8" else {}
        arms = {"eager": (eager, dtype, map_afresh if heap else as_before), **bf16,
                args.kind: (variant, dtype, (lambda: keep_and_refill(eager, clip)) if heap else as_before)}
        ratios: dict[str, list[float]] = {name: [] for name in arms if name != "eager"}
        with torch.inference_mode():
            started = time.perf_counter()
            with autocast(cpu, dtype):
                variant(clip)
            first = time.perf_counter() - started
            for model, arm_dtype, before in arms.values():
                with autocast(cpu, arm_dtype):
                    before()
                    model(clip)
            for _ in range(args.rounds):
                times = {}
                for name, (model, arm_dtype, before) in arms.items():
                    with autocast(cpu, arm_dtype):
                        before()
                        started = clock()
                        model(clip)
                        times[name] = clock() - started
                for name in ratios:
                    ratios[name].append(times["eager"] / times[name])
        for name, values in ratios.items():
            print(f"{arch} {name} against eager {arms['eager'][1]}: {statistics.median(values):.2f}× clips/s (median of "
                  f"{args.rounds} rounds: {', '.join(f'{r:.2f}' for r in values)})" +
                  (f"; setup {setup:.0f} s, first call {first:.0f} s" if name == args.kind else ""), flush=True)


if __name__ == "__main__":
    main()
