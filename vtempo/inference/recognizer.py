"""One way to load a model: `vtempo.load(...)` → a `Recognizer`, ready to classify videos.

    rec = vtempo.load("tsm-demo")                 # a registry entry (bundled weights: offline)
    rec = vtempo.load("tsm-r50", weights="x.pt")  # an architecture and a checkpoint file
    rec = vtempo.load("runs/x/best.pt")           # a checkpoint written by `vtempo train`
    rec.classify("clip.mp4")                      # ranked labels

Everything a model needs to be tested the way it was trained is read here and nowhere else: the
architecture and the number of classes (the registry entry, else the checkpoint's metadata, else its
classifier weights), the clip length, the test protocol (the entry's, with what `vtempo train`
recorded in the checkpoint on top), the preprocessing, and the class names. `create_model` shares the
name resolution and checkpoint reading and returns a bare, trainable module.

Errors name the Python parameters (`frames=0`); the command line turns them into its flags.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from vtempo import __version__, limits, models
from vtempo.errors import UsageError, VtempoError, param
from vtempo.export.exporting import TOLERANCE, export_model, relative_error
from vtempo.export.loading import (
    EXPORTED_SUFFIXES,
    OnnxModel,
    OpenVinoModel,
    load_exported,
    preprocess_of,
    protocol_of,
)
from vtempo.fast import prepare
from vtempo.fast.choose import shared_chooser
from vtempo.fast.compile import AutoCompile, compile_model
from vtempo.fast.quantize import FixedBatch, quantize, require_torchao
from vtempo.inference.decoding import ViewPlan, decode_views, video_loader
from vtempo.inference.engine import Engine, probabilities
from vtempo.inference.results import NOT_FINITE, Prediction, VideoResult
from vtempo.paths import home
from vtempo.runtime import cpu_name, default_workers, pick_device
from vtempo.video.discovery import collect_videos
from vtempo.video.sampling import clip_indices
from vtempo.video.transforms import Preprocess, make_views
from vtempo.weights.checkpoint import (
    canonical_key,
    infer_arch,
    infer_frames,
    map_state,
    read_file,
    read_state,
    unwrap,
)
from vtempo.weights.hub import sha256_file, weights_path
from vtempo.weights.registry import (
    CROPS,
    ModelEntry,
    Protocol,
    labels_path,
    load_registry,
    read_labels,
)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
CROP_NAMES = {count: name for name, count in CROPS.items()}
DTYPES = ("fp32", "bf16", "fp16", "int8")
CALIBRATION_VIDEOS = 8  # videos decoded to calibrate int8: their views make the calibration clips
CALIBRATION_BATCH = 8  # clips per call of an int8 model (it is exported for one batch size)


# ------------------------------------------------------------------------------------------ names


def list_models(registry: str | os.PathLike | None = None) -> list[str]:
    """Registry checkpoint names, then architecture names."""
    return sorted(load_registry(registry)) + models.architecture_names()


def resolve(name: str, registry: str | os.PathLike | None = None) -> tuple[str, ModelEntry | None]:
    """(architecture, registry entry or None) for a registry entry or an architecture name."""
    entries = load_registry(registry)
    if name in entries:
        return entries[name].arch, entries[name]
    try:
        models.split_name(name)
    except ValueError:
        close = difflib.get_close_matches(name, list_models(registry), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else " (`vtempo models` lists them)"
        raise UsageError(f"unknown model {name!r}: not a registry entry nor an architecture{hint}") from None
    return name, None


def parse_views(text: str) -> tuple[int, str]:
    """`CLIPSxCROPS` (1x1, 2x3, 10x3) → (clips, crop name)."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", text or "")
    if not match:
        raise UsageError(f"{param('views', text)}: must look like 1x1, 2x3 or 10x3 (clips x crops)")
    clips, crops = int(match.group(1)), int(match.group(2))
    if clips < 1 or crops not in CROP_NAMES:
        raise UsageError(f"{param('views', text)}: clips must be at least 1 and crops one of 1, 3, 10")
    return clips, CROP_NAMES[crops]


# the bound (vtempo.limits) of each count `at_least` checks
COUNT_BOUNDS = {"frames": "MAX_FRAMES", "num_classes": "MAX_CLASSES", "topk": "MAX_CLASSES", "batch_size": "MAX_BATCH",
                "workers": "MAX_THREADS", "train_stride": "MAX_STRIDE"}


