"""`classify` (API and CLI) and `check-videos`: results, protocol arithmetic, bad files, outputs, exit
codes, interruption and memory. A tiny TSN (r10w8, 32-pixel crops, 4 frames) keeps it fast."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import vtempo
import vtempo.inference.decoding as decoding_module
from vtempo.bench.pipeline import measure_pipeline
from vtempo.cli import app
from vtempo.errors import UsageError
from vtempo.inference.classify import classify, parse_views
from vtempo.video import available_backends, open_video
from vtempo.video.discovery import collect_videos
from vtempo.video.sampling import clip_indices
from vtempo.video.transforms import Preprocess, make_views
from vtempo.weights.checkpoint import load_weights, save_checkpoint
from vtempo.weights.registry import Protocol

LABELS = ["archery", "bowling", "cycling", "diving", "fencing"]
VTEMPO = [sys.executable, "-m", "vtempo.cli"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    model = vtempo.create_model("tsn-r10w8", num_classes=len(LABELS), frames=4)
    torch.nn.init.normal_(model.fc.weight, 0, 0.5)  # distinct scores, not the near-uniform default init
    checkpoint = save_checkpoint(model, folder / "tiny.pt", arch="tsn-r10w8", frames=4, input_size=32, resize=[37])
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return SimpleNamespace(checkpoint=checkpoint, labels=labels, folder=folder)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, good_videos, bad_videos, damaged_videos) -> SimpleNamespace:
    """Three good videos, a frame folder, and bad files, as a user's folder might hold them."""
    folder = tmp_path_factory.mktemp("mixed")
    good = [good_videos[name].path for name in ("h264_bframes.mp4", "mjpeg.avi", "vp9.webm")]
    for path in good:
        os.symlink(path, folder / path.name)
    (folder / "a_notes.mp4").write_bytes(bad_videos["text"].read_bytes())
    (folder / "b_empty.avi").write_bytes(b"")
    os.symlink(folder / "nowhere.mp4", folder / "c_broken.mp4")
    (folder / "readme.txt").write_text("not a video, not looked at")
    return SimpleNamespace(folder=folder, good=[folder / p.name for p in good], bad=3)


def tiny_args(tiny, *extra: str) -> list[str]:
    return ["--model", "tsn-r10w8", "--weights", str(tiny.checkpoint), "--labels", str(tiny.labels), *extra]


def run_cli(args: list[str]):
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, args, catch_exceptions=False)


# ------------------------------------------------------------------------------------------ the API


def test_results_in_input_order_with_failures_in_place(tiny, good_videos, bad_videos):
    paths = [good_videos["mp4v.mp4"].path, bad_videos["text"], good_videos["mpeg2.mpg"].path, bad_videos["missing"]]
    results = []
    for result in classify(paths, "tsn-r10w8", weights=tiny.checkpoint, labels=tiny.labels, workers=0):
        assert not torch.is_inference_mode_enabled()  # the model's context ends before each result
        results.append(result)
    assert [r.path for r in results] == paths
    assert [r.ok for r in results] == [True, False, True, False]
    assert "not a video" in results[1].error and "no such file" in results[3].error
    for result in (results[0], results[2]):
        probs = [p.prob for p in result.top]
        assert len(result.top) == 5 and probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1, abs=1e-5)  # all 5 classes listed
        assert {p.label for p in result.top} == set(LABELS)
        assert result.num_frames == 60 and result.views == 1
    # MPEG program streams have no index: only the sequential reader takes them
    assert results[2].backend == "sequential" and results[0].backend == "pyav"


