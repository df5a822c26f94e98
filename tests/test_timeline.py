"""`vtempo timeline`: windows take the frames their protocol samples, memory is bounded by the window
however long the video, per-frame models score each frame once, segments, the outputs, and the
segmentation of a video joined from synthetic clips of known classes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.data.synth import CLASSES, MIRROR, _PAIR_KIND, render_clip, write_video
from vtempo.fast import prepare
from vtempo.inference.timeline import (
    SegmentBuilder,
    Window,
    WindowStats,
    score_windows,
    timeline,
)
from vtempo.errors import UsageError
from vtempo.inference.recognizer import Recognizer, load
from vtempo.inference.results import Prediction
from vtempo.models import build
from vtempo.video.sampling import clip_indices
from vtempo.video.transforms import Preprocess
from vtempo.weights.registry import Protocol

RAW = Preprocess((16,), 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # pixels / 255: a frame's value survives


class CountingFrames:
    """A video of `total` frames made on demand: frame i is uniformly (i mod 251) grey."""

    def __init__(self, total: int, side: int = 16):
        self.total, self.side, self.index = total, side, -1

    def grab(self) -> bool:
        if self.index + 1 >= self.total:
            return False
        self.index += 1
        return True

    def retrieve(self) -> np.ndarray:
        return np.full((self.side, self.side, 3), self.index % 251, np.uint8)


class SeenFrames(torch.nn.Module):
    """Scores nothing; records which frames (by their grey value) each clip was made of."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.clips: list[list[int]] = []
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clips += (x[:, :, 0, 0, 0] * 255).round().int().tolist()
        return torch.zeros(x.shape[0], self.classes)


def _rec(model, protocol=Protocol("stride", stride=4), frames=4, preprocess=RAW, labels=("a", "b", "c")):
    return Recognizer(model=model, name="test", arch="test", labels=list(labels), frames=frames, protocol=protocol,
                      preprocess=preprocess)


@pytest.mark.parametrize("protocol", [Protocol("stride", stride=4), Protocol("uniform")], ids=["stride", "segments"])
def test_each_window_takes_the_frames_its_protocol_samples(protocol):
    model = SeenFrames()
    rec = _rec(model, protocol)
    windows = list(score_windows(CountingFrames(105), rec, window_frames=20, hop_frames=10, fps=10.0, batch_size=3))
    full = [w for w in windows if w.length == 20]
    assert [w.first for w in full] == list(range(0, 81, 10))
    offsets = clip_indices(protocol, 20, 4, clips=1)[0]
    assert model.clips[: len(full)] == [[w.first + o for o in offsets] for w in full]
    # frames 100..104 are in no full window: a shorter last window, from the next start, covers them
    assert windows[-1].first == 90 and windows[-1].length == 15 and windows[-1].end == pytest.approx(10.5)
    assert model.clips[-1] == [90 + o for o in clip_indices(protocol, 15, 4, clips=1)[0]]


def test_a_video_shorter_than_the_window_is_one_window():
    model = SeenFrames()
    windows = list(score_windows(CountingFrames(7), _rec(model), window_frames=20, hop_frames=10, fps=10.0))
    assert len(windows) == 1 and (windows[0].first, windows[0].length) == (0, 7)
    assert model.clips == [clip_indices(Protocol("stride", stride=4), 7, 4, clips=1)[0]]


@pytest.mark.parametrize("minutes", [2, pytest.param(30, marks=pytest.mark.slow)])
def test_frames_held_never_exceed_the_window_however_long_the_video(minutes):
    fps, window, hop = 12.0, 26, 13
    stats = WindowStats()
    count = 0
    for window_scored in score_windows(CountingFrames(int(minutes * 60 * fps)), _rec(SeenFrames()), window, hop, fps,
                                       stats=stats):
        count += 1
    total = int(minutes * 60 * fps)
    assert stats.frames == total
    assert stats.held_peak == window  # the earliest open window's frames, and never more
    assert count == stats.windows == (total - window) // hop + 1 + (1 if (total - window) % hop else 0)


