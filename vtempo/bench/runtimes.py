"""The same model in the runtimes a user might pick instead of vtempo's own: `vtempo profile --against
compiled,onnxruntime,openvino` times them beside vtempo's eager model, in the same rounds.

- `compiled`: vtempo's own model compiled (`vtempo.fast.compile.compile_model`, inductor with freezing).
- `onnxruntime`, `openvino`: the model exported by vtempo's own exporter (`vtempo.export`: its reference
  modules with the export forms, fp32), run by onnxruntime's CPU provider or OpenVINO's CPU plugin with
  fp32 inference precision (OpenVINO would otherwise run bf16 where the CPU has it) and the same thread
  count as torch, shaped for the profiled clip.

Each is checked against eager PyTorch on the profiled clip before it is timed: logits within
`vtempo.export.exporting.TOLERANCE` (relative to the largest), else it is refused with the error.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from vtempo.errors import UsageError, param
from vtempo.export.exporting import relative_error, write_onnx
from vtempo.export.forms import ExportForm, apply_export_forms
from vtempo.export.loading import FORMAT, OnnxModel, OpenVinoModel
from vtempo.fast.compile import compile_model

RUNTIMES = ("compiled", "onnxruntime", "openvino")
EXPORTED = ("onnxruntime", "openvino")
INSTALL_HINT = "pip install 'vtempo[runtimes]'"


def check_runtimes(names: list[str]) -> None:
    """Unknown names and runtimes that are not installed: a one-line UsageError."""
    for name in names:
        if name not in RUNTIMES:
            raise UsageError(f"unknown {param('against')} {name!r}: choose from {', '.join(RUNTIMES)}")
    for name, package in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"), ("onnxruntime", "onnx"),
                          ("openvino", "onnx")):
        if name in names:
            try:
                __import__(package)
            except ImportError:
                raise UsageError(f"{param('against', name)} needs {package}: {INSTALL_HINT}") from None


def export_onnx(model: torch.nn.Module, frames: int, size: int, folder: Path, name: str) -> Path:
    """`model` (a VideoRecognizer in its reference modules, fp32) written to `folder` as .onnx by
    vtempo's exporter (batch size free)."""
    form = ExportForm(copy.deepcopy(model).cpu().float().eval(), frames)
    apply_export_forms(form)
    path = folder / f"{name}.onnx"
    sample = torch.randn(2, frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    write_onnx(form, sample, path, {"format": FORMAT, "model": name})
    return path


def runtime_model(runtime: str, reference: torch.nn.Module, prepared: torch.nn.Module, clip: torch.Tensor,
                  folder: Path, name: str) -> torch.nn.Module:
    """`runtime`'s model of `reference` (the built model, reference modules) for clips shaped like `clip`;
    `prepared` is vtempo's prepared model (what `compiled` compiles)."""
    if runtime == "compiled":
        return compile_model(copy.deepcopy(prepared), clip.device)
    if clip.device.type != "cpu":
        raise UsageError(f"{param('against', runtime)} runs on the CPU here: pass {param('device', 'cpu')}")
    frames, size = clip.shape[1], clip.shape[-1]
    path = folder / f"{name}.onnx"
    if not path.is_file():
        export_onnx(reference, frames, size, folder, name)
    if runtime == "onnxruntime":
        return OnnxModel(path, "cpu", threads=torch.get_num_threads(), spin=False)
    return OpenVinoModel(path, tuple(clip.shape), threads=torch.get_num_threads())


def parity(model: torch.nn.Module, expected: torch.Tensor, clip: torch.Tensor) -> float:
    """max |logits - expected| / max |expected| on `clip`."""
    with torch.inference_mode():
        return relative_error(model(clip), expected)


def scratch_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="vtempo-runtimes-")
