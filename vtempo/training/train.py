"""`vtempo train`: fit any architecture or registry model on a labelled video set.

The recipe defaults are the papers' (SGD, momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 at 60%
and 80% of the epochs, dropout 0.5, gradient norm clipped at 20, TSM's multi-scale crop); AdamW and a
cosine schedule with warm-up are one flag away. The same code runs on one process or under `torchrun`
(DDP, one rank per device, gloo on CPU). Everything random is seeded: clip sampling and crops depend
only on (seed, epoch, video), never on the number of workers. On the CPU a rerun or a resumed run is
bit-identical; on CUDA, cuDNN's backward kernels are not deterministic, so it is close, not equal.

The output folder holds `log.jsonl` (one line per epoch), `last.pt` (the full training state, for
`--resume`), `best.pt` (the best model by validation top-1, a vtempo checkpoint that records the
architecture, classes, frames, input size and sampling, so `evaluate` and `classify` need nothing
else) and `labels.txt`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vtempo import distributed, limits
from vtempo.data.dataset import (
    TRAIN_SCALES,
    ClipDataset,
    VideoSet,
    collate,
    read_video_set,
    split_video_set,
)
from vtempo.errors import UsageError, VtempoError, param
from vtempo.evaluation.evaluate import predict, topk_accuracy
from vtempo.inference.recognizer import create_model, read_checkpoint, resolve
from vtempo.protocol import Protocol
from vtempo.runtime import autocast, default_workers
from vtempo.video.transforms import Preprocess
from vtempo.weights.checkpoint import key_map, read_training_state, save_checkpoint
from vtempo.weights.hub import weights_path

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")


@dataclass
class TrainConfig:
    data: str
    model: str
    out: str = "runs/train"
    val: str | None = None  # a separate validation set; else `val_split` of DATA is held out
    val_split: float = 0.1
    labels: str | None = None
    weights: str | None = None  # starting weights: ImageNet ResNet, registry name, vtempo checkpoint, or "default" (the model's own)
    freeze_backbone: bool = False  # train only the new head (linear probing): backbone weights and BN statistics stay
    frames: int | None = None  # default: the registry entry's, else 8
    sampling: str | None = None  # None: the registry entry's protocol, else uniform (TSN segments)
    stride: int | None = None  # fixed-stride sampling (the TCM robustness condition)
    size: int | None = None  # input side; default: the entry's, else 224
    resize: int | None = None  # short side before cropping; default keeps the entry's 256/224 ratio
    epochs: int = 50
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float | None = None  # default 0.01 (SGD) or 1e-3 (AdamW)
    weight_decay: float | None = None  # default 5e-4 (SGD) or 0.05 (AdamW)
    momentum: float = 0.9
    schedule: str = "step"
    milestones: list[int] | None = None  # default: 60% and 80% of the epochs
    warmup: int = 0  # epochs of linear warm-up
    dropout: float = 0.5
    clip_grad: float | None = 20.0
    flip: bool = False  # horizontal flips swap left and right: off for direction-sensitive classes
    joins: float = 0.0  # fraction of training clips that end one action and begin another (see `join_clips`)
    scales: tuple[float, ...] = TRAIN_SCALES  # multi-scale crop sides, fractions of the short side; (1.0,): none
    dtype: str = "auto"  # auto: bf16 (fp16 when unsupported) autocast on CUDA, fp32 on CPU
    device: str = "auto"
    workers: int | None = None
    threads: int | None = None  # torch intra-op threads per process
    cache: bool = False  # keep every decoded video in memory (small sets); loads in-process (no workers)
    seed: int = 0
    shift: str | None = None  # TSM only: "online" trains the uni-directional shift (tsm-r50 → tsm-online-r50)
    resume: bool = False
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    out: Path
    best_top1: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def check_numbers(config: TrainConfig) -> None:
    """Every count and rate of `config` within its bounds (vtempo.limits): a UsageError naming the field."""
    for name, low, bound in (("frames", 1, "MAX_FRAMES"), ("stride", 1, "MAX_STRIDE"), ("size", 16, "MAX_INPUT_SIZE"),
                             ("resize", 16, "MAX_RESIZE"), ("epochs", 1, "MAX_ITERS"), ("batch_size", 1, "MAX_BATCH"),
                             ("warmup", 0, "MAX_ITERS"), ("workers", 0, "MAX_THREADS"), ("threads", 1, "MAX_THREADS"),
                             ("seed", 0, "MAX_SEED")):
        limits.check_int(name, getattr(config, name), low, bound)
    limits.check_number("lr", config.lr, 0, above=True)
    limits.check_number("weight_decay", config.weight_decay, 0)
    limits.check_number("dropout", config.dropout, 0, 1, below=True)
    limits.check_number("clip_grad", config.clip_grad, 0)
    limits.check_number("val_split", config.val_split, 0, 1, below=True)
    limits.check_number("joins", config.joins, 0, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_dtype(name: str, device: torch.device) -> str:
    if name != "auto":
        if name not in ("fp32", "bf16", "fp16"):
            raise UsageError(f"{param('dtype', name)}: must be auto, fp32, bf16 or fp16")
        if name == "fp16" and device.type != "cuda":
            raise UsageError("fp16 training needs CUDA; use bf16 or fp32 on CPU")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def training_protocol(config: TrainConfig, entry) -> Protocol:
    if config.stride is not None:
        if config.sampling not in (None, "stride"):
            raise UsageError(f"{param('stride', config.stride)} means stride sampling; leave {param('sampling')} unset or "
                             f"set {param('sampling', 'stride')}")
        if config.stride < 1:
            raise UsageError(f"{param('stride', config.stride)}: must be at least 1")
        return Protocol(sampling="stride", stride=config.stride)
    if config.sampling in (None, "protocol"):
        return entry.protocol if entry is not None else Protocol()
    if config.sampling == "stride":
        raise UsageError(f"{param('sampling', 'stride')} needs {param('stride', text='N')}")
    if config.sampling not in ("uniform", "dense", "twice"):
        raise UsageError(f"{param('sampling', config.sampling)}: must be protocol, uniform, dense or stride")
    return Protocol(sampling=config.sampling)


def load_sets(config: TrainConfig) -> tuple[VideoSet, VideoSet]:
    full = read_video_set(config.data, config.labels)
    if config.val is None:
        return split_video_set(full, config.val_split, config.seed)
    val = read_video_set(config.val, config.labels)
    if val.classes != full.classes:
        raise VtempoError(f"{config.val}: its classes differ from those of {config.data}")
    return full, val


# --------------------------------------------------------------------------- weights


def initial_weights(model: nn.Module, path: str) -> str:
    """Load starting weights into every model tensor they fit, except the classifier, which stays new.

    `path` is a checkpoint in any layout `vtempo.weights.checkpoint` reads (vtempo, official, MMAction2), a
    torchvision ImageNet ResNet state dict (`resnet50-*.pth`), or a registry name (its cached weights).
    Tensors the source lacks (temporal modules added to a plain ResNet, the head) keep their
    initialisation; a source tensor whose name fits but whose shape does not is an error (another
    backbone). Returns a one-line summary.
    """
    if not Path(path).exists():
        try:
            _, entry = resolve(path)
        except UsageError:
            raise VtempoError(f"{path}: no such checkpoint file or registry entry") from None
        if entry is None or entry.weights is None:
            raise VtempoError(f"{path}: not a checkpoint file nor a registry entry with weights")
        path = str(weights_path(entry))
    checkpoint = read_checkpoint(path, imagenet=True)
    state, layout = checkpoint.state, checkpoint.layout
    target = model.state_dict()
    model_keys = key_map(list(target), list(state), "vtempo" if layout == "torchvision" else layout)
    placed: dict[str, torch.Tensor] = {}
    unused, mismatched = [], []
    for key, tensor in state.items():
        model_key = model_keys[key]
        if model_key is None or model_key.startswith("fc."):
            unused.append(key)
            continue
        if tensor.shape != target[model_key].shape:
            mismatched.append(f"{key} {list(tensor.shape)} vs {list(target[model_key].shape)}")
            continue
        placed[model_key] = tensor.to(target[model_key].dtype) if tensor.is_floating_point() else tensor
    if mismatched:
        raise VtempoError(f"{path}: weights of another backbone ({len(mismatched)} shapes differ, e.g. {mismatched[0]})")
    if not placed:
        raise VtempoError(f"{path}: no tensor fits {type(model).__name__}; is it a checkpoint of this architecture?")
    model.load_state_dict({**target, **placed})
    fresh = [k for k in target if k not in placed and not k.endswith("num_batches_tracked")]
    return (f"{len(placed)} tensors from {Path(path).name} ({layout} layout); {len(fresh)} new "
            f"(head and modules the source lacks); {len(unused)} unused")


def starting_weights(config: TrainConfig, entry) -> str:
    """`--weights default` is the registry model's own checkpoint (fine-tuning it on new classes)."""
    if config.weights != "default":
        return config.weights
    if entry is None or entry.weights is None:
        raise UsageError(f"{param('weights', 'default')}: {config.model} has no published weights; name a registry model "
                         f"(`vtempo models`) or pass a checkpoint file")
    return config.model


