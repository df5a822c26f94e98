"""Where eager inference spends its time, by op: `python -m benchmarks.ops [ARCH...] [--calls 5]
[--dtype fp32]` (default tsn-r50 tsm-r50; random weights, 8×224², batch 1, every fast path, torch.profiler).

Prints each op's share of the self CPU time and the share of the convolutions (oneDNN kernels, the
same that compiled code calls). Compiling can only fuse or drop what is not a convolution, so
1 / (convolution share) bounds what it can gain over this eager path.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import as_the_program
from vtempo.fast import prepare
from vtempo.models import build
from vtempo.runtime import autocast

CONVOLUTIONS = ("mkldnn::_convolution_pointwise", "aten::mkldnn_convolution", "aten::_nnpack_spatial_convolution",
                "aten::convolution_overrideable", "aten::thnn_conv2d", "aten::_slow_conv2d_forward")


def op_shares(arch: str, calls: int = 5, frames: int = 8, size: int = 224, dtype: str = "fp32") -> dict[str, float]:
    """Self CPU time per op as a fraction of the whole, for `calls` eager calls after two warm-ups, under
    autocast to `dtype`."""
    torch.manual_seed(0)
    model = prepare(build(arch, frames=frames), torch.device("cpu"))
    clip = torch.randn(1, frames, 3, size, size)
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
        for _ in range(2):
            model(clip)
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            for _ in range(calls):
                model(clip)
    times = {event.key: event.self_cpu_time_total for event in trace.key_averages()}
    total = sum(times.values())
    return {key: value / total for key, value in sorted(times.items(), key=lambda item: -item[1])}


def main() -> None:
    as_the_program()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("archs", nargs="*", default=["tsn-r50", "tsm-r50"])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--dtype", default="fp32", help="autocast dtype: fp32 or bf16")
    args = parser.parse_args()
    for arch in args.archs:
        shares = op_shares(arch, args.calls, dtype=args.dtype)
        convolutions = sum(share for key, share in shares.items() if key in CONVOLUTIONS)
        top = ", ".join(f"{key} {100 * share:.1f}%" for key, share in list(shares.items())[: args.top])
        print(f"{arch}: convolutions {100 * convolutions:.1f}% of the time (compiling gains at most "
              f"{1 / convolutions:.2f}×); {top}", flush=True)


if __name__ == "__main__":
    main()
