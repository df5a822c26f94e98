"""Grad-CAM for video models: where each model looks, frame by frame, on the original frames.

The CAM methods, the activation/gradient capture and the targets are grad-cam's (`pytorch_grad_cam`),
through its public interface: the method classes, `reshape_transform`, `ClassifierOutputTarget`, the
model outputs it keeps, its context manager. What is ours:

- the model always sees the whole clip (N, T, 3, H, W): temporal modules mix frames, so a frame fed
  alone gives a different map; one target per video (grad-cam's targets are per output row);
- the hooked layer is a module that runs once per forward (a residual block, never torchvision's
  Bottleneck `relu`, which runs three times); the per-frame activations (N·T, C, h, w) give per-frame
  channel weights;
- normalisation: grad-cam min-max normalises every image on its own, so frames could not be compared.
  We keep each image's unnormalised map (what the method's `get_cam_image` gives) and normalise once
  over the whole clip (`norm="clip"`) or per frame (`norm="frame"`);
- maps go back onto the original frames at their original resolution through the crop box the network
  input was cut from. Outside the crop the network saw nothing: the map is 0 there, the overlay shows the
  frame darkened, and the crop box is saved with the maps;
- drawing them (a contact sheet, or a video with the models side by side) and writing the maps is
  `vtempo.viz.cam_images`'s part.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn

from vtempo.errors import UsageError, param
from vtempo.inference.recognizer import Recognizer, load
from vtempo.runtime import autocast
from vtempo.video import clip_indices, open_video
from vtempo.video.transforms import Preprocess, crop_boxes_in_frame, make_views

METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam")
NORMS = ("clip", "frame")

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


@dataclass
class ModelCam:
    """One model's maps for one clip."""

    name: str
    maps: np.ndarray  # (T, H, W) float32 in [0, 1] at the original frame resolution; 0 outside `crop`
    crop: Box  # the part of the original frames the network input covers (clipped to the frame)
    layer: str
    grid: tuple[int, int]  # (h, w) of the layer's maps: one cell spans crop / grid original pixels
    target: int
    target_label: str
    target_score: float  # softmax probability of the target class
    top: int
    top_label: str
    top_score: float


@dataclass
class ClipCam:
    """The sampled frames of one video and every model's maps for them."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, original resolution
    indices: np.ndarray  # (T,) frame indices in the video
    models: list[ModelCam]
    method: str
    norm: str


# ---------------------------------------------------------------------------------------------------
# Layers


def layer_candidates(model: nn.Module) -> list[str]:
    """Module paths that run once per forward and give per-frame maps: every child of every stage (the
    residual blocks, and modules such as TCM's that sit between them)."""
    return [
        f"backbone.{stage}.{name}"
        for stage in ("layer1", "layer2", "layer3", "layer4")
        for name, _ in getattr(model.backbone, stage).named_children()
    ]


def resolve_layer(model: nn.Module, path: str = "auto", model_name: str = "model") -> tuple[str, nn.Module]:
    """`auto` is the last block of the last stage. A path may be dotted or slash-separated and may leave
    out the leading `backbone`."""
    if path == "auto":
        name = layer_candidates(model)[-1]
        return name, model.get_submodule(name)
    name = path.strip().strip("/.").replace("/", ".")
    for candidate in (name, f"backbone.{name}"):
        if not candidate:
            continue
        try:
            return candidate, model.get_submodule(candidate)
        except AttributeError:
            continue
    raise UsageError(_layer_error(model, model_name, f"has no layer {path!r}"))


def _layer_error(model: nn.Module, model_name: str, problem: str) -> str:
    return f"{model_name} {problem}; valid layers are its blocks: {', '.join(layer_candidates(model))} (or auto)"


# ---------------------------------------------------------------------------------------------------
# Maps


def _grad_cam_class(method: str):
    import pytorch_grad_cam as gc

    classes = {
        "gradcam": gc.GradCAM,
        "gradcam++": gc.GradCAMPlusPlus,
        "xgradcam": gc.XGradCAM,
        "layercam": gc.LayerCAM,
        "hirescam": gc.HiResCAM,
        "eigencam": gc.EigenCAM,
    }
    if method not in classes:
        raise UsageError(f"unknown CAM method {method!r}: choose one of {', '.join(METHODS)}")

    class KeepingRawMaps(classes[method]):
        """grad-cam's method, keeping the map of each image (`get_cam_image`, before grad-cam's own
        per-image min-max and resizing) as `raw`: (N·T, h, w), ≥ 0, at its raw scale."""

        raw: np.ndarray | None = None

        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)
            self.raw = np.maximum(cam, 0)
            return cam

    return KeepingRawMaps


