"""Clips per second of exported models in onnxruntime against the same models in eager PyTorch (CPU).

    python -m benchmarks.export [MODEL ...] [--batch 8] [--rounds 15] [--threads 1]

Each model is exported to ONNX, then three runners score the same random batch in alternation, round
after round, all with the same thread count: the eager model as `vtempo classify` runs it (BatchNorm
folded, channels-last, vtempo.fast's paths, fp32), the eager model in its reference form (what is
exported), and the onnxruntime session. The table gives clips/s from the median time of each.
Alternating keeps a shared, noisy machine's slow spells from falling on one side only.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import as_the_program
from vtempo.export import export_model, load_exported
from vtempo.export.exporting import reference_model
from vtempo.inference.recognizer import load

DEMOS = ["tsn-demo", "tsm-demo", "tam-demo", "tcm-demo", "stc-demo", "stc-light-demo", "tefe-demo", "tsi-demo"]


def measure(name: str, folder: Path, batch: int, rounds: int) -> dict[str, float]:
    rec = load(name, device="cpu")
    path = export_model(rec, "onnx", folder / f"{name}.onnx").path
    onnx_model, meta = load_exported(path)
    reference = reference_model(rec)
    size = meta["input_size"]
    clips = torch.randn(batch, meta["frames"], 3, size, size, generator=torch.Generator().manual_seed(0))
    runners = {"eager": rec.model, "reference": reference, "onnxruntime": onnx_model}
    times: dict[str, list[float]] = {label: [] for label in runners}
    with torch.inference_mode():
        for model in runners.values():  # warm-up: first-call allocations and kernel choices
            model(clips)
        for _ in range(rounds):
            for label, model in runners.items():
                began = time.perf_counter()
                model(clips)
                times[label].append(time.perf_counter() - began)
    return {label: batch / statistics.median(values) for label, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    as_the_program()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEMOS)
    parser.add_argument("--batch", type=int, default=8, help="clips per call")
    parser.add_argument("--rounds", type=int, default=15, help="timed calls of each runtime, alternating")
    parser.add_argument("--threads", type=int, default=1, help="threads of torch and of onnxruntime")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.rounds} alternating rounds")
    print("| clips/s | eager PyTorch (as classify runs it) | eager, reference form | onnxruntime | onnxruntime / eager |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            rates = measure(name, Path(folder), args.batch, args.rounds)
            print(f"| {name} | {rates['eager']:.1f} | {rates['reference']:.1f} | {rates['onnxruntime']:.1f} | "
                  f"{rates['onnxruntime'] / rates['eager']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
