"""The synthetic tempo benchmark: classes mean what they say, mirrored classes are time-reversed, the
same seed writes the same bytes, and the files decode frame-accurately to the rendered frames."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.data import synth
from vtempo.video import open_video


def centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)


def areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_class_moves_the_way_its_name_says(seed):
    clips = {name: synth.render_clip(name, [seed, i, 7]) for i, name in enumerate(synth.CLASSES)}
    for clip in clips.values():
        assert clip.frames.shape == (32, 128, 128, 3) and clip.frames.dtype == np.uint8
        assert clip.boxes.shape == (32, 4)
        assert (clip.boxes[:, 2] > clip.boxes[:, 0]).all() and (clip.boxes[:, 3] > clip.boxes[:, 1]).all()
    dx = lambda name: np.diff(centres(clips[name].boxes)[[0, -1], 0])[0]  # noqa: E731
    dy = lambda name: np.diff(centres(clips[name].boxes)[[0, -1], 1])[0]  # noqa: E731
    assert dx("move_right") > 5 and dx("move_left") < -5
    assert dy("move_down") > 5 and dy("move_up") < -5
    assert areas(clips["grow"].boxes)[-1] > 1.3 * areas(clips["grow"].boxes)[0]
    assert areas(clips["shrink"].boxes)[-1] < areas(clips["shrink"].boxes)[0] / 1.3
    assert areas(clips["separate"].boxes)[-1] > areas(clips["separate"].boxes)[0]
    assert areas(clips["approach"].boxes)[-1] < areas(clips["approach"].boxes)[0]


@pytest.mark.parametrize("first, second", synth.PAIRS)
def test_mirrored_classes_are_the_same_clip_played_backwards(first, second):
    # same seed → same object, path and background; only the order of time (and the jitter) differs
    forward = synth.render_clip(first, [5, 0, 0])
    backward = synth.render_clip(second, [5, 0, 0])
    jitter = 2 * max(1, round(0.012 * 128)) + 1
    assert np.abs(forward.boxes[::-1] - backward.boxes).max() <= jitter
    assert forward.tempo == backward.tempo


def marker_turn(clip: synth.Clip) -> float:
    """Degrees the object turned over the clip, read from its pixels: the angle of the line from the
    object's fill to its marker dot (the fill's colour inverted). Camera jitter moves both alike; the
    angle grows when the object turns clockwise on screen, where y points down."""
    x0, y0, x1, y1 = clip.boxes[0]
    colours, counts = np.unique(clip.frames[0, y0:y1, x0:x1].reshape(-1, 3), axis=0, return_counts=True)
    fill = colours[counts.argmax()]
    angles = []
    for frame, (x0, y0, x1, y1) in zip(clip.frames, clip.boxes):
        window = frame[y0:y1, x0:x1]
        ends = [np.argwhere((window == colour).all(-1)).mean(0) for colour in (fill, 255 - fill)]
        (fy, fx), (my, mx) = ends
        angles.append(np.arctan2(my - fy, mx - fx))
    return float(np.degrees(np.unwrap(angles)[-1] - angles[0]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rotations_turn_the_way_their_names_say(seed):
    for name, sense in (("rotate_cw", 1), ("rotate_ccw", -1)):
        clip = synth.render_clip(name, [seed, 0, 1])
        expected = sense * synth.ROTATION_RATE * clip.tempo * (len(clip.frames) - 1)
        assert abs(marker_turn(clip) - expected) < 5
    assert abs(marker_turn(synth.render_clip("move_right", [seed, 0, 1]))) < 0.5 * 31 + 3  # idle spin only


def test_the_box_follows_the_object():
    clip = synth.render_clip("move_right", [3, 0, 0], frames=8)
    still = synth.render_clip("move_right", [3, 0, 0], frames=8, speed=(1e-6, 1e-6))
    # the object's pixels are where the box says: frames differ from a static clip only inside the boxes
    for t in (7,):
        changed = np.abs(clip.frames[t].astype(int) - still.frames[t].astype(int)).sum(-1) > 60
        ys, xs = np.nonzero(changed)
        boxes = np.concatenate([clip.boxes[t : t + 1], still.boxes[t : t + 1]])
        assert len(xs) > 20
        assert xs.min() >= boxes[:, 0].min() - 1 and xs.max() < boxes[:, 2].max() + 1
        assert ys.min() >= boxes[:, 1].min() - 1 and ys.max() < boxes[:, 3].max() + 1


def digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return sha.hexdigest()


def test_same_seed_same_bytes_and_frames_decode_exactly(tmp_path):
    kwargs = dict(classes=3, clips_per_class=2, frames=12, size=64)
    first = synth.generate(tmp_path / "a", seed=4, **kwargs)
    synth.generate(tmp_path / "b", seed=4, **kwargs)
    synth.generate(tmp_path / "c", seed=5, **kwargs)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    lines = (tmp_path / "a" / "list.txt").read_text().splitlines()
    assert lines[0] == "move_right/move_right_0000.mp4 0" and len(lines) == 6
    assert (tmp_path / "a" / "labels.txt").read_text().split() == ["move_right", "move_left", "move_down"]
    path, label = first.videos[3]
    clip = synth.render_clip(first.classes[label], synth.clip_seed(4, synth.CLASSES.index(first.classes[label]), 1),
                             frames=12, size=64)
    with open_video(path) as reader:
        assert reader.num_frames == 12
        decoded = reader.get([9, 2, 11]).astype(int)
    errors = [np.abs(decoded[n] - clip.frames[t]).mean() for n, t in enumerate([9, 2, 11])]
    neighbours = [np.abs(decoded[n] - clip.frames[t]).mean() for n, t in enumerate([8, 3, 10])]
    assert max(errors) < 8  # codec loss only
    assert all(e < n for e, n in zip(errors, neighbours))  # and the very frame asked for


def test_cli_writes_a_set_and_rejects_bad_options(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["synth", str(tmp_path / "s"), "--classes", "grow,shrink", "--clips", "1",
                                 "--frames", "4", "--size", "32", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["grow", "labels.txt", "list.txt", "shrink", "synth.json"]
    result = runner.invoke(app, ["synth", str(tmp_path / "t"), "--speed", "2,1"])
    assert result.exit_code == 2 and "speed" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["synth", str(tmp_path / "t"), "--classes", "jump"])
    assert result.exit_code == 2 and "jump" in result.output


def test_help_names_the_suffix_the_clips_are_written_with(tmp_path):
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "s"), "--classes", "grow,shrink", "--clips", "1",
                                      "--frames", "4", "--size", "32", "--no-progress"])
    suffixes = {path.suffix for path in (tmp_path / "s").rglob("*_0000.*")}
    assert result.exit_code == 0 and len(suffixes) == 1
    help_text = " ".join(CliRunner().invoke(app, ["synth", "--help"], terminal_width=200).output.split())
    assert f"class folders of {suffixes.pop()} clips" in help_text