def freeze_backbone(model: nn.Module) -> None:
    """Only the classifier head learns (linear probing); the backbone and its temporal modules stay."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("fc.")


# --------------------------------------------------------------------------- schedule


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate multiplier for each optimisation step (warm-up, then step or cosine decay)."""
    total = config.epochs * steps_per_epoch
    warm = config.warmup * steps_per_epoch
    milestones = config.milestones or [round(config.epochs * 0.6), round(config.epochs * 0.8)]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.schedule == "cosine":
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        epoch = step // steps_per_epoch
        return 0.1 ** sum(epoch >= m for m in milestones)

    return factor


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """BatchNorm parameters and biases get no weight decay (as the TSM/TSN reference code)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    if config.optimizer == "sgd":
        lr = config.lr if config.lr is not None else 0.01
        wd = config.weight_decay if config.weight_decay is not None else 5e-4
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    if config.optimizer == "adamw":
        lr = config.lr if config.lr is not None else 1e-3
        wd = config.weight_decay if config.weight_decay is not None else 0.05
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr)
    raise UsageError(f"{param('optimizer', config.optimizer)}: must be one of {', '.join(OPTIMIZERS)}")


# --------------------------------------------------------------------------- loop


def model_meta(config: TrainConfig, arch: str, classes: list[str], frames: int, protocol: Protocol,
               pre: Preprocess) -> dict[str, Any]:
    """What `best.pt` records so the model can be rebuilt and tested without the training command."""
    return {
        "arch": arch,
        "num_classes": len(classes),
        "frames": frames,
        "classes": list(classes),
        "input_size": pre.input_size,
        "resize": list(pre.resize),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "protocol": {"sampling": protocol.sampling, "stride": protocol.stride, "clips": 1, "crop": "centre"},
    }


def join_clips(clips: torch.Tensor, labels: torch.Tensor, num_classes: int, fraction: float,
               rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Temporal CutMix at one cut: each chosen clip keeps its first c of T frames and takes the rest
    from the next clip in the batch, and its target gives each class its share of the frames.

    A timeline slides the model over a video in which one action follows another, so some of its
    windows straddle a change of action. Trained on whole clips only, a model's answer for those
    windows is arbitrary; trained with joins, it follows the majority of the frames, which puts the
    ends of segments where the actions change. Returns (clips, targets), targets (B, K) probabilities."""
    targets = F.one_hot(labels, num_classes).float()
    frames = clips.shape[1]
    if fraction <= 0 or frames < 2 or len(clips) < 2:
        return clips, targets
    joined, mixed = clips.clone(), targets.clone()
    for i in range(len(clips)):
        if rng.random() >= fraction:
            continue
        partner, cut = (i + 1) % len(clips), rng.randint(1, frames - 1)
        joined[i, cut:] = clips[partner, cut:]
        mixed[i] = targets[i] * cut / frames + targets[partner] * (frames - cut) / frames
    return joined, mixed


