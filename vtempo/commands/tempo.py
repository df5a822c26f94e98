"""The tempo benchmark commands: `synth`, `train`, `evaluate`, `robustness` and `train-demo-zoo`.

`train`, `evaluate` and `robustness` run unchanged under `torchrun --nproc_per_node=N` (for example
`torchrun --nproc_per_node=2 $(which vtempo) train DATA --model tsm-r50`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from vtempo.commands.common import (
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
    progress_callback,
    registry_option,
    weights_option,
)
from vtempo.data import synth as synthetic
from vtempo.errors import UsageError
from vtempo.inference.sink import check_writable


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("robustness")(robustness)
    app.command("train-demo-zoo")(train_demo_zoo)


def _speed(text: str) -> tuple[float, float]:
    try:
        parts = [float(v) for v in text.replace("..", ",").split(",")]
    except ValueError:
        raise UsageError(f"--speed must be LOW,HIGH (e.g. 0.5,1.5), got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not 0 < parts[0] <= parts[1]:
        raise UsageError(f"--speed must be LOW,HIGH with 0 < LOW <= HIGH, got {text!r}")
    return parts[0], parts[1]


@friendly_errors
def synth(
    out: Path = typer.Argument(..., help="Folder to write: class folders of .mp4 clips, list.txt, labels.txt."),
    classes: str = typer.Option("10", "--classes", help="How many classes (2-10), or a comma-separated list of names."),
    clips: int = typer.Option(40, "--clips", help="Clips per class."),
    frames: int = typer.Option(32, "--frames", help="Frames per clip."),
    size: int = typer.Option(128, "--size", help="Frame side in pixels (square frames)."),
    speed: str = typer.Option("0.5,1.5", "--speed", help="Range of the random tempo per clip, LOW,HIGH (1.0 = base rate)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same files."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Write the synthetic tempo benchmark: classes that differ only in temporal order or direction."""
    at_least("clips", clips, 1, "MAX_SYNTH_CLIPS")
    at_least("frames", frames, 2, "MAX_FRAMES")
    at_least("size", size, 32, "MAX_INPUT_SIZE")
    at_least("seed", seed, 0, "MAX_SEED")
    names = synthetic.class_names(int(classes) if classes.isdigit() else classes)
    total, done = len(names) * clips, [0]
    with progress_callback("rendering", progress) as show:
        def advance() -> None:
            done[0] += 1
            show(done[0], total)

        result = synthetic.generate(out, names, clips, frames, size, _speed(speed), seed, progress=advance)
    console.print(f"wrote {len(result.videos)} clips of {len(names)} classes to {out} "
                  f"(list: {result.list_file.name}, labels: {result.labels_file.name})")


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _ints(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, got {text!r}") from None


@friendly_errors
def train(
    data: Path = typer.Argument(..., help="Class folders, or a list file of `path label` lines."),
    model: str = typer.Option(..., "--model", "-m", help="Architecture (e.g. tsm-r50) or registry name."),
    out: Path = typer.Option(Path("runs/train"), "--output", "-o", help="Output folder: log.jsonl, last.pt, best.pt."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation set (default: hold out --val-split of DATA)."),
    val_split: float = typer.Option(0.1, "--val-split", help="Fraction of each class held out when there is no --val."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Class names, one per line (default: DATA's labels.txt)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Start from: ImageNet ResNet (torchvision .pth), a vtempo/official/MMAction2 checkpoint, a registry name, or default (the --model registry entry's own); the head is new, sized to DATA's classes."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Train only the new head (linear probing) on the --weights backbone."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames per clip (default: the registry entry's, else 8)."),
    sampling: Optional[str] = typer.Option(None, "--sampling", help="protocol (the model's), uniform, dense, or stride (with --stride)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Fixed frame stride (the TCM robustness condition)."),
    size: Optional[int] = typer.Option(None, "--size", help="Input side (default: the entry's, else 224)."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Short side before cropping (default: size·256/224)."),
    epochs: int = typer.Option(50, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Clips per step per process."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (momentum 0.9) or adamw."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 0.01 SGD, 1e-3 AdamW)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Default 5e-4 (SGD), 0.05 (AdamW)."),
    schedule: str = typer.Option("step", "--schedule", help="step (÷10 at the milestones) or cosine."),
    milestones: Optional[str] = typer.Option(None, "--milestones", help="Epochs where step decay divides the lr by 10 (default: 60%,80%)."),
    warmup: int = typer.Option(0, "--warmup", help="Epochs of linear warm-up."),
    dropout: float = typer.Option(0.5, "--dropout"),
    clip_grad: float = typer.Option(20.0, "--clip-grad", help="Clip the gradient norm (0: off)."),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="Random horizontal flips (wrong when direction is the label)."),
    joins: float = typer.Option(0.0, "--joins", help="Fraction of training clips that end one action and begin another, labelled by each side's share of the frames (models for `vtempo timeline`)."),
    scales: str = typer.Option("1,0.875,0.75,0.66", "--scales", help="Multi-scale crop sides as fractions of the short side (1: no scale jitter)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, … (under torchrun: one device per rank)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding processes per rank."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per process."),
    seed: int = typer.Option(0, "--seed"),
    cache: bool = typer.Option(False, "--cache", help="Keep decoded videos in memory across epochs (small sets; loads in-process)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last.pt."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    shift: Optional[str] = typer.Option(None, "--shift", help="TSM only: online (uni-directional, runs frame by frame) or bidirectional."),
) -> None:
    """Train a model on a labelled video set (SGD or AdamW, checkpoints each epoch, DDP under torchrun)."""
    for name, value, minimum, bound in (
            ("frames", frames, 1, "MAX_FRAMES"), ("stride", stride, 1, "MAX_STRIDE"),
            ("size", size, 16, "MAX_INPUT_SIZE"), ("resize", resize, 16, "MAX_RESIZE"),
            ("epochs", epochs, 1, "MAX_ITERS"), ("batch_size", batch_size, 1, "MAX_BATCH"),
            ("warmup", warmup, 0, "MAX_ITERS"), ("workers", workers, 0, "MAX_THREADS"),
            ("threads", threads, 1, "MAX_THREADS"), ("seed", seed, 0, "MAX_SEED")):
        at_least(name, value, minimum, bound)
    from vtempo.training.train import TrainConfig
    from vtempo.training.train import train as run_training

    config = TrainConfig(
        data=str(data), model=model, out=str(out), val=str(val) if val else None, val_split=val_split,
        labels=str(labels) if labels else None, weights=weights, freeze_backbone=freeze_backbone, frames=frames, sampling=sampling, stride=stride,
        size=size, resize=resize, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, schedule=schedule, milestones=_ints(milestones, "--milestones"), warmup=warmup,
        dropout=dropout, clip_grad=clip_grad or None, flip=flip, joins=joins, scales=_floats(scales, "--scales"), dtype=dtype, device=device, workers=workers,
        threads=threads, seed=seed, cache=cache, resume=resume, progress=progress, shift=shift,
    )
    with progress_callback("training", progress) as show:
        result = run_training(config, say=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
                              progress=show)
    if result.best_epoch >= 0:
        console.print(f"best validation top-1 {result.best_top1:.1f}% at epoch {result.best_epoch + 1}: {result.out / 'best.pt'}")


@friendly_errors
def evaluate(
    data: Path = typer.Argument(..., help="Class folders, or a list file of `path label` lines."),
    model: str = model_option(),
    weights: Optional[Path] = weights_option(),
    registry: Optional[Path] = registry_option(),
    frames: Optional[int] = frames_option(),
    device: str = device_option(),
    dtype: str = dtype_option(),
    views: Optional[str] = typer.Option(None, "--views", help="CLIPSxCROPS, e.g. 1x1, 2x3, 10x3 (default: the model's protocol)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Class names for a list file with numeric labels."),
    out: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for evaluation.json and confusion.png."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Clips (views) per model call."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding processes (0: decode in this process)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Top-1/top-5, per-class accuracy and confusion matrix of a model on a labelled video set."""
    from vtempo.evaluation.evaluate import evaluate as run_evaluation
    from vtempo.evaluation.evaluate import save_evaluation
    from vtempo.inference.recognizer import parse_views

    check_model_options(frames, dtype, device)
    at_least("batch_size", batch_size, 1, "MAX_BATCH")
    at_least("workers", workers, 0, "MAX_THREADS")
    if views is not None:
        parse_views(views)
    if out is not None:
        check_writable(out / "evaluation.json", "out")
    with progress_callback("evaluating", progress) as show:
        result = run_evaluation(data, model, weights, registry=registry, views=views, frames=frames, labels=labels,
                                batch_size=batch_size, workers=workers, device=device, dtype=dtype, progress=show)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    table = Table(title=f"{result.model} on {result.data} ({result.videos} videos, {result.frames} frames, "
                        f"{result.sampling}, views {result.views})")
    table.add_column("class")
    table.add_column("top-1 %", justify="right")
    table.add_column("most confused with")
    confusion = result.confusion
    for i, name in enumerate(result.classes):
        row = confusion[i]
        others = sorted(((n, j) for j, n in enumerate(row) if j != i and n), reverse=True)
        worst = f"{result.classes[others[0][1]]} ({others[0][0]})" if others else ""
        value = result.per_class[name]
        table.add_row(name, "-" if value is None else f"{value:.1f}", worst)
    console.print(table)
    console.print(f"top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  on {result.videos} videos")
    if out is not None:
        json_path, png_path = save_evaluation(result, out)
        console.print(f"wrote {json_path} and {png_path}")
    for path, reason in result.failed:
        err_console.print(f"[yellow]failed[/] {reason}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@friendly_errors
def robustness(
    data: Optional[Path] = typer.Argument(None, help="Class folders, or a list file of `path label` lines (default: the synthetic benchmark's test set, rendered once into the cache)."),
    model: Optional[List[str]] = model_option(None, many=True),
    weights: Optional[List[Path]] = weights_option(many=True),
    registry: Optional[Path] = registry_option(),
    frames: int = frames_option(4, "Frames per clip (the paper: 4)."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    strides: str = typer.Option("2..8", "--stride", help="Strides to test: 2..8, 2,4,8, …"),
    train_stride: Optional[int] = typer.Option(None, "--train-stride", help="Stride the models were trained with (default: from each model's protocol)."),
    labels: Optional[Path] = typer.Option(None, "--labels"),
    out: Path = typer.Option(Path("runs/robustness"), "--output", "-o", help="Folder for robustness.json/.csv/.png."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Videos per batch (each gives a clip per stride)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding processes (0: decode in this process)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Accuracy per sampling stride (TCM paper Fig. 5): each clip re-sampled at stride τ, last frame repeated.

    With no DATA, the synthetic benchmark's test set; with no --model, every bundled demo model."""
    from vtempo.evaluation.robustness import parse_strides, run, save

    check_model_options(frames, dtype, device)
    at_least("batch_size", batch_size, 1, "MAX_BATCH")
    at_least("workers", workers, 0, "MAX_THREADS")
    at_least("train_stride", train_stride, 1, "MAX_STRIDE")
    strides = parse_strides(strides)
    if weights and len(weights) > len(model or []):
        raise UsageError("more --weights than --model")
    check_writable(out / "robustness.json", "out")
    with progress_callback("sweeping", progress) as show:
        result = run(data, model or [], [str(w) for w in weights or []], strides, frames, train_stride, labels,
                     batch_size, workers, device, dtype, registry, progress=show)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    table = Table(title=f"top-1 % by sampling stride τ ({result.frames} frames, {result.videos} videos; "
                        f"change from the training stride in brackets)")
    table.add_column("model")
    for s in result.strides:
        table.add_column(f"τ={s}", justify="right")
    for name in result.models:
        cells = []
        for s in result.strides:
            drop = result.drop[name][s]
            mark = "*" if s == result.train_stride[name] else ""
            cells.append(f"{result.top1[name][s]:.1f}{mark}" + ("" if drop is None or mark else f" ({drop:+.1f})"))
        table.add_row(name, *cells)
    console.print(table)
    console.print("* training stride")
    paths = save(result, out)
    console.print(f"wrote {paths['json']}, {paths['csv']} and {paths['png']}")
    for path, reason in result.failed:
        err_console.print(f"[yellow]failed[/] {reason}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@friendly_errors
def train_demo_zoo(
    out: Path = typer.Argument(..., help="Folder for the synthetic sets, the runs, the checkpoints and the report."),
    seed: int = typer.Option(0, "--seed", help="Seeds the training set, the runs and (seed+1) the test set."),
    family: Optional[List[str]] = typer.Option(None, "--family", help="Only these families (default: all)."),
    install: bool = typer.Option(False, "--install", help="Also write the fp16 weights into vtempo/weights/bundled/ (maintainers)."),
    jobs: int = typer.Option(2, "--jobs", help="Trainings at a time, each with cores/jobs threads."),
) -> None:
    """Retrain every bundled demo model from scratch on a fresh synthetic set (see vtempo/training/demo_zoo.py)."""
    at_least("jobs", jobs, 1, "MAX_THREADS")
    at_least("seed", seed, 0, "MAX_SEED")
    from vtempo.training.demo_zoo import retrain

    report = retrain(out, seed=seed, families=family or None, install=install, jobs=jobs,
                     say=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    console.print(json.dumps(report["summary"], indent=1))
