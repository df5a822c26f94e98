"""`vtempo stream`: a realtime file and a stream served over loopback keep their lag (the run never
falls behind), a slow model drops frames instead, the online TSM gives the clip model's label, a file
ends with exit 0 and a summary, a live source that stops with exit 1 and a reason, a source that
cannot be opened with a one-line error."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.data.synth import render_clip, write_video
from vtempo.fast import prepare
from vtempo.inference.stream import run_stream
from vtempo.inference.recognizer import Recognizer
from vtempo.models import build
from vtempo.video.transforms import Preprocess
from vtempo.weights.registry import Protocol

FPS = 12


def _rec(arch: str = "tsm-r10w8", stride: int = 2) -> Recognizer:
    torch.manual_seed(0)
    net = prepare(build(arch, num_classes=3, frames=4), torch.device("cpu"))
    return Recognizer(model=net, name=arch, arch=arch, labels=["a", "b", "c"], frames=4,
                      protocol=Protocol("stride", stride=stride), preprocess=Preprocess((32,), 32))


def _clip(path: Path, seconds: float) -> Path:
    frames = np.concatenate([render_clip(n % 10, [7, n], frames=32, size=128).frames
                             for n in range(int(np.ceil(seconds * FPS / 32)))])[: int(seconds * FPS)]
    write_video(path, frames, FPS)
    return path


@pytest.fixture(scope="module")
def ten_seconds(tmp_path_factory) -> Path:
    return _clip(tmp_path_factory.mktemp("stream") / "ten.mp4", 10)


def _lag_kept(labels, every: float) -> None:
    assert len(labels) >= 5
    early = min(label.lag for label in labels[:3])
    late = labels[-1].lag
    assert late - early <= every, [round(label.lag, 3) for label in labels]


@pytest.mark.slow  # runs in real time
def test_a_realtime_file_keeps_its_lag_and_ends_cleanly(ten_seconds):
    labels = []
    started = time.monotonic()
    summary = run_stream(ten_seconds, _rec(), every=1.0, realtime=True, on_label=labels.append)
    assert time.monotonic() - started >= 9  # played at its own rate
    assert summary.reason == "end of file" and summary.ok and summary.frames == 10 * FPS
    assert summary.labels == len(labels) and summary.latency(0.5) is not None
    _lag_kept(labels, 1.0)
    times = [label.media_time for label in labels]
    assert times == sorted(times)


class SlowModel(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, seconds: float):
        super().__init__()
        self.net, self.seconds = net, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.net(x)


@pytest.mark.slow  # runs in real time
def test_a_slow_model_drops_frames_and_never_falls_behind(ten_seconds):
    rec = _rec(stride=1)  # 12 sampled frames a second
    rec.model = SlowModel(rec.model, 1.0)
    labels = []
    summary = run_stream(ten_seconds, rec, every=0.25, realtime=True, on_label=labels.append)
    assert summary.dropped > 0 and summary.sampled == 10 * FPS
    assert labels[-1].dropped == max(label.dropped for label in labels)
    _lag_kept(labels, 1.0 + 0.25)  # one model call plus one period


def test_a_file_read_as_fast_as_the_model_goes_drops_nothing(ten_seconds):
    labels = []
    summary = run_stream(ten_seconds, _rec(), every=1.0, on_label=labels.append)
    assert summary.dropped == 0 and summary.sampled == 10 * FPS // 2
    assert [round(label.media_time, 3) for label in labels] == [round(6 / FPS + n, 3) for n in range(len(labels))]


def test_the_online_model_labels_like_the_clip_model_on_the_same_frames(ten_seconds):
    rec = _rec("tsm-online-r10w8")
    labels = []
    run_stream(ten_seconds, rec, every=100.0, on_label=labels.append)  # one label: the first full clip
    from vtempo.video.sequential import SequentialVideo
    from vtempo.video.transforms import make_views

    with SequentialVideo(ten_seconds, rec.max_side) as video:  # decoded at the size the stream decodes
        frames = [video.read() for _ in range(7)]
    clip = np.stack([frames[i] for i in (0, 2, 4, 6)])
    with torch.inference_mode():
        expected = rec.model(make_views(clip, rec.preprocess, 1)).softmax(-1)[0]
    assert len(labels) == 1
    got = torch.zeros(3)
    for p in labels[0].top:
        got[p.index] = p.prob
    assert torch.allclose(got, expected, atol=1e-5)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(clip: Path, seconds: float) -> tuple[subprocess.Popen, str]:
    """ffmpeg plays `clip` in a loop at its own rate to a UDP port on loopback for `seconds`."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    url = f"udp://127.0.0.1:{_free_port()}"
    server = subprocess.Popen(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
         "-t", str(seconds), "-c:v", "mpeg4", "-q:v", "5", "-g", "12", "-f", "mpegts", url + "?pkt_size=1316"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, url


@pytest.mark.slow  # runs in real time
@pytest.mark.parametrize("seconds", [12, 60])
def test_a_stream_served_over_loopback_keeps_its_lag_and_its_end_is_exit_1(ten_seconds, tmp_path, seconds, capfd):
    server, url = _serve(ten_seconds, seconds)
    try:
        result = CliRunner().invoke(app, ["stream", url, "--model", "tsm-demo", "--device", "cpu", "--every", "1",
                                          "--output", str(tmp_path / "labels.jsonl")])
    finally:
        server.kill()
        server.wait()
    lines = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    labels, summary = lines[:-1], lines[-1]
    assert result.exit_code == 1, result.output
    assert "stream ended" in result.output and "Traceback" not in result.output
    assert "WARN" not in capfd.readouterr().err  # OpenCV's own line as the stream times out: the summary says it
    assert summary["summary"] and summary["labels"] == len(labels) >= seconds / 2  # opening probes the stream
    # When a UDP stream stops, the demuxer releases its last buffered frames only as the read times
    # out: those arrive late by the source's doing. The end while live: the last label a second before.
    live = [label for label in labels if label["media_time"] <= labels[-1]["media_time"] - 1.0]
    early = min(label["lag"] for label in live[:3])
    assert live[-1]["lag"] - early <= 1.0, [label["lag"] for label in labels]
    assert all(label["latency"] >= 0 for label in labels)


def test_cli_file_ends_with_exit_0_and_a_summary(ten_seconds, tmp_path):
    result = CliRunner().invoke(app, ["stream", str(ten_seconds), "--model", "tsm-demo", "--device", "cpu",
                                      "--output", str(tmp_path / "s.jsonl")])
    assert result.exit_code == 0, result.output
    assert "end of file" in result.output and "labels" in result.output and "latency median" in result.output
    summary = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[-1])
    assert summary["reason"] == "end of file" and summary["labels"] > 0


@pytest.mark.slow  # runs in real time
def test_cli_a_source_that_cannot_be_opened_is_one_line(tmp_path):
    runner = CliRunner()
    for source in (str(tmp_path / "missing.mp4"), "rtsp://127.0.0.1:9/none"):
        result = runner.invoke(app, ["stream", source, "--model", "tsm-demo", "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
    realtime_camera = runner.invoke(app, ["stream", "udp://127.0.0.1:9", "--realtime", "--model", "tsm-demo"])
    assert realtime_camera.exit_code in (1, 2) and "Traceback" not in realtime_camera.output
