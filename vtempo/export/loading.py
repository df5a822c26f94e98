"""Running an exported model: `load_exported(path) -> (model, metadata)`.

The model is called like a vtempo model: `model(clips)` takes float (N, T, 3, S, S) clips, preprocessed
as the metadata says, and returns logits (N, classes); `model.features(clips)` returns the per-frame
pooled features (N, T, C). An .onnx file runs in onnxruntime (`OnnxModel`), or in OpenVINO
(`OpenVinoModel`, logits only), a .ts file in torch (TorchScript). The metadata is the dict `vtempo.export.exporting.metadata` wrote.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from vtempo.errors import UsageError, VtempoError, param
from vtempo.protocol import Protocol
from vtempo.video.transforms import Preprocess
from vtempo.weights.metadata import checked_metadata

FORMAT = "vtempo-export"
EXPORTED_SUFFIXES = (".onnx", ".ts")  # files written by `vtempo export`
TORCHSCRIPT_METADATA = "vtempo.json"  # the `_extra_files` entry
INSTALL_HINT = "pip install 'vtempo[export]'"


def missing_extra(package: str) -> UsageError:
    return UsageError(f"{package} is not installed: {INSTALL_HINT} (installs onnx and onnxruntime)")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise missing_extra("onnxruntime") from None
    return onnxruntime


class OnnxModel(torch.nn.Module):
    """An exported .onnx file run by onnxruntime, called like the model it was exported from."""

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", threads: int | None = None,
                 spin: bool = True):
        super().__init__()
        ort = import_onnxruntime()
        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UsageError(f"{path}: this onnxruntime has no CUDA support (install onnxruntime-gpu); use "
                                 f"{param('device', 'cpu')}")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        # as many threads as torch uses, so the two compare on equal terms and share a machine alike
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        if not spin:  # its threads sleep between calls instead of spinning on the cores other work needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise VtempoError(f"{path}: not a readable ONNX model ({_first_line(error)})") from None
        self.path = Path(path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def _run(self, outputs: list[str], clips: torch.Tensor) -> list[torch.Tensor]:
        missing = [name for name in outputs if name not in self.output_names]
        if missing:
            raise VtempoError(f"{self.path}: has no {missing[0]!r} output")
        array = clips.detach().to("cpu", torch.float32).contiguous().numpy()
        return [torch.from_numpy(value) for value in self.session.run(outputs, {self.input_name: array})]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self._run(["logits"], clips)[0]

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        return self._run(["features"], clips)[0]

    def logits_and_features(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self._run(["logits", "features"], clips)
        return logits, features

    def extra_repr(self) -> str:
        return str(self.path)


class OpenVinoModel(torch.nn.Module):
    """An .onnx file compiled by OpenVINO for the CPU, fp32, called like the model: clips → logits.

    OpenVINO runs a model compiled for one input shape faster than one compiled for any batch size
    (its kernels and memory are planned for the shape), so the model is compiled for each input shape
    it meets, the last `SHAPES` kept; `shape` compiles the first one now."""

    SHAPES = 4

    def __init__(self, path: Path, shape: tuple[int, ...] | None = None, threads: int | None = None):
        super().__init__()
        import openvino as ov

        self.path, self.core = Path(path), ov.Core()
        try:
            self.model = self.core.read_model(str(path))
        except Exception as error:  # noqa: BLE001 - OpenVINO raises its own types
            raise VtempoError(f"{path}: OpenVINO cannot read it ({_first_line(error)[:200]})") from None
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        self.requests: dict[tuple[int, ...], Any] = {}  # input shape → (infer request, logits output)
        if shape is not None:
            self._request(tuple(shape))

    def _request(self, shape: tuple[int, ...]):
        if shape in self.requests:
            self.requests[shape] = self.requests.pop(shape)  # most recently used last
            return self.requests[shape]
        model = self.model.clone()
        model.reshape({model.input(0).get_any_name(): list(shape)})
        try:
            compiled = self.core.compile_model(model, "CPU", self.config)
        except Exception as error:  # noqa: BLE001 - OpenVINO raises its own types
            raise VtempoError(f"{self.path}: OpenVINO cannot compile it for {list(shape)} "
                              f"({_first_line(error)[:200]})") from None
        if len(self.requests) >= self.SHAPES:
            self.requests.pop(next(iter(self.requests)))
        self.requests[shape] = compiled.create_infer_request(), compiled.output("logits")
        return self.requests[shape]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        array = clips.detach().to("cpu", torch.float32).contiguous().numpy()
        request, logits = self._request(tuple(array.shape))
        return torch.from_numpy(request.infer({0: array})[logits].copy())


def load_exported(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(callable model, metadata) for a file written by `vtempo export` (.onnx or .ts)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        model = OnnxModel(path, device)
        raw = model.session.get_modelmeta().custom_metadata_map
        try:
            meta = {key: json.loads(value) for key, value in raw.items()}
        except json.JSONDecodeError:
            meta = {}
    elif suffix == ".ts":
        extra = {TORCHSCRIPT_METADATA: ""}
        try:
            with warnings.catch_warnings():  # torch.jit.load announces its deprecation on every call
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location=torch.device(device), _extra_files=extra)
        except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
            raise VtempoError(f"{path}: not a readable TorchScript file ({_first_line(error)})") from None
        try:
            meta = json.loads(extra[TORCHSCRIPT_METADATA] or "{}")
        except json.JSONDecodeError:
            meta = {}
        model.eval()
    else:
        raise UsageError(f"{path}: an exported model ends in .onnx or .ts")
    if meta.get("format") != FORMAT:
        raise VtempoError(f"{path}: not exported by vtempo (its metadata has no {FORMAT!r} description)")
    return model, checked_export_metadata(meta, path, model)


REQUIRED = ("labels", "frames", "input_size", "resize", "mean", "std")


def checked_export_metadata(meta: dict[str, Any], path: Path, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """`meta` with the fields vtempo reads checked as a checkpoint's metadata is (present, bounded,
    well-formed) and, for an ONNX model, against the shapes of its graph: the clip length and crop
    of its input, the class count of its logits."""
    missing = [key for key in REQUIRED if meta.get(key) is None]
    if missing:
        raise VtempoError(f"{path}: its metadata lacks {', '.join(missing)}; export the model again")
    fields = {key: meta[key] for key in ("frames", "input_size", "resize", "mean", "std", "protocol") if key in meta}
    fields["classes"] = meta["labels"]
    inputs, classes = _graph_shapes(model)
    fields["num_classes"] = classes
    checked = checked_metadata(fields, str(path))
    for name, expected in (("frames", inputs[1]), ("input_size", inputs[3]), ("input_size", inputs[4])):
        if isinstance(expected, int) and checked[name] != expected:
            raise VtempoError(f"{path}: its metadata says {name} {checked[name]}, its graph takes {expected}")
    checked.pop("num_classes", None)
    return {**meta, **checked, "labels": checked.pop("classes")}


def _graph_shapes(model: torch.nn.Module | None) -> tuple[list, int | None]:
    """(the input's dimensions, the logits' class count) where the ONNX graph fixes them."""
    if not isinstance(model, OnnxModel):
        return [None] * 5, None
    inputs = list(model.session.get_inputs()[0].shape)
    inputs = inputs if len(inputs) == 5 else [None] * 5
    logits = next((output.shape for output in model.session.get_outputs() if output.name == "logits"), None)
    classes = logits[-1] if logits and isinstance(logits[-1], int) else None
    return inputs, classes


def protocol_of(meta: dict[str, Any]) -> Protocol:
    raw = meta.get("protocol") or {}
    return Protocol(**{k: raw[k] for k in ("sampling", "clips", "crop", "average", "stride") if raw.get(k) is not None})


def preprocess_of(meta: dict[str, Any]) -> Preprocess:
    return Preprocess(tuple(int(v) for v in meta["resize"]), int(meta["input_size"]),
                      tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"]))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
