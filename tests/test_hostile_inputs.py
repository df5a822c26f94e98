"""Inputs an outsider might pass on purpose or by accident: images that claim gigapixels, FIFOs named like
frames, link loops, unreadable files and folders, stray thumbnails, still images named like videos,
terminal escape sequences in names, NaN scores, SIGTERM mid-run. Each gives a failed result (or a
clean refusal) with its reason, and the rest of the run goes on."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import videogen
from rich.progress import Progress
from typer.testing import CliRunner

import vtempo
from vtempo.cli import app
from vtempo.commands import common
from vtempo.inference.recognizer import load
from vtempo.inference.decoding import ViewPlan, cap_workers, video_loader
from vtempo.inference.results import NOT_FINITE, Prediction, ResultWriter, VideoResult
from vtempo.runtime import available_cores
from vtempo.video import VideoError, available_backends, open_video
from vtempo.video.check import check_video
from vtempo.video.discovery import NO_VIDEOS, FailedInput, collect_videos
from vtempo.video.images import MAX_PIXELS, image_size
from vtempo.video.transforms import Preprocess
from vtempo.weights.checkpoint import save_checkpoint
from vtempo.weights.registry import Protocol

LABELS = ["archery", "bowling", "cycling", "diving", "fencing"]
VTEMPO = [sys.executable, "-m", "vtempo.cli"]
EVIL = "\x1b[2J\x1b]0;owned\x07"  # clear the screen, retitle the terminal


@pytest.fixture(scope="module")
def shared_dir():
    """A folder every user may read (pytest's own are private), for runs as user nobody."""
    folder = Path(tempfile.mkdtemp(prefix="vtempo_hostile_"))
    os.chmod(folder, 0o755)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o755)
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def tiny(shared_dir) -> SimpleNamespace:
    torch.manual_seed(0)
    model = vtempo.create_model("tsn-r10w8", num_classes=len(LABELS), frames=4)
    checkpoint = save_checkpoint(model, shared_dir / "tiny.pt", arch="tsn-r10w8", frames=4, input_size=32, resize=[37])
    os.chmod(checkpoint, 0o644)
    labels = shared_dir / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return SimpleNamespace(checkpoint=checkpoint, labels=labels)


def tiny_args(tiny, *extra: str, labels: Path | None = None) -> list[str]:
    # decoding in this process by default; a later --workers wins
    return ["--model", "tsn-r10w8", "--weights", str(tiny.checkpoint), "--labels", str(labels or tiny.labels),
            "--workers", "0", *extra]


def run_cli(args: list[str]):
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, args, catch_exceptions=False)


def failures(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("failed:")]