def expected_probs(tiny, path: Path, clips: int, crop: str, average: str) -> torch.Tensor:
    """The protocol done by hand: frames → views → model → averaged over views."""
    model = vtempo.create_model("tsn-r10w8", num_classes=5, frames=4)
    load_weights(model, tiny.checkpoint)
    model.eval()
    with open_video(path) as reader:
        chosen = clip_indices(Protocol(), reader.num_frames, 4, clips)
        frames = [reader.get(clip) for clip in chosen]
    spec = Preprocess((37,), 32)
    views = torch.cat([make_views(f, spec, crop) for f in frames])
    with torch.no_grad():
        logits = model(views)
    return logits.softmax(-1).mean(0) if average == "prob" else logits.mean(0).softmax(-1)


@pytest.mark.parametrize("average", ["logits", "prob"])
def test_view_scores_are_averaged_as_the_protocol_says(tiny, good_videos, average):
    path = good_videos["h264.mkv"].path
    recognizer = vtempo.load("tsn-r10w8", weights=tiny.checkpoint, labels=tiny.labels)
    recognizer.protocol = dataclasses.replace(recognizer.protocol, average=average)
    (result,) = recognizer.classify_files([path], views="2x3", workers=0, batch_size=4)
    assert result.views == 6
    expected = expected_probs(tiny, path, 2, "three", average)
    for prediction in result.top:
        assert prediction.prob == pytest.approx(float(expected[prediction.index]), abs=1e-4)
    assert result.top[0].index == int(expected.argmax())


@pytest.mark.slow
def test_batches_split_across_videos_and_workers_change_nothing(tiny, good_videos):
    paths = [good_videos[name].path for name in ("mp4v.mp4", "vp9.mp4", "h264.mkv", "portrait.mp4", "vfr.mp4")]
    runs = [
        list(classify(paths, "tsn-r10w8", weights=tiny.checkpoint, views="1x3", batch_size=batch, workers=workers))
        for batch, workers in ((1, 0), (4, 0), (7, 2))
    ]
    reference = [[(p.index, p.prob) for p in r.top] for r in runs[0]]
    for run in runs[1:]:
        assert [r.path for r in run] == paths
        for got, want in zip(run, reference):
            assert [p.index for p in got.top] == [i for i, _ in want]
            assert [p.prob for p in got.top] == pytest.approx([p for _, p in want], abs=1e-5)
    assert runs[0][0].top[0].label.startswith("class ")  # no labels anywhere: numbered classes


def test_labels_come_from_the_checkpoint_when_it_carries_them(tmp_path, good_videos):
    model = vtempo.create_model("tsn-r10w8", num_classes=3, frames=4)
    checkpoint = save_checkpoint(model, tmp_path / "named.pt", arch="tsn-r10w8", frames=4, input_size=32,
                                 classes=["up", "down", "still"])
    (result,) = classify([good_videos["mp4v.mp4"].path], "tsn-r10w8", weights=checkpoint, workers=0, topk=2)
    assert {p.label for p in result.top} <= {"up", "down", "still"} and len(result.top) == 2


def test_short_videos_repeat_frames_with_a_warning(tiny, one_frame_video):
    (result,) = classify([one_frame_video], "tsn-r10w8", weights=tiny.checkpoint, workers=0)
    assert result.ok and result.num_frames == 1
    assert "only 1 decodable frame" in result.warning


def test_parse_views():
    assert parse_views("1x1") == (1, "centre")
    assert parse_views("2x3") == (2, "three")
    assert parse_views("10×10") == (10, "ten")
    for bad in ("2x4", "0x1", "3", "x3", ""):
        with pytest.raises(UsageError):
            parse_views(bad)


def test_collect_videos(tmp_path, good_videos, frame_folders):
    (tmp_path / "b.mp4").write_bytes(b"x")
    (tmp_path / "a.AVI").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("skip me")
    os.symlink(tmp_path / "gone.mkv", tmp_path / "c.mkv")
    nested = tmp_path / "more" / "deeper"
    nested.mkdir(parents=True)
    (nested / "d.webm").write_bytes(b"x")
    frames = tmp_path / "frames_of_e"
    frames.mkdir()
    (frames / "img_00001.jpg").write_bytes(b"x")
    flat = collect_videos([tmp_path])
    assert [p.name for p in flat] == ["a.AVI", "b.mp4", "c.mkv", "frames_of_e"]
    deep = collect_videos(tmp_path, recursive=True)
    assert [p.name for p in deep] == ["a.AVI", "b.mp4", "c.mkv", "frames_of_e", "d.webm"]
    assert collect_videos([frames]) == [frames]  # a frame folder named directly is one video
    assert collect_videos([tmp_path / "nope.mp4"]) == [tmp_path / "nope.mp4"]  # reported later, not dropped


