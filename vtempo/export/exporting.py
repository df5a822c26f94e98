"""`export_model(vtempo.load(name, device="cpu"), "onnx" | "torchscript", out)`: a model as one
self-describing file.

What is exported is the model's reference form (its own modules, not vtempo.fast's inference paths),
with the export forms of `vtempo.export.forms` swapped in, the clip length fixed and the batch size
free. The file carries what a user needs to run it (`metadata`): labels, frames, input size, resize,
mean and std, test protocol, model name, architecture and the sha256 of the weights.

Outputs: `logits` (N, classes) and `features` (N, T, C), the per-frame pooled features. ONNX gives both
from one graph; TorchScript as the module's `forward` and its `features` method.

Every export is checked before the file is written under its name: the exported file, run by
onnxruntime or torch, and the model in eager PyTorch score the same inputs (a random clip, a batch size
other than the one traced, and an example video when one is given or found in the repository), and
the largest difference of the logits (and of the features), relative to the largest eager value,
must stay within 1e-4.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vtempo import __version__, limits, models
from vtempo.errors import UsageError, VtempoError, param
from vtempo.export.forms import ExportForm, LogitsAndFeatures, apply_export_forms
from vtempo.export.loading import (
    EXPORTED_SUFFIXES,
    FORMAT,
    TORCHSCRIPT_METADATA,
    OnnxModel,
    load_exported,
    missing_extra,
)
from vtempo.weights.checkpoint import load_weights

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
TOLERANCE = 1e-4
OPSET = 17
EXAMPLE_CLIP = Path(__file__).resolve().parents[2] / "examples" / "clips" / "rotate_cw.mp4"
TRACE_BATCH, CHECK_BATCH = 2, 1  # traced with one batch size, checked with another


@dataclass
class ParityCheck:
    inputs: str  # what was scored, e.g. "a random clip"
    logits: float  # max |exported - eager| / max |eager|
    features: float


@dataclass
class ExportReport:
    path: Path
    format: str
    metadata: dict[str, Any]
    checks: list[ParityCheck] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def max_error(self) -> float:
        return max(max(check.logits, check.features) for check in self.checks)


def check_export(model: str | os.PathLike, fmt: str | None, out: str | os.PathLike, frames: int | None = None) -> str:
    """What can be told before `model` (a name or a file) is loaded to be exported: the format to write
    `out` in (`fmt`, else the one its suffix names), returned; the packages it needs; that `model` is
    not an exported file already; that `frames` is within its bound."""
    fmt = pick_format(fmt, Path(out))
    if fmt == "onnx":
        for package in ("onnx", "onnxruntime"):
            try:
                __import__(package)
            except ImportError:
                raise missing_extra(package) from None
    if Path(model).suffix.lower() in EXPORTED_SUFFIXES:
        raise UsageError(f"{model}: already an exported model; export the registry model or checkpoint it came from")
    limits.check_int("frames", frames, 1, "MAX_FRAMES")
    return fmt


def pick_format(fmt: str | None, out: Path) -> str:
    if fmt is None:
        by_suffix = {suffix: name for name, suffix in FORMATS.items()}
        if out.suffix.lower() not in by_suffix:
            raise UsageError(f"{param('out', out)}: pass {param('fmt', 'onnx')} or torchscript, or name the file "
                             f".onnx or .ts")
        return by_suffix[out.suffix.lower()]
    if fmt not in FORMATS:
        raise UsageError(f"{param('fmt')} must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.suffix.lower() != FORMATS[fmt]:
        raise UsageError(f"{param('out', out)}: a {fmt} file must end in {FORMATS[fmt]}")
    return fmt


def reference_model(rec) -> torch.nn.Module:
    """The loaded model's architecture with its checkpoint, in its own (reference) modules, eval mode."""
    if rec.arch is None or rec.checkpoint is None:
        raise UsageError(f"{rec.name}: only a model with an architecture and a checkpoint can be exported")
    net = models.build(rec.arch, num_classes=len(rec.labels), frames=rec.frames)
    layout = rec.entry.weights.layout if rec.entry is not None and rec.entry.weights is not None else None
    load_weights(net, rec.checkpoint, layout=layout)
    net.set_frames(rec.frames)
    return net.eval()


def metadata(rec) -> dict[str, Any]:
    pre, protocol = rec.preprocess, rec.protocol
    return {
        "format": FORMAT,
        "format_version": 1,
        "model": rec.name,
        "arch": rec.arch,
        "labels": list(rec.labels),
        "frames": int(rec.frames),
        "input_size": int(pre.input_size),
        "resize": [int(v) for v in pre.resize],
        "mean": [float(v) for v in pre.mean],
        "std": [float(v) for v in pre.std],
        "protocol": {"sampling": protocol.sampling, "clips": protocol.clips, "crop": protocol.crop,
                     "average": protocol.average, "stride": protocol.stride},
        "weights_sha256": rec.weights_sha256,
        "vtempo_version": __version__,
        "input": "clips: float32 (N, frames, 3, input_size, input_size), RGB scaled to [0, 1] then normalised "
                 "by mean and std; frames sampled and cropped as the protocol says",
        "outputs": {"logits": "(N, classes)", "features": "(N, frames, channels): per-frame pooled features"},
    }


