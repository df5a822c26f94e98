"""Long-run features of `vtempo timeline` and `vtempo embed`: shards that merge back into a one-process
run's output, and resuming after a crash."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vtempo.cli import app

CLIPS = Path(__file__).resolve().parent.parent / "examples" / "clips"


def run_cli(args: list[str]):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    names = ["grow.mp4", "move_left.mp4", "rotate_cw.mp4"]
    return [Path(shutil.copy(CLIPS / name, folder / name)) for name in names]


TIMELINE = ["--model", "tsn-demo", "--device", "cpu", "--window", "1", "--hop", "1"]


def without_provenance(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "provenance"} for row in rows]


@pytest.mark.slow
def test_timeline_shards_merge_into_the_one_process_output(clips, tmp_path):
    whole = tmp_path / "whole.jsonl"
    result = run_cli(["timeline", *clips, *TIMELINE, "--output", whole])
    assert result.exit_code == 0, result.output
    sharded = tmp_path / "sharded.jsonl"
    for k in range(2):
        result = run_cli(["timeline", *clips, *TIMELINE, "--output", sharded, "--shard", f"{k}/2"])
        assert result.exit_code == 0, result.output
    parts = [tmp_path / f"sharded.part-{k}-of-2.jsonl" for k in range(2)]
    assert all(part.exists() for part in parts) and not sharded.exists()
    inputs = [arg for clip in clips for arg in ("--inputs", clip)]
    result = run_cli(["merge", *parts, "--output", sharded, *inputs])
    assert result.exit_code == 0, result.output
    expected = records(whole)
    assert [r["kind"] for r in expected].count("summary") == len(clips)
    assert without_provenance(records(sharded)) == without_provenance(expected)


@pytest.mark.slow
def test_timeline_resume_after_a_cut_line_gives_every_video_once(clips, tmp_path):
    out = tmp_path / "t.jsonl"
    result = run_cli(["timeline", *clips, *TIMELINE, "--output", out])
    assert result.exit_code == 0, result.output
    expected = records(out)
    again = run_cli(["timeline", *clips, *TIMELINE, "--output", out])
    assert again.exit_code != 0 and "--resume" in again.output and "--overwrite" in again.output
    # a crash in the second video: its first window written, its second cut midway
    lines = out.read_bytes().splitlines(keepends=True)
    first_end = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "summary")
    out.write_bytes(b"".join(lines[:first_end + 2]) + lines[first_end + 2][:20])
    result = run_cli(["timeline", *clips, *TIMELINE, "--output", out, "--resume"])
    assert result.exit_code == 0, result.output
    resumed = records(out)
    assert without_provenance(resumed) == without_provenance(expected)
    summaries = [r["video"] for r in resumed if r["kind"] == "summary"]
    assert sorted(summaries) == sorted(str(c) for c in clips) and len(set(summaries)) == len(clips)
    result = run_cli(["timeline", *clips, *TIMELINE, "--output", out, "--overwrite"])
    assert result.exit_code == 0 and without_provenance(records(out)) == without_provenance(expected)


EMBED = ["--model", "tsn-demo", "--device", "cpu", "--workers", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--window", "1", "--hop", "0.5"]], ids=["video", "window"])
def test_embed_shards_merge_into_the_one_process_output(clips, tmp_path, mode):
    import numpy as np

    whole = tmp_path / "whole.npy"
    result = run_cli(["embed", *clips, *EMBED, *mode, "--output", whole])
    assert result.exit_code == 0, result.output
    again = run_cli(["embed", *clips, *EMBED, *mode, "--output", whole])
    assert again.exit_code != 0 and "--resume" in again.output and "--overwrite" in again.output
    sharded = tmp_path / "sharded.npy"
    for k in range(2):
        result = run_cli(["embed", *clips, *EMBED, *mode, "--output", sharded, "--shard", f"{k}/2"])
        assert result.exit_code == 0, result.output
    parts = [tmp_path / f"sharded.part-{k}-of-2.npy" for k in range(2)]
    assert all(part.exists() and part.with_suffix(".jsonl").exists() for part in parts)
    inputs = [arg for clip in clips for arg in ("--inputs", clip)]
    result = run_cli(["merge", *reversed(parts), "--output", sharded, *inputs])
    assert result.exit_code == 0, result.output
    expected, merged = np.load(whole), np.load(sharded)
    assert merged.shape == expected.shape and len(merged) >= len(clips)
    assert np.abs(merged - expected).max() <= 1e-5
    assert records(sharded.with_suffix(".jsonl")) == records(whole.with_suffix(".jsonl"))


@pytest.mark.slow
def test_embed_merge_refuses_an_input_in_two_parts(clips, tmp_path):
    out = tmp_path / "e.npy"
    for k in range(2):
        result = run_cli(["embed", *clips, *EMBED, "--output", out, "--shard", f"{k}/2"])
        assert result.exit_code == 0, result.output
    part = tmp_path / "e.part-0-of-2.npy"
    copy = tmp_path / "copy.part-0-of-2.npy"
    shutil.copy(part, copy)
    shutil.copy(part.with_suffix(".jsonl"), copy.with_suffix(".jsonl"))
    result = run_cli(["merge", part, copy, tmp_path / "e.part-1-of-2.npy", "--output", out])
    assert result.exit_code != 0 and "appears twice" in result.output and not out.exists()


@pytest.mark.slow
def test_embed_resume_after_a_crash_gives_every_video_once(clips, tmp_path):
    import numpy as np

    from vtempo.inference.embed import EmbeddingWriter

    whole = tmp_path / "whole.npy"
    result = run_cli(["embed", *clips, *EMBED, "--window", "1", "--output", whole])
    assert result.exit_code == 0, result.output
    expected, expected_index = np.load(whole), records(whole.with_suffix(".jsonl"))
    # a run cut in the second video: its rows written, its index lines only partly
    out = tmp_path / "e.npy"
    index = out.with_suffix(".jsonl")
    first = sum(r["path"] == str(clips[0]) for r in expected_index)
    second = sum(r["path"] == str(clips[1]) for r in expected_index)
    assert first and second > 1
    raw = out.with_name(out.name + ".part")
    raw.write_bytes(expected.shape[1].to_bytes(EmbeddingWriter.DIM_BYTES, "little")
                    + expected[: first + second].astype("<f4").tobytes())
    lines = whole.with_suffix(".jsonl").read_bytes().splitlines(keepends=True)
    index.write_bytes(b"".join(lines[: first + 1]) + lines[first + 1][:15])
    result = run_cli(["embed", *clips, *EMBED, "--window", "1", "--output", out, "--resume"])
    assert result.exit_code == 0, result.output
    assert "done before" in result.output and not raw.exists()
    assert records(index) == expected_index
    assert np.abs(np.load(out) - expected).max() <= 1e-5
    # resuming a finished output does nothing more
    result = run_cli(["embed", *clips, *EMBED, "--window", "1", "--output", out, "--resume"])
    assert result.exit_code == 0, result.output
    assert records(index) == expected_index and np.load(out).shape == expected.shape


class CountingFrames:
    """A video of `total` frames made on demand, frame i a grey of its own; counts what it gave."""

    def __init__(self, total: int, side: int = 16):
        self.total, self.side, self.index = total, side, -1

    def grab(self) -> bool:
        if self.index + 1 >= self.total:
            return False
        self.index += 1
        return True

    def retrieve(self):
        import numpy as np

        return np.full((self.side, self.side, 3), (self.index * 7) % 251, np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tsn-r10w8", "tsm-r10w8"])
def test_window_embeddings_are_the_models_features_on_the_windows_frames_with_one_window_held(arch):
    import numpy as np
    import torch

    from vtempo.fast import prepare
    from vtempo.inference.recognizer import Recognizer
    from vtempo.inference.timeline import WindowStats, score_windows
    from vtempo.models import build
    from vtempo.video.sampling import clip_indices
    from vtempo.video.transforms import Preprocess, make_views
    from vtempo.weights.registry import Protocol

    torch.manual_seed(0)
    net = prepare(build(arch, num_classes=3, frames=4), torch.device("cpu"))
    rec = Recognizer(model=net, name="test", arch=arch, labels=["a", "b", "c"], frames=4,
                     protocol=Protocol("stride", stride=2), preprocess=Preprocess((16,), 16))
    stats = WindowStats()
    windows = list(score_windows(CountingFrames(90), rec, window_frames=8, hop_frames=4, fps=10.0, batch_size=3,
                                 stats=stats, pooled=True))
    assert stats.frames == 90 and stats.held_peak == 8  # never more than one window's frames
    assert len(windows) == (90 - 8) // 4 + 1 + 1
    for window in (windows[0], windows[5], windows[-1]):
        offsets = clip_indices(rec.protocol, window.length, 4, clips=1)[0]
        clip = np.stack([np.full((16, 16, 3), ((window.first + o) * 7) % 251, np.uint8) for o in offsets])
        with torch.inference_mode():
            views = make_views(clip, rec.preprocess, 1)
            expected = net.features(views)[0].mean(0)
            probs = net(views).softmax(-1)[0]
        assert (window.features - expected).abs().max() <= 1e-5
        assert (window.probs - probs).abs().max() <= 1e-4  # the scores are unchanged by pooling


@pytest.mark.slow
def test_embed_window_rows_are_the_models_features_on_each_windows_frames():
    import numpy as np
    import torch

    import vtempo
    from vtempo.inference.embed import embed
    from vtempo.inference.timeline import frames_per_window
    from vtempo.video.sampling import clip_indices
    from vtempo.video.sequential import SequentialVideo
    from vtempo.video.transforms import make_views

    rec = vtempo.load("tsm-demo", device="cpu")
    path = CLIPS / "grow.mp4"
    (video,) = embed(rec, [path], window=1.0, hop=0.5)
    with SequentialVideo(path, rec.max_side) as source:
        fps, frames = source.fps, []
        while source.grab():
            frames.append(source.retrieve())
    window_frames, hop_frames = frames_per_window(rec, fps, 1.0, 0.5)
    starts = range(0, len(frames) - window_frames + 1, hop_frames)
    assert video.ok and len(video.rows) == len(starts) > 1
    offsets = clip_indices(rec.protocol, window_frames, rec.frames, clips=1)[0]
    for row, start, vector in zip(video.rows, starts, video.vectors):
        assert row["start"] == round(start / fps, 3)
        clip = np.stack([frames[start + o] for o in offsets])
        with torch.inference_mode():
            expected = rec.model.features(make_views(clip, rec.preprocess, 1))[0].mean(0).numpy()
        assert np.abs(vector - expected).max() <= 1e-5


@pytest.mark.slow
def test_two_torchrun_ranks_give_the_one_process_timeline_and_embeddings(clips, tmp_path):
    import os
    import subprocess
    import sys

    import numpy as np

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    env.pop("WORLD_SIZE", None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vtempo"]
    commands = {
        "timeline": (["timeline", *map(str, clips), *TIMELINE, "--output"], "t.jsonl"),
        "embed": (["embed", *map(str, clips), *EMBED, "--window", "1", "--output"], "e.npy"),
    }
    for name, (command, file) in commands.items():
        whole, ranked = tmp_path / f"whole-{file}", tmp_path / file
        assert run_cli([*command, whole]).exit_code == 0
        done = subprocess.run([*torchrun, *command, str(ranked)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not list(tmp_path.glob("*.part-*")), name  # merged, then deleted
        if name == "timeline":
            assert without_provenance(records(ranked)) == without_provenance(records(whole))
        else:
            assert np.abs(np.load(ranked) - np.load(whole)).max() <= 1e-5
            assert records(ranked.with_suffix(".jsonl")) == records(whole.with_suffix(".jsonl"))
