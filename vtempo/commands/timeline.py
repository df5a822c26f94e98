"""`vtempo timeline VIDEO... --model NAME`: labels over time and action segments of long videos."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

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
from vtempo.inference.sink import check_target, check_writable
from vtempo.video import display_path
from vtempo.video.readers import VideoError
from vtempo.viz.plots import write_png
from vtempo.viz.timeline import timeline_image

DEMO_MODEL = "tcm-timeline-demo"  # bundled, trained for timelines (joined clips)


def _numbered(path: Path, video: Path, many: bool) -> Path:
    """One picture or video per input: with several inputs, the input's name goes into the file name."""
    return path.with_name(f"{path.stem}-{video.stem}{path.suffix}") if many else path


def register(app: typer.Typer) -> None:
    @app.command("timeline")
    @friendly_errors
    def timeline_command(
        videos: List[Path] = typer.Argument(..., metavar="VIDEO...", help="Video files, read front to back once."),
        model: str = model_option(DEMO_MODEL),
        weights: Optional[Path] = weights_option(),
        frames: Optional[int] = frames_option(),
        labels: Optional[Path] = typer.Option(None, "--labels", metavar="FILE", help="Class names, one a line."),
        window: Optional[float] = typer.Option(None, "--window", help="Window length in seconds (default: the span the model was tested on)."),
        hop: Optional[float] = typer.Option(None, "--hop", help="Seconds between window starts (default: half the window)."),
        threshold: float = typer.Option(0.0, "--threshold", help="Windows whose top score is lower belong to no segment."),
        min_duration: Optional[float] = typer.Option(None, "--min-duration", help="Seconds; shorter segments are absorbed by their neighbours (default: one window)."),
        smooth: int = typer.Option(3, "--smooth", help="Windows whose scores are averaged for each window's label (odd; 1: none)."),
        topk: int = typer.Option(5, "--topk", help="Labels per window in --output."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Windows and segments: .jsonl, .json or .csv, written as they come."),
        plot: Optional[Path] = typer.Option(None, "--plot", metavar="PNG", help="Draw the top classes' scores over time and the segments."),
        annotate: Optional[Path] = typer.Option(None, "--annotate", metavar="MP4", help="Write the video with the current label drawn on it."),
        batch_size: int = typer.Option(8, "--batch-size", help="Windows per model call."),
        device: str = device_option(),
        dtype: str = dtype_option(),
        registry: Optional[Path] = registry_option(),
        resume: bool = typer.Option(False, "--resume", help="Go on with an existing .jsonl output: skip the videos it has in full."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N", help="Shard K of N of the videos (from 0; balanced by size) into OUT.part-K-of-N.jsonl; auto: from a SLURM array, auto/N: from a Kubernetes indexed job. Under torchrun each rank takes its shard."),
    ) -> None:
        """Slide the model's clip over each video: labels over time, then action segments."""
        from vtempo.inference.recognizer import load
        from vtempo.inference.timeline import (
            TimelineWriter,
            annotate_video,
            check_seconds,
            check_smooth,
            timeline,
        )

        at_least("topk", topk, 1, "MAX_CLASSES")
        at_least("batch_size", batch_size, 1, "MAX_BATCH")
        check_seconds(window=window, hop=hop, min_duration=min_duration)
        check_smooth(smooth)
        if output is not None and output.suffix.lower() not in TimelineWriter.FORMATS:
            raise UsageError(f"--output {output}: the name must end in .jsonl, .json or .csv")
        if plot is not None and plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {plot}: the name must end in .png")
        if annotate is not None and annotate.suffix.lower() != ".mp4":
            raise UsageError(f"--annotate {annotate}: the name must end in .mp4")
        runner = BatchRunner(device)  # one process unless torchrun started this
        ranks, device = runner.ranks, runner.device
        check_model_options(frames, dtype, device)
        for path, name in ((output, "output"), (plot, "plot"), (annotate, "annotate")):
            if path is not None:
                check_target(path, name)
                check_writable(path, name)
        rec = load(model, weights, registry=registry, device=device, dtype=dtype, frames=frames, labels=labels)
        setup = {**rec.provenance(), "window": window, "hop": hop, "threshold": threshold,
                 "min_duration": min_duration, "smooth": smooth, "topk": topk}
        position = 0  # of the video being written, in run.todo

        def emit(record):
            run.write(position, record)

        # this process's share of the videos, less those a run before finished (--resume)
        run = runner.start(videos, output, shard=shard, resume=resume, overwrite=overwrite, provenance=setup,
                           key="video", final=TimelineWriter.is_final,
                           writer=lambda run: TimelineWriter(output, emit if run.writes else None))
        writer = runner.writer
        many, failed = len(videos) > 1, 0
        try:
            with runner.writing():
                for position, video in enumerate(run.todo_paths):
                    name = display_path(video)
                    windows: list = []  # (centre, top label, prob) for --annotate
                    scores: list = []  # per-window probabilities for --plot

                    def on_window(scored, name=name, windows=windows, scores=scores):
                        if writer is not None:
                            writer.window(name, scored)
                        windows.append((scored.centre, scored.top[0].label, scored.top[0].prob))
                        if plot is not None:
                            scores.append(scored.probs.numpy().astype(np.float16))

                    if writer is not None:
                        writer.start_video(name)
                    try:
                        with err_console.status(f"{escape(name)}: reading", spinner="dots") if err_console.is_terminal else _Null():
                            result = timeline(video, rec, window=window, hop=hop, threshold=threshold,
                                              min_duration=min_duration, smooth=smooth, topk=topk, batch_size=batch_size,
                                              on_window=on_window)
                    except VideoError as error:
                        failed += 1
                        err_console.print(f"[bold red]failed:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
                        if writer is not None:
                            writer.finish_failed(name, error.reason)
                        continue
                    if writer is not None:
                        writer.finish_video(result)
                    _print_segments(result)
                    if plot is not None:
                        image = timeline_image([c for c, _, _ in windows], np.stack(scores), rec.labels, result.segments,
                                               result.duration, title=f"{video.name} · {rec.name}")
                        err_console.print(f"plot: {write_png(_numbered(plot, video, many), image, 'plot')}", highlight=False)
                    if annotate is not None:
                        path = annotate_video(video, _numbered(annotate, video, many), windows, result.segments, result.fps)
                        err_console.print(f"annotated: {path}", highlight=False)
                    err_console.print(
                        f"{escape(name)}: {result.duration:.1f} s, {result.frames} frames at {result.fps:g} fps, "
                        f"{result.stats.windows} windows of {result.window_frames} frames every {result.hop_frames} "
                        f"({result.window_frames / result.fps:.2f} s, hop {result.hop_frames / result.fps:.2f} s), "
                        f"{len(result.segments)} segments · {rec.name}", highlight=False, soft_wrap=True)
        except Interrupted as interrupted:
            resumable = " (--resume goes on)" if interrupted.resumable else ""
            where = f"; what was done is in {interrupted.where}{resumable}" if interrupted.where else ""
            err_console.print(f"interrupted{escape(where)}", highlight=False)
            raise typer.Exit(130) from None
        done, failed, before = runner.totals(len(run.todo) - failed, failed, run.done_before)
        runner.finish()  # under torchrun: every rank done, rank 0 merges the parts
        if ranks.main and (before or run.shard is not None):
            where = f" · results in {runner.summary_target()}" if output else ""
            err_console.print(f"{done} done, {failed} failed" + (f", {before} done before" if before else "")
                              + f", of {len(videos)}{where}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _print_segments(result) -> None:
    table = Table(title=escape(result.video), title_justify="left")
    for column in ("start", "end", "label", "score"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for segment in result.segments:
        table.add_row(f"{segment.start:.2f}", f"{segment.end:.2f}", escape(segment.label), f"{100 * segment.score:.0f}%")
    console.print(table)
