"""`vtempo embed PATH... --model NAME --out FILE`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from vtempo.commands.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    console,
    device_option,
    dtype_option,
    err_console,
    frames_option,
    friendly_errors,
    model_option,
    registry_option,
    weights_option,
)
from vtempo.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)


@friendly_errors
def embed(
    paths: List[Path] = typer.Argument(..., metavar="PATH...", help="Video files, frame folders, or folders of them."),
    model: str = model_option(),
    out: Path = typer.Option(Path("embeddings.npy"), "--out", "-o", metavar="FILE", help=".npy (float32 rows; index beside it) or .npz (embeddings and index)."),
    index: Optional[Path] = typer.Option(None, "--index", metavar="FILE", help="Index of the rows for a .npy: .jsonl (default: beside it) or .csv."),
    weights: Optional[Path] = weights_option(),
    frames: Optional[int] = frames_option(),
    per_frame: bool = typer.Option(False, "--per-frame", help="One vector per sampled frame instead of one per video."),
    window: Optional[float] = typer.Option(None, "--window", metavar="SECONDS", help="One vector per window of this length."),
    hop: Optional[float] = typer.Option(None, "--hop", metavar="SECONDS", help="Step between windows (default: the window)."),
    views: Optional[str] = typer.Option(None, "--views", metavar="CLIPSxCROPS", help="Override the test views, e.g. 1x1."),
    normalize: bool = typer.Option(False, "--normalize", help="Scale every vector to unit length."),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips per model call."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes (0: in this process)."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Search subfolders for videos too."),
    registry: Optional[Path] = registry_option(),
) -> None:
    """Write the model's pooled features (what its classifier reads) for each video, window or frame."""
    from vtempo.inference.embed import EmbeddingWriter
    from vtempo.inference.embed import embed as run_embed
    from vtempo.inference.recognizer import load
    from vtempo.runtime import default_workers
    from vtempo.video import display_path
    from vtempo.video.discovery import collect_videos

    videos = collect_videos(paths, recursive)
    if not videos:
        raise UsageError(f"no videos found in {', '.join(map(str, paths))}")
    rec = load(model, weights, registry=registry, device=device, dtype=dtype, frames=frames)
    writer = EmbeddingWriter(out, {"model": rec.name, "weights_sha256": rec.weights_sha256}, index)
    failed = 0
    try:
        for video in run_embed(rec, videos, per_frame=per_frame, window=window, hop=hop, views=views,
                               batch_size=batch_size, workers=default_workers(len(videos)) if workers is None else workers,
                               normalize=normalize):
            if not video.ok:
                failed += 1
                err_console.print(f"[bold red]failed:[/] {escape(display_path(video.path))}: {escape(video.error)}",
                                  highlight=False, soft_wrap=True)
            writer.write(video)
    finally:
        written = writer.close()
    where = f" and {writer.index_path}" if writer.index_path else ""
    console.print(f"{writer.rows} vector(s) of {writer.dim or 0} from {len(videos) - failed} video(s), {failed} failed · "
                  f"{rec.name} · {written}{where}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)
