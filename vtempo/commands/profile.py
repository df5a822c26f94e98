"""`vtempo profile [NAME...]`: parameters, MACs, latency, throughput and memory, side by side."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from vtempo.commands.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    at_least,
    console,
    device_option,
    err_console,
    frames_option,
    friendly_errors,
    registry_option,
)
from vtempo.errors import UsageError, VtempoError


def _split(values: list[str] | None) -> list[str]:
    """Repeated options and comma lists alike: `--dtype fp32 --dtype bf16` or `--dtype fp32,bf16`."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _g(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _gmacs(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def cost_table(profiles) -> Table:
    shapes = ", ".join(sorted({f"{p.frames}×{p.size}²" for p in profiles}))
    table = Table(title=f"Cost per clip ({shapes}; G = 1e9)", title_justify="left")
    for column in ("model", "params M", "GMACs", "no head", "+analytic", "paper", "Δ paper"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    table.add_column("uncounted ops (beyond BN, ReLU, add, pool)")
    for profile in profiles:
        cost = profile.cost
        if cost is None:
            table.add_row(profile.name, *["–"] * 6, "(not counted: see errors)")
            continue
        analytic = sum(cost.analytic_gmacs.values())
        table.add_row(
            profile.name,
            f"{cost.params / 1e6:.2f}",
            _gmacs(cost.gmacs),
            _gmacs(cost.gmacs_without_head),
            _gmacs(analytic) if analytic else "",
            "–" if profile.paper_gmacs is None else _gmacs(profile.paper_gmacs),
            "–" if profile.paper_diff is None else f"{profile.paper_diff:+.1%}",
            ", ".join(cost.unusual_uncounted),
        )
    return table


def speed_table(profiles, settings, environment: dict) -> Table:
    from vtempo.bench.profile import speedup

    layout = "channels-last" if environment["channels_last"] else "contiguous"
    table = Table(
        title=f"Speed: {environment['device']}, {environment['threads']} threads, {layout}"
        f"{', compiled' if settings.compile else ''}{', CUDA graphs' if settings.cuda_graphs else ''}, "
        f"batch {settings.batch}, "
        f"{settings.warmup} warm-up + {settings.iters} timed calls",
        title_justify="left",
    )
    for column in ("model", "dtype", "first ms", "median ms", "p90 ms", "clips/s", "frames/s", "peak MiB"):
        table.add_column(column, justify="left" if column in ("model", "dtype") else "right")
    with_speedup = "bf16" in settings.dtypes and "fp32" in settings.dtypes
    if with_speedup:
        table.add_column("bf16 ×fp32", justify="right")
    for profile in profiles:
        if not profile.timings:
            table.add_row(profile.name, "", "failed", *[""] * (len(table.columns) - 3))
        for dtype, timing in profile.timings.items():
            row = [profile.name, dtype, f"{timing.first_ms:.1f}", f"{timing.median_ms:.1f}", f"{timing.p90_ms:.1f}",
                   f"{timing.clips_per_s:.2f}", f"{timing.frames_per_s:.1f}", _g(timing.peak_mib, 1)]
            if with_speedup:
                gain = speedup(profile)
                row.append(f"{gain:.2f}" if gain is not None and dtype == "bf16" else "")
            table.add_row(*row)
    return table


def against_ratios(profile) -> dict[str, float]:
    """Each other runtime's time over vtempo's fp32 time (medians of the per-round ratios): above 1,
    vtempo is faster."""
    from vtempo.bench.profile import paired_ratio

    base = profile.timings.get("fp32")
    return {} if base is None else {runtime: paired_ratio(timing, base) for runtime, timing in profile.against.items()}


def against_table(profiles, settings) -> Table:
    table = Table(title="The fp32 model in other runtimes, timed in the same rounds (time ×: theirs ÷ vtempo "
                  "eager's; above 1, vtempo is faster)", title_justify="left")
    for column in ("model", "runtime", "median ms", "clips/s", "time ×", "logits vs eager"):
        table.add_column(column, justify="left" if column in ("model", "runtime") else "right")
    for profile in profiles:
        if "fp32" in profile.timings:
            timing = profile.timings["fp32"]
            table.add_row(profile.name, "vtempo (eager)", f"{timing.median_ms:.1f}", f"{timing.clips_per_s:.2f}",
                          "1.000", "")
        ratios = against_ratios(profile)
        for runtime in settings.against:
            timing = profile.against.get(runtime)
            error = profile.against_parity.get(runtime)
            if timing is None:
                table.add_row(profile.name, runtime, "failed", "", "", "" if error is None else f"{error:.1e}")
                continue
            table.add_row(profile.name, runtime, f"{timing.median_ms:.1f}", f"{timing.clips_per_s:.2f}",
                          _g(ratios.get(runtime), 3), "" if error is None else f"{error:.1e}")
    return table


def int8_notes(profiles) -> list[str]:
    """What each int8 row timed: the quantized model, its calibration and its graph."""
    notes = []
    for p in profiles:
        if p.int8 is None:
            continue
        how = "compiled" if p.int8.compiled else "not compiled: inductor could not compile the graph"
        source = "synthetic clips" if p.int8.calibration == "synthetic" else f"clips of {p.int8.calibration}"
        notes.append(f"int8 {p.name}: quantized (PT2E, x86, {how}) on {p.int8.calibration_clips} {source}; "
                     f"{p.int8.int8_ops} int8 convs/linears, {p.int8.fp32_convs} convs left in fp32")
    return notes


def ratio_table(profiles, reference: str, ratios: dict) -> Table:
    table = Table(title=f"vs {reference}, same dtype (target: time/MACs ≤ 1.3)", title_justify="left")
    for column in ("model", "dtype", "time ×", "MACs ×", "time/MACs"):
        table.add_column(column, justify="left" if column in ("model", "dtype") else "right")
    for profile in profiles:
        for dtype in profile.timings:
            ratio = ratios.get((profile.name, dtype))
            if ratio is not None:
                table.add_row(profile.name, dtype, f"{ratio.time_ratio:.3f}", _g(ratio.macs_ratio, 3),
                              _g(ratio.time_per_macs, 3))
    return table


def register(app: typer.Typer) -> None:
    @app.command("profile")
    @friendly_errors
    def profile_command(
        names: Optional[List[str]] = typer.Argument(
            None, help="Registry or architecture names. Default: the R-50 architectures (tsn-r50 … tsi-r50)."
        ),
        frames: Optional[int] = frames_option(help_text="Frames per clip (default: the entry's, else 8)."),
        size: Optional[int] = typer.Option(None, "--size", help="Input side in px (default: the entry's, else 224)."),
        batch: int = typer.Option(1, "--batch", help="Clips per call."),
        device: str = device_option(),
        dtypes: Optional[List[str]] = typer.Option(
            None, "--dtype", help="fp32 (default), bf16 or fp16 (autocast), int8 (quantized on the CPU, as classify "
            "runs it). Repeat or comma-separate to compare."
        ),
        against: Optional[List[str]] = typer.Option(
            None, "--against", help="Also time the fp32 model in compiled, onnxruntime, openvino (comma-separate): "
            "exported by vtempo, checked against eager, timed in the same rounds."
        ),
        calibrate: Optional[Path] = typer.Option(
            None, "--calibrate", help="int8: calibrate on videos in DIR (default: rendered synthetic clips)."
        ),
        channels_last: Optional[bool] = typer.Option(
            None, "--channels-last/--no-channels-last", help="Memory format of the weights (default: channels-last)."
        ),
        threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op CPU threads (default: torch's)."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile each model (CPU: with freezing)."),
        cuda_graphs: bool = typer.Option(
            False, "--cuda-graphs", help="Replay each model's forward from captured CUDA graphs (CUDA only; batch-1 latency)."
        ),
        iters: int = typer.Option(20, "--iters", help="Timed calls per model and dtype."),
        warmup: int = typer.Option(3, "--warmup", help="Untimed calls first (the first one's time is reported)."),
        relative: Optional[List[str]] = typer.Option(
            None, "--relative-to", help="Ratios of time and MACs against this model (repeatable; default: the first)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
        pipeline: Optional[Path] = typer.Option(
            None, "--pipeline", help="Also time the whole classify pipeline (decode, sample, run) on the videos in DIR."
        ),
        registry: Optional[Path] = registry_option(),
    ) -> None:
        """Parameters, GMACs, latency, clips/s and peak memory of each model, measured in one run."""
        for name, value, least, bound in (
                ("frames", frames, 1, "MAX_FRAMES"), ("size", size, 16, "MAX_INPUT_SIZE"),
                ("batch", batch, 1, "MAX_BATCH"), ("iters", iters, 1, "MAX_ITERS"),
                ("warmup", warmup, 0, "MAX_ITERS"), ("threads", threads, 1, "MAX_THREADS")):
            at_least(name, value, least, bound)  # before importing the profiler, which takes seconds
        from vtempo.bench.profile import (
            DEFAULT_NAMES,
            Settings,
            environment,
            profile_models,
            relative_to,
            speedup,
        )

        dtypes = _split(dtypes) or ["fp32"]
        settings = Settings(frames=frames, size=size, batch=batch, device=device, dtypes=tuple(dtypes),
                            channels_last=channels_last, threads=threads, compile=compile,
                            cuda_graphs=cuda_graphs, iters=iters, warmup=warmup,
                            calibrate=None if calibrate is None else str(calibrate), against=tuple(_split(against)))
        settings.check()
        names = list(names or DEFAULT_NAMES)
        references = _split(relative) or ([names[0]] if len(names) > 1 else [])
        for reference in references:
            if reference not in names:
                raise UsageError(f"--relative-to {reference}: not among the profiled models ({', '.join(names)})")
        if pipeline is not None and not pipeline.is_dir():
            raise UsageError(f"--pipeline {pipeline}: no such folder")
        if calibrate is not None and not calibrate.is_dir():
            raise UsageError(f"--calibrate {calibrate}: no such folder")

        show = err_console.print if sys.stderr.isatty() and not as_json else (lambda message: None)
        profiles = profile_models(names, settings, user_registry=registry,
                                  progress=lambda message: show(f"[dim]{message}…[/]"))
        env = environment(settings)
        ratios = {reference: relative_to(profiles, reference) for reference in references}
        pipeline_results = _pipeline(names, pipeline, settings, registry) if pipeline is not None else None

        if as_json:
            document = {"settings": dataclasses.asdict(settings), "environment": env, "models": []}
            for profile in profiles:
                data = profile.to_dict()
                data["bf16_speedup"] = speedup(profile)
                data["against_ratio"] = against_ratios(profile)
                data["ratios"] = {
                    reference: {dtype: {"time": r.time_ratio, "macs": r.macs_ratio, "time_per_macs": r.time_per_macs}
                                for (model, dtype), r in by_model.items() if model == profile.name}
                    for reference, by_model in ratios.items()
                }
                document["models"].append(data)
            if pipeline_results is not None:
                document["pipeline"] = pipeline_results
            print(json.dumps(document, indent=2, default=str))
        else:
            console.print(cost_table(profiles))
            console.print(speed_table(profiles, settings, env))
            for line in int8_notes(profiles):
                console.print(line, highlight=False)
            if settings.against:
                console.print(against_table(profiles, settings))
            for reference, by_model in ratios.items():
                console.print(ratio_table(profiles, reference, by_model))
            if pipeline_results is not None:
                console.print(pipeline_table(pipeline_results))
        errors = [(profile.name, error) for profile in profiles for error in profile.errors]
        errors += [(name, f"pipeline: {report['error']}") for name, report in (pipeline_results or {}).items()
                   if "error" in report]
        for name, error in errors:
            err_console.print(f"[bold red]error:[/] {name}: {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_SOME_FAILED if errors else EXIT_OK)


def _pipeline(names: list[str], folder: Path, settings, registry: Path | None) -> dict[str, dict]:
    """The classify pipeline's own timing per model: decoding, sampling + transforms, model, end to end."""
    from vtempo.bench.pipeline import measure_pipeline

    results = {}
    for name in names:
        try:
            report = measure_pipeline(name, folder, device=settings.device, dtype=settings.dtypes[0],
                                      channels_last=settings.channels_last, batch=settings.batch,
                                      frames=settings.frames, size=settings.size, user_registry=registry)
        except Exception as error:  # noqa: BLE001 - the model profiles already measured must still be printed
            message = str(error) if isinstance(error, VtempoError) else f"{type(error).__name__}: {error}"
            results[name] = {"error": message}
            continue
        results[name] = dataclasses.asdict(report) if dataclasses.is_dataclass(report) else dict(report)
    return results


def pipeline_table(results: dict[str, dict]) -> Table:
    table = Table(title="Whole pipeline on the --pipeline videos (clips/s; untrained weights)", title_justify="left")
    for column in ("model", "files", "decode", "decode+transforms", "model only", "end to end", "÷ model only",
                   "peak RSS MB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, report in results.items():
        rates = report.get("decode_clips_per_s") or {}
        decode = ", ".join(f"{backend} {rate:.1f}" for backend, rate in rates.items())
        table.add_row(name, str(report.get("files", "")), decode, _g(report.get("data_clips_per_s"), 1),
                      _g(report.get("model_clips_per_s"), 1), _g(report.get("end_to_end_clips_per_s"), 1),
                      _g(report.get("end_to_end_vs_model"), 2), _g(report.get("peak_rss_mb"), 0))
    return table
