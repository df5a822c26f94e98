"""The bundled demo models: every architecture on a small ResNet, trained on the synthetic benchmark.

`retrain(OUT, seed=0)` (the `vtempo train-demo-zoo OUT --seed 0` command) does everything the bundled
weights came from, from scratch: it renders the training, validation and test sets (the test set with
a seed of its own), trains the eight models with the TCM paper's robustness condition (4 frames at a
fixed stride of 4) and the two fine-tuned from them (tsm-online: the online shift; tcm-timeline:
joined clips, for timelines), tests them, runs the stride sweep τ = 2..8 and writes a report. `--install` then
stores the fp16 weights in `vtempo/weights/bundled/` and prints their registry entries.

Everything is seeded; on one machine a rerun gives the same weights. Across machines (other CPUs,
thread counts, bf16 kernels) figures move by a point or two.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vtempo.data import synth
from vtempo.errors import UsageError, param
from vtempo.evaluation.evaluate import evaluate, save_evaluation
from vtempo.evaluation.robustness import run as run_sweep
from vtempo.evaluation.robustness import save as save_sweep
from vtempo.training.train import TrainConfig, train
from vtempo.weights.checkpoint import read_file

FAMILIES = ("tsn", "tsm", "tam", "tcm", "stc", "stc-light", "tefe", "tsi", "tsm-online", "tcm-timeline")
MIRRORED = "mirrored pairs"


@dataclass(frozen=True)
class Recipe:
    backbone: str = "r14w16"  # bottleneck [1,1,1,1], base width 16: ~0.5 M parameters, 4×4 final map at 128²
    frames: int = 4
    stride: int = 4
    # the synthetic benchmark as `vtempo synth` renders it by default (the robustness sweep's default data)
    size: int = synth.DEFAULT_SIZE
    classes: int = len(synth.CLASSES)
    clip_frames: int = synth.DEFAULT_FRAMES  # long enough for stride 8 × 4 frames without padding
    speed: tuple[float, float] = synth.DEFAULT_SPEED
    train_clips: int = 80  # per class
    val_clips: int = 20
    test_clips: int = 50
    epochs: int = 20
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 4e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup: int = 1
    dropout: float = 0.1
    scales: tuple[float, ...] = (1.0,)  # no multi-scale crop: these small models learn direction faster without
    weights: str | None = None  # starting weights (a registry name or file); None: from scratch
    joins: float = 0.0  # fraction of training clips joined from two (`vtempo.training.train.join_clips`)
    dtype: str = "bf16"  # CPU autocast; on CPUs without native bf16 use fp32 (slower, same accuracy within noise)
    # Settings that differ by family, chosen on the validation set (best val top-1 of the run). TAM's and
    # TEFE's temporal kernels are generated from spatial means and learn the direction of time from
    # scratch only at a higher rate; STC-Light did better at 1e-2 too, and STC with 30 epochs (it learnt
    # slower at 1e-2). The validation figures: docs/demo-models.md.
    per_family: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "tam": {"lr": 1e-2},
        "tefe": {"lr": 2e-2},
        "stc-light": {"lr": 1e-2},
        "stc": {"epochs": 30},
        # Online TSM (uni-directional shift) starts from tsm-demo's backbone (same tensors, new head):
        # 4 epochs instead of 20 from scratch.
        "tsm-online": {"epochs": 4, "weights": "tsm-demo"},
        # For timelines: tcm-demo fine-tuned on clips of which 30% end one action and begin another, so
        # that the windows straddling a change of action take the label of most of their frames.
        "tcm-timeline": {"epochs": 10, "weights": "tcm-demo", "lr": 1e-3, "joins": 0.3},
    })

    def arch(self, family: str) -> str:
        return f"{family.removesuffix('-timeline')}-{self.backbone}"

    def of(self, family: str) -> Recipe:
        """This recipe with `family`'s own settings applied."""
        return dataclasses.replace(self, **self.per_family.get(family, {}), per_family={})


RECIPE = Recipe()


def _sets(out: Path, seed: int, recipe: Recipe, say) -> dict[str, Path]:
    plan = {"train": (seed, recipe.train_clips), "val": (seed + 1000, recipe.val_clips), "test": (seed + 1, recipe.test_clips)}
    paths = {}
    for name, (set_seed, clips) in plan.items():
        root = out / "data" / name
        done = root / "synth.json"
        settings = {"clips_per_class": clips, "frames": recipe.clip_frames, "size": recipe.size, "seed": set_seed,
                    "speed": list(recipe.speed)}
        if not done.is_file() or any(json.loads(done.read_text()).get(k) != v for k, v in settings.items()):
            say(f"rendering the {name} set: {recipe.classes} classes × {clips} clips, seed {set_seed}")
            synth.generate(root, recipe.classes, clips, recipe.clip_frames, recipe.size, recipe.speed, set_seed)
        paths[name] = root
    return paths