def as_nobody(function, timeout: float = 300):
    """`function()` (returning JSON-able data) run as user nobody when the tests run as root, who may read
    anything: in a forked child that drops to nobody first, so permissions are real, not mocked."""
    if os.geteuid() != 0:
        return function()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            # the parent's OpenMP thread pool does not survive a fork: one thread, run inline
            torch.set_num_threads(1)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.environ["VTEMPO_HOME"] = "/nonexistent/vtempo-home"  # root's cache is not nobody's
            try:
                data = function()
            except BaseException as error:  # noqa: BLE001 - reported to the parent
                data = {"exception": "".join(traceback.format_exception(error))}
            with os.fdopen(write, "wb") as pipe:
                pipe.write(json.dumps(data).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        if not select.select([read], [], [], timeout)[0]:
            pytest.fail(f"the run as nobody gave no answer in {timeout} s")
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return json.loads(data)


def cli_as_nobody(args: list[str]) -> dict:
    run_cli(args)  # once as ourselves first, so every module the command imports lazily is loaded
    def invoke():
        result = run_cli(args)
        return {"code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}
    return as_nobody(invoke)


# ------------------------------------------------------------------------------------------ huge images


def png_header(width: int, height: int) -> bytes:
    """The start of an RGB PNG declaring width × height (its pixel data cut off after one row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * width)))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is rewritten to declare width × height."""
    ok, encoded = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(encoded.tobytes())
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_image_headers_give_the_declared_size(tmp_path):
    assert image_size(png_header(30000, 20000)) == ("PNG", 20000, 30000)
    assert image_size(jpeg_claiming(30000, 20000)) == ("JPEG", 20000, 30000)
    for suffix in (".png", ".jpg", ".bmp", ".webp", ".tif"):
        ok, encoded = cv2.imencode(suffix, np.zeros((37, 53, 3), np.uint8))
        assert image_size(encoded.tobytes())[1:] == (37, 53), suffix
    assert image_size(b"not an image at all") is None
    assert image_size(b"\x89PNG\r\n\x1a\n") is None  # cut before its header


@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_gigapixel_frames_are_refused_before_decoding(tmp_path, frame_folders, monkeypatch, kind):
    """A 30000×30000 frame (2.7 GB decoded, a few hundred bytes on disk) fails on its header."""
    data = png_header(30000, 30000) if kind == "png" else jpeg_claiming(30000, 30000)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / f"img_00001.{kind}").write_bytes(data)
    later = tmp_path / "later"
    shutil.copytree(frame_folders["img_00001.jpg"], later)
    (later / "img_00005.jpg").write_bytes(data)
    decoded = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buffer, flags: decoded.append(len(buffer)) or (
        pytest.fail("a 900 Mpixel image reached the decoder") if len(buffer) == len(data) else real_imdecode(buffer, flags)))
    with pytest.raises(VideoError, match=r"30000×30000 pixels \(900 Mpixel\), over the limit of 64 Mpixel") as caught:
        open_video(alone)
    assert "VTEMPO_MAX_PIXELS" in str(caught.value)
    with open_video(later) as reader:
        reader.get([0, 3])
        with pytest.raises(VideoError, match="frame img_00005.jpg is 30000×30000 pixels"):
            reader.get([4])


def test_a_gigapixel_image_named_like_a_video_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "huge.avi"
    path.write_bytes(png_header(30000, 30000))
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a, **k: pytest.fail("opened with a decoder"))
    for backend in ["auto", *available_backends()]:
        with pytest.raises(VideoError, match="the PNG image is 30000×30000 pixels"):
            open_video(path, backend)


def test_a_gigapixel_netpbm_image_named_like_a_video_is_refused_before_decoding(tmp_path, monkeypatch):
    ok, encoded = cv2.imencode(".ppm", np.zeros((37, 53, 3), np.uint8))
    assert image_size(encoded.tobytes()) == ("PPM", 37, 53)
    path = tmp_path / "huge.avi"
    path.write_bytes(b"P6\n30000 30000\n255\n" + bytes(64))  # 2.7 GB of pixels declared, 64 bytes there
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a, **k: pytest.fail("opened with a decoder"))
    for backend in ["auto", *available_backends()]:
        with pytest.raises(VideoError, match="the PPM image is 30000×30000 pixels"):
            open_video(path, backend)


def test_video_frames_over_the_limit_are_refused_and_the_limit_can_be_raised(good_videos, frame_folders, monkeypatch):
    video = good_videos["h264_bframes.mp4"].path  # 64×48 = 3072 pixels
    for backend in ["auto", *available_backends()]:
        with pytest.raises(VideoError, match="frames are 64×48 pixels .*over the limit of 3000 pixels"):
            open_video(video, backend, max_pixels=3000)
    with pytest.raises(VideoError, match="img_00001.jpg is 64×48 pixels"):
        open_video(frame_folders["img_00001.jpg"], max_pixels=3000)
    monkeypatch.setenv("VTEMPO_MAX_PIXELS", "3000")
    with pytest.raises(VideoError, match="over the limit of 3000 pixels"):
        open_video(video)
    assert decode_error(video) and "over the limit" in decode_error(video)  # the workers' path, by env
    with open_video(video, max_pixels=3072) as reader:  # the argument wins over the environment
        assert reader.num_frames == 60
    monkeypatch.setenv("VTEMPO_MAX_PIXELS", "many")
    with pytest.raises(VideoError, match="VTEMPO_MAX_PIXELS must be a positive whole number"):
        open_video(video)
    monkeypatch.delenv("VTEMPO_MAX_PIXELS")
    assert MAX_PIXELS == 64_000_000