def at_least(name: str, value: Any, minimum: int) -> None:
    """A count the caller passed (`frames`, `topk`, ...) must be an int ≥ minimum, and at most its
    bound in `COUNT_BOUNDS`."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"{param(name, value)}: must be a whole number of at least {minimum}")
    limits.check_int(name, int(value), minimum, COUNT_BOUNDS.get(name))


# ------------------------------------------------------------------------------------------ checkpoints


@dataclass
class Checkpoint:
    """A checkpoint file read once: its tensors, metadata and layout, and what they tell about the model."""

    path: Path
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    layout: str

    @property
    def arch(self) -> str | None:
        arch = self.meta.get("arch")
        if isinstance(arch, str):
            return arch
        return infer_arch(self.state, self.layout) if self.layout != "torchvision" else None

    @property
    def num_classes(self) -> int | None:
        classes = self.meta.get("num_classes")
        if isinstance(classes, int) and not isinstance(classes, bool):
            return classes
        if self.layout == "torchvision":
            return None
        head = next((v for k, v in self.state.items()
                     if canonical_key(k, self.layout) == "fc.weight" and v.dim() >= 2), None)
        return None if head is None else int(head.shape[0])

    @property
    def frames(self) -> int | None:
        """The clip length recorded in the file, or the one TAM's weights are built for."""
        frames = self.meta.get("frames")
        if isinstance(frames, int) and not isinstance(frames, bool) and frames > 0:
            return frames
        return infer_frames(self.state, self.layout) if self.layout != "torchvision" else None

    def load_into(self, model: nn.Module) -> None:
        """Every tensor in its place, or a VtempoError naming the file and what does not fit."""
        model.load_state_dict(map_state(model, self.state, self.layout, str(self.path)))


def read_checkpoint(path: str | os.PathLike, imagenet: bool = False) -> Checkpoint:
    """Read a checkpoint in any layout vtempo knows (weights_only). `imagenet=True` also accepts a
    torchvision ResNet state dict (layout `torchvision`, keys put under `backbone.`)."""
    path = Path(path)
    if not imagenet:
        state, meta, layout = read_state(path)  # checks the layout (and the metadata vtempo reads)
        return Checkpoint(path, state, meta, layout)
    state, meta = unwrap(read_file(path), str(path))
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state) and not meta:
        return Checkpoint(path, {f"backbone.{k}": v for k, v in state.items()}, meta, "torchvision")
    state, meta, layout = read_state(path)
    return Checkpoint(path, state, meta, layout)


def _registry_weights(entry: ModelEntry) -> Path:
    return weights_path(entry)  # bundled, cached, or downloaded now; else says how to get them


def create_model(
    arch_or_entry: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    frames: int | None = None,
    registry: str | os.PathLike | None = None,
    *,
    user_registry: str | os.PathLike | None = None,
    **options: Any,
) -> nn.Module:
    """A bare, trainable model by registry or architecture name.

    weights: None (random initialisation), "default" (the registry entry's checkpoint, downloaded and
    verified on first use), or a checkpoint file in any supported layout. `num_classes` and `frames`
    default to the checkpoint's, else the registry entry's, else 400 and 8. The registry entry, if any,
    is kept as `model.entry`. For inference use `load`, which also reads labels and the test protocol.
    `user_registry` is the former name of `registry`.
    """
    registry = registry or user_registry
    at_least("num_classes", num_classes, 1)
    at_least("frames", frames, 1)
    arch, entry = resolve(arch_or_entry, registry)
    checkpoint = None
    if weights is not None:
        if str(weights) == "default":
            if entry is None or entry.weights is None:
                raise UsageError(f"{arch_or_entry}: no published weights; pass a checkpoint file with "
                                 f"{param('weights')}")
            weights = _registry_weights(entry)
        checkpoint = read_checkpoint(weights)
    num_classes = num_classes or (checkpoint and checkpoint.num_classes) or (entry.num_classes if entry else 400)
    frames = frames or (checkpoint and checkpoint.frames) or (entry.frames if entry else 8)
    model = _build(arch, num_classes, frames, **options)
    model.entry = entry
    if checkpoint is not None:
        checkpoint.load_into(model)
    return model


