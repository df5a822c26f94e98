"""`vtempo convert SRC DST`: any readable checkpoint layout → a clean vtempo checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vtempo.commands.common import console, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def convert(
        src: Path = typer.Argument(..., help="Checkpoint: official TSN/TSM/TAM/TCM, MMAction2 or vtempo layout."),
        dst: Path = typer.Argument(..., help="Where to write the vtempo checkpoint."),
        arch: Optional[str] = typer.Option(
            None, "--arch", help="Architecture (e.g. tsm-r50); read off the keys when not given."
        ),
        frames: Optional[int] = typer.Option(
            None, "--frames", min=1, help="Clip length the model is for (TAM's is read off the weights; default 8)."
        ),
    ) -> None:
        """Convert a checkpoint to the vtempo format, checking that every tensor finds its place."""
        from vtempo.weights.checkpoint import convert_file

        written = convert_file(src, dst, arch=arch, frames=frames)
        console.print(
            f"{src} ({written['layout']} layout) → {dst}: {written['arch']}, "
            f"{written['num_classes']} classes, {written['frames']} frames",
            highlight=False,
            soft_wrap=True,
        )