def decode_error(path) -> str | None:
    from vtempo.inference.decoding import decode_views

    return decode_views(path, ViewPlan(4, Protocol(), 1, "centre", Preprocess((37,), 32)))["error"]


# ------------------------------------------------------------------------------------------ non-regular files


def test_a_fifo_named_like_a_frame_fails_instead_of_hanging(tmp_path, frame_folders):
    folder = tmp_path / "frames"
    shutil.copytree(frame_folders["img_00001.jpg"], folder)
    (folder / "img_00004.jpg").unlink()
    os.mkfifo(folder / "img_00004.jpg")

    def hung(signum, frame):
        raise TimeoutError("reading a FIFO frame blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with open_video(folder) as reader:
            assert reader.num_frames == 30
            with pytest.raises(VideoError, match="frame img_00004.jpg: not a regular file"):
                reader.get([3])
        os.mkfifo(tmp_path / "pipe.mp4")
        assert decode_error(tmp_path / "pipe.mp4") == "not a regular file"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------ discovery


def test_a_stray_image_among_videos_leaves_them_videos(tmp_path, good_videos, frame_folders):
    folder = tmp_path / "clips"
    folder.mkdir()
    names = ["h264_bframes.mp4", "mjpeg.avi", "vp9.webm"]
    for name in names:
        os.symlink(good_videos[name].path, folder / name)
    shutil.copy(next(frame_folders["img_00001.jpg"].iterdir()), folder / "thumbnail.jpg")
    expected = [folder / name for name in sorted(names)]
    assert collect_videos([folder]) == expected
    assert collect_videos([tmp_path], recursive=True) == expected
    result = run_cli(["check-videos", str(folder)])
    assert result.exit_code == 0 and "3 ok, 0 failed, of 3" in result.stderr, result.output
    assert collect_videos([frame_folders["img_00001.jpg"]]) == [frame_folders["img_00001.jpg"]]  # frames only


def test_every_named_folder_gets_a_result(tiny, tmp_path, good_videos):
    empty = tmp_path / "x.mp4"
    empty.mkdir()
    nested = tmp_path / "nested"
    (nested / "deeper").mkdir(parents=True)
    os.symlink(good_videos["mjpeg.avi"].path, nested / "deeper" / "clip.avi")
    video = good_videos["h264_bframes.mp4"].path
    found = collect_videos([empty, nested, video])
    assert found == [FailedInput(empty, NO_VIDEOS), FailedInput(nested, NO_VIDEOS), video]
    assert collect_videos([empty, nested]) == []  # nothing at all: the caller refuses the run
    assert collect_videos([nested], recursive=True) == [nested / "deeper" / "clip.avi"]
    result = run_cli(["classify", str(empty), str(nested), str(video), *tiny_args(tiny)])
    assert result.exit_code == 1
    assert failures(result) == [f"failed: {empty}: {NO_VIDEOS}", f"failed: {nested}: {NO_VIDEOS}"]
    assert "1 classified, 2 failed, of 3" in result.stderr
    check = run_cli(["check-videos", str(empty), str(video)])
    assert check.exit_code == 1 and "1 ok, 1 failed, of 2" in check.stderr


def test_symbolic_link_loops_are_failed_inputs(tiny, tmp_path, good_videos):
    folder = tmp_path / "loops"
    folder.mkdir()
    os.symlink(good_videos["mjpeg.avi"].path, folder / "a.avi")
    os.symlink("c.mp4", folder / "b.mp4")
    os.symlink("b.mp4", folder / "c.mp4")
    os.symlink(".", folder / "self")  # with --recursive: a folder inside itself
    os.symlink("..", folder / "parent")
    found = collect_videos([folder], recursive=True)
    assert found == [folder / "a.avi", FailedInput(folder / "b.mp4", "symbolic link loop"),
                     FailedInput(folder / "c.mp4", "symbolic link loop")]
    with pytest.raises(VideoError, match="symbolic link loop"):
        open_video(folder / "b.mp4")
    result = run_cli(["classify", str(folder), str(folder / "c.mp4"), "-r", *tiny_args(tiny)])
    assert result.exit_code == 1, result.output
    assert "1 classified, 3 failed, of 4" in result.stderr
    assert all(line.endswith("symbolic link loop") for line in failures(result))


def test_an_unreadable_file_named_on_the_command_line_is_a_failed_input(tiny, shared_dir, good_videos):
    folder = shared_dir / "unreadable_file"
    folder.mkdir()
    secret, good = folder / "secret.mp4", folder / "good.mp4"
    for path in (secret, good):
        shutil.copy(good_videos["h264_bframes.mp4"].path, path)
        os.chmod(path, 0o644)
    os.chmod(secret, 0)
    outcome = cli_as_nobody(["classify", str(secret), str(good), *tiny_args(tiny)])
    assert outcome.get("code") == 1, outcome
    assert f"failed: {secret}: permission denied" in outcome["stderr"]
    assert "1 classified, 1 failed, of 2" in outcome["stderr"]


def test_an_unreadable_subfolder_is_reported_and_the_run_goes_on(tiny, shared_dir, good_videos):
    folder = shared_dir / "unreadable_subfolder"
    locked = folder / "locked"
    locked.mkdir(parents=True)
    os.chmod(folder, 0o755)
    for path in (folder / "good.mp4", locked / "hidden.mp4"):
        shutil.copy(good_videos["h264_bframes.mp4"].path, path)
        os.chmod(path, 0o644)
    os.chmod(locked, 0)
    outcome = cli_as_nobody(["classify", str(folder), "-r", *tiny_args(tiny)])
    assert outcome.get("code") == 1, outcome
    assert f"failed: {locked}: cannot list folder: permission denied" in outcome["stderr"]
    assert "1 classified, 1 failed, of 2" in outcome["stderr"]
    checked = as_nobody(lambda: [[str(found), check_video(found).error] for found in collect_videos(folder, True)])
    assert checked == [[str(folder / "good.mp4"), None], [str(locked), "cannot list folder: permission denied"]]


# ------------------------------------------------------------------------------------------ what a file holds


def test_a_still_image_is_not_a_video(tmp_path, one_frame_video):
    picture = cv2.imencode(".png", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    (tmp_path / "photo.avi").write_bytes(picture)
    (tmp_path / "photo.mp4").write_bytes(cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes())
    (tmp_path / "photo.png").write_bytes(picture)
    videogen.run_ffmpeg(["-i", str(tmp_path / "photo.png"), "-c:v", "png", str(tmp_path / "png_in.avi")])
    for name, kind in [("photo.avi", "PNG"), ("photo.mp4", "JPEG"), ("png_in.avi", "MPNG")]:
        for backend in ["auto", *available_backends()]:
            with pytest.raises(VideoError, match=rf"a still image \({kind}\), not a video"):
                open_video(tmp_path / name, backend)
    assert decode_error(tmp_path / "photo.avi") == "a still image (PNG), not a video"
    with open_video(one_frame_video) as reader:  # one frame of a video codec is a (short) video
        assert reader.num_frames == 1


def test_decoder_internals_become_a_plain_reason_with_the_detail_kept(tmp_path):
    whole = videogen.write_ffmpeg(tmp_path / "whole.mp4", 30, codec=["-c:v", "libx264", "-pix_fmt", "yuv420p"],
                                  extra_output=["-movflags", "+faststart"])
    data = whole.read_bytes()
    header_only = tmp_path / "header_only.mp4"
    header_only.write_bytes(data[: data.index(b"mdat") + 100])  # the index, and no frame's data
    with pytest.raises(VideoError) as caught:
        open_video(header_only)
    assert caught.value.reason == "truncated or corrupt: no frame decodes"
    if "decord" in available_backends():
        with pytest.raises(VideoError) as caught:
            open_video(header_only, "decord")
        assert "decord: " in caught.value.detail and "Check failed" not in caught.value.reason
    record = VideoResult(header_only, error=caught.value.reason, detail=caught.value.detail).to_dict()
    assert record["error"] == caught.value.reason and record["detail"] == caught.value.detail


# ------------------------------------------------------------------------------------------ model output


class NaNModel(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        logits = torch.zeros(len(x), len(LABELS))
        logits[:, 1] = self.value
        return logits


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_scores_that_are_not_finite_make_a_failed_result_and_valid_json(tiny, good_videos, tmp_path, value):
    recognizer = load("tsn-r10w8", weights=tiny.checkpoint, labels=tiny.labels, device="cpu")
    recognizer.model = NaNModel(value)
    (result,) = recognizer.classify_files([good_videos["h264_bframes.mp4"].path], workers=0)
    assert not result.ok and result.error == NOT_FINITE
    for suffix in (".json", ".jsonl", ".csv"):
        out = tmp_path / f"out{suffix}"
        with ResultWriter(out, 2) as writer:
            writer.write(result)
            writer.write(VideoResult(Path("made_by_hand.mp4"), [Prediction("x", 0, float("nan"))]))
        rows = read_output(out)
        assert [row["status"] for row in rows] == ["error", "error"]
        assert [row["error"] for row in rows] == [NOT_FINITE, NOT_FINITE]
        assert all(not row.get("top1_prob") and not row.get("top") for row in rows)


# ------------------------------------------------------------------------------------------ outputs


def a_result(name: str) -> VideoResult:
    return VideoResult(Path(name), [Prediction("diving", 3, 0.75), Prediction("bowling", 1, 0.25)], num_frames=60)


def read_output(path: Path) -> list:
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    if path.suffix == ".json":
        return json.loads(path.read_text(), parse_constant=refuse)
    if path.suffix == ".jsonl":
        return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]
    return list(csv.DictReader(path.open()))


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_an_existing_output_stays_whole_until_the_new_one_is_complete(tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    out.write_text("the previous run's results\n")
    writer = ResultWriter(out, 2)
    writer.write(a_result("one.mp4"))
    assert out.read_text() == "the previous run's results\n"  # untouched while the run goes on
    writer.close(complete=False)  # interrupted: what is finished replaces it, well formed
    assert len(read_output(out)) == 1 and not writer.part.exists()

    out.write_text("the previous run's results\n")
    ResultWriter(out, 2).close(complete=False)  # interrupted before any result: the old file stays
    assert out.read_text() == "the previous run's results\n" and not writer.part.exists()

    with ResultWriter(out, 2) as writer:
        for name in ("one.mp4", "two.mp4", "three.mp4"):
            writer.write(a_result(name))
    rows = read_output(out)
    assert [row["path"] for row in rows] == ["one.mp4", "two.mp4", "three.mp4"]


def test_json_results_are_on_disk_as_they_come(tmp_path):
    """A process killed outright (SIGKILL) cannot finish the file, but what it had is in the part file."""
    writer = ResultWriter(tmp_path / "results.json", 2)
    writer.write(a_result("one.mp4"))
    assert '"one.mp4"' in writer.part.read_text()
    writer.close()
    assert read_output(tmp_path / "results.json")[0]["path"] == "one.mp4"


def test_sigterm_interrupts_a_command_like_ctrl_c():
    handler_before = signal.getsignal(signal.SIGTERM)
    reached = []

    @common.friendly_errors
    def command():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        reached.append("after the signal")

    with pytest.raises(SystemExit) as caught:
        command()
    assert caught.value.code == 130 and not reached
    assert signal.getsignal(signal.SIGTERM) == handler_before


@pytest.mark.slow
def test_sigterm_keeps_the_finished_results_and_nothing_else_is_lost(tiny, tmp_path, good_videos):
    videos = tmp_path / "many"
    videos.mkdir()
    for i in range(1500):
        os.symlink(good_videos["mjpeg.avi"].path, videos / f"clip_{i:04d}.avi")
    out = tmp_path / "results.json"
    out.write_text('["the previous run"]\n')
    process = subprocess.Popen([*VTEMPO, "classify", str(videos), *tiny_args(tiny, "--workers", "1", "-o", str(out), "--overwrite")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = out.with_name(out.name + ".part")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and (
                not part.exists() or part.read_text().count("\n") < 3):
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)  # what `kill PID` and `timeout` send
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr and b"interrupted:" in stderr, stderr.decode()
    rows = json.loads(out.read_text())["results"]
    assert 3 <= len(rows) < 1500 and all(row["status"] == "ok" for row in rows)
    assert not part.exists()


# ------------------------------------------------------------------------------------------ workers


def test_decode_workers_are_capped_by_files_and_cores(good_videos):
    plan = ViewPlan(4, Protocol(), 1, "centre", Preprocess((37,), 32))
    two = [good_videos["h264_bframes.mp4"].path, good_videos["mjpeg.avi"].path]
    assert video_loader(two, plan, 1000).num_workers == min(2, available_cores())
    assert cap_workers(1000, 10**6) == available_cores()
    assert cap_workers(0, 5) == 0 and cap_workers(3, 0) == 0


# ------------------------------------------------------------------------------------------ the terminal


def test_control_characters_never_reach_the_terminal(tiny, tmp_path, good_videos, bad_videos):
    evil_video = tmp_path / f"clip{EVIL}.mp4"
    shutil.copy(good_videos["h264_bframes.mp4"].path, evil_video)
    evil_bad = tmp_path / f"bad{EVIL}.mp4"
    evil_bad.write_bytes(bad_videos["text"].read_bytes())
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join([f"arch{EVIL}ery", *LABELS[1:]]) + "\n")
    outputs = []
    result = run_cli(["classify", str(evil_video), str(evil_bad), *tiny_args(tiny, "--topk", "5", labels=labels)])
    assert result.exit_code == 1, result.output
    outputs.append(result.stdout + result.stderr)
    result = run_cli(["check-videos", str(evil_video), str(evil_bad)])
    outputs.append(result.stdout + result.stderr)
    result = run_cli(["classify", str(evil_video), "--model", f"no-such{EVIL}model"])
    assert result.exit_code == 2
    outputs.append(result.stderr)
    for output in outputs:
        assert "\x1b" not in output and "\x07" not in output, output
        assert "\\x1b[2J\\x1b]0;owned\\x07" in output, output


def test_escape_and_the_console_guard():
    assert common.escape(f"a{EVIL}[bold]b\n\u202e") == "a\\x1b[2J\\x1b]0;owned\\x07\\[bold]b\\x0a\\u202e"
    with common.console.capture() as captured:
        common.console.print(f"raw {EVIL} text", "[red]styled[/]")
    printed = captured.get()
    assert "\x1b[2J" not in printed and "\\x1b[2J" in printed and "styled" in printed
    terminal = io.StringIO()
    guarded = common.GuardedConsole(file=terminal, force_terminal=True, width=80)
    with Progress(console=guarded, transient=True) as progress:  # a live display renders on its own
        progress.advance(progress.add_task(f"model{EVIL}name", total=2))
        guarded.print("[red]styled[/]")
    assert "\x1b[2J" not in terminal.getvalue() and "\\x1b[2J" in terminal.getvalue()
    assert "\x1b[31m" in terminal.getvalue()  # rich's own colours still reach the terminal


def test_decode_workers_default_to_the_cores_the_models_threads_leave(monkeypatch):
    import vtempo.runtime as runtime

    threads = {"count": 8}
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: threads["count"])
    assert runtime.default_workers() == 8  # 8 physical cores run the model, their 8 hyperthreads decode
    assert runtime.default_workers(3) == 3
    threads["count"] = 16  # no hyperthreads: decoding runs in the model's process
    assert runtime.default_workers() == 0 and runtime.default_workers(5, torch.device("cpu")) == 0
    assert runtime.default_workers(device=torch.device("cuda")) == 8  # a GPU model leaves the CPU to them
    threads["count"] = 2
    assert runtime.default_workers() == 8  # at most 8
