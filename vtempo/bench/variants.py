"""Eager fp32 against a faster variant of the same model, clips/s, timed alternately:
`python -m vtempo.bench.variants {compile,int8} [--dtype fp32] [--rounds 5] [ARCH...]`
(default tsn-r50 tsm-r50; random weights: speed only). Reports the variant's setup time (compiling,
or calibrating and lowering), its first call, and the median over rounds of each round's speed ratio;
int8 is timed with bf16 eager beside it.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from vtempo.fast import prepare
from vtempo.models import build
from vtempo.runtime import autocast


def make_variant(kind: str, model: torch.nn.Module, clip: torch.Tensor) -> torch.nn.Module:
    if kind == "compile":
        from vtempo.fast.compile import compile_model

        return compile_model(copy.deepcopy(model))
    from vtempo.fast.quantize import quantize

    return quantize(copy.deepcopy(model), [torch.randn_like(clip) for _ in range(2)], cache=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("compile", "int8"))
    parser.add_argument("archs", nargs="*", default=["tsn-r50", "tsm-r50"])
    parser.add_argument("--dtype", default="fp32", help="autocast dtype of both arms (compile only)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    clip = torch.randn(1, args.frames, 3, args.size, args.size)
    dtype = args.dtype if args.kind == "compile" else "fp32"
    cpu = torch.device("cpu")
    for arch in args.archs:
        eager = prepare(build(arch, frames=args.frames), cpu)
        started = time.perf_counter()
        variant = make_variant(args.kind, eager, clip)
        setup = time.perf_counter() - started
        # (model, autocast dtype) per arm; int8 is timed with bf16 eager beside it
        bf16 = {"bf16": (eager, "bf16")} if args.kind == "int8" else {}
        arms = {"eager": (eager, dtype), **bf16, args.kind: (variant, dtype)}
        ratios: dict[str, list[float]] = {name: [] for name in arms if name != "eager"}
        with torch.inference_mode():
            started = time.perf_counter()
            with autocast(cpu, dtype):
                variant(clip)
            first = time.perf_counter() - started
            for model, arm_dtype in arms.values():
                with autocast(cpu, arm_dtype):
                    model(clip)
            for _ in range(args.rounds):
                times = {}
                for name, (model, arm_dtype) in arms.items():
                    with autocast(cpu, arm_dtype):
                        started = time.perf_counter()
                        model(clip)
                        times[name] = time.perf_counter() - started
                for name in ratios:
                    ratios[name].append(times["eager"] / times[name])
        for name, values in ratios.items():
            print(f"{arch} {name} against eager {arms['eager'][1]}: {statistics.median(values):.2f}× clips/s (median of "
                  f"{args.rounds} rounds: {', '.join(f'{r:.2f}' for r in values)})" +
                  (f"; setup {setup:.0f} s, first call {first:.0f} s" if name == args.kind else ""), flush=True)


if __name__ == "__main__":
    main()
