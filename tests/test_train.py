"""`vtempo train`: the loss falls, resume continues exactly, DDP runs on two gloo processes, starting
weights load with a new head, and bad input is one line."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.data import synth
from vtempo.data.dataset import ClipDataset, read_video_set, split_video_set
from vtempo.errors import VtempoError
from vtempo.models import build
from vtempo.models.backbone import resnet
from vtempo.training.train import (
    TrainConfig,
    channels_last,
    initial_weights,
    join_clips,
    lr_factor,
    make_optimizer,
    train,
    train_step,
)
from vtempo.video.transforms import Preprocess
from vtempo.weights.registry import Protocol

TINY = dict(frames=2, size=32, resize=32, stride=3, batch_size=4, workers=0, progress=False, threads=1)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    synth.generate(root, classes="grow,shrink", clips_per_class=6, frames=10, size=32, seed=0)
    return root


@pytest.mark.slow
def test_a_few_steps_make_the_loss_fall(tiny_set):
    """The training step (optimizer, autocast, clipping) on a fixed batch of decoded clips: it must fit them."""
    videos = read_video_set(tiny_set)
    data = ClipDataset(videos, 2, Protocol(sampling="stride", stride=3), Preprocess((32,), 32), train=True)
    clips = torch.stack([data[i][0] for i in (0, 1, 6, 7)])
    labels = torch.tensor([data[i][1] for i in (0, 1, 6, 7)])
    torch.manual_seed(0)
    model = channels_last(build("tsm-r10w8", num_classes=2, frames=2, dropout=0.0))
    optimizer = make_optimizer(model, TrainConfig(data="", model="", optimizer="adamw", lr=3e-3))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    losses = [train_step(model, clips, labels, optimizer, scaler, "bf16", 20.0)[0].item() for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_train_writes_log_and_a_self_describing_best_checkpoint(tiny_set, tmp_path):
    config = TrainConfig(data=str(tiny_set), model="tsm-r10w8", out=str(tmp_path / "run"), epochs=2, optimizer="adamw",
                         schedule="cosine", val_split=0.25, **TINY)
    result = train(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["config"]["model"] == "tsm-r10w8" and [r["epoch"] for r in log[1:]] == [0, 1]
    assert all(r["train_loss"] > 0 and 0 <= r["val_top1"] <= 100 for r in log[1:])
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert saved["arch"] == "tsm-r10w8" and saved["classes"] == ["grow", "shrink"] and saved["frames"] == 2
    assert saved["protocol"]["sampling"] == "stride" and saved["protocol"]["stride"] == 3
    assert saved["epoch"] == result.best_epoch and saved["input_size"] == 32


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(tiny_set, tmp_path):
    # On the CPU: cuDNN's backward kernels are not deterministic, so on CUDA a resumed run is close, not equal.
    common = dict(data=str(tiny_set), model="tsn-r10w8", milestones=[5], val_split=0.25, device="cpu", **TINY)
    train(TrainConfig(out=str(tmp_path / "straight"), epochs=2, **common))
    train(TrainConfig(out=str(tmp_path / "split"), epochs=1, **common))
    with pytest.raises(VtempoError, match="resume=True"):
        train(TrainConfig(out=str(tmp_path / "split"), epochs=2, **common))
    train(TrainConfig(out=str(tmp_path / "split"), epochs=2, resume=True, **common))
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 1
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    epochs = [json.loads(line).get("epoch") for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [e for e in epochs if e is not None] == [0, 1]


def test_joined_clips_take_their_partners_frames_after_the_cut_and_share_the_label_by_frames():
    import random

    clips = torch.arange(5 * 4, dtype=torch.float32).view(5, 4, 1, 1, 1).expand(5, 4, 3, 2, 2).clone()
    labels = torch.tensor([0, 1, 2, 0, 1])
    joined, targets = join_clips(clips, labels, 3, 1.0, random.Random(0))
    assert torch.allclose(targets.sum(1), torch.ones(5))
    for i in range(5):
        partner = (i + 1) % 5
        cut = next(t for t in range(4) if not torch.equal(joined[i, t], clips[i, t])) if not torch.equal(
            joined[i], clips[i]) else 4
        assert 1 <= cut <= 3, "every clip is joined at a cut inside it"
        assert torch.equal(joined[i, :cut], clips[i, :cut]) and torch.equal(joined[i, cut:], clips[partner, cut:])
        expected = torch.zeros(3)
        expected[labels[i]] += cut / 4
        expected[labels[partner]] += (4 - cut) / 4
        assert torch.allclose(targets[i], expected)
    unchanged, one_hot = join_clips(clips, labels, 3, 0.0, random.Random(0))
    assert torch.equal(unchanged, clips) and torch.equal(one_hot.argmax(1), labels)
    half = sum(not torch.equal(a, b) for a, b in zip(join_clips(clips.repeat(40, 1, 1, 1, 1), labels.repeat(40), 3, 0.5,
                                                                random.Random(1))[0], clips.repeat(40, 1, 1, 1, 1)))
    assert 60 <= half <= 140, half  # about half of 200 clips


def test_training_with_joins_runs_and_rejects_a_fraction_outside_0_1(tiny_set, tmp_path):
    config = TrainConfig(data=str(tiny_set), model="tsm-r10w8", out=str(tmp_path / "run"), epochs=1, val_split=0.25,
                         joins=0.5, **TINY)
    assert train(config).best_epoch == 0
    result = CliRunner().invoke(app, ["train", str(tiny_set), "--model", "tsn-r10w8", "--joins", "1.5",
                                      "--output", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--joins 1.5" in result.output and "Traceback" not in result.output


def test_more_ranks_than_gpus_is_a_usage_error(monkeypatch):
    from vtempo import distributed
    from vtempo.errors import UsageError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "pick_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match="rank 1 .* 1 are visible.*device='cpu'"):
        distributed.start("auto")
    assert not torch.distributed.is_initialized()


def test_learning_rate_schedules():
    step = lr_factor(TrainConfig(data="", model="", epochs=10), steps_per_epoch=2)
    assert [step(s) for s in (0, 11, 12, 15, 16, 19)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = lr_factor(TrainConfig(data="", model="", epochs=10, schedule="cosine", warmup=1), steps_per_epoch=4)
    assert cosine(0) == pytest.approx(0.25) and cosine(3) == pytest.approx(1.0)
    assert cosine(4) == pytest.approx(1.0) and cosine(39) < 0.01


def test_starting_weights_from_torchvision_layout_and_from_another_checkpoint(tmp_path):
    imagenet = resnet("r10w8")
    imagenet.fc = torch.nn.Linear(64, 1000)  # an ImageNet-style head the new model must not take
    torch.save(imagenet.state_dict(), tmp_path / "resnet.pth")
    model = build("tsm-r10w8", num_classes=3, frames=2)
    head_before = model.fc.weight.clone()
    summary = initial_weights(model, str(tmp_path / "resnet.pth"))
    assert "torchvision layout" in summary
    assert torch.equal(model.backbone.layer1[0].conv1.net.weight, imagenet.layer1[0].conv1.weight)
    assert torch.equal(model.fc.weight, head_before)

    from vtempo.weights.checkpoint import save_checkpoint

    tsm = build("tsm-r10w8", num_classes=5, frames=2)
    save_checkpoint(tsm, tmp_path / "tsm.pt", arch="tsm-r10w8")
    tcm = build("tcm-r10w8", num_classes=3, frames=2)  # TSM plus a module: the module stays new
    initial_weights(tcm, str(tmp_path / "tsm.pt"))
    assert torch.equal(tcm.backbone.conv1.weight, tsm.backbone.conv1.weight)
    with pytest.raises(VtempoError, match="another backbone"):
        initial_weights(build("tsm-r14w8", num_classes=3, frames=2), str(tmp_path / "tsm.pt"))


def test_val_split_is_stratified_and_seeded(tiny_set):
    videos = read_video_set(tiny_set)
    train_a, val_a = split_video_set(videos, 0.34, seed=1)
    train_b, val_b = split_video_set(videos, 0.34, seed=1)
    assert val_a.videos == val_b.videos and len(val_a) == 4 and len(train_a) == 8
    assert sorted(label for _, label in val_a.videos) == [0, 0, 1, 1]
    assert not set(val_a.videos) & set(train_a.videos)


def test_bad_input_is_one_line(tmp_path, tiny_set):
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(tmp_path / "nowhere"), "--model", "tsn-r10w8"])
    assert result.exit_code == 1 and "nowhere" in result.output and "no such file" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("a.avi 0\nb.avi\n")
    result = runner.invoke(app, ["train", str(bad_list), "--model", "tsn-r10w8"])
    assert result.exit_code == 1 and f"{bad_list}:2" in result.output
    result = runner.invoke(app, ["train", str(tiny_set), "--model", "nonet-r50"])
    assert result.exit_code == 2 and "nonet-r50" in result.output
    result = runner.invoke(app, ["train", str(tiny_set), "--model", "tsn-r10w8", "--sampling", "stride"])
    assert result.exit_code == 2 and "--stride" in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes_train_and_evaluate(tiny_set, tmp_path):
    """torchrun with two CPU ranks: the ranks share the epoch, rank 0 alone writes, and a DDP evaluation
    gives exactly the single-process figures."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}", "-m", "vtempo.cli"]
    out = tmp_path / "ddp"
    run = subprocess.run(
        torchrun + ["train", str(tiny_set), "--model", "tsm-r10w8", "--output", str(out), "--epochs", "2", "--frames", "2",
                    "--size", "32", "--resize", "32", "--stride", "3", "--batch-size", "2", "--workers", "0",
                    "--val-split", "0.25", "--device", "cpu", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[0]["world"] == 2 and [r["epoch"] for r in records[1:]] == [0, 1]
    assert (out / "best.pt").is_file() and run.stdout.count("epoch 2/2") == 1  # only rank 0 speaks

    evaluation = subprocess.run(
        torchrun + ["evaluate", str(tiny_set), "--model", str(out / "best.pt"), "--output", str(tmp_path / "eval-ddp"),
                    "--workers", "0", "--device", "cpu", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    single = CliRunner().invoke(app, ["evaluate", str(tiny_set), "--model", str(out / "best.pt"), "--output",
                                      str(tmp_path / "eval-one"), "--workers", "0", "--device", "cpu", "--no-progress"])
    assert single.exit_code == 0, single.output
    ddp = json.loads((tmp_path / "eval-ddp" / "evaluation.json").read_text())
    one = json.loads((tmp_path / "eval-one" / "evaluation.json").read_text())
    assert ddp["videos"] == one["videos"] == 12
    assert ddp["confusion"] == one["confusion"] and ddp["top1"] == one["top1"]


@pytest.mark.slow
def test_ddp_ranks_skip_together_when_one_rank_has_no_decodable_clip(tiny_set, tmp_path):
    """Batch size 1, one undecodable file among 14: the rank whose batch failed and the other skip that step
    together (without the agreement the other rank waits in its gradient all-reduce until the timeout)."""
    data = tmp_path / "with-broken"
    for label in ("grow", "shrink"):
        (data / label).mkdir(parents=True)
        for clip in (tiny_set / label).iterdir():
            (data / label / clip.name).write_bytes(clip.read_bytes())
    (data / "grow" / "copy.mp4").write_bytes(next((tiny_set / "grow").glob("*.mp4")).read_bytes())
    (data / "shrink" / "broken.mp4").write_bytes(b"not a video")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", "-m", "vtempo.cli", "train", str(data), "--val", str(tiny_set), "--model",
         "tsn-r10w8", "--output", str(tmp_path / "run"), "--epochs", "1", "--frames", "2", "--size", "32", "--resize", "32",
         "--stride", "3", "--batch-size", "1", "--workers", "0", "--device", "cpu", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.count("skipped") == 1 and "broken.mp4" in run.stdout
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in records[1:]] == [0] and records[1]["steps"] == 6


def test_resume_with_a_checkpoint_of_another_architecture_names_both(tiny_set, tmp_path):
    common = dict(data=str(tiny_set), out=str(tmp_path / "run"), epochs=1, val_split=0.25, device="cpu", **TINY)
    train(TrainConfig(model="tsn-r10w8", **common))
    with pytest.raises(VtempoError, match="a tsn-r10w8 checkpoint, not tsm-r10w8"):
        train(TrainConfig(model="tsm-r10w8", resume=True, **common))