class _LayerWatch:
    """A forward hook on the layer the maps come from: counts its calls, refuses outputs that are not
    per-frame maps, and cuts the graph there (the maps need gradients at this layer only: the backward
    pass through every layer below it is spared)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module: nn.Module, inputs, output):
        self.calls += 1
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise _LayerShape(tuple(getattr(output, "shape", ())))
        return output.detach().requires_grad_(True)


class _FramesOfClips(nn.Module):
    """The model called on the frames of clips of `frames` frames (N·T, 3, H, W), the images grad-cam
    takes, with fp32 logits (grad-cam picks default targets in numpy, which has no bf16)."""

    def __init__(self, model: nn.Module, frames: int):
        super().__init__()
        self.model, self.frames = model, frames

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.reshape(-1, self.frames, *images.shape[1:])).float()


def _in_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """grad-cam's `reshape_transform` for the layer's activations and gradients: numpy has no bf16."""
    return tensor.float()


class _LayerCalls(Exception):
    def __init__(self, calls: int):
        self.calls = calls


class _LayerShape(Exception):
    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


class _Carried(Exception):
    """An IndexError raised inside the model, carried past grad-cam's context manager (which swallows
    IndexErrors)."""

    def __init__(self, error: IndexError):
        self.error = error


def _run_grad_cam(cam_class, model: nn.Module, layer: nn.Module, clips: torch.Tensor,
                  targets: Sequence[int] | None, watch: _LayerWatch) -> tuple[np.ndarray, torch.Tensor]:
    """grad-cam's method on the frames of `clips`: (raw maps (N·T, h, w), logits (N, classes))."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wanted = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets]
    with cam_class(model=_FramesOfClips(model, clips.shape[1]), target_layers=[layer],
                   reshape_transform=_in_fp32) as grad_cam:
        try:
            with torch.enable_grad():
                grad_cam(input_tensor=clips.flatten(0, 1), targets=wanted)
        except Exception as error:
            if watch.calls != 1 and getattr(grad_cam, "outputs", None) is not None:  # the model ran, then grad-cam failed
                raise _LayerCalls(watch.calls) from None
            if isinstance(error, IndexError):
                raise _Carried(error) from None
            raise
        if watch.calls != 1:
            raise _LayerCalls(watch.calls)
        return grad_cam.raw, grad_cam.outputs.detach().float()


def clip_cams(
    model: nn.Module,
    clips: torch.Tensor,
    layer: str = "auto",
    method: str = "gradcam",
    targets: Sequence[int] | None = None,
    model_name: str = "model",
) -> tuple[np.ndarray, torch.Tensor, str]:
    """Unnormalised maps for a batch of clips (N, T, 3, H, W).

    Returns (maps (N, T, h, w) ≥ 0 at the layer's resolution, logits (N, classes), layer path).
    `targets`: one class per clip, default each clip's top prediction.
    """
    n, t = clips.shape[:2]
    if targets is not None and len(targets) != n:
        # grad-cam zips targets with output rows: too few would silently give all-zero maps
        raise ValueError(f"expected one target per clip ({n}), got {len(targets)}")
    layer_name, module = resolve_layer(model, layer, model_name)
    cam_class = _grad_cam_class(method)
    watch = _LayerWatch()
    hook = module.register_forward_hook(watch)  # before grad-cam's hooks, so they capture the cut output
    try:
        maps, logits = _run_grad_cam(cam_class, model, module, clips, targets, watch)
    except _LayerCalls as error:
        problem = f"layer {layer_name!r} ran {error.calls} times in one forward"
        if error.calls > 1:
            problem += " (torchvision's Bottleneck reuses its relu; hook a block)"
        raise UsageError(_layer_error(model, model_name, problem)) from None
    except _LayerShape as error:
        problem = f"layer {layer_name!r} gives outputs of shape {error.shape}, not per-frame maps (N·T, C, h, w)"
        raise UsageError(_layer_error(model, model_name, problem)) from None
    except _Carried as carried:
        raise carried.error from None
    finally:
        hook.remove()
    if maps is None or maps.shape[0] != n * t:
        raise UsageError(_layer_error(model, model_name, f"layer {layer_name!r} does not give one map per frame"))
    return maps.reshape(n, t, *maps.shape[1:]).astype(np.float32), logits, layer_name