def test_measure_pipeline(tiny, good_videos, tmp_path):
    for name in ("mp4v.mp4", "h264.mkv", "mjpeg.avi"):
        os.symlink(good_videos[name].path, tmp_path / name)
    report = measure_pipeline("tsn-r10w8", tmp_path, device="cpu", batch=2, workers=1, frames=4, size=32, files=6,
                              rounds=2)
    assert report.files == 6 and report.clips == 6 and report.failed == 0 and report.rounds == 2
    assert set(report.decode_clips_per_s) == set(available_backends())
    rates = [*report.decode_clips_per_s.values(), report.data_clips_per_s, report.model_clips_per_s,
             report.end_to_end_clips_per_s]
    assert all(rate > 0 for rate in rates)
    assert 0 < report.end_to_end_vs_model < 10
    assert report.peak_rss_mb > 50 and report.worker_peak_rss_mb > 10


# ------------------------------------------------------------------------------------------ the CLI


def test_cli_all_good(tiny, mixed_folder, tmp_path):
    out = tmp_path / "results.jsonl"
    result = run_cli(["classify", *map(str, mixed_folder.good), *tiny_args(tiny, "--topk", "3", "--workers", "0",
                                                                       "-o", str(out))])
    assert result.exit_code == 0, result.output
    for path in mixed_folder.good:
        assert path.name in result.stdout
    assert any(label in result.stdout for label in LABELS)
    assert "3 classified, 0 failed, of 3" in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in mixed_folder.good]
    assert all(line["status"] == "ok" and len(line["top"]) == 3 for line in lines)