@pytest.mark.slow
def test_per_frame_models_score_each_frame_once_and_match_the_clip_model():
    torch.manual_seed(0)
    net = prepare(build("tsn-r10w8", num_classes=3, frames=4), torch.device("cpu"))
    rec = _rec(net, Protocol("stride", stride=2), preprocess=Preprocess((16,), 16))
    frames = CountingFrames(60)
    stats = WindowStats()
    windows = list(score_windows(frames, rec, window_frames=8, hop_frames=4, fps=10.0, stats=stats))
    sampled = {w.first + o for w in windows for o in clip_indices(rec.protocol, w.length, 4, clips=1)[0]}
    assert stats.network_frames == len(sampled) < 4 * len(windows)  # neighbours share frames
    # a window's scores are the clip model's on the same frames
    window = windows[3]
    clip = np.stack([np.full((16, 16, 3), (window.first + o) % 251, np.uint8) for o in (0, 2, 4, 6)])
    from vtempo.video.transforms import make_views

    with torch.inference_mode():
        expected = net(make_views(clip, rec.preprocess, 1)).softmax(-1)[0]
    assert torch.allclose(window.probs, expected, atol=1e-5)


def _window(number: int, label: int, prob: float, hop: float = 1.0) -> Window:
    probs = torch.zeros(3)
    probs[label] = prob
    top = [Prediction("abc"[label], label, prob)]
    return Window(number, number, 2, number * hop, number * hop + 2 * hop, probs, top)


def test_segments_merge_runs_absorb_blips_and_respect_the_threshold():
    labels = [0, 0, 0, 1, 0, 0, 2, 2, 2, 2, 1, 1, 1]
    probs = [0.9] * 10 + [0.2, 0.2, 0.2]
    builder = SegmentBuilder(threshold=0.5, min_duration=1.5)
    for n, (label, prob) in enumerate(zip(labels, probs)):
        builder.add(_window(n, label, prob))
    segments = builder.finish(duration=14.0)
    # centres 1..13; the lone "b" at 4 is a blip (1 s) inside "a"; the last three windows are below
    # the threshold: no segment
    assert [(s.label, s.start, s.end) for s in segments] == [("a", 0.0, 6.5), ("c", 6.5, 10.5)]
    assert segments[0].score == pytest.approx(0.9) and segments[0].windows == 5


def _scored(number: int, probs: list[float]) -> Window:
    scores = torch.tensor(probs)
    best = int(scores.argmax())
    return Window(number, number, 2, float(number), number + 2.0, scores, [Prediction("abc"[best], best, float(scores[best]))])


def test_smoothing_labels_each_window_by_the_mean_of_its_neighbours_holding_only_those():
    probs = [[0.8, 0.2, 0.0]] * 2 + [[0.3, 0.7, 0.0]] + [[0.8, 0.2, 0.0]] * 2 + [[0.0, 0.1, 0.9]] * 3
    builder = SegmentBuilder(smooth=3)
    for n, p in enumerate(probs):
        builder.add(_scored(n, p))
        assert len(builder._recent) <= 3
    segments = builder.finish(duration=9.0)
    # window 2 alone says "b"; averaged with its neighbours it says "a"; the first and the last windows
    # average themselves and their one neighbour
    mean = lambda rows, k: sum(probs[r][k] for r in rows) / len(rows)  # noqa: E731
    assert [(s.label, s.start, s.end) for s in segments] == [("a", 0.0, 5.5), ("c", 5.5, 9.0)]
    a_scores = [mean([0, 1], 0)] + [mean([n - 1, n, n + 1], 0) for n in range(1, 5)]
    c_scores = [mean([4, 5, 6], 2), mean([5, 6, 7], 2), mean([6, 7], 2)]
    assert segments[0].score == pytest.approx(sum(a_scores) / 5) and segments[1].score == pytest.approx(sum(c_scores) / 3)
    unsmoothed = SegmentBuilder(smooth=1)
    for n, p in enumerate(probs):
        unsmoothed.add(_scored(n, p))
    assert [s.label for s in unsmoothed.finish(duration=9.0)] == ["a", "b", "a", "c"]
    with pytest.raises(UsageError, match="odd"):
        SegmentBuilder(smooth=2)
    short = SegmentBuilder(smooth=5)  # fewer windows than the smoothing span
    short.add(_scored(0, probs[0]))
    assert [(s.label, s.score) for s in short.finish(duration=2.0)] == [("a", pytest.approx(0.8))]


def test_a_blip_between_two_actions_is_split_between_them():
    builder = SegmentBuilder(min_duration=1.5)
    for n, label in enumerate([0, 0, 0, 1, 2, 2, 2]):
        builder.add(_window(n, label, 0.9))
    segments = builder.finish(duration=8.0)
    assert [(s.label, s.start, s.end) for s in segments] == [("a", 0.0, 4.0), ("c", 4.0, 8.0)]


# ----------------------------------------------------------------------------- real videos, demo models

FPS = 12
# The largest tempo at which a clip of f frames keeps its motion inside a 128-pixel frame.
TEMPO_LIMIT = {"translate": lambda f: 96 / (0.014 * 128 * (f - 1)), "scale": lambda f: 1.8 / (0.035 * (f - 1)),
               "separate": lambda f: 80 / (2 * 0.008 * 128 * (f - 1)), "rotate": lambda f: 1.0}


