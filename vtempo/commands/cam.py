"""`vtempo cam`: Grad-CAM overlays of one or more models on the original frames of a video."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vtempo.commands.common import console, friendly_errors
from vtempo.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("cam")(cam)


@friendly_errors
def cam(
    video: Path = typer.Argument(..., help="A video file or a folder of frames."),
    model: List[str] = typer.Option(..., "--model", "-m", help="Registry or architecture name; repeat to compare models."),
    weights: Optional[List[Path]] = typer.Option(
        None, "--weights", help="Checkpoint file; give one per --model, in the same order."
    ),
    target: Optional[str] = typer.Option(
        None, "--target", help="Class name or index to explain (default: each model's top prediction)."
    ),
    layer: str = typer.Option(
        "auto", "--layer", help="auto (last block of the last stage) or a block path such as backbone.layer3.5."
    ),
    method: str = typer.Option("gradcam", "--method", help="gradcam, gradcam++, xgradcam, layercam, hirescam or eigencam."),
    norm: str = typer.Option("clip", "--norm", help="clip: one min-max over the whole clip; frame: each frame on its own."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Weight of the heat map in the overlay."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Frames to sample (default: the first model's)."),
    out: Path = typer.Option(
        Path("cam.png"), "--out", "-o", help=".png/.jpg contact sheet, or .mp4/.gif with the models side by side."
    ),
    save_maps: Optional[Path] = typer.Option(
        None, "--save-maps", help=".npz with each model's T×H×W maps at the original resolution and the frame indices."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, …"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16 (autocast)."),
    registry: Optional[Path] = typer.Option(None, "--registry", help="A user registry file extending checkpoints.yaml."),
) -> None:
    """Grad-CAM of each model on the sampled frames of VIDEO, drawn on the original frames."""
    from vtempo.inference import cam as cams
    from vtempo.runtime import check_dtype

    if method not in cams.METHODS:
        raise UsageError(f"unknown --method {method!r}: choose one of {', '.join(cams.METHODS)}")
    if norm not in cams.NORMS:
        raise UsageError(f"unknown --norm {norm!r}: choose clip or frame")
    check_dtype(dtype)
    cams.check_output(out)
    if save_maps is not None:
        cams.check_maps_path(save_maps)
    if weights and len(weights) != len(model):
        raise UsageError(f"give one --weights per --model ({len(model)}), got {len(weights)}")
    if not video.exists():
        raise UsageError(f"{video}: no such file or folder")

    result = cams.explain(
        video, model, target=target, layer=layer, method=method, norm=norm,
        weights=weights or None, frames=frames, device=device, dtype=dtype, user_registry=registry,
    )
    written = [cams.save_maps(result, save_maps)] if save_maps is not None else []
    written.append(cams.write(result, out, alpha))

    for item in result.models:
        console.print(
            f"{item.name}: top {item.top_label} ({item.top_score:.3f}); map for {item.target_label} "
            f"({item.target_score:.3f}) at {item.layer}",
            highlight=False,
            soft_wrap=True,
        )
    frames_used = ", ".join(str(i) for i in result.indices)
    console.print(f"frames {frames_used} → {', '.join(map(str, written))}", highlight=False, soft_wrap=True)