def test_cli_bad_files_get_one_line_each_and_the_batch_goes_on(tiny, mixed_folder, tmp_path):
    out = tmp_path / "results.jsonl"
    result = run_cli(["classify", str(mixed_folder.folder), *tiny_args(tiny, "--workers", "1", "-o", str(out))])
    assert result.exit_code == 1
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failures) == 3
    assert any("a_notes.mp4: not a video" in line for line in failures)
    assert any("b_empty.avi: empty file" in line for line in failures)
    assert any("c_broken.mp4: broken symbolic link" in line for line in failures)
    assert "3 classified, 3 failed, of 6" in result.stderr
    assert "Traceback" not in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["status"] for line in lines].count("ok") == 3 and len(lines) == 6


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_cli_json_and_csv_outputs(tiny, mixed_folder, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    result = run_cli(["classify", str(mixed_folder.folder), *tiny_args(tiny, "--topk", "2", "--workers", "0",
                                                                       "-o", str(out))])
    assert result.exit_code == 1
    if suffix == ".json":
        document = json.loads(out.read_text())
        assert document["provenance"]["model"] == "tsn-r10w8"
        rows = document["results"]
        assert len(rows) == 6 and sum(row["status"] == "ok" for row in rows) == 3
        assert all(row["top"][0]["label"] in LABELS for row in rows if row["status"] == "ok")
    else:
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 6
        good = [row for row in rows if row["status"] == "ok"]
        assert len(good) == 3 and all(row["top1_label"] in LABELS and 0 < float(row["top2_prob"]) < 1 for row in good)
        assert all(row["error"] for row in rows if row["status"] == "error")
        assert {row["model"] for row in rows} == {"tsn-r10w8"} and {row["frames"] for row in rows} == {"4"}


def test_cli_usage_errors_exit_2_before_decoding(tiny, mixed_folder, monkeypatch, tmp_path):
    opened = []
    monkeypatch.setattr(decoding_module, "open_video", lambda *a, **k: opened.append(a) or pytest.fail("decoded"))
    video = str(mixed_folder.good[0])
    cases = [
        (["classify", video, *tiny_args(tiny, "--views", "2x4")], "--views"),
        (["classify", video, *tiny_args(tiny, "-o", str(tmp_path / "out.txt"))], ".jsonl, .json or .csv"),
        (["classify", video, "--model", "tsn-r10w8"], "pass --weights FILE"),
        (["classify", video, "--model", "no-such-model"], "unknown model"),
        (["classify", video, "--model", "tsn-r10w8", "--weights", str(tmp_path / "none.pt")], "no such file"),
        (["classify", video, *tiny_args(tiny, "--dtype", "fp8")], "--dtype"),
        (["classify", str(tmp_path), *tiny_args(tiny)], "no videos found"),
        (["classify", video, "--model", "tsn-r10w8", "--weights", str(tiny.checkpoint), "--labels",
          str(mixed_folder.folder / "readme.txt")], "lists 1 classes but tsn-r10w8 has 5 outputs"),
    ]
    for args, message in cases:
        result = run_cli(args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not opened


def test_cli_registry_model_without_weights_says_how_to_get_them(mixed_folder, monkeypatch, tmp_path):
    monkeypatch.setattr(decoding_module, "open_video", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path))
    monkeypatch.setenv("VTEMPO_OFFLINE", "1")
    video = str(mixed_folder.good[0])
    result = run_cli(["classify", video, "--model", "stc-r50-sthv1"])  # nothing is published for STC
    assert result.exit_code == 2 and "no weights are published" in result.stderr
    result = run_cli(["classify", video, "--model", "tam-r50-sthv1"])  # a Google Drive folder: by hand
    assert result.exit_code == 1 and "download the checkpoint by hand" in result.stderr
    assert "vtempo download tam-r50-sthv1 --from-file" in result.stderr
    result = run_cli(["classify", video, "--model", "tsm-r50-k400"])  # downloadable, but offline
    assert result.exit_code == 1 and "VTEMPO_OFFLINE=1" in result.stderr


def test_cli_check_videos(mixed_folder, damaged_videos, good_videos):
    result = run_cli(["check-videos", str(mixed_folder.folder), str(damaged_videos["mjpeg_cut.avi"].path)])
    assert result.exit_code == 1
    assert "3 failed" in result.stderr and "4 ok" in result.stderr
    row = next(line for line in result.stdout.splitlines() if "mjpeg_cut.avi" in line)
    assert "120" in row and "72" in row and "sequential" in row  # header count vs what decodes
    result = run_cli(["check-videos", str(good_videos["vfr.mp4"].path), str(good_videos["mpeg2.mpg"].path),
                      "--verify"])
    assert result.exit_code == 0, result.output
    assert "2 ok, 0 failed, of 2" in result.stderr
    assert "verified" in result.stdout


def test_check_videos_verify_finds_a_backend_that_misreads(damaged_videos, tmp_path):
    """decord numbers the frames of an MP4 with an edit list by packets the edit discards: random access
    against sequential decoding shows it, and the file fails the check; auto's reader passes."""
    from videogen import run_ffmpeg, write_ffmpeg

    source = write_ffmpeg(tmp_path / "source.mp4", 60, codec=["-c:v", "libx264", "-preset", "ultrafast",
                                                               "-pix_fmt", "yuv420p", "-bf", "3", "-g", "12"])
    cut = run_ffmpeg(["-ss", "0.5", "-i", str(source), "-c", "copy", str(tmp_path / "cut.mp4")])
    from vtempo.video.check import check_video

    verified = check_video(cut, verify=True)
    assert verified.ok and verified.backend == "pyav" and verified.verdict.startswith("verified"), verified
    misread = check_video(cut, backend="decord", verify=True)
    assert not misread.ok and "decord counts 48 frames, sequential decoding 47" in misread.error
    result = run_cli(["check-videos", str(cut), "--backend", "decord", "--verify"])
    assert result.exit_code == 1 and "sequential decoding 47" in result.stderr


# ------------------------------------------------------------------------------------------ processes


def symlinks(folder: Path, target: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        os.symlink(target, folder / f"clip_{i:04d}{target.suffix}")
    return folder


@pytest.mark.slow
def test_interrupted_run_keeps_finished_results(tiny, good_videos, tmp_path):
    videos = symlinks(tmp_path / "many", good_videos["mjpeg.avi"].path, 1500)
    out = tmp_path / "partial.jsonl"
    part = tmp_path / "partial.jsonl.part"  # where results stream until the writer closes
    process = subprocess.Popen(
        [*VTEMPO, "classify", str(videos), *tiny_args(tiny, "--workers", "1", "-o", str(out))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        # a shell without job control starts background jobs with SIGINT ignored, and Python keeps that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not part.exists() or part.read_text().count("\n") < 3):
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    assert b"interrupted:" in stderr
    lines = out.read_text().splitlines()
    assert 3 <= len(lines) < 1500
    assert all(json.loads(line)["status"] == "ok" for line in lines)


PEAK_RSS_PROBE = """
import os, sys
from vtempo.cli import app  # imported once; each run below is a fresh fork of this process
for args in sys.stdin.read().split("\\n"):
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            app(args.split("\\t"))
        except SystemExit:
            pass
        os._exit(0)
    _, _, usage = os.wait4(pid, 0)  # the fork and its decode workers: the largest resident set
    print(usage.ru_maxrss, flush=True)
"""


def peak_rss_kb(runs: list[list[str]]) -> list[int]:
    """Peak RSS (kB) of `vtempo` runs, each in a fork of one process that imported vtempo once."""
    script = "\n".join("\t".join(args) for args in runs)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # speed on a busy test machine; memory is what counts
    output = subprocess.run([sys.executable, "-c", PEAK_RSS_PROBE], input=script, env=env, check=True,
                            capture_output=True, text=True)
    return [int(line) for line in output.stdout.split()]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "0"])  # decoding in a worker, and in the model's process
def test_memory_stays_flat_with_the_number_of_files(tiny, good_videos, tmp_path, workers):
    # The views of a file are 4 frames at 112 pixels, 602 kB: kept, those of 600 files would add 350 MB.
    # Allocator slack does vary by tens of MB from run to run (the model's process keeps freed buffers,
    # `fast.heap`, whose free space the order of a worker's arrivals scatters), but it stays well under that.
    model = vtempo.create_model("tsn-r10w8", num_classes=len(LABELS), frames=4)
    checkpoint = save_checkpoint(model, tmp_path / "tiny112.pt", arch="tsn-r10w8", frames=4, input_size=112)
    source = good_videos["mp4v.mp4"].path
    counts = (20, 600)
    runs = []
    for count in counts:
        videos = symlinks(tmp_path / f"n{count}", source, count)
        runs.append(["classify", str(videos), "--model", "tsn-r10w8", "--weights", str(checkpoint), "--workers", workers,
                     "-o", str(tmp_path / f"n{count}.jsonl")])
    peaks = peak_rss_kb(runs)
    for count in counts:
        assert (tmp_path / f"n{count}.jsonl").read_text().count("\n") == count
    views_kb = 4 * 3 * 112 * 112 * 4 / 1024
    kept_kb = (counts[1] - counts[0]) * views_kb
    assert peaks[1] - peaks[0] <= kept_kb / 2, (peaks, kept_kb)


@pytest.mark.slow  # starts decode worker processes
def test_decode_workers_run_below_the_model_priority():
    code = "import os; from vtempo.inference.decoding import _init_worker; _init_worker(0); print(os.nice(0))"
    worker = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(worker.stdout) > os.nice(0)