def train_step(net: nn.Module, clips: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, dtype: str = "fp32", clip_grad: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step (autocast forward, scaled backward, gradient clipping); (loss, logits).
    `labels` are class indices (B,) or class probabilities (B, K)."""
    with autocast(clips.device, dtype):
        logits = net(clips)
        loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def channels_last(model: nn.Module) -> nn.Module:
    """Store 2D convolution weights channels-last: oneDNN and cuDNN run them faster (docs/demo-models.md).
    Only Conv2d weights: `model.to(memory_format=...)` fails on 3D kernels."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    return model


def train(config: TrainConfig, say: Callable[[str], None] | None = None,
          progress: Callable[[int, int, str], None] | None = None) -> TrainResult:
    """Run the training; returns the best validation top-1 (percent) and the epoch it came from.

    `say(line)` receives the run's messages (on the main rank only); `progress(step, steps, status)` is
    called after every step when `config.progress` is set."""
    if config.epochs < 1 or config.batch_size < 1:
        raise UsageError(f"{param('epochs', config.epochs)}, {param('batch_size', config.batch_size)}: both must be at "
                         f"least 1")
    check_numbers(config)
    if config.schedule not in SCHEDULES:
        raise UsageError(f"{param('schedule', config.schedule)}: must be one of {', '.join(SCHEDULES)}")
    if config.optimizer not in OPTIMIZERS:
        raise UsageError(f"{param('optimizer', config.optimizer)}: must be one of {', '.join(OPTIMIZERS)}")
    ranks = distributed.start(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, ranks, say, progress, save_checkpoint, predict, topk_accuracy)
    finally:
        distributed.stop()


def _train(config, ranks, report, progress, save_checkpoint, predict, topk_accuracy) -> TrainResult:
    seed_everything(config.seed)
    arch, entry = resolve(config.model)
    train_set, val_set = load_sets(config)
    classes = train_set.classes
    frames = config.frames or (entry.frames if entry else 8)
    protocol = training_protocol(config, entry)
    pre = Preprocess.from_entry(entry, config.size)
    if config.resize:
        pre = dataclasses.replace(pre, resize=(config.resize,))
    dtype = resolve_dtype(config.dtype, ranks.device)
    workers = 0 if config.cache else default_workers(device=ranks.device) if config.workers is None else config.workers
    out = Path(config.out)

    if config.shift is not None and not arch.startswith("tsm-"):
        raise UsageError(f"{param('shift', config.shift)}: {arch} has no temporal shift (only TSM models, tsm-*, do)")
    shift = {"shift": config.shift} if config.shift is not None else {}
    try:
        model = create_model(config.model, num_classes=len(classes), frames=frames, dropout=config.dropout, **shift)
    except ValueError as error:
        raise UsageError(f"{param('shift', config.shift)}: {error}") from None
    arch = model.arch  # tsm-online-… when trained with the online shift
    loaded = initial_weights(model, starting_weights(config, entry)) if config.weights else None
    if config.freeze_backbone:
        if loaded is None:
            raise UsageError(f"{param('freeze_backbone', True)} trains only the new head on a trained backbone: pass "
                             f"{param('weights', text='FILE')}")
        freeze_backbone(model)
    model.to(ranks.device)
    channels_last(model)
    optimizer = make_optimizer(model, config)
    if not 0 <= config.joins <= 1:
        raise UsageError(f"{param('joins', config.joins)}: must be a fraction in [0, 1]")
    if not config.scales or not all(0 < s <= 1 for s in config.scales):
        raise UsageError(f"{param('scales', config.scales)}: must be fractions in (0, 1]")
    train_data = ClipDataset(train_set, frames, protocol, pre, train=True, seed=config.seed, flip=config.flip,
                             cache=config.cache, scales=config.scales)
    eval_protocol = dataclasses.replace(protocol, clips=1, crop="centre")
    val_data = ClipDataset(val_set, frames, eval_protocol, pre, train=False, seed=config.seed, cache=config.cache)
    sampler = torch.utils.data.DistributedSampler(
        train_data, ranks.world, ranks.rank, shuffle=True, seed=config.seed, drop_last=True
    ) if ranks.distributed else None
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(
        train_data, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=workers, collate_fn=collate, generator=generator, pin_memory=ranks.device.type == "cuda",
    )
    steps_per_epoch = max(1, len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "fp16")

    start_epoch, best_top1, best_epoch, history = 0, -1.0, -1, []
    last_path, best_path, log_path = out / "last.pt", out / "best.pt", out / "log.jsonl"
    if config.resume and last_path.is_file():
        state = read_training_state(last_path)  # weights-only; a bad file is one line naming it
        if state.get("arch") != arch:
            raise VtempoError(f"{last_path}: a {state.get('arch')} checkpoint, not {arch}; use another "
                              f"{param('out', text='DIR')}")
        if state.get("classes") != classes:
            raise VtempoError(f"{last_path}: trained {arch} on other classes; use another {param('out', text='DIR')}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_top1, best_epoch = state["epoch"] + 1, state["best_top1"], state["best_epoch"]
        torch.set_rng_state(state["torch_rng"])  # dropout continues exactly where it stopped
        history = [json.loads(line) for line in log_path.read_text().splitlines() if '"epoch"' in line] \
            if log_path.is_file() else []
        history = [h for h in history if h.get("epoch", -1) < start_epoch]
    elif config.resume:
        raise VtempoError(f"{last_path}: nothing to resume (no last.pt in {param('out', text='DIR')})")
    elif last_path.exists() and ranks.main:
        raise VtempoError(f"{out}: holds a previous run; pass {param('resume', True)} to continue it or choose another "
                          f"{param('out', text='DIR')}")

    net: nn.Module = model
    if ranks.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None)

    def say(message: str) -> None:
        if ranks.main and report is not None:
            report(message)

    meta = model_meta(config, arch, classes, frames, protocol, pre)
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "labels.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        with log_path.open("a" if config.resume else "w", encoding="utf-8") as log:
            log.write(json.dumps({"config": config.to_json(), "arch": arch, "train_videos": len(train_set),
                                  "val_videos": len(val_set), "world": ranks.world, "dtype": dtype,
                                  "initial_weights": loaded, "start_epoch": start_epoch}) + "\n")
        say(f"training {arch} on {len(train_set)} videos ({len(classes)} classes), validating on {len(val_set)}; "
            f"{frames} frames, " + (f"stride {protocol.stride}" if protocol.sampling == "stride" else f"{protocol.sampling} sampling")
            + f", {pre.input_size}px, {ranks.world} process(es) on {ranks.device}, {dtype}")

    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        epoch_lr = optimizer.param_groups[0]["lr"]
        train_data.epoch = epoch
        generator.manual_seed(config.seed * 1_000_003 + epoch)  # shuffle order depends on the epoch only
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        if config.freeze_backbone:
            model.backbone.eval()  # its BatchNorms keep the checkpoint's statistics
        totals = [0.0, 0.0, 0.0]  # loss sum, correct, count
        join_rng = random.Random((config.seed * 1_000_003 + epoch) * 1_000_003 + ranks.rank)
        failures: list[tuple[int, str]] = []
        steps = 0
        show = progress if config.progress and ranks.main and progress is not None else None
        title, done = f"epoch {epoch + 1}/{config.epochs}", 0

        def advance(loss: float | None = None) -> None:
            nonlocal done
            done += 1
            if show is not None:
                show(done, steps_per_epoch, title if loss is None else f"{title} loss {loss:.3f}")

        for clips, labels, _, failed in loader:
            failures += failed
            # Under DDP each step's backward is an all-reduce every rank must join, so when one rank's
            # whole batch failed to decode, all ranks skip that step together.
            if not distributed.all_true(clips is not None, ranks):
                advance()
                continue
            if config.joins:
                clips, targets = join_clips(clips, labels, len(classes), config.joins, join_rng)
                labels = targets.argmax(1)
            else:
                targets = labels
            labels = labels.to(ranks.device, non_blocking=True)
            loss, logits = train_step(net, clips.to(ranks.device, non_blocking=True),
                                      targets.to(ranks.device, non_blocking=True), optimizer, scaler, dtype, config.clip_grad)
            scheduler.step()
            if not torch.isfinite(loss):
                raise VtempoError(f"epoch {epoch + 1}: the loss became {loss.item()}; lower the learning rate or use fp32")
            totals[0] += loss.item() * len(labels)
            totals[1] += (logits.argmax(1) == labels).sum().item()
            totals[2] += len(labels)
            steps += 1
            advance(loss=loss.item())
        loss_sum, correct, count = distributed.all_sum(totals, ranks)
        for rank_failures in distributed.all_gather_objects(failures, ranks):
            for _, reason in rank_failures:
                say(f"skipped {reason}")
        val_scores, val_labels, val_failed = predict(
            model, val_data, batch_size=config.batch_size, workers=workers, ranks=ranks, dtype=dtype
        )
        val_loss = float(F.cross_entropy(torch.from_numpy(val_scores), torch.from_numpy(val_labels))) if len(val_labels) else math.nan
        top1, top5 = (topk_accuracy(val_scores, val_labels, k) for k in (1, min(5, len(classes))))
        record = {
            "epoch": epoch, "lr": epoch_lr, "steps": steps, "train_loss": loss_sum / max(count, 1),
            "train_top1": 100 * correct / max(count, 1), "val_loss": val_loss, "val_top1": top1, "val_top5": top5,
            "val_failed": len(val_failed), "seconds": round(time.perf_counter() - began, 2),
        }
        history.append(record)
        improved = top1 > best_top1
        if improved:
            best_top1, best_epoch = top1, epoch
        if ranks.main:
            if improved:
                save_checkpoint(model, best_path, **meta, epoch=epoch, top1=top1)
            state = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "best_top1": best_top1, "best_epoch": best_epoch,
                "arch": arch, "classes": classes, "torch_rng": torch.get_rng_state(),
            }
            temporary = last_path.with_suffix(".tmp")
            torch.save(state, temporary)
            os.replace(temporary, last_path)
            with log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
            say(f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.3f} top-1 {record['train_top1']:.1f}%, "
                f"val loss {val_loss:.3f} top-1 {top1:.1f}% top-5 {top5:.1f}%  ({record['seconds']:.0f}s)"
                + ("  best" if improved else ""))
        distributed.barrier(ranks)
    return TrainResult(out, best_top1, best_epoch, history)