def _train_config(family: str, data: dict[str, Path], out: Path, seed: int, recipe: Recipe, threads: int | None):
    recipe = recipe.of(family)
    return TrainConfig(
        data=str(data["train"]), val=str(data["val"]), model=recipe.arch(family), out=str(out / "runs" / family),
        frames=recipe.frames, stride=recipe.stride, size=recipe.size, resize=recipe.size, epochs=recipe.epochs,
        batch_size=recipe.batch_size, optimizer=recipe.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay,
        schedule=recipe.schedule, warmup=recipe.warmup, dropout=recipe.dropout, scales=recipe.scales,
        dtype=recipe.dtype, seed=seed, weights=recipe.weights, joins=recipe.joins,
        cache=True, threads=threads, progress=False,
    )


def _finished(run: Path, epochs: int) -> bool:
    log = run / "log.jsonl"
    if not (run / "best.pt").is_file() or not log.is_file():
        return False
    epochs_done = [json.loads(line).get("epoch") for line in log.read_text().splitlines()]
    return max((e for e in epochs_done if e is not None), default=-1) == epochs - 1


def mirrored_confusion(confusion: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """For each mirrored pair (a, b): how often a video of one was called the other."""
    pairs = {}
    for i, name in enumerate(classes):
        mirror = synth.MIRROR.get(name)
        if mirror in classes and name < mirror:
            j = classes.index(mirror)
            total = int(confusion[i].sum() + confusion[j].sum())
            swapped = int(confusion[i, j] + confusion[j, i])
            pairs[f"{name}/{mirror}"] = {"swapped": swapped, "videos": total,
                                         "swapped_percent": 100.0 * swapped / total if total else None}
    return pairs


# Relative cost of a training step on 2 CPU cores (r14w16, 4×128², bf16): the longest runs start first.
STEP_COST = {"tsi": 0.45, "tcm": 0.25, "stc-light": 0.107, "tam": 0.090, "stc": 0.078, "tsm": 0.073, "tefe": 0.071,
             "tsn": 0.069, "tsm-online": 0.073, "tcm-timeline": 0.25}


def train_family(family: str, data: dict[str, Path], out: Path, seed: int, recipe: Recipe, threads: int | None) -> float:
    """Train one demo model (resuming a run left unfinished); returns the seconds it took.

    The epoch lines go to OUT/runs/FAMILY/train.log: parallel jobs would interleave them on the terminal."""
    config = _train_config(family, data, out, seed, recipe, threads)
    run = Path(config.out)
    if _finished(run, config.epochs):
        return 0.0
    run.mkdir(parents=True, exist_ok=True)
    config.resume = (run / "last.pt").is_file()
    started = time.perf_counter()
    with open(run / "train.log", "a", encoding="utf-8") as handle:
        train(config, say=lambda line: print(line, file=handle, flush=True))
    return time.perf_counter() - started


def retrain(out: str | os.PathLike, seed: int = 0, families: list[str] | None = None, install: bool = False,
            jobs: int = 2, recipe: Recipe = RECIPE, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Render the sets, train, test and sweep every demo model; returns (and writes) the report.

    `jobs` trainings run at once, each in its own process with cores/jobs torch threads (tiny models use
    one core better than two); the thread count changes the floating-point sums, so the bundled weights
    are reproduced bit for bit only with the same jobs on the same number of cores. `say(line)` receives
    the progress messages."""
    say = say or (lambda message: None)
    families = list(families or FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise UsageError(f"unknown demo family {unknown[0]!r}: choose from {', '.join(FAMILIES)}")
    if jobs < 1:
        raise UsageError(f"{param('jobs', jobs)}: must be at least 1")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    data = _sets(out, seed, recipe, say)
    timings: dict[str, float] = {"data": time.perf_counter() - began}
    order = sorted(families, key=lambda f: -STEP_COST[f] * recipe.of(f).epochs)

    def say_trained(family: str) -> None:
        say(f"{family}: " + (f"trained ({timings[family] / 60:.1f} min)" if timings[family] else "already trained"))

    say(f"training {', '.join(f'{f} ({recipe.of(f).epochs} epochs)' for f in order)}, {jobs} at a time × "
        f"{threads} thread(s); logs in {out / 'runs'}/FAMILY/train.log")
    if jobs == 1:
        for family in order:
            timings[family] = train_family(family, data, out, seed, recipe, threads)
            say_trained(family)
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            running = {pool.submit(train_family, f, data, out, seed, recipe, threads): f for f in order}
            for done in as_completed(running):
                family = running[done]
                timings[family] = done.result()
                say_trained(family)
    results: dict[str, dict[str, Any]] = {}
    for family in families:
        run = out / "runs" / family
        evaluation = evaluate(str(data["test"]), str(run / "best.pt"), workers=0, device="cpu")
        save_evaluation(evaluation, out / "eval" / family)
        results[family] = {"arch": recipe.arch(family), "top1": evaluation.top1, "top5": evaluation.top5,
                           "per_class": evaluation.per_class,
                           MIRRORED: mirrored_confusion(np.array(evaluation.confusion), evaluation.classes)}
        say(f"{family}: test top-1 {evaluation.top1:.1f}% on {evaluation.videos} videos (seed {seed + 1})")
    started = time.perf_counter()
    sweep = run_sweep(str(data["test"]), [f"{f}={out / 'runs' / f / 'best.pt'}" for f in families],
                      strides=range(2, 9), frames=recipe.frames, workers=0, device="cpu")
    save_sweep(sweep, out / "robustness")
    timings["robustness"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - began
    report = {
        "recipe": dataclasses.asdict(recipe), "seed": seed, "test_seed": seed + 1, "jobs": jobs, "threads": threads,
        "models": results, "robustness": sweep.to_json(), "seconds": {k: round(v, 1) for k, v in timings.items()},
        "summary": {f: round(results[f]["top1"], 2) for f in families} | {"minutes": round(timings["total"] / 60, 1)},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown_report(report), encoding="utf-8")
    if install:
        report["installed"] = install_weights(out, families, results, recipe)
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        say((out / "checkpoints-demo.yaml").read_text())
    return report


def markdown_report(report: dict[str, Any]) -> str:
    sweep = report["robustness"]
    strides = sweep["strides"]
    lines = [
        f"Test set: {sweep['videos']} videos, seed {report['test_seed']}; models trained with seed {report['seed']} "
        f"({report['seconds']['total'] / 60:.1f} min, {report['jobs']} trainings at a time × {report['threads']} thread(s)).",
        "",
        "| model | top-1 % | top-5 % | mirrored pairs swapped % |",
        "|---|---:|---:|---:|",
    ]
    for family, result in report["models"].items():
        pairs = result[MIRRORED].values()
        swapped = sum(p["swapped"] for p in pairs) / max(1, sum(p["videos"] for p in pairs)) * 100
        lines.append(f"| {family}-demo | {result['top1']:.1f} | {result['top5']:.1f} | {swapped:.1f} |")
    lines += ["", "| model | " + " | ".join(f"τ={s}" for s in strides) + " |", "|---|" + "---:|" * len(strides)]
    for name in sweep["models"]:
        cells = []
        for s in strides:
            value, drop = sweep["top1"][name][s], sweep["drop"][name][s]
            cells.append(f"{value:.1f}" + ("" if drop is None or s == sweep["train_stride"][name] else f" ({drop:+.1f})"))
        lines.append(f"| {name}-demo | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def install_weights(out: Path, families: list[str], results: dict[str, Any], recipe: Recipe) -> dict[str, str]:
    """fp16 copies of the best checkpoints in vtempo/weights/bundled/ and their registry entries (printed and
    written to OUT/checkpoints-demo.yaml for the maintainer to paste into checkpoints.yaml)."""
    target = Path(__file__).parents[1] / "weights" / "bundled"
    target.mkdir(exist_ok=True)
    entries, installed = [], {}
    for family in families:
        checkpoint = read_file(out / "runs" / family / "best.pt")
        checkpoint["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
        path = target / f"{family}-demo.pt"
        torch.save(checkpoint, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        installed[family] = digest
        entries.append(
            f"  {family}-demo:\n"
            f"    arch: {recipe.arch(family)}\n"
            f"    num_classes: {recipe.classes}\n"
            f"    frames: {recipe.frames}\n"
            f"    dataset: vtempo-synth\n"
            f"    labels: synth10\n"
            f"    input_size: {recipe.size}\n"
            f"    resize: {recipe.size}\n"
            f"    protocol: {{sampling: stride, stride: {recipe.stride}}}\n"
            f"    weights: {{bundled: {path.name}, sha256: {digest}, size: {path.stat().st_size}}}\n"
            f"    top1: {results[family]['top1']:.1f}\n"
            f"    notes: \"Demo model trained on the synthetic tempo benchmark (vtempo train-demo-zoo OUT --seed 0);"
            f" top-1 on a test set rendered with seed 1.\"\n"
        )
    (out / "checkpoints-demo.yaml").write_text("".join(entries), encoding="utf-8")
    return installed
