"""`vtempo stream SOURCE --model NAME`: live labels from a camera, a stream URL or a file."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.live import Live
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
from vtempo.inference.sink import Sink, check_target, check_writable
from vtempo.limits import check_number
from vtempo.video import display_path

DEMO_MODEL = "tsm-demo"


def _view(label, summary_source: str) -> Table:
    table = Table(title=f"{escape(summary_source)} · label {label.number + 1}", title_justify="left")
    table.add_column("label")
    table.add_column("prob", justify="right")
    for prediction in label.top:
        table.add_row(escape(prediction.label), f"{100 * prediction.prob:.1f}%")
    table.caption = (f"video {label.media_time:.1f} s · latency {1000 * label.latency:.0f} ms · "
                     f"dropped {label.dropped}")
    return table


def _line(label) -> str:
    """A label as one line of text: the video time, then each label and its probability."""
    top = "  ".join(f"{p.label} {100 * p.prob:.1f}%" for p in label.top)
    return f"{label.media_time:.2f} s  {top}"


def register(app: typer.Typer) -> None:
    @app.command("stream")
    @friendly_errors
    def stream_command(
        source: str = typer.Argument(..., metavar="SOURCE", help="A camera index (0), a stream URL (rtsp://, http://, udp://, tcp://) or a video file."),
        model: str = model_option(DEMO_MODEL),
        weights: Optional[Path] = weights_option(),
        frames: Optional[int] = frames_option(),
        labels: Optional[Path] = typer.Option(None, "--labels", metavar="FILE", help="Class names, one a line."),
        every: float = typer.Option(1.0, "--every", help="Seconds between labels."),
        realtime: bool = typer.Option(False, "--realtime", help="Play a file at its own frame rate, as a camera would deliver it."),
        topk: int = typer.Option(3, "--topk", help="Labels shown and written per tick."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="JSONL: a line per label (capture timestamps, latency), then the summary."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output (once this run has labels)."),
        device: str = device_option(),
        dtype: str = dtype_option(),
        registry: Optional[Path] = registry_option(),
    ) -> None:
        """Label a live source every --every seconds; Ctrl-C stops with a summary."""
        from vtempo.inference.recognizer import load
        from vtempo.inference.stream import run_stream

        at_least("topk", topk, 1, "MAX_CLASSES")
        check_number("every", every, 0, "MAX_SECONDS", above=True)
        if output is not None and output.suffix.lower() != ".jsonl":
            raise UsageError(f"--output {output}: the name must end in .jsonl")
        if output is not None:
            check_target(output)
            if not overwrite and output.exists():
                raise UsageError(f"{display_path(output)} exists: pass --overwrite to replace it")
            check_writable(output)
        check_model_options(frames, dtype, device)
        rec = load(model, weights, registry=registry, device=device, dtype=dtype, frames=frames, labels=labels)
        # the labels go into OUT.part, renamed over OUT at the end: a source that fails leaves OUT as it was
        sink = Sink(output) if output is not None else None
        stop = threading.Event()
        live = Live(console=err_console, transient=False, auto_refresh=False) if err_console.is_terminal else None

        def on_label(label) -> None:
            if sink is not None:
                sink.write(json.dumps(label.to_dict(), ensure_ascii=False) + "\n")
                sink.records += 1
            if live is not None:
                live.update(_view(label, str(source)), refresh=True)
            if sink is None and (live is None or not console.is_terminal):  # piped: a line per label on stdout
                console.print(_line(label), markup=False, highlight=False, soft_wrap=True)

        try:
            if live is not None:
                live.start()
            summary = run_stream(source, rec, every=every, realtime=realtime, topk=topk, on_label=on_label, stop=stop)
        except BaseException:
            if sink is not None:
                sink.close(complete=False)
            raise
        finally:
            if live is not None:
                live.stop()
        if sink is not None:
            try:
                sink.write(json.dumps(summary.to_dict(), ensure_ascii=False) + "\n")
            finally:
                sink.close(complete=bool(sink.records))
        median, p90 = summary.latency(0.5), summary.latency(0.9)
        latency = "no labels" if median is None else f"latency median {1000 * median:.0f} ms, p90 {1000 * p90:.0f} ms"
        line = (f"{escape(summary.source)}: {summary.reason} · {summary.labels} labels, {summary.frames} frames read, "
                f"{summary.sampled} sampled, {summary.dropped} dropped · {latency} · {rec.name}")
        if summary.ok:
            err_console.print(line, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_OK)
        err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_SOME_FAILED)
