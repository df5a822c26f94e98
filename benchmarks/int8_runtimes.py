"""vtempo's int8 model against onnxruntime's and OpenVINO's int8 of the same weights, clips/s, timed in turn
in each round beside eager fp32: `python -m benchmarks.int8_runtimes [--rounds 9] [--threads 2] [ARCH...]`
(default tsn-r50 tsm-r50; random weights: speed only).

All three are calibrated on the same clips, those `vtempo profile --dtype int8` calibrates on (rendered
synthetic clips, preprocessed as the model tests):
- vtempo: `vtempo.fast.quantize.quantize` (PT2E, lowered to oneDNN's int8 kernels, compiled), as
  `classify --dtype int8` runs it.
- onnxruntime: vtempo's fp32 export quantized by onnxruntime's own static quantizer (QDQ, uint8
  activations, int8 weights per channel, min-max ranges), run by its CPU provider.
- OpenVINO: that same quantized file, which OpenVINO's CPU plugin runs with int8 kernels.
A runtime that cannot run the model (OpenVINO fails on TCM's quantized file and crashes on STC's) is
reported as refused. Each prints its median ms a call, its clips/s as a multiple of vtempo int8's, and its logits' distance
from eager fp32's (relative to the largest), so that a faster model that quantized away more is seen.
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import as_the_program
from vtempo.bench.profile import calibration_batches
from vtempo.bench.runtimes import export_onnx
from vtempo.export.exporting import relative_error
from vtempo.export.loading import OnnxModel, OpenVinoModel
from vtempo.fast import prepare
from vtempo.fast.quantize import quantize
from vtempo.models import build


def quantize_onnx(fp32: Path, batches: list[torch.Tensor], out: Path) -> Path:
    """`fp32` quantized by onnxruntime's static quantizer, calibrated on `batches`, written to `out`."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime's own preparation (its graph optimizer: shared weights given to each Conv as its own
    # initializer, which its quantizer needs to quantize a bias)
    prepared = out.with_name(f"{out.stem}-prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    fp32 = prepared
    input_name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(batches)

        def get_next(self):
            batch = next(self.left, None)
            return None if batch is None else {input_name: batch.numpy().astype(np.float32)}

    logging.getLogger().setLevel(logging.ERROR)  # its per-tensor notes
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def openvino_model(path: Path, shape: tuple[int, ...], threads: int) -> OpenVinoModel:
    """OpenVINO's model of `path`, compiled in a child process first: OpenVINO 2026.4 crashes compiling
    some quantized files (STC's), which would end this process."""
    probe = (f"from vtempo.export.loading import OpenVinoModel; OpenVinoModel({str(path)!r}, {shape!r}, "
             f"threads={threads})")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"OpenVINO's compiler ended with exit code {done.returncode}")
    return OpenVinoModel(path, shape, threads=threads)


def main() -> None:
    as_the_program()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("archs", nargs="*", default=["tsn-r50", "tsm-r50"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    for arch in args.archs:
        torch.manual_seed(0)
        reference = build(arch, frames=args.frames).eval()
        eager = prepare(copy.deepcopy(reference), cpu)
        batches, _ = calibration_batches(None, args.frames, args.size, 1)
        clip = batches[0]
        with tempfile.TemporaryDirectory(prefix="vtempo-int8-") as scratch:
            fp32_file = export_onnx(reference, args.frames, args.size, Path(scratch), arch)
            int8_file = quantize_onnx(fp32_file, batches, Path(scratch) / f"{arch}-int8.onnx")
            makers = {"eager fp32": lambda: eager,
                      "vtempo int8": lambda: quantize(copy.deepcopy(eager), batches, cache=False),
                      "onnxruntime int8": lambda: OnnxModel(int8_file, "cpu", threads=args.threads, spin=False),
                      "OpenVINO int8": lambda: openvino_model(int8_file, tuple(clip.shape), args.threads)}
            arms = {}
            for name, make in makers.items():
                try:
                    arms[name] = make()
                except Exception as error:  # a runtime that cannot run this model is reported, not timed
                    print(f"{arch} {name}: refused ({str(error).splitlines()[0]})", flush=True)
            times: dict[str, list[float]] = {name: [] for name in arms}
            with torch.inference_mode():
                expected = eager(clip)
                errors = {name: relative_error(model(clip), expected) for name, model in arms.items()}
                for _ in range(args.rounds):
                    for name, model in arms.items():
                        started = time.perf_counter()
                        model(clip)
                        times[name].append(time.perf_counter() - started)
        ours = times["vtempo int8"]
        for name, values in times.items():
            ratio = statistics.median(o / t for o, t in zip(ours, values))
            print(f"{arch} {name}: {1e3 * statistics.median(values):.0f} ms, {ratio:.2f}× vtempo int8's clips/s, "
                  f"logits {errors[name]:.1e} from eager fp32's", flush=True)


if __name__ == "__main__":
    main()
