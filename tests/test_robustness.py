"""The tempo-robustness sweep: strides and padding, one decode per video, and the whole
`synth → train → evaluate → robustness` chain through the command line."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import videogen
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.data.dataset import read_video_set
from vtempo.errors import UsageError
from vtempo.evaluation.robustness import (
    StrideSweepDataset,
    parse_strides,
    sweep_indices,
)
from vtempo.video import readers
from vtempo.video.transforms import Preprocess


def test_parse_strides():
    assert parse_strides("2..8") == [2, 3, 4, 5, 6, 7, 8]
    assert parse_strides("2-4,8") == [2, 3, 4, 8]
    assert parse_strides("4") == [4]
    for bad in ("0..3", "a", ""):
        with pytest.raises(UsageError):
            parse_strides(bad)


def test_strides_share_one_start_and_repeat_the_last_frame():
    # 40 frames, T=4, longest stride 8: the 25-frame window is centred (start 7) for every stride
    assert sweep_indices(40, 4, [2, 4, 8]) == {2: [7, 9, 11, 13], 4: [7, 11, 15, 19], 8: [7, 15, 23, 31]}
    # 20 frames are too few for stride 8: start 0 and the last frame repeats, as in the TCM paper
    assert sweep_indices(20, 4, [2, 8]) == {2: [0, 2, 4, 6], 8: [0, 8, 16, 19]}
    assert sweep_indices(1, 4, [3]) == {3: [0, 0, 0, 0]}


def test_each_stride_gets_exactly_its_frames_from_one_decode(tmp_path, monkeypatch):
    videogen.write_opencv(tmp_path / "v.mp4", 20)
    calls = []
    original = readers.VideoReader.get
    monkeypatch.setattr(readers.VideoReader, "get", lambda self, idx: calls.append(list(idx)) or original(self, idx))
    (tmp_path / "labels.txt").write_text("a\n")
    (tmp_path / "list.txt").write_text("v.mp4 0\n")
    pre = Preprocess((48, 64), 64, mean=(0, 0, 0), std=(1, 1, 1))
    dataset = StrideSweepDataset(read_video_set(tmp_path / "list.txt"), 4, [2, 5, 8], [pre])
    clips, label, index, error = dataset[0]
    assert error is None and label == 0 and len(calls) == 1
    assert calls[0] == [0, 2, 4, 5, 6, 8, 10, 15, 16, 19]
    frames = (clips[pre].numpy() * 255).round().clip(0, 255).astype(np.uint8).transpose(0, 1, 3, 4, 2)
    assert frames.shape == (3, 4, 64, 64, 3)
    read = [[videogen.read_index(f) for f in clip] for clip in frames]
    assert read == [[0, 2, 4, 6], [0, 5, 10, 15], [0, 8, 16, 19]]


@pytest.mark.slow
def test_synth_train_evaluate_robustness_end_to_end(tmp_path):
    runner = CliRunner()

    def ok(*args: str):
        result = runner.invoke(app, [*args, "--no-progress"])
        assert result.exit_code == 0, result.output
        return result

    data = tmp_path / "set"
    ok("synth", str(data), "--classes", "3", "--clips", "4", "--frames", "20", "--size", "64", "--seed", "3")
    run = tmp_path / "run"
    ok("train", str(data), "--model", "tsm-r10w8", "--output", str(run), "--epochs", "1", "--frames", "4",
       "--stride", "4", "--size", "64", "--resize", "64", "--batch-size", "4", "--workers", "0", "--val-split", "0.25")
    result = ok("evaluate", str(data), "--model", str(run / "best.pt"), "--output", str(tmp_path / "eval"), "--workers", "0")
    assert "top-1" in result.output and "move_down" in result.output
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["videos"] == 12 and evaluation["classes"] == ["move_right", "move_left", "move_down"]
    assert np.array(evaluation["confusion"]).sum() == 12 and evaluation["sampling"] == "stride 4"
    assert cv2.imread(str(tmp_path / "eval" / "confusion.png")) is not None

    (data / "move_left" / "broken.mp4").write_bytes(b"not a video at all")
    result = runner.invoke(app, ["robustness", str(data), "--model", f"a={run / 'best.pt'}", "--model",
                                 f"b={run / 'best.pt'}", "--stride", "2..8", "--frames", "4", "--output",
                                 str(tmp_path / "rob"), "--workers", "0", "--no-progress"])
    assert result.exit_code == 1, result.output  # one video failed; the others were still measured
    assert "broken.mp4" in result.output and "τ=8" in result.output
    report = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert report["videos"] == 12 and len(report["failed"]) == 1 and report["strides"] == list(range(2, 9))
    assert report["top1"]["a"] == report["top1"]["b"]  # the same weights under two names
    assert report["train_stride"] == {"a": 4, "b": 4} and report["drop"]["a"]["4"] == 0
    rows = list(csv.DictReader((tmp_path / "rob" / "robustness.csv").open()))
    assert len(rows) == 14 and {r["model"] for r in rows} == {"a", "b"}
    plot = cv2.imread(str(tmp_path / "rob" / "robustness.png"))
    assert plot is not None and plot.shape[1] > plot.shape[0] > 300


@pytest.mark.slow
def test_demo_zoo_retrain_runs_two_trainings_at_once(tmp_path):
    from vtempo.training.demo_zoo import Recipe, retrain

    tiny = Recipe(backbone="r10w8", size=32, clip_frames=12, train_clips=2, val_clips=1, test_clips=1, epochs=2,
                  batch_size=4, classes=4)
    report = retrain(tmp_path, families=["tsn", "tsm"], jobs=2, recipe=tiny)
    assert set(report["models"]) == {"tsn", "tsm"} and report["jobs"] == 2
    for family in ("tsn", "tsm"):
        log = (tmp_path / "runs" / family / "train.log").read_text()
        assert "epoch 2/2" in log
        assert (tmp_path / "eval" / family / "evaluation.json").is_file()
    assert set(report["robustness"]["models"]) == {"tsn", "tsm"}
    assert "| tsm-demo |" in (tmp_path / "report.md").read_text()
    # a second call finds both runs finished and trains nothing
    again = retrain(tmp_path, families=["tsn", "tsm"], jobs=2, recipe=tiny)
    assert again["models"]["tsm"]["top1"] == report["models"]["tsm"]["top1"]
    assert again["seconds"]["tsm"] == 0.0


def test_demo_recipe_gives_each_family_its_own_settings(tmp_path):
    from vtempo.training.demo_zoo import Recipe, _train_config

    recipe = Recipe(epochs=3, lr=1e-3, per_family={"tam": {"lr": 5e-3, "epochs": 7}})
    data = {"train": tmp_path / "train", "val": tmp_path / "val"}
    tam, tsm = (_train_config(family, data, tmp_path, 0, recipe, 1) for family in ("tam", "tsm"))
    assert (tam.lr, tam.epochs, tam.model) == (5e-3, 7, "tam-r14w16")
    assert (tsm.lr, tsm.epochs, tsm.model) == (1e-3, 3, "tsm-r14w16")
    timeline = _train_config("tcm-timeline", data, tmp_path, 0, Recipe(), 1)  # fine-tuned from tcm-demo, joined clips
    assert (timeline.model, timeline.weights, timeline.joins, tsm.joins) == ("tcm-r14w16", "tcm-demo", 0.3, 0.0)