def _build(arch: str, num_classes: int, frames: int, **options: Any) -> nn.Module:
    try:
        return models.build(arch, num_classes=num_classes, frames=frames, **options)
    except ValueError as error:
        raise UsageError(str(error)) from None


# ------------------------------------------------------------------------------------------ the recognizer


@dataclass
class Recognizer:
    """A trained model ready for inference, with everything needed to test it as it was trained."""

    model: nn.Module  # prepared: eval mode, BN folded, on `device`; (N, T, 3, S, S) → (N, classes) logits
    name: str
    arch: str
    labels: list[str]
    frames: int
    protocol: Protocol
    preprocess: Preprocess
    entry: ModelEntry | None = None
    checkpoint: Path | None = None
    weights_sha256: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: str = "fp32"
    calibration: str | None = None  # int8: the digest of the calibration clips
    compiled: str | None = None  # how the model was compiled: None (eager), "on", "auto"
    runtime: str = "torch"  # what runs the model: torch, or onnxruntime / openvino on vtempo's export of it

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def dataset(self) -> str | None:
        """The data set the weights were trained on, when the registry says (k400, sthv1, ...)."""
        return self.entry.dataset if self.entry is not None else None

    @property
    def max_side(self) -> int:
        """Decode frames no larger than this: twice the resize target keeps quality for any aspect."""
        return 2 * max(max(self.preprocess.resize), self.preprocess.input_size)

    def views(self, views: str | None = None) -> tuple[int, str]:
        """(clips, crop) of the protocol, or of a `CLIPSxCROPS` override."""
        return parse_views(views) if views else (self.protocol.clips, self.protocol.crop)

    def plan(self, views: str | None = None, backend: str = "auto"):
        """What a decode worker needs to turn a path into this model's input (picklable)."""
        clips, crop = self.views(views)
        return ViewPlan(self.frames, self.protocol, clips, crop, self.preprocess, backend)

    def provenance(self, views: str | None = None) -> dict[str, Any]:
        """What produced a result: the model, its weights' sha256, the clip length, views and dtype."""
        clips, crop = self.views(views)
        record = {"model": self.name, "arch": self.arch, "weights_sha256": self.weights_sha256, "frames": self.frames,
                "views": f"{clips}x{CROPS[crop]}", "dtype": self.dtype, "vtempo": __version__}
        if self.runtime != "torch":
            record["runtime"] = self.runtime
        return {**record, "calibration": self.calibration} if self.calibration else record

    def compile(self, mode: str = "on", clips: int | None = None) -> Recognizer:
        """Compile the model (torch.compile, `vtempo.fast.compile`), in place: `on` always, `auto` only
        when the first batch's eager time says `clips` clips repay it (`compile_note` tells, after the
        first batch). An int8 model is compiled already; `off` leaves the model as it is."""
        if mode not in ("off", "on", "auto"):
            raise UsageError(f"{param('compile', mode)}: choose off, on or auto")
        if mode == "off" or self.dtype == "int8" or self.compiled:
            return self
        if self.runtime != "torch":
            if mode == "auto":
                return self
            raise UsageError(f"{self.name}: {param('runtime', self.runtime)} runs vtempo's export as it is; "
                             f"drop {param('compile')}")
        if self.checkpoint is not None and self.checkpoint.suffix.lower() in EXPORTED_SUFFIXES:
            if mode == "auto":
                return self
            raise UsageError(f"{self.checkpoint}: an exported model runs as it was exported; drop {param('compile')}")
        self.model = compile_model(self.model, self.device) if mode == "on" else AutoCompile(self.model, clips or 0)
        self.compiled = mode
        return self

    @property
    def compile_note(self) -> str:
        """Whether the model runs compiled, and why."""
        if self.dtype == "int8":
            failed = hasattr(getattr(self.model, "model", self.model), "compile_failure")  # inside FixedBatch
            return "not compiled (inductor could not compile the int8 graph)" if failed else "compiled by the quantizer"
        if self.runtime != "torch":
            return f"run by {self.runtime}"
        if self.compiled == "auto":
            return f"{'compiled' if self.model.compiled else 'not compiled'} (auto: {self.model.reason})"
        return "compiled (on)" if self.compiled else "not compiled"

    def classify(self, video: str | os.PathLike | np.ndarray | torch.Tensor, topk: int = 5) -> list[Prediction]:
        """Ranked labels for one video: a file, a folder of frames, or uint8 frames T×H×W×3 (RGB)."""
        at_least("topk", topk, 1)
        if isinstance(video, (str, os.PathLike)):
            (result,) = self.classify_files([video], topk=topk, workers=0)
            if not result.ok:
                raise VtempoError(f"{video}: {result.error}")
            return result.top
        return self._top(self._score_frames(_frames_array(video)), topk)

    def classify_files(
        self,
        paths: Sequence[str | os.PathLike] | str | os.PathLike,
        *,
        views: str | None = None,
        topk: int = 5,
        batch_size: int = 8,
        workers: int | None = None,
        recursive: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[VideoResult]:
        """A `VideoResult` per video (files, frame folders, or folders of them), in input order, each as
        soon as it is scored. Decode workers (`workers`, 0: decode in this process) run while the model
        does; a file that fails gives a result with `error` set and the run goes on. `progress(done,
        total)` is called after each result. The workers start before this returns."""
        at_least("topk", topk, 1)
        at_least("batch_size", batch_size, 1)
        at_least("workers", workers, 0)
        plan = self.plan(views)
        videos = collect_videos(paths, recursive)
        workers = default_workers(len(videos), self.device) if workers is None else workers
        loader = iter(video_loader(videos, plan, workers, pin_memory=self.device.type == "cuda"))
        return self._results(loader, videos, topk, batch_size, progress)

    def _results(self, loader, videos, topk: int, batch_size: int, progress) -> Iterator[VideoResult]:
        def items():
            for item in loader:
                views = item.pop("views")  # only the engine holds the pixels from here on
                item["view_count"] = 0 if views is None else len(views)
                yield item, views

        engine = Engine(self.model, self.device, self.dtype, batch_size)
        for done, (item, logits) in enumerate(engine.scores(items(), None), 1):
            # views combine as the protocol says; NaN or infinite logits make a failed result
            result = VideoResult.from_scores(videos[item["index"]], item, logits, average=self.protocol.average,
                                             labels=self.labels, topk=topk)
            if progress is not None:
                progress(done, len(videos))
            yield result

    def _score_frames(self, frames: np.ndarray) -> torch.Tensor:
        clips, crop = self.views()
        chosen = clip_indices(self.protocol, len(frames), self.frames, clips)
        views = torch.cat([make_views(frames[clip], self.preprocess, crop) for clip in chosen])
        ((_, scores),) = Engine(self.model, self.device, self.dtype, len(views)).scores([(None, views)],
                                                                                        self.protocol.average)
        return scores

    def _top(self, scores: torch.Tensor, topk: int) -> list[Prediction]:
        if not bool(scores.isfinite().all()):
            raise VtempoError(f"{self.name}: {NOT_FINITE}")
        values, indices = probabilities(scores, self.protocol.average).topk(min(topk, len(self.labels)))
        return [Prediction(self.labels[i], int(i), float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def _frames_array(video: np.ndarray | torch.Tensor) -> np.ndarray:
    frames = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise UsageError(f"video: expected uint8 RGB frames of shape T×H×W×3, got {frames.dtype} {frames.shape}")
    return frames


# ------------------------------------------------------------------------------------------ load


def load(
    model: str | os.PathLike | nn.Module,
    weights: str | os.PathLike | None = None,
    *,
    registry: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    dtype: str = "fp32",
    frames: int | None = None,
    labels: str | os.PathLike | Sequence[str] | None = None,
    calibrate: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    compile: bool = False,
    runtime: str = "torch",
) -> Recognizer:
    """A model ready for inference, tested the way it was trained.

    model: a registry entry (its published weights unless `weights` names a file), an architecture
    with `weights=FILE`, a checkpoint file written by `vtempo train` (it records its architecture,
    classes, clip length, preprocessing and sampling), or a built nn.Module (its `entry`, if any, gives
    the protocol; used as it is, in place). `frames` overrides the clip length where the model allows
    it; `labels` (a file, one name a line, or a list) the class names. `dtype="int8"` quantizes the
    model (x86 CPU, torchao) on a few clips of the videos in `calibrate` (a folder or paths), decoded as
    the model's protocol says; `compile=True` compiles it (`Recognizer.compile`). `runtime="onnxruntime"`
    or `"openvino"` runs the model's ONNX export (`vtempo.export`, made once and kept under
    `<vtempo home>/exported/`, its logits checked against eager PyTorch within 1e-4) in that runtime
    on the CPU, fp32. `runtime="auto"` runs the model in whichever of eager PyTorch and the installed
    runtimes measured fastest on this CPU (`_auto_runtime`); where only PyTorch can run it (not fp32,
    not the CPU, compiled, int8, no checkpoint to export, no runtime installed) it runs in PyTorch.
    """
    if runtime == "auto":
        return _auto_runtime(model, weights, registry=registry, device=device, dtype=dtype, frames=frames,
                             labels=labels, calibrate=calibrate, compile=compile)
    if runtime != "torch":
        return _in_runtime(model, weights, registry=registry, device=device, dtype=dtype, frames=frames,
                           labels=labels, calibrate=calibrate, compile=compile, runtime=runtime)
    if dtype == "int8":
        device = "cpu" if str(device) == "auto" else device  # oneDNN's int8 kernels: x86 CPUs
        _check_int8(calibrate, device)
        recognizer = load(model, weights, registry=registry, device=device, frames=frames, labels=labels)
        return _quantized(recognizer, calibrate)
    if calibrate is not None:
        raise UsageError(f"{param('calibrate')} goes with {param('dtype', 'int8')}")
    if compile:
        return load(model, weights, registry=registry, device=device, dtype=dtype, frames=frames,
                    labels=labels).compile("on")
    if dtype not in DTYPES:
        raise UsageError(f"{param('dtype', dtype)}: choose one of {', '.join(DTYPES)}")
    at_least("frames", frames, 1)
    torch_device = _device(device)
    if isinstance(model, nn.Module):
        if weights is not None:
            raise UsageError(f"{param('weights')} goes with a model name, not a built model (load the weights into it)")
        return _wrap(model, torch_device, dtype, frames, labels)
    if Path(model).suffix.lower() in EXPORTED_SUFFIXES:
        if weights is not None:
            raise UsageError(f"{model}: an exported model carries its weights; drop {param('weights')}")
        return _load_exported(Path(model), torch_device, dtype, frames, labels)

    name, arch, entry, path = _source(model, weights, registry)
    checkpoint = read_checkpoint(path)
    if arch is None:
        arch = checkpoint.arch
        if arch is None:
            raise UsageError(f"{path}: the checkpoint does not name its architecture; pass "
                             f"{param('model', text='ARCH')}, {param('weights', text='FILE')}")
        _, entry = _arch_entry(arch, registry)
        name = f"{arch} ({path.name})"
    num_classes = checkpoint.num_classes or (entry.num_classes if entry else None)
    if num_classes is None:
        raise VtempoError(f"{path}: cannot tell the number of classes (no classifier weights found)")
    trained_frames = checkpoint.frames or (entry.frames if entry else None)
    net = _build(arch, num_classes, trained_frames or frames or 8)
    net.entry = entry
    checkpoint.load_into(net)
    clip_length = frames or trained_frames or 8
    _set_frames(net, name, clip_length, trained_frames)
    meta = checkpoint.meta
    return Recognizer(
        model=_prepare(net, torch_device),
        name=name,
        arch=arch,
        labels=_labels(labels, meta, entry, num_classes, name),
        frames=clip_length,
        protocol=_protocol(meta, entry),
        preprocess=_preprocess(meta, entry),
        entry=entry,
        checkpoint=path,
        weights_sha256=_sha256(path),
        device=torch_device,
        dtype=dtype,
    )


RUNTIMES = ("torch", "onnxruntime", "openvino", "auto")
EXPORT_RUNTIMES = ("onnxruntime", "openvino")  # run vtempo's ONNX export; each is an optional package


def installed_runtimes() -> list[str]:
    """The export runtimes that can be imported here (onnx is needed to export for either)."""
    if importlib.util.find_spec("onnx") is None:
        return []
    return [name for name in EXPORT_RUNTIMES if importlib.util.find_spec(name) is not None]


def _auto_runtime(model, weights, *, registry, device, dtype, frames, labels, calibrate, compile) -> Recognizer:
    """`load(..., runtime="auto")`: the fastest of eager PyTorch and the installed runtimes for this
    model's architecture and clip shape on this CPU at this thread count, chosen by timing them in
    alternating rounds on one clip (`vtempo.fast.choose`) the first time that key is met and kept in
    `<vtempo home>/fast-choices.json`. PyTorch is the reference: a runtime replaces it only when
    measurably faster. A runtime's model passes the export's parity check before it is timed."""
    torch_model = load(model, weights, registry=registry, device=device, dtype=dtype, frames=frames, labels=labels,
                       calibrate=calibrate, compile=compile)
    ways = installed_runtimes()
    exported = torch_model.checkpoint is not None and torch_model.checkpoint.suffix.lower() in EXPORTED_SUFFIXES
    if (not ways or torch_model.device.type != "cpu" or torch_model.dtype != "fp32" or torch_model.compiled
            or torch_model.weights_sha256 is None or exported):
        return torch_model
    size = torch_model.preprocess.input_size
    key = (f"runtime | {cpu_name()} | {torch.get_num_threads()} threads | {torch_model.arch} | "
           f"{len(torch_model.labels)} classes | (1, {torch_model.frames}, 3, {size}, {size}) | fp32 | "
           f"ways torch,{','.join(ways)}")  # a runtime installed later is measured, not skipped
    chooser = shared_chooser()
    chosen = chooser.choices.get(key)
    if chosen == "torch":
        return torch_model
    if chosen in ways:
        return _runtime_model(torch_model, model, chosen, spin=False)
    # onnxruntime's threads would spin on the cores after each call, slowing whichever candidate runs next
    models = {"torch": torch_model, **{way: _runtime_model(torch_model, model, way, spin=False) for way in ways}}
    clip = torch.randn(1, torch_model.frames, 3, size, size, generator=torch.Generator().manual_seed(0))

    def run(net: nn.Module) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return net(clip)
        return call

    chosen = chooser.choose(key, {way: run(recognizer.model) for way, recognizer in models.items()})
    return models[chosen]


def _in_runtime(model, weights, *, registry, device, dtype, frames, labels, calibrate, compile,
                runtime: str) -> Recognizer:
    """The model run by onnxruntime or OpenVINO from vtempo's ONNX export of it (see `load`)."""
    if runtime not in RUNTIMES:
        raise UsageError(f"{param('runtime', runtime)}: choose one of {', '.join(RUNTIMES)}")
    if dtype != "fp32" or calibrate is not None or compile:
        raise UsageError(f"{param('runtime', runtime)} runs the fp32 export as it is: drop {param('dtype')}, "
                         f"{param('calibrate')} and {param('compile')}")
    if _device(device).type != "cpu":
        raise UsageError(f"{param('runtime', runtime)} runs on the CPU here: pass {param('device', 'cpu')}")
    if runtime == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise UsageError(f"{param('runtime', 'openvino')} needs openvino: pip install 'vtempo[runtimes]'") from None
    torch_model = load(model, weights, registry=registry, device="cpu", frames=frames, labels=labels)
    return _runtime_model(torch_model, model, runtime)


def _runtime_model(torch_model: Recognizer, model, runtime: str, spin: bool = True) -> Recognizer:
    """`torch_model` (loaded from `model`, on the CPU in fp32) run by `runtime` from its ONNX export, made
    once under `<vtempo home>/exported/` and checked against eager PyTorch on a clip (`spin`:
    onnxruntime's threads spin between calls)."""
    exported = isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".onnx"
    if exported:
        path = Path(model)
    else:
        if torch_model.weights_sha256 is None:
            raise UsageError(f"{torch_model.name}: {param('runtime', runtime)} needs a model with a checkpoint to "
                             f"export")
        key = hashlib.sha256(f"{torch_model.arch} {torch_model.weights_sha256} {torch_model.frames} "
                             f"{torch_model.preprocess}".encode()).hexdigest()[:24]
        path = home() / "exported" / f"{key}.onnx"
        if not path.is_file():
            export_model(torch_model, "onnx", path)  # parity-checked
    if runtime == "onnxruntime":
        net: nn.Module = OnnxModel(path, "cpu", spin=spin)
    else:
        net = OpenVinoModel(path)
    size = torch_model.preprocess.input_size
    clip = torch.randn(1, torch_model.frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        error = relative_error(net(clip), torch_model.model(clip))
    if error > TOLERANCE:
        raise VtempoError(f"{path}: {runtime}'s logits differ from eager PyTorch's by {error:.1e} (relative), "
                          f"more than {TOLERANCE:.0e}")
    return dataclasses.replace(torch_model, model=net, runtime=runtime)


def _check_int8(calibrate, device) -> None:
    """What int8 needs before anything is loaded: calibration videos, the CPU, torchao."""
    if calibrate is None:
        raise UsageError(f"{param('dtype', 'int8')} needs {param('calibrate', text='DIR')}: a folder of a few videos "
                         f"like the ones to classify")
    if _device(device).type != "cpu":
        raise UsageError(f"{param('dtype', 'int8')} runs on the CPU only: pass {param('device', 'cpu')}")
    try:
        require_torchao()
    except VtempoError as error:
        raise UsageError(str(error).split(" (")[0]) from None


def _quantized(recognizer: Recognizer, calibrate) -> Recognizer:
    """`recognizer` with its model quantized to int8 on clips of the first `CALIBRATION_VIDEOS` videos
    of `calibrate` that decode, with the model's own sampling, views and preprocessing."""
    if recognizer.checkpoint is not None and recognizer.checkpoint.suffix.lower() in EXPORTED_SUFFIXES:
        raise UsageError(f"{recognizer.checkpoint}: an exported model runs in fp32; drop {param('dtype', 'int8')}")
    sources = [calibrate] if isinstance(calibrate, (str, os.PathLike)) else list(calibrate)
    plan = recognizer.plan()
    views = []
    for path in collect_videos(sources, recursive=True):
        item = decode_views(path, plan)
        if item["views"] is not None:
            views.append(item["views"])
        if len(views) == CALIBRATION_VIDEOS:
            break
    if not views:
        named = ", ".join(map(os.fspath, sources))
        raise UsageError(f"{param('calibrate', named)}: no video there decodes; int8 needs a few to calibrate on")
    clips = torch.cat(views)
    short = -len(clips) % CALIBRATION_BATCH  # whole batches: repeat clips to fill the last one
    clips = torch.cat([clips, clips[torch.arange(short) % len(clips)]])
    batches = list(clips.split(CALIBRATION_BATCH))
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(batch.contiguous().numpy().tobytes())
    model = FixedBatch(quantize(recognizer.model, batches), CALIBRATION_BATCH)
    return dataclasses.replace(recognizer, model=model, dtype="int8", calibration=digest.hexdigest()[:16])


def _load_exported(path: Path, device: torch.device, dtype: str, frames: int | None, labels) -> Recognizer:
    """A file written by `vtempo export` (.onnx through onnxruntime, .ts through TorchScript), with the
    labels, clip length, protocol and preprocessing its metadata carries."""
    if dtype != "fp32":
        raise UsageError(f"{path}: an exported model runs in fp32, as it was exported; drop {param('dtype', dtype)}")
    model, meta = load_exported(path, device=device)
    if frames is not None and frames != meta["frames"]:
        raise UsageError(f"{path}: exported for {meta['frames']} frames per clip and cannot run on "
                         f"{param('frames', frames)}")
    names = _labels(labels, {"classes": meta["labels"]}, None, len(meta["labels"]), path.name)
    return Recognizer(model=model, name=meta.get("model") or path.stem, arch=meta.get("arch"), labels=names,
                      frames=int(meta["frames"]), protocol=protocol_of(meta), preprocess=preprocess_of(meta),
                      entry=None, checkpoint=path, weights_sha256=meta.get("weights_sha256"), device=device,
                      dtype=dtype)


def _source(model: str | os.PathLike, weights, registry) -> tuple[str, str | None, ModelEntry | None, Path]:
    """(display name, architecture or None when the checkpoint must say, entry, checkpoint path)."""
    text = os.fspath(model)
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise UsageError(f"{param('weights', weights)}: no such file")
    looks_like_a_file = text.lower().endswith(CHECKPOINT_SUFFIXES) and text not in load_registry(registry)
    if Path(text).is_file() or looks_like_a_file:
        if not Path(text).is_file():
            raise UsageError(f"{param('model', text)}: no such checkpoint file")
        if weights is not None:
            raise UsageError(f"{param('model', text)} is a checkpoint file: pass {param('weights')} only with a "
                             f"registry entry or architecture")
        return text, None, None, Path(text)
    arch, entry = resolve(text, registry)
    if weights is not None:
        return text, arch, entry, weights
    if entry is None:
        raise UsageError(f"{text} is an architecture, not a trained model: pass {param('weights', text='FILE')} "
                         f"(and {param('labels', text='FILE')}), "
                         f"or use a registry model (`vtempo models` lists them)")
    return text, arch, entry, _registry_weights(entry)


def _arch_entry(arch: str, registry) -> tuple[str, ModelEntry | None]:
    try:
        return resolve(arch, registry)
    except UsageError:
        raise UsageError(f"the checkpoint names an unknown architecture {arch!r}") from None


def _device(device: str | torch.device) -> torch.device:
    return pick_device(str(device))


def _prepare(net: nn.Module, device: torch.device) -> nn.Module:
    return prepare(net, device)


def _set_frames(net: nn.Module, name: str, frames: int, trained_frames: int | None) -> None:
    try:
        net.set_frames(frames)
    except ValueError:
        built = trained_frames or getattr(net, "fixed_frames", None)
        raise UsageError(f"{name} was trained on {built} frames per clip and cannot run on {param('frames', frames)}; "
                         f"pass {param('frames', built)} or leave it out") from None
    except AttributeError:
        pass  # a module without temporal modules takes any clip length


def _wrap(net: nn.Module, device: torch.device, dtype: str, frames: int | None, labels) -> Recognizer:
    entry = getattr(net, "entry", None)
    name = entry.name if entry else getattr(net, "arch", type(net).__name__)
    clip_length = frames or (entry.frames if entry else 8)
    _set_frames(net, name, clip_length, entry.frames if entry else None)
    num_classes = net.fc.out_features if hasattr(net, "fc") else None
    return Recognizer(
        model=_prepare(net, device), name=name, arch=getattr(net, "arch", entry.arch if entry else name),
        labels=_labels(labels, {}, entry, num_classes, name), frames=clip_length, protocol=_protocol({}, entry),
        preprocess=Preprocess.from_entry(entry), entry=entry, device=device, dtype=dtype,
    )


def _protocol(meta: Mapping[str, Any], entry: ModelEntry | None) -> Protocol:
    """The entry's protocol (else the default), with the fields `vtempo train` recorded on top."""
    base = entry.protocol if entry else Protocol()
    raw = meta.get("protocol")
    if not isinstance(raw, Mapping):
        return base
    known = {f.name for f in dataclasses.fields(Protocol)}
    return dataclasses.replace(base, **{k: v for k, v in raw.items() if k in known and v is not None})


def _preprocess(meta: Mapping[str, Any], entry: ModelEntry | None) -> Preprocess:
    if not isinstance(meta.get("input_size"), int):
        return Preprocess.from_entry(entry)
    size = int(meta["input_size"])
    resize = meta.get("resize") or [round(size * 256 / 224)]
    return Preprocess(tuple(int(v) for v in resize), size, tuple(meta.get("mean") or Preprocess.mean),
                      tuple(meta.get("std") or Preprocess.std))


def _labels(labels, meta: Mapping[str, Any], entry: ModelEntry | None, num_classes: int | None, name: str) -> list[str]:
    if labels is not None and not isinstance(labels, (str, os.PathLike)):
        names, source = [str(label) for label in labels], param("labels")
    elif labels is not None:
        try:
            names, source = read_labels(labels), os.fspath(labels)
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise UsageError(f"{param('labels', labels)}: cannot read ({reason})") from None
    elif isinstance(meta.get("classes"), (list, tuple)):
        names, source = [str(c) for c in meta["classes"]], "the checkpoint"
    elif entry is not None and labels_path(entry) is not None:
        names, source = read_labels(labels_path(entry)), str(labels_path(entry))
    else:
        if num_classes is None:
            raise UsageError(f"{name}: pass {param('labels', text='FILE')}")
        return [f"class {i}" for i in range(num_classes)]
    if num_classes is not None and len(names) != num_classes:
        raise UsageError(f"{source} lists {len(names)} classes but {name} has {num_classes} outputs")
    return names


def _sha256(path: Path) -> str:
    return sha256_file(path)
