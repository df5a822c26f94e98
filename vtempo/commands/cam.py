"""`vtempo cam`: Grad-CAM overlays of one or more models on the original frames of a video."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vtempo.commands.classify import DEMO_MODEL
from vtempo.commands.common import (
    check_model_options,
    console,
    device_option,
    dtype_option,
    frames_option,
    friendly_errors,
    model_option,
    registry_option,
    weights_option,
)
from vtempo.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("cam")(cam)


@friendly_errors
def cam(
    video: Path = typer.Argument(..., help="A video file or a folder of frames."),
    model: List[str] = model_option([DEMO_MODEL], many=True),
    weights: Optional[List[Path]] = weights_option(many=True),
    registry: Optional[Path] = registry_option(),
    frames: Optional[int] = frames_option(help_text="Frames to sample (default: the first model's)."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    target: Optional[str] = typer.Option(
        None, "--target", help="Class name or index to explain (default: each model's top prediction)."
    ),
    layer: str = typer.Option(
        "auto", "--layer", help="auto (last block of the last stage) or a block path such as backbone.layer3.5."
    ),
    method: str = typer.Option("gradcam", "--method", help="gradcam, gradcam++, xgradcam, layercam, hirescam or eigencam."),
    norm: str = typer.Option("clip", "--norm", help="clip: one min-max over the whole clip; frame: each frame on its own."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of the heat map in the overlay, 0 to 1."),
    out: Path = typer.Option(
        Path("cam.png"), "--output", "-o", help=".png/.jpg contact sheet, or .mp4/.gif with the models side by side."
    ),
    save_maps: Optional[Path] = typer.Option(
        None, "--save-maps", help=".npz with each model's T×H×W maps at the decoded resolution (the video's, its longer side at most twice the model's resize) and the frame indices."
    ),
) -> None:
    """Grad-CAM of each model on the sampled frames of VIDEO, drawn on the original frames."""
    from vtempo.inference import cam as cams
    from vtempo.viz import cam_images

    check_model_options(frames, dtype, device)
    if method not in cams.METHODS:
        raise UsageError(f"unknown --method {method!r}: choose one of {', '.join(cams.METHODS)}")
    if norm not in cams.NORMS:
        raise UsageError(f"unknown --norm {norm!r}: choose clip or frame")
    if not 0 <= alpha <= 1:
        raise UsageError(f"--alpha must be between 0 and 1, got {alpha}")
    cam_images.check_output(out)
    if save_maps is not None:
        cam_images.check_maps_path(save_maps)
    if weights and len(weights) != len(model):
        raise UsageError(f"give one --weights per --model ({len(model)}), got {len(weights)}")
    if not video.exists():
        raise UsageError(f"{video}: no such file or folder")

    result = cams.explain(
        video, model, target=target, layer=layer, method=method, norm=norm,
        weights=weights or None, registry=registry, frames=frames, device=device, dtype=dtype,
    )
    written = [cam_images.save_maps(result, save_maps)] if save_maps is not None else []
    written.append(cam_images.write(result, out, alpha))

    for item in result.models:
        console.print(
            f"{item.name}: top {item.top_label} ({item.top_score:.3f}); map for {item.target_label} "
            f"({item.target_score:.3f}) at {item.layer}",
            highlight=False,
            soft_wrap=True,
        )
    frames_used = ", ".join(str(i) for i in result.indices)
    console.print(f"frames {frames_used} → {', '.join(map(str, written))}", highlight=False, soft_wrap=True)