def normalise(maps: np.ndarray, norm: str = "clip") -> np.ndarray:
    """Min-max to [0, 1] over the whole clip (T, ...) or per frame. A constant map becomes 0."""
    if norm not in NORMS:
        raise UsageError(f"unknown normalisation {norm!r}: choose clip or frame")
    axes = tuple(range(maps.ndim)) if norm == "clip" else tuple(range(1, maps.ndim))
    low = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


def to_original(
    maps: np.ndarray, crop: Sequence[float], frame_size: tuple[int, int], norm: str = "clip"
) -> tuple[np.ndarray, Box]:
    """Maps (T, h, w) at the layer's resolution → (T, H, W) on the original frames, and the pixel box
    they cover.

    `crop` is (x0, y0, x1, y1) in original pixels, the region the network input was cut from (it may
    reach outside the frame where the input was padded). Each map is stretched bilinearly over it, then
    normalised over the part inside the frame (so the clip's, or each frame's, maximum is exactly 1);
    outside the crop the map is 0.
    """
    height, width = frame_size
    x0, y0, x1, y1 = (int(round(float(v))) for v in crop)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    stretched = np.stack([cv2.resize(m, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) for m in maps])
    inside = (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))
    if inside[0] >= inside[2] or inside[1] >= inside[3]:
        raise ValueError(f"crop {tuple(crop)} lies outside the {width}x{height} frame")
    visible = stretched[:, inside[1] - y0 : inside[3] - y0, inside[0] - x0 : inside[2] - x0]
    full = np.zeros((len(maps), height, width), np.float32)
    full[:, inside[1] : inside[3], inside[0] : inside[2]] = normalise(visible, norm)
    return full, inside


# ---------------------------------------------------------------------------------------------------
# From a video file to maps


def recognizers(
    models: Sequence[str | os.PathLike | nn.Module | Recognizer],
    weights: Sequence[str | os.PathLike | None] | None = None,
    *,
    registry: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    frames: int | None = None,
) -> list[Recognizer]:
    """Models ready for `explain_frames`, each loaded by `vtempo.load` (a registry name, an architecture
    with its weights file, one per model, a checkpoint file, or a built model); Recognizers pass through."""
    weights = list(weights) if weights else [None] * len(models)
    if len(weights) != len(models):
        raise UsageError(f"{param('weights')}: give one weights file per model ({len(models)}), got {len(weights)}")
    return [model if isinstance(model, Recognizer) else
            load(model, checkpoint, registry=registry, device=device, dtype=dtype, frames=frames)
            for model, checkpoint in zip(models, weights)]


def model_input(frames: np.ndarray, preprocess: Preprocess) -> tuple[torch.Tensor, tuple[float, ...]]:
    """Frames (T, H, W, 3) uint8 → the network input (1, T, 3, S, S), the centre view of the model's
    test protocol, and that view's box (x0, y0, x1, y1) in the original frames."""
    clip = make_views(frames, preprocess, crops=1)
    box = crop_boxes_in_frame(frames.shape[1], frames.shape[2], preprocess, crops=1)[0]
    return clip, (box.left, box.top, box.left + box.width, box.top + box.height)


