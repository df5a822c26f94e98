"""Eager fp32 against a faster variant of the same model, clips/s, timed alternately:
`python -m vtempo.bench.variants {compile,int8} [--dtype fp32] [--rounds 5] [ARCH...]`
(default tsn-r50 tsm-r50; random weights: speed only). Reports the variant's setup time (compiling,
or calibrating and lowering), its first call, and the median over rounds of each round's speed ratio.
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
        ratios = []
        with torch.inference_mode(), autocast(cpu, dtype):
            started = time.perf_counter()
            variant(clip)
            first = time.perf_counter() - started
            eager(clip)
            for _ in range(args.rounds):
                times = []
                for model in (eager, variant):
                    started = time.perf_counter()
                    model(clip)
                    times.append(time.perf_counter() - started)
                ratios.append(times[0] / times[1])
        print(f"{arch} {args.kind} {dtype}: {statistics.median(ratios):.2f}× eager clips/s (median of {args.rounds} "
              f"rounds: {', '.join(f'{r:.2f}' for r in ratios)}); setup {setup:.0f} s, first call {first:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
