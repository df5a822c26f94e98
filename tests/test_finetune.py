"""Fine-tuning a published model on the user's own classes: `vtempo train DATA --model NAME --weights
default` takes the backbone and temporal modules from NAME's checkpoint and a new head sized to DATA's
classes, writes those classes into best.pt (so `classify --model best.pt` prints them), beats the same
architecture trained from scratch for as many epochs, and `--freeze-backbone` trains the head alone."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vtempo
from vtempo.cli import app
from vtempo.data import synth
from vtempo.errors import UsageError
from vtempo.inference.recognizer import load
from vtempo.training.train import TrainConfig, train
from vtempo.weights.checkpoint import read_file, read_state

SOURCE = "tsm-demo"  # bundled; trained on the ten synthetic classes at 128², 4 frames at stride 4
CLASSES = {"approach": "together", "separate": "apart"}  # the user's names for two kinds of motion


def user_folder(root: Path, clips: int, seed: int) -> Path:
    """Class folders named by the user, as `vtempo train` expects them (no list or labels file)."""
    synth.generate(root, classes=",".join(CLASSES), clips_per_class=clips, frames=32, size=128, seed=seed)
    for rendered, name in CLASSES.items():
        (root / rendered).rename(root / name)
    (root / "labels.txt").unlink()
    (root / "list.txt").unlink()
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    return {"train": user_folder(root / "train", 16, seed=3), "val": user_folder(root / "val", 10, seed=4)}


def config(data: dict[str, Path], out: Path, **options) -> TrainConfig:
    recipe = dict(model=SOURCE, epochs=4, batch_size=8, optimizer="adamw", lr=3e-3, schedule="cosine", dropout=0.1, scales=(1.0,),
                  workers=0, cache=True, progress=False, seed=0)
    return TrainConfig(data=str(data["train"]), val=str(data["val"]), out=str(out), **{**recipe, **options})


@pytest.mark.slow
def test_fine_tuning_beats_training_from_scratch_and_keeps_the_new_labels(data, tmp_path):
    tuned = train(config(data, tmp_path / "tuned", weights="default"))
    scratch = train(config(data, tmp_path / "scratch"))
    assert tuned.best_top1 >= 75.0, tuned.history
    assert tuned.best_top1 > scratch.best_top1, (tuned.history, scratch.history)

    best = tmp_path / "tuned" / "best.pt"
    _, meta, _ = read_state(read_file(best))
    assert meta["classes"] == ["apart", "together"] and meta["arch"] == vtempo.get_entry(SOURCE).arch
    assert load(best).labels == ["apart", "together"]
    videos = sorted(data["val"].glob("*/*.mp4"))
    result = CliRunner().invoke(app, ["classify", *map(str, videos[:1] + videos[-1:]), "--model", str(best),
                                      "--topk", "1", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "apart" in result.output and "together" in result.output


@pytest.mark.slow
def test_freeze_backbone_trains_only_the_new_head(data, tmp_path):
    probe = train(config(data, tmp_path / "probe", weights="default", freeze_backbone=True, epochs=3, lr=1e-2))
    source, _, _ = read_state(read_file(_source_path()))
    tuned, _, _ = read_state(read_file(tmp_path / "probe" / "best.pt"))
    backbone = [key for key in tuned if not key.startswith("fc.")]
    assert backbone and all(torch.equal(tuned[key], source[key].to(tuned[key].dtype)) for key in backbone)  # BN statistics too
    assert tuned["fc.weight"].shape == (2, source["fc.weight"].shape[1])
    assert probe.best_top1 >= 75.0, probe.history  # the head alone learns the new classes


def _source_path() -> Path:
    from vtempo.weights.hub import weights_path

    return weights_path(vtempo.get_entry(SOURCE))


def test_usage_errors_before_any_training(data, tmp_path):
    with pytest.raises(UsageError, match="no published weights"):
        train(config(data, tmp_path / "a", model="tsm-r14w16", weights="default"))
    with pytest.raises(UsageError, match="freeze_backbone=True"):
        train(config(data, tmp_path / "b", freeze_backbone=True))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    result = CliRunner().invoke(app, ["train", str(data["train"]), "--model", "tsm-demo", "--freeze-backbone",
                                      "--output", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--freeze-backbone trains only the new head on a trained backbone: pass --weights FILE" in result.output
