"""`vtempo embed PATH... --model NAME --output FILE`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from vtempo.commands.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    at_least,
    check_model_options,
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
from vtempo.inference.runner import BatchRunner, Interrupted
from vtempo.inference.sharding import (
    Shard,
    check_output,
    input_key,
    parse_shard,
    shard_positions,
)
from vtempo.inference.sink import check_target, check_writable
from vtempo.video import display_path
from vtempo.video.discovery import collect_videos


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)


@friendly_errors
def embed(
    paths: List[Path] = typer.Argument(..., metavar="PATH...", help="Video files, frame folders, or folders of them."),
    model: str = model_option(),
    out: Path = typer.Option(Path("embeddings.npy"), "--output", "-o", metavar="FILE", help=".npy (float32 rows; index beside it) or .npz (embeddings and index)."),
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
    resume: bool = typer.Option(False, "--resume", help="Go on with an existing .npy output and its .jsonl index: skip the videos it has (failed ones are tried again)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N", help="Embed shard K of N of the videos (from 0; balanced by size) into OUT.part-K-of-N.npy and .jsonl; `vtempo merge` joins them. auto: from a SLURM array, auto/N: from a Kubernetes indexed job. Under torchrun each rank takes its shard and rank 0 merges."),
) -> None:
    """Write the model's pooled features (what its classifier reads) for each video, window or frame."""
    from vtempo import distributed
    from vtempo.inference.embed import (
        EmbeddingWriter,
        embedding_part,
        merge_embedding_parts,
    )
    from vtempo.inference.embed import embed as run_embed
    from vtempo.inference.recognizer import load
    from vtempo.inference.timeline import check_seconds
    from vtempo.runtime import default_workers

    at_least("batch_size", batch_size, 1, "MAX_BATCH")
    at_least("workers", workers, 0, "MAX_THREADS")
    check_seconds(window=window, hop=hop)
    videos = collect_videos(paths, recursive)
    if not videos:
        raise UsageError(f"no videos found in {', '.join(map(str, paths))}")
    runner = BatchRunner(device)  # one process unless torchrun started this
    ranks = runner.ranks
    if ranks.distributed:
        if shard not in (None, "auto"):
            raise UsageError("--shard with torchrun: each rank already takes its share; leave --shard out")
        device = runner.device
    chosen = Shard(ranks.rank, ranks.world) if ranks.distributed else parse_shard(shard) if shard else None
    positions = list(range(len(videos)))
    target = out
    if chosen is not None:
        if out.suffix.lower() != ".npy" or (index is not None and index != out.with_suffix(".jsonl")):
            raise UsageError("a sharded run (--shard or torchrun) needs --output FILE.npy with its index FILE.jsonl "
                             "beside it: each shard writes a part of both")
        target = embedding_part(out, chosen.index, chosen.count)
        positions = shard_positions(videos, chosen.index, chosen.count)
        if ranks.distributed and resume and out.exists():
            raise UsageError(f"{display_path(out)} holds a finished run (its parts were merged): "
                             f"write to another --output, or pass --overwrite")
        if ranks.distributed and not resume:
            for existing in (out, out.with_suffix(".jsonl")):
                check_output(existing, resume=False, overwrite=overwrite, parameter="out")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other: go on with the output, or start again")
    for existing in (target, target.with_suffix(".jsonl") if chosen is not None else index or (
            out.with_suffix(".jsonl") if out.suffix.lower() == ".npy" else None)):
        if existing is not None and not resume:
            check_output(existing, resume=False, overwrite=overwrite, parameter="out")
    index_path = target.with_suffix(".jsonl") if chosen is not None else index or (
        out.with_suffix(".jsonl") if out.suffix.lower() == ".npy" else None)
    for path in (target, index_path):
        if path is not None:
            check_target(path, "out")
            check_writable(path, "out")
    distributed.barrier(ranks)  # every rank looks at the files before any rank writes its part
    check_model_options(frames, dtype, device)
    rec = load(model, weights, registry=registry, device=device, dtype=dtype, frames=frames)
    writer = runner.writer = EmbeddingWriter(target, {"model": rec.name, "weights_sha256": rec.weights_sha256},
                                             None if chosen is not None else index, resume=resume)
    runner.output = target
    before = sum(input_key(videos[i]) in writer.finished for i in positions)
    positions = [i for i in positions if input_key(videos[i]) not in writer.finished]
    mine = [videos[i] for i in positions]
    failed = 0
    try:
        with runner.writing():
            embedded = run_embed(rec, mine, per_frame=per_frame, window=window, hop=hop, views=views,
                                 batch_size=batch_size, workers=default_workers(len(mine), rec.device) if workers is None else workers,
                                 normalize=normalize) if mine else iter(())
            for position, video in zip(positions, embedded):
                if not video.ok:
                    failed += 1
                    err_console.print(f"[bold red]failed:[/] {escape(display_path(video.path))}: {escape(video.error)}",
                                      highlight=False, soft_wrap=True)
                writer.write(video, position if chosen is not None else None)
    except Interrupted as interrupted:
        err_console.print(f"interrupted: {writer.rows} vector(s) in {escape(interrupted.where)}", highlight=False)
        raise typer.Exit(130) from None
    written = writer.out
    where = f" and {writer.index_path}" if writer.index_path else ""
    console.print(f"{writer.rows} vector(s) of {writer.dim or 0} from {len(mine) - failed} video(s), {failed} failed · "
                  f"{rec.name} · {written}{where}" + (f" ({before} video(s) done before)" if before else ""),
                  highlight=False, soft_wrap=True)
    if ranks.distributed:
        def merge():
            parts = [embedding_part(out, k, ranks.world) for k in range(ranks.world)]
            rows = merge_embedding_parts(parts, out, videos)
            for part in parts:
                part.unlink(missing_ok=True)
                part.with_suffix(".jsonl").unlink(missing_ok=True)
            console.print(f"{rows} vector(s) from {ranks.world} ranks in {out} and {out.with_suffix('.jsonl')}",
                          highlight=False, soft_wrap=True)

        runner.merge_ranks(merge)
        (failed,) = runner.totals(failed)
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)