def resolve_target(target: str | int | None, names: Sequence[str], model_name: str) -> int | None:
    """A class index from an index or a class name (case-insensitive); None stays None (top prediction)."""
    if target is None:
        return None
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(names):
            raise UsageError(f"target {index} is out of range for {model_name} ({len(names)} classes)")
        return index
    folded = [name.casefold() for name in names]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    close = [names[i] for i, name in enumerate(folded) if text.casefold() in name][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else " (give a class name from its label list or an index)"
    raise UsageError(f"target {text!r} is not a class of {model_name}{hint}")


def explain_frames(
    frames: np.ndarray,
    indices: Sequence[int],
    models: Sequence[Recognizer],
    target: str | int | None = None,
    layer: str = "auto",
    method: str = "gradcam",
    norm: str = "clip",
) -> ClipCam:
    """Every model's maps for the sampled frames (T, H, W, 3) uint8 RGB of one video."""
    if norm not in NORMS:
        raise UsageError(f"unknown normalisation {norm!r}: choose clip or frame")
    if method not in METHODS:
        raise UsageError(f"unknown CAM method {method!r}: choose one of {', '.join(METHODS)}")
    names = _unique([model.name for model in models])
    targets = [resolve_target(target, model.labels, name) for model, name in zip(models, names)]
    results = []
    for model, name, target_index in zip(models, names, targets):
        clip, crop = model_input(frames, model.preprocess)
        try:
            with autocast(model.device, model.dtype):
                maps, logits, layer_name = clip_cams(
                    model.model, clip.to(model.device), layer, method,
                    None if target_index is None else [target_index], name,
                )
        except ValueError as error:  # e.g. a module built for another number of frames
            raise UsageError(f"{name}: {error}") from None
        probabilities = logits.softmax(-1)[0]
        top = int(probabilities.argmax())
        chosen = top if target_index is None else target_index
        full_maps, inside = to_original(maps[0], crop, frames.shape[1:3], norm)
        results.append(
            ModelCam(
                name=name,
                maps=full_maps,
                crop=inside,
                layer=layer_name,
                grid=(int(maps.shape[2]), int(maps.shape[3])),
                target=chosen,
                target_label=model.labels[chosen],
                target_score=float(probabilities[chosen]),
                top=top,
                top_label=model.labels[top],
                top_score=float(probabilities[top]),
            )
        )
    return ClipCam(frames=frames, indices=np.asarray(indices, np.int64), models=results, method=method, norm=norm)


def _unique(names: list[str]) -> list[str]:
    """The same model twice (say with two checkpoints) gets `#2`, `#3` appended."""
    return [name if names.index(name) == i else f"{name}#{names[: i + 1].count(name)}" for i, name in enumerate(names)]


def explain(
    video: str | os.PathLike,
    models: Sequence[str | os.PathLike | nn.Module | Recognizer],
    target: str | int | None = None,
    layer: str = "auto",
    method: str = "gradcam",
    norm: str = "clip",
    **load_options,
) -> ClipCam:
    """Grad-CAM of every model on one video (a file or a folder of frames).

    The frames are sampled as the first model's test protocol does (`frames=` overrides its count), and
    every model sees the same frames, so their maps line up. Frames larger than the models need are
    decoded smaller (`Recognizer.max_side`); the maps have the decoded frames' size. `load_options` go to `recognizers`:
    weights (one per model), registry, device, dtype, frames.
    """
    loaded = recognizers(models, **load_options)
    first = loaded[0]
    # decoded as classify decodes (the longer side at most twice the largest model's resize): the
    # maps and sheets are drawn at that size, so a huge video costs no more than a small one
    with open_video(video, max_side=max(model.max_side for model in loaded)) as reader:
        indices, pictures = reader.sample(lambda count: clip_indices(first.protocol, count, first.frames, clips=1)[0])
    return explain_frames(pictures, indices, loaded, target, layer, method, norm)
