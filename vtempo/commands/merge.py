"""`vtempo merge PARTS... -o FILE.jsonl` (or `-o FILE.npy` for embeddings): join the parts of a sharded run in input order."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from vtempo.commands.common import err_console, friendly_errors
from vtempo.errors import UsageError
from vtempo.inference.sharding import check_output, merge_parts
from vtempo.video import display_path
from vtempo.video.discovery import collect_videos


def register(app: typer.Typer) -> None:
    @app.command("merge")
    @friendly_errors
    def merge_command(
        parts: List[Path] = typer.Argument(..., metavar="PARTS...", help="The part files, e.g. out.part-*-of-8.jsonl (or the .npy parts of `vtempo embed`, each with its .jsonl index beside it)."),
        output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="The merged results (.jsonl; .npy with its .jsonl index for embeddings)."),
        inputs: Optional[List[Path]] = typer.Option(
            None, "--inputs", metavar="PATH",
            help="The run's inputs as given to it (repeat the flag): also checks that none is missing at the end."),
        recursive: bool = typer.Option(False, "--recursive", "-r", help="As the run was given: search subfolders."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    ) -> None:
        """Join the parts that `--shard K/N` runs wrote, in input order; every input must appear exactly once."""
        embeddings = all(part.suffix.lower() == ".npy" for part in parts)
        if embeddings != (output.suffix.lower() == ".npy") or not embeddings and output.suffix.lower() != ".jsonl":
            raise UsageError(f"--output {display_path(output)}: the merged file is JSON Lines (.jsonl), or .npy "
                             f"for the .npy parts of `vtempo embed`")
        if any(part.resolve() == output.resolve() for part in parts):
            raise UsageError(f"--output {display_path(output)} is one of the parts")
        check_output(output, resume=False, overwrite=overwrite)
        expected = collect_videos(inputs, recursive) if inputs else None
        if embeddings:
            from vtempo.inference.embed import merge_embedding_parts

            check_output(output.with_suffix(".jsonl"), resume=False, overwrite=overwrite)
            rows = merge_embedding_parts(parts, output, expected)
            err_console.print(f"{rows} vectors from {len(parts)} parts in {display_path(output)} and "
                              f"{display_path(output.with_suffix('.jsonl'))}", highlight=False, soft_wrap=True)
            return
        key, final = _record_layout(parts[0])
        count = merge_parts(parts, output, expected, key, final)
        err_console.print(f"{count} results from {len(parts)} parts in {display_path(output)}", highlight=False,
                          soft_wrap=True)


def _record_layout(part: Path):
    """(the field naming the input, which record is an input's last) for the parts' kind of run: a
    `vtempo timeline` part names its videos in "video" and ends each with a summary or error record;
    other runs write one record per input, named in "path"."""
    from vtempo.inference.timeline import TimelineWriter

    try:
        with open(part, "rb") as handle:
            first = json.loads(handle.readline() or b"null")
    except (OSError, ValueError):
        return "path", None  # merge_parts reports what is wrong with the file
    if isinstance(first, dict) and "video" in first and "kind" in first:
        return "video", TimelineWriter.is_final
    return "path", None
