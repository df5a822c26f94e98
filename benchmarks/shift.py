"""TSM against TSN, with each way of TSM's shift forced and with the measured choice:
`python -m benchmarks.shift [--size 224] [--frames 8] [--rounds 9] [--dtype fp32,bf16]`.

All variants are built first and then timed round-robin (one call each per round, each round starting
one variant later), and the ratios are taken per round before the median, so a change of machine load
hits every variant alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks import as_the_program
from vtempo.fast import prepare, swap_in
from vtempo.fast.choose import Chooser
from vtempo.fast.fuse import fuse_block_post_ops
from vtempo.fast.shift import WAYS
from vtempo.models import build
from vtempo.runtime import autocast


class Fixed(Chooser):
    """A chooser that always answers `way`."""

    def __init__(self, way: str) -> None:
        super().__init__(None)
        self.way = way

    def choose(self, key, candidates) -> str:
        return self.way


def variants(frames: int) -> dict[str, torch.nn.Module]:
    cpu = torch.device("cpu")
    models = {"tsn": prepare(build("tsn-r50", frames=frames), cpu)}
    for way in (*WAYS, "chosen"):
        model = prepare(build("tsm-r50", frames=frames), cpu, skip=("shift", "fuse"))
        swap_in(model, "shift", cpu, chooser=None if way == "chosen" else Fixed(way))
        fuse_block_post_ops(model, cpu)  # after the swap: a fused block finds the shift's convolution
        models[f"tsm/{way}"] = model
    return models


def main() -> None:
    as_the_program()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--dtype", default="fp32,bf16")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = variants(args.frames)
    clip = torch.randn(1, args.frames, 3, args.size, args.size)
    for dtype in args.dtype.split(","):
        with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
            for model in models.values():  # warm-up; the chosen variant measures its ways here
                model(clip)
            ratios: dict[str, list[float]] = {name: [] for name in models}
            names = list(models)
            for round_index in range(args.rounds):
                times = {}
                # each round starts one variant later: none always runs right after the same other one
                order = names[round_index % len(names):] + names[: round_index % len(names)]
                for name, model in ((name, models[name]) for name in order):
                    started = time.perf_counter()
                    model(clip)
                    times[name] = time.perf_counter() - started
                for name in models:
                    ratios[name].append(times["tsn"] / times[name])
        print(f"{dtype}: clips/s relative to TSN (median of {args.rounds} rounds; {torch.get_num_threads()} threads)")
        for name, values in ratios.items():
            print(f"  {name:12s} {statistics.median(values):.3f}")


if __name__ == "__main__":
    main()