@contextlib.contextmanager
def _quiet():
    """The exporters warn about every Python value they record as a constant and about their own
    deprecation; the parity check, not these warnings, tells whether the export is right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def write_onnx(form: ExportForm, sample: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    try:
        import onnx
    except ImportError:
        raise missing_extra("onnx") from None
    options: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False  # the TorchScript-based exporter: the same trace as the .ts format
    batch = {0: "batch"}
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                LogitsAndFeatures(form), (sample,), str(path), input_names=["clips"],
                output_names=["logits", "features"], dynamic_axes={"clips": batch, "logits": batch, "features": batch},
                opset_version=OPSET, do_constant_folding=True, **options,
            )
    except Exception as error:  # noqa: BLE001 - the exporter raises many types
        raise VtempoError(f"{meta['model']}: the ONNX exporter failed ({_first_line(error)})") from None
    model = onnx.load(str(path))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    model.producer_name = "vtempo"
    onnx.save(model, str(path))


def write_torchscript(form: ExportForm, sample: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace_module(form, {"forward": (sample,), "features": (sample,)}, check_trace=False)
    except Exception as error:  # noqa: BLE001
        raise VtempoError(f"{meta['model']}: tracing failed ({_first_line(error)})") from None
    with _quiet():
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """max |value - reference| / max |reference|: the error at the scale of the output."""
    scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
    return float((value.float() - reference.float()).abs().max() / scale)


def check_parity(path: Path, reference: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[ParityCheck]:
    """Score each input with the exported file and with `reference` (eager PyTorch, fp32)."""
    exported, _ = load_exported(path)
    checks = []
    for description, clips in inputs.items():
        with torch.no_grad():
            features = reference.features(clips)
            logits = reference.fc(reference.dropout(features)).mean(1)
            if isinstance(exported, OnnxModel):
                got_logits, got_features = exported.logits_and_features(clips)  # one run of the graph
            else:
                got_logits, got_features = exported(clips), exported.features(clips)
            checks.append(ParityCheck(description, relative_error(got_logits, logits),
                                      relative_error(got_features, features)))
    return checks


def example_views(rec, clip: Path) -> torch.Tensor:
    """One centre-cropped clip of `clip`, sampled and preprocessed as the model's protocol says."""
    item = rec.plan("1x1").decode(clip)
    if item["error"] is not None:
        raise UsageError(f"{param('clip', clip)}: {item['error']}")
    return item["views"]


def export_model(
    rec,
    fmt: str | None,
    out: str | os.PathLike,
    *,
    clip: str | os.PathLike | None = None,
    tolerance: float = TOLERANCE,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export `rec`, a model loaded by `vtempo.load` (a registry name, an architecture with `weights=`,
    or a checkpoint written by `vtempo train`; its device and dtype do not matter), to `out`; the file
    is only written when it matches eager PyTorch within `tolerance`.

    clip: a video for the parity check besides the random clips (default: the repository's example clip,
    when there is one).
    """
    began = time.perf_counter()
    out = Path(out)
    fmt = check_export(rec.checkpoint or rec.name, fmt, out)
    say = progress or (lambda message: None)
    reference = reference_model(rec)
    form = ExportForm(copy.deepcopy(reference), rec.frames)
    apply_export_forms(form)
    meta = metadata(rec)
    generator = torch.Generator().manual_seed(0)
    shape = (rec.frames, 3, rec.preprocess.input_size, rec.preprocess.input_size)
    sample = torch.randn(TRACE_BATCH, *shape, generator=generator)
    inputs = {"a random clip": torch.randn(CHECK_BATCH, *shape, generator=generator)}
    clip = Path(clip) if clip is not None else EXAMPLE_CLIP if EXAMPLE_CLIP.is_file() else None
    if clip is not None:
        inputs[f"example clip {clip.name}"] = example_views(rec, clip)

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.stem}.part{out.suffix}")  # keeps the suffix the loader reads
    try:
        say(f"exporting to {fmt}")
        (write_onnx if fmt == "onnx" else write_torchscript)(form, sample, partial, meta)
        say("checking the exported file against eager PyTorch")
        checks = check_parity(partial, reference, inputs)
        worst = max(checks, key=lambda check: max(check.logits, check.features))
        if max(worst.logits, worst.features) > tolerance:
            raise VtempoError(
                f"{rec.name}: the exported {fmt} model differs from eager PyTorch on {worst.inputs} by "
                f"{max(worst.logits, worst.features):.2e} (relative), more than {tolerance:.0e}; nothing written"
            )
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return ExportReport(out, fmt, meta, checks, time.perf_counter() - began)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