def joined_video(path: Path, seed: int, segments: int = 8, seconds: tuple[float, float] = (4, 6)):
    """Synthetic clips of distinct classes, each 4-6 s, joined into one video; the true segments."""
    rng = np.random.default_rng(seed)
    parts, truth, start = [], [], 0
    for n, label in enumerate(rng.permutation(len(CLASSES))[:segments]):
        name = CLASSES[label]
        kind = _PAIR_KIND.get(name) or _PAIR_KIND[MIRROR[name]]
        length = int(rng.integers(round(seconds[0] * FPS), round(seconds[1] * FPS) + 1))
        tempo = min(1.0, TEMPO_LIMIT[kind](length))
        parts.append(render_clip(name, [seed, n], frames=length, size=128, speed=(tempo, tempo)).frames)
        truth.append((start / FPS, (start + length) / FPS, name))
        start += length
    write_video(path, np.concatenate(parts), FPS)
    return truth


@pytest.mark.slow
def test_segments_of_joined_synthetic_clips_are_found_with_their_label_and_ends(tmp_path):
    """The acceptance test of `vtempo timeline`: five videos of eight joined clips (4-6 s each), the
    bundled model trained for timelines, default settings: at least 80% of the true segments found
    with the right label and both ends within one hop."""
    rec = load("tcm-timeline-demo", device="cpu")
    found = []
    for seed in range(1, 6):
        truth = joined_video(tmp_path / f"joined{seed}.mp4", seed=seed)
        result = timeline(tmp_path / f"joined{seed}.mp4", rec)
        hop = result.hop_frames / result.fps
        found += [any(s.label == name and abs(s.start - start) <= hop and abs(s.end - end) <= hop
                      for s in result.segments) for start, end, name in truth]
    assert sum(found) >= 0.8 * len(found), f"{sum(found)} of {len(found)} segments found"


@pytest.fixture(scope="module")
def short_joined(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("timeline") / "joined.mp4"
    joined_video(path, seed=0, segments=2, seconds=(2, 2.5))
    return path


@pytest.mark.slow
def test_cli_writes_windows_and_segments_a_plot_and_an_annotated_video(short_joined, tmp_path):
    runner = CliRunner()
    outputs = {}
    for kind in ("jsonl", "json", "csv"):
        extra = ["--plot", str(tmp_path / "t.png"), "--annotate", str(tmp_path / "t.mp4")] if kind == "json" else []
        result = runner.invoke(app, ["timeline", str(short_joined), "--model", "tsm-demo", "--device", "cpu",
                                     "--output", str(tmp_path / f"t.{kind}"), *extra])
        assert result.exit_code == 0, result.output
        outputs[kind] = (tmp_path / f"t.{kind}").read_text()
    lines = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    windows = [r for r in lines if r["kind"] == "window"]
    assert windows and all(w["end"] > w["start"] for w in windows) and len(windows[0]["top"]) == 5
    assert [r for r in lines if r["kind"] == "segment"]
    document = json.loads(outputs["json"])
    assert len(document) == 1 and len(document[0]["windows"]) == len(windows) and document[0]["segments"]
    rows = list(csv.DictReader(outputs["csv"].splitlines()))
    assert {r["kind"] for r in rows} == {"window", "segment"}
    import cv2

    assert cv2.imread(str(tmp_path / "t.png")) is not None
    from vtempo.video.sequential import SequentialVideo

    def count(path):
        with SequentialVideo(path) as video:
            while video.grab():
                pass
            return video.index + 1

    assert count(tmp_path / "t.mp4") == count(short_joined)


def test_cli_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["timeline", str(tmp_path / "nope.mp4"), "--model", "tsm-demo", "--device", "cpu"])
    assert missing.exit_code == 1 and "nope.mp4: no such file" in missing.output and "Traceback" not in missing.output
    bad = runner.invoke(app, ["timeline", str(tmp_path / "x.mp4"), "--output", str(tmp_path / "out.txt")])
    assert bad.exit_code == 2 and "jsonl" in bad.output
    negative = runner.invoke(app, ["timeline", str(tmp_path / "x.mp4"), "--hop", "-1"])
    assert negative.exit_code in (1, 2) and "Traceback" not in negative.output
    even = runner.invoke(app, ["timeline", str(tmp_path / "x.mp4"), "--smooth", "2"])
    assert even.exit_code == 2 and "--smooth must be an odd number" in even.output
    assert len(even.output.strip().splitlines()) == 1
