"""`vtempo export NAME --format onnx|torchscript --output FILE`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vtempo.commands.common import console, err_console, friendly_errors


def register(app: typer.Typer) -> None:
    app.command("export")(export)


@friendly_errors
def export(
    model: str = typer.Argument(..., metavar="NAME", help="A registry model, an architecture with --weights, or a checkpoint written by `vtempo train`."),
    out: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="The file to write: .onnx or .ts."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="onnx or torchscript (default: from the --output suffix)."),
    weights: Optional[Path] = typer.Option(None, "--weights", metavar="FILE", help="Checkpoint for an architecture name."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Frames per clip, fixed in the file (default: the model's)."),
    clip: Optional[Path] = typer.Option(None, "--clip", metavar="VIDEO", help="A video for the parity check (default: the repository's example clip)."),
    registry: Optional[Path] = typer.Option(None, "--registry", metavar="FILE", help="A user registry file extending checkpoints.yaml."),
) -> None:
    """Write a model as ONNX or TorchScript (batch size free, clip length fixed) with its labels and
    preprocessing embedded; the file is checked against eager PyTorch before it is written."""
    from vtempo.export.exporting import check_export, export_model
    from vtempo.inference.recognizer import load

    def say(message: str) -> None:
        err_console.print(f"{message} …", highlight=False)

    fmt = check_export(model, fmt, out, frames)  # before the model is loaded: what is wrong is said at once
    say("loading the model")
    rec = load(model, weights, registry=registry, device="cpu", frames=frames)
    report = export_model(rec, fmt, out, clip=clip, progress=say)
    meta = report.metadata
    size = report.path.stat().st_size / 1e6
    console.print(f"wrote {report.path} ({report.format}, {size:.1f} MB, {report.seconds:.0f} s): {meta['model']}, "
                  f"{len(meta['labels'])} classes, {meta['frames']} frames of {meta['input_size']}², batch size free",
                  highlight=False, soft_wrap=True)
    for check in report.checks:
        console.print(f"  parity on {check.inputs}: max relative error {check.logits:.1e} (logits), "
                      f"{check.features:.1e} (features); limit 1e-04", highlight=False, soft_wrap=True)
