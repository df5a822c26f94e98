"""`vtempo robustness`: accuracy as the visual tempo changes (TCM paper §IV-F, Fig. 5; TPN's protocol).

Models trained on T frames at a fixed stride (the paper: 4 frames × stride 4) are tested on the same
clips re-sampled at strides τ = 2..8: T frames at stride τ, so the action plays τ/4 times as fast as
in training. Every stride starts at the same frame (the start that centres the longest window in the
video) and a video too short for a window repeats its last frame, as the paper does.

Each video is decoded once: the frames of all strides come out of one read of the longest window,
are resized and cropped once, and sliced per stride; every model scores every stride in one batch.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vtempo import distributed, limits
from vtempo.data import synth
from vtempo.data.dataset import VideoSet, read_video_set
from vtempo.errors import UsageError, VtempoError, param
from vtempo.evaluation.evaluate import align_classes, unnamed
from vtempo.inference.engine import Engine
from vtempo.inference.recognizer import Recognizer, at_least, load
from vtempo.inference.sink import write_file
from vtempo.paths import home
from vtempo.runtime import default_workers
from vtempo.video import VideoError, open_video, stride_indices
from vtempo.video.transforms import Preprocess, make_views
from vtempo.viz.plots import line_plot, write_png
from vtempo.weights.registry import load_registry


def parse_strides(text: str) -> list[int]:
    """`2..8`, `2-8`, `2,4,8` or `4` → sorted distinct strides ≥ 1."""
    try:
        strides: set[int] = set()
        for part in text.replace(" ", "").split(","):
            for sep in ("..", "-"):
                if sep in part:
                    low, high = (int(v) for v in part.split(sep))
                    if low > high:
                        raise UsageError(f"{param('strides', text)}: in {part}, LOW must not exceed HIGH")
                    limits.check_int("strides", high, 1, "MAX_STRIDE")  # before the range is made
                    strides.update(range(low, high + 1))
                    break
            else:
                strides.add(int(part))
    except ValueError:
        raise UsageError(f"{param('strides', text)}: must look like 2..8, 2-8 or 2,4,8") from None
    if not strides or min(strides) < 1:
        raise UsageError(f"{param('strides', text)}: strides must be at least 1")
    limits.check_int("strides", max(strides), 1, "MAX_STRIDE")
    return sorted(strides)


def sweep_indices(num_frames: int, frames: int, strides: Sequence[int]) -> dict[int, list[int]]:
    """The frames of each stride's clip: one shared start (centring the longest window), last frame
    repeated past the end."""
    span = (frames - 1) * max(strides) + 1
    start = max(num_frames - span, 0) // 2
    return {stride: stride_indices(num_frames, frames, stride, start) for stride in strides}


class StrideSweepDataset(torch.utils.data.Dataset):
    """Item: ({preprocess: (S, T, 3, H, W)} for each distinct preprocessing, label, index, None), or
    (None, label, index, reason) for a video that fails to decode."""

    def __init__(self, videos: VideoSet, frames: int, strides: Sequence[int], pres: Sequence[Preprocess]):
        self.videos, self.frames, self.strides, self.pres = videos, frames, list(strides), list(dict.fromkeys(pres))

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int):
        path, label = self.videos.videos[index]
        try:
            with open_video(path) as reader:
                per_stride = {}

                def choose(count: int) -> list[int]:
                    per_stride.update(sweep_indices(count, self.frames, self.strides))
                    return sorted({i for clip in per_stride.values() for i in clip})

                needed, decoded = reader.sample(choose)
        except VideoError as error:
            return None, label, index, str(error)
        position = {frame: n for n, frame in enumerate(needed)}
        out = {}
        for pre in self.pres:
            ready = make_views(decoded, pre, "centre")[0]  # each decoded frame resized, cropped, normalised once
            out[pre] = torch.stack([ready[[position[i] for i in per_stride[s]]] for s in self.strides])
        return out, label, index, None


def _collate(items: list):
    good = [item for item in items if item[0] is not None]
    failed = [(item[2], item[3]) for item in items if item[0] is None]
    if not good:
        return None, None, [], failed
    batch = {pre: torch.stack([item[0][pre] for item in good]) for pre in good[0][0]}
    return batch, torch.tensor([item[1] for item in good]), [item[2] for item in good], failed


@dataclass
class RobustnessResult:
    data: str
    frames: int
    strides: list[int]
    videos: int
    models: list[str]
    train_stride: dict[str, int | None]
    top1: dict[str, dict[int, float]]
    top5: dict[str, dict[int, float]]
    drop: dict[str, dict[int, float | None]]  # top-1 at τ minus top-1 at the training stride
    failed: list[tuple[str, str]] = field(default_factory=list)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model: `Recognizer.provenance()`

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        return data


def sweep(data: str | os.PathLike, models: Sequence[Recognizer], strides: Sequence[int], frames: int = 4,
          train_stride: int | None = None, labels: str | None = None, batch_size: int = 8,
          workers: int | None = None, ranks: distributed.Ranks | None = None,
          progress: Callable[[int], None] | None = None) -> RobustnessResult:
    """Top-1/top-5 of every model at every stride on the same clips (each model under its own dtype)."""
    if not models:
        raise UsageError("robustness needs at least one model")
    ranks = ranks or distributed.Ranks(0, 1, torch.device("cpu"))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UsageError(f"a model is given twice: {names}")
    reference = models[0]
    videos = align_classes(read_video_set(data, labels), reference.labels, reference.num_classes)
    for m in models[1:]:
        named = not unnamed(m.labels) and not unnamed(reference.labels)
        if m.num_classes != reference.num_classes or (named and m.labels != reference.labels):
            raise VtempoError(f"{m.name} and {reference.name} do not share their classes: compare models of one label set")
    for m in models:
        if m.frames != frames:
            raise UsageError(f"{m.name} is loaded for {m.frames} frames per clip, the sweep takes {frames}")
    dataset = StrideSweepDataset(videos, frames, strides, [m.preprocess for m in models])
    shard = list(range(ranks.rank, len(dataset), ranks.world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard), batch_size=batch_size,
        num_workers=default_workers(device=reference.device) if workers is None else workers, collate_fn=_collate,
    )
    engines = [Engine(m.model, m.device, m.dtype, batch_size * len(strides)) for m in models]
    correct1 = np.zeros((len(models), len(strides)))
    correct5 = np.zeros((len(models), len(strides)))
    count, failed = 0, []
    k = min(5, reference.num_classes)
    for batch, label, _, bad in loader:
        failed += [(str(videos.videos[i][0]), reason) for i, reason in bad]
        if batch is not None:
            for m_index, (m, engine) in enumerate(zip(models, engines)):
                clips = batch[m.preprocess]  # (videos, strides, T, 3, H, W): one "view" per stride
                logits = torch.stack([scores for _, scores in engine.scores(enumerate(clips), average=None)])
                top = logits.topk(k, dim=-1).indices
                correct1[m_index] += (top[..., 0] == label[:, None]).sum(0).numpy()
                correct5[m_index] += (top == label[:, None, None]).any(-1).sum(0).numpy()
            count += len(label)
        if progress is not None:
            progress(len(bad) + (0 if label is None else len(label)))
    summed = distributed.all_sum([count, *correct1.ravel(), *correct5.ravel()], ranks)
    count = int(summed[0])
    size = correct1.size
    correct1 = np.array(summed[1 : 1 + size]).reshape(correct1.shape)
    correct5 = np.array(summed[1 + size :]).reshape(correct5.shape)
    failed = [f for part in distributed.all_gather_objects(failed, ranks) for f in part]
    if count == 0:
        raise VtempoError(f"{data}: no video could be decoded")
    top1 = {m.name: {s: float(100 * correct1[i, j] / count) for j, s in enumerate(strides)} for i, m in enumerate(models)}
    top5 = {m.name: {s: float(100 * correct5[i, j] / count) for j, s in enumerate(strides)} for i, m in enumerate(models)}
    trained = {}
    for m in models:
        own = m.protocol.stride if m.protocol.sampling == "stride" else None
        trained[m.name] = train_stride or own
    drop = {name: {s: (top1[name][s] - top1[name][trained[name]] if trained[name] in top1[name] else None)
                   for s in strides} for name in top1}
    provenance = {m.name: m.provenance("1x1") for m in models}
    return RobustnessResult(str(data), frames, list(strides), count, names, trained, top1, top5, drop, failed,
                            provenance)


SYNTH_TEST_SEED = 1  # the demo models' test set (`vtempo train-demo-zoo` renders its test set with seed + 1)
SYNTH_TEST_CLIPS = 5  # per class: 50 clips, a quick sweep


def synthetic_test_set(clips_per_class: int | None = None, progress: Callable[[], None] | None = None) -> Path:
    """The synthetic benchmark's test set (`vtempo synth`'s classes, clip length, size and speeds, which
    the demo models were trained on), rendered once (fixed seed) into the vtempo cache; its folder."""
    clips, classes = clips_per_class or SYNTH_TEST_CLIPS, len(synth.CLASSES)
    root = home() / "synth" / f"test-seed{SYNTH_TEST_SEED}-{clips}x{classes}"
    settings = {"clips_per_class": clips, "frames": synth.DEFAULT_FRAMES, "size": synth.DEFAULT_SIZE, "seed": SYNTH_TEST_SEED}
    done = root / "synth.json"
    try:
        current = json.loads(done.read_text()) if done.is_file() else {}
    except (OSError, ValueError):
        current = {}
    if any(current.get(key) != value for key, value in settings.items()):
        synth.generate(root, classes, clips, synth.DEFAULT_FRAMES, synth.DEFAULT_SIZE, synth.DEFAULT_SPEED,
                       SYNTH_TEST_SEED, progress=progress)
    return root


def demo_models(registry: str | os.PathLike | None = None) -> list[str]:
    """Every bundled demo model of the registry (the `*-demo` entries)."""
    return [name for name, entry in load_registry(registry).items()
            if name.endswith("-demo") and entry.weights is not None and entry.weights.bundled]


def run(data: str | os.PathLike | None, model_specs: Sequence[str] = (), weights: Sequence[str] = (),
        strides: Sequence[int] = range(2, 9), frames: int = 4, train_stride: int | None = None,
        labels: str | None = None, batch_size: int = 8, workers: int | None = None, device: str = "auto",
        dtype: str = "fp32", registry: str | os.PathLike | None = None,
        progress: Callable[[int, int], None] | None = None) -> RobustnessResult:
    """Load the models and sweep. A model is a registry name, a checkpoint written by `vtempo train`,
    `LABEL=CHECKPOINT` (the same, shown as LABEL), or an architecture whose checkpoint is the `weights`
    entry in the same position. No data: the synthetic benchmark's test set (`synthetic_test_set`); no
    models: every bundled demo model. `progress(done, total)` follows this process's share."""
    at_least("frames", frames, 1)
    at_least("batch_size", batch_size, 1)
    at_least("workers", workers, 0)
    at_least("train_stride", train_stride, 1)
    model_specs = list(model_specs) or demo_models(registry)
    if weights and len(weights) > len(model_specs):
        raise UsageError(f"more {param('weights')} than {param('model_specs')}")
    if data is None:
        data = synthetic_test_set()
    ranks = distributed.start(device)
    try:
        loaded = []
        for number, spec in enumerate(model_specs):
            label, _, checkpoint = spec.partition("=")
            options = dict(registry=registry, device=ranks.device, dtype=dtype, frames=frames)
            if checkpoint:  # LABEL=CHECKPOINT: a checkpoint that records its architecture, shown as LABEL
                recognizer = load(checkpoint, **options)
                recognizer.name = label
            else:
                recognizer = load(spec, weights[number] if number < len(weights) else None, **options)
            loaded.append(recognizer)
        total = len(range(ranks.rank, len(read_video_set(data, labels)), ranks.world))
        done = [0]

        def advance(count: int) -> None:
            done[0] += count
            if progress is not None and ranks.main:
                progress(done[0], total)

        return sweep(data, loaded, strides, frames, train_stride, labels, batch_size, workers, ranks, advance)
    finally:
        distributed.stop()


def save(result: RobustnessResult, out: str | os.PathLike) -> dict[str, Path]:
    """robustness.json, robustness.csv and robustness.png (top-1 against stride, one line per model)."""
    out = Path(out)
    paths = {"json": out / "robustness.json", "csv": out / "robustness.csv", "png": out / "robustness.png"}
    write_file(paths["json"], json.dumps(result.to_json(), indent=1) + "\n", "out")
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["model", "stride", "top1", "top5", "drop_from_train_stride", "train_stride"])
    for name in result.models:
        for s in result.strides:
            drop = result.drop[name][s]
            writer.writerow([name, s, f"{result.top1[name][s]:.2f}", f"{result.top5[name][s]:.2f}",
                             "" if drop is None else f"{drop:.2f}", result.train_stride[name] or ""])
    write_file(paths["csv"], table.getvalue(), "out")
    trained = {v for v in result.train_stride.values() if v}
    image = line_plot(
        {name: [(s, result.top1[name][s]) for s in result.strides] for name in result.models},
        f"Top-1 vs sampling stride ({result.frames} frames, {result.videos} videos)", "stride (frames)", "top-1 (%)",
        marker_x=trained.pop() if len(trained) == 1 else None,
    )
    write_png(paths["png"], image, "out")
    return paths
