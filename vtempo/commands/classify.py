"""`vtempo classify PATH... --model NAME` and `vtempo check-videos PATH...`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from vtempo.commands.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    at_least,
    calibrate_option,
    check_model_options,
    check_runtime,
    compile_option,
    console,
    device_option,
    dtype_option,
    err_console,
    escape,
    frames_option,
    friendly_errors,
    model_option,
    registry_option,
    runtime_option,
    weights_option,
)
from vtempo.errors import UsageError
from vtempo.inference.results import ResultWriter
from vtempo.inference.runner import BatchRunner, Interrupted
from vtempo.inference.sink import check_writable
from vtempo.video import display_path
from vtempo.video.discovery import collect_videos
from vtempo.video.readers import BACKENDS


def _progress(shown: bool = True) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not (shown and err_console.is_terminal),
    )


def _short(path) -> str:
    return escape(display_path(path))


def results_table(rows, topk: int) -> Table:
    table = Table(title_justify="left", show_lines=topk > 1)
    table.add_column("file", overflow="fold")
    table.add_column(f"top-{topk}" if topk > 1 else "label", overflow="fold")
    table.add_column("prob", justify="right")
    table.add_column("frames", justify="right")
    for result in rows:
        if result.ok:
            labels = "\n".join(escape(p.label) for p in result.top)
            probs = "\n".join(f"{100 * p.prob:.1f}%" for p in result.top)
            frames = str(result.num_frames) + (" !" if result.warning else "")
            table.add_row(_short(result.path), labels, probs, frames)
        else:
            table.add_row(_short(result.path), f"[red]failed: {escape(result.error or '')}[/]", "", "")
    return table


DEMO_MODEL = "tcm-demo"  # bundled, so a fresh install classifies offline


def register(app: typer.Typer) -> None:
    @app.command("classify")
    @friendly_errors
    def classify_command(
        paths: Optional[List[Path]] = typer.Argument(None, metavar="PATH...", readable=False, help="Video files, frame folders, or folders of them."),
        model: str = model_option(DEMO_MODEL),
        weights: Optional[Path] = weights_option(),
        registry: Optional[Path] = registry_option(),
        frames: Optional[int] = frames_option(),
        device: str = device_option(),
        dtype: str = dtype_option(int8=True),
        calibrate: Optional[Path] = calibrate_option(),
        compile: str = compile_option(),
        runtime: str = runtime_option(),
        labels: Optional[Path] = typer.Option(None, "--labels", metavar="FILE", help="Class names, one a line, in output order."),
        views: Optional[str] = typer.Option(None, "--views", metavar="CLIPSxCROPS", help="Override the test views, e.g. 1x1, 2x3, 10x3."),
        topk: int = typer.Option(5, "--topk", help="Labels to report per video."),
        batch_size: int = typer.Option(8, "--batch-size", help="Clips (views) per model call."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Decoding processes (0: decode in this process; default: the cores the model's threads leave free, half the cores for a GPU model)."),
        recursive: bool = typer.Option(False, "--recursive", "-r", help="Search subfolders for videos too."),
        path_list: Optional[Path] = typer.Option(None, "--list", metavar="FILE", help="A file of input paths, one a line (after any PATH...)."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="results.jsonl (written as results come), .json or .csv; .parquet with --engine ray."),
        resume: bool = typer.Option(False, "--resume", help="Go on with an existing .jsonl output: skip the videos it has."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N", help="Classify shard K of N (from 0; balanced by size) into OUT.part-K-of-N.jsonl; auto: from a SLURM array, auto/N: from a Kubernetes indexed job. Under torchrun each rank takes its shard."),
        engine: str = typer.Option("local", "--engine", metavar="local|ray", help="local: this process and its decode workers; ray: a Ray cluster (Ray Data; pip install 'vtempo[ray]')."),
        address: Optional[str] = typer.Option(None, "--ray-address", metavar="auto|HOST:PORT|ray://HOST:PORT", help="The Ray cluster to join (default: start one on this machine's cores)."),
    ) -> None:
        """Rank the labels of each video; bad files are reported and the batch goes on."""
        from vtempo import distributed
        from vtempo.inference.recognizer import load, parse_views
        from vtempo.runtime import default_workers

        if engine not in ("local", "ray"):
            raise UsageError(f"--engine must be local or ray, got {engine!r}")
        if engine == "ray":
            from vtempo.ray import check_options

            check_options(dtype=dtype, compile=compile, workers=workers, shard=shard)
            if runtime != "torch":
                raise UsageError("--runtime goes with --engine local (Ray's workers run PyTorch)")
        elif address is not None:
            raise UsageError("--ray-address goes with --engine ray")
        paths = list(paths or []) + (read_path_list(path_list) if path_list is not None else [])
        if not paths:
            raise UsageError("no inputs: name videos or folders (PATH...), or a file of paths (--list FILE)")
        check_model_options(frames, dtype, device, calibrate, compile, int8=True)
        check_runtime(runtime, compile)
        at_least("topk", topk, 1, "MAX_CLASSES")
        at_least("batch_size", batch_size, 1, "MAX_BATCH")
        at_least("workers", workers, 0, "MAX_THREADS")
        if views is not None:
            parse_views(views)
        parquet = output is not None and output.suffix.lower() == ".parquet"
        if parquet and engine != "ray":
            raise UsageError(f"--output {output}: .parquet is written by --engine ray; here .jsonl, .json or .csv")
        if output is not None and not parquet and output.suffix.lower() not in ResultWriter.FORMATS:
            raise UsageError(f"--output {output}: the name must end in .jsonl, .json or .csv"
                             + (" (or .parquet)" if engine == "ray" else ""))
        videos = collect_videos(paths, recursive)
        if not videos:
            hint = "" if recursive else " (add --recursive to search subfolders)"
            raise UsageError(f"no videos found in {', '.join(map(str, paths))}{hint}")
        runner = BatchRunner(device)  # one process unless torchrun started this
        ranks = runner.ranks
        if ranks.distributed:
            device = runner.device
            workers = max(1, default_workers(device=ranks.device) // distributed.local_world()) if workers is None else workers
        if output is not None:
            check_writable(output)
        # Everything that can fail for the whole run (model, weights, labels, options) fails here, before
        # any decoding.
        recognizer = load(model, weights, registry=registry, device=device, dtype=dtype, frames=frames, labels=labels,
                          calibrate=calibrate, runtime=runtime)
        topk = min(topk, len(recognizer.labels))
        provenance = recognizer.provenance(views)

        def writer(run):
            if parquet:
                from vtempo.ray import ParquetWriter

                return ParquetWriter(output, provenance)
            return None if run.writes else ResultWriter(output, topk, provenance)

        # this process's share of the videos, less those a run before finished (--resume)
        run = runner.start(videos, output, shard=shard, resume=resume, overwrite=overwrite, provenance=provenance,
                           writer=writer, record=lambda result: result.to_dict())
        done, failed = [], 0
        if engine == "ray":
            from vtempo import ray as on_ray

            results = (on_ray.classify_run(run.todo_paths, address, model=model, weights=weights, registry=registry,
                                           frames=frames, dtype=dtype, labels=recognizer.labels, views=views, topk=topk,
                                           batch_size=batch_size, device=device)
                       if run.todo else iter(()))
        else:
            # the decode workers start here, before the progress bar's thread
            recognizer.compile(compile, clips=len(run.todo) * recognizer.plan(views).views)
            results = (recognizer.classify_files(run.todo_paths, views=views, topk=topk, batch_size=batch_size, workers=workers)
                       if run.todo else iter(()))
        try:
            with runner.writing(), _progress(ranks.main) as progress:
                task = progress.add_task(f"{recognizer.name}", total=len(run.todo))
                for position, result in enumerate(results):
                    runner.write(position, result)
                    if not result.ok:
                        failed += 1
                        err_console.print(f"[bold red]failed:[/] {_short(result.path)}: {escape(result.error)}",
                                          highlight=False, soft_wrap=True)
                    done.append(result)
                    progress.advance(task)
        except Interrupted as interrupted:
            resumable = " (--resume goes on)" if interrupted.resumable else ""
            where = f"; their results are in {interrupted.where}{resumable}" if interrupted.where else ""
            err_console.print(f"interrupted: {len(done)} of {len(run.todo)} videos done{escape(where)}", highlight=False)
            raise typer.Exit(130) from None
        classified, failed, before = runner.totals(len(done) - failed, failed, run.done_before)
        runner.finish()  # under torchrun: every rank done, rank 0 merges the parts
        if run.shard is None:
            console.print(results_table(done, topk))
        if not ranks.main:
            raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)
        plan = recognizer.plan(views)
        protocol = recognizer.protocol
        summary = (
            f"{classified} classified, {failed} failed"
            + (f", {before} done before" if before else "")
            + f", of {len(videos)} · {recognizer.name}, "
            f"{plan.frames} frames, {plan.views} view(s) ({plan.clips} clip(s) × {plan.crop} crop), "
            f"{protocol.sampling} sampling, {protocol.average} averaged · {recognizer.dtype}, {recognizer.compile_note}"
        )
        if output is not None:
            summary += f" · results in {runner.summary_target()}"
        err_console.print(summary, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)

    @app.command("check-videos")
    @friendly_errors
    def check_videos_command(
        paths: List[Path] = typer.Argument(..., metavar="PATH...", readable=False, help="Video files, frame folders, or folders of them."),
        recursive: bool = typer.Option(False, "--recursive", "-r", help="Search subfolders for videos too."),
        frames: int = typer.Option(8, "--frames", help="Frames to sample and decode per video, as classify would."),
        backend: str = typer.Option("auto", "--backend", help="auto, pyav, sequential, opencv, decord or torchcodec."),
        verify: bool = typer.Option(False, "--verify", help="Also compare random access with sequential decoding "
                                    "on 16 frames and the frame count; a difference fails the file."),
    ) -> None:
        """Decode every video the way classify would; report failures and frame counts (header vs decodable)."""
        from vtempo.video.check import check_video

        if backend != "auto" and backend not in BACKENDS:
            raise UsageError(f"--backend must be auto or one of {', '.join(BACKENDS)}, got {backend!r}")
        at_least("frames", frames, 1, "MAX_FRAMES")
        videos = collect_videos(paths, recursive)
        if not videos:
            raise UsageError(f"no videos found in {', '.join(map(str, paths))}")
        table = Table(title_justify="left")
        for column in ("file", "status", "reader", "frames (header)", "decodable", "fps", "size", "note"):
            table.add_column(column, justify="right" if column in ("frames (header)", "decodable", "fps") else "left",
                             overflow="fold")
        failed = 0
        with _progress() as progress:
            task = progress.add_task("checking", total=len(videos))
            for path in videos:
                check = check_video(path, frames, backend, verify)
                if check.ok:
                    table.add_row(
                        _short(path), "[green]ok[/]", check.backend or "", _count(check.header_frames),
                        _count(check.num_frames), f"{check.fps:.3g}" if check.fps else "–",
                        f"{check.width}×{check.height}" if check.width else "–",
                        "; ".join(filter(None, [escape(check.verdict or ""),
                                                f"[yellow]{escape(check.note)}[/]" if check.note else ""])),
                    )
                else:
                    failed += 1
                    err_console.print(f"[bold red]failed:[/] {_short(path)}: {escape(check.error)}",
                                      highlight=False, soft_wrap=True)
                    table.add_row(_short(path), "[red]failed[/]", check.backend or "", _count(check.header_frames),
                                  "", "", "", f"[red]{escape(check.error)}[/]")
                progress.advance(task)
        console.print(table)
        err_console.print(f"{len(videos) - failed} ok, {failed} failed, of {len(videos)}", highlight=False)
        raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def read_path_list(path: Path) -> list[Path]:
    """The paths in a list file, one a line (blank lines skipped; names that are not UTF-8 kept as bytes)."""
    try:
        with open(path, "rb") as handle:
            lines = [line.rstrip(b"\r\n") for line in handle]
    except OSError as error:
        raise UsageError(f"--list {display_path(path)}: cannot read ({error.strerror or error})") from None
    return [Path(os.fsdecode(line)) for line in lines if line.strip()]


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)
