"""Shared fixtures: generated videos, good and bad, written once per test run.

Every good video is made by `videogen` and shows its frame index in every frame (`read_index`), so
tests can check that a reader returns exactly the frames asked for.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import videogen  # noqa: E402

# The suite keeps vtempo's cache (fast-path choices, int8 archives, exported models) in a home of its
# own, made here, before any test or subprocess reads VTEMPO_HOME, and removed when the run ends.
SUITE_HOME = Path(tempfile.mkdtemp(prefix="vtempo-suite-home-"))
os.environ["VTEMPO_HOME"] = str(SUITE_HOME)


# A shell starts a background job (`bash .ci/run &` in a script) with Ctrl-C ignored, and the programs the
# tests start would inherit that and, rightly, keep ignoring it: the tests that stop a vtempo process
# with SIGINT need it delivered as a terminal delivers it. (A Python handler is not inherited: the
# children start with the default, and Python installs its own.)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_unconfigure(config):
    shutil.rmtree(SUITE_HOME, ignore_errors=True)


X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
VP9 = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-b:v", "0", "-crf", "30"]


@dataclass(frozen=True)
class Clip:
    path: Path
    frames: int  # frames that decode
    height: int = 48
    width: int = 64


def _good(folder: Path) -> dict[str, Clip]:
    n = 60
    w = videogen.write_ffmpeg
    clips = {
        "h264_bframes.mp4": w(folder / "h264_bframes.mp4", n, codec=[*X264, "-bf", "2", "-g", "12"]),
        "mp4v.mp4": videogen.write_opencv(folder / "mp4v.mp4", n),
        "mjpeg.avi": videogen.write_opencv(folder / "mjpeg.avi", n, fourcc="MJPG"),
        "vp9.mp4": w(folder / "vp9.mp4", n, codec=VP9),
        "vp9.webm": w(folder / "vp9.webm", n, codec=VP9),
        "mpeg2.mpg": w(folder / "mpeg2.mpg", n, codec=["-c:v", "mpeg2video", "-q:v", "2"], extra_output=["-f", "vob"]),
        "h264.mkv": w(folder / "h264.mkv", n, codec=[*X264, "-g", "12"]),
        "h264.ts": w(folder / "h264.ts", n, codec=[*X264, "-g", "12"], extra_output=["-f", "mpegts"]),
        # variable frame rate: 2-tick then 5-tick gaps, every frame kept
        "vfr.mp4": w(folder / "vfr.mp4", n, codec=X264,
                     extra_output=["-vf", "setpts='if(lt(N,30),N*2,60+(N-30)*5)'", "-fps_mode", "passthrough"]),
        "fps29.97.mp4": w(folder / "fps29.97.mp4", n, fps=29.97, codec=X264),
    }
    result = {name: Clip(path, n) for name, path in clips.items()}
    # portrait, 72 px wide (a width decord mishandles)
    result["portrait.mp4"] = Clip(w(folder / "portrait.mp4", 40, size=(128, 72), codec=X264), 40, 128, 72)
    # non-UTF-8 bytes in the container metadata
    meta = folder / "latin1_meta.mkv"
    videogen.write_ffmpeg(meta, n, codec=[*X264, "-metadata", "title=caf\udce9 \udcff"])
    result["latin1_meta.mkv"] = Clip(meta, n)
    return result


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def good_videos(video_dir) -> dict[str, Clip]:
    """Decodable videos in many codecs and containers, 64×48 unless named otherwise."""
    folder = video_dir / "good"
    folder.mkdir()
    return _good(folder)


@pytest.fixture(scope="session")
def rotated_video(video_dir) -> Path:
    """An H.264 mp4 whose container says: display rotated 90° anticlockwise (as phones record)."""
    source = videogen.write_ffmpeg(video_dir / "upright.mp4", 30, codec=X264)
    target = video_dir / "rotated.mp4"
    videogen.run_ffmpeg(["-display_rotation", "90", "-i", str(source), "-c", "copy", str(target)])
    return target


@pytest.fixture(scope="session")
def large_video(video_dir) -> Clip:
    """Two 4K (2160×3840) frames."""
    path = videogen.write_ffmpeg(video_dir / "uhd.mp4", 2, size=(2160, 3840), codec=X264)
    return Clip(path, 2, 2160, 3840)


@pytest.fixture(scope="session")
def frame_folders(video_dir) -> dict[str, Path]:
    """Frame folders in the usual naming schemes."""
    root = video_dir / "frames"
    return {
        "img_00001.jpg": videogen.write_frame_folder(root / "tsn_style", 30, pattern="img_{:05d}.jpg"),
        "00001.jpg": videogen.write_frame_folder(root / "plain", 30, pattern="{:05d}.jpg"),
        "1.png": videogen.write_frame_folder(root / "unpadded", 12, pattern="{}.png"),  # 2.png before 10.png
    }


@pytest.fixture(scope="session")
def bad_videos(video_dir) -> dict[str, Path]:
    """Inputs every reader must reject with a reason (and the files for damaged-but-readable cases)."""
    folder = video_dir / "bad"
    folder.mkdir()
    files: dict[str, Path] = {}
    (folder / "notes.mp4").write_text("these are not the frames you are looking for\n" * 20)
    files["text"] = folder / "notes.mp4"
    (folder / "empty.mp4").write_bytes(b"")
    files["empty"] = folder / "empty.mp4"
    # an mp4 cut in half with its index (moov) at the end: nothing can open it
    whole = videogen.write_ffmpeg(folder / "whole.mp4", 60, codec=X264)
    data = whole.read_bytes()
    (folder / "cut_index.mp4").write_bytes(data[: len(data) // 2])
    whole.unlink()
    files["cut_index"] = folder / "cut_index.mp4"
    files["zero_frames"] = videogen.run_ffmpeg(
        ["-f", "lavfi", "-i", "color=c=red:s=64x48:d=1", "-frames:v", "0", *X264, str(folder / "zero_frames.mp4")]
    )
    files["broken_link"] = folder / "gone.mp4"
    os.symlink(folder / "does_not_exist.mp4", files["broken_link"])
    files["missing"] = folder / "never_written.mp4"
    return files


@pytest.fixture(scope="session")
def damaged_videos(video_dir) -> dict[str, Clip]:
    """Truncated files whose headers promise more frames than decode (readable in part)."""
    folder = video_dir / "damaged"
    folder.mkdir()
    result = {}
    for name, codec, extra in [
        ("faststart_cut.mp4", [*X264, "-g", "12"], ["-movflags", "+faststart"]),  # index first, data cut
        ("h264_cut.mkv", [*X264, "-g", "12"], []),
    ]:
        whole = videogen.write_ffmpeg(folder / f"whole_{name}", 120, codec=codec, extra_output=extra)
        data = whole.read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * 0.6)])
        whole.unlink()
        result[name] = Clip(folder / name, 0)  # decodable count unknown up front: tests compare readers
    # an MJPEG AVI cut 20 bytes into frame 72's JPEG: 73 frames listed, frames 0..71 decode
    whole = videogen.write_ffmpeg(folder / "whole.avi", 120, codec=["-c:v", "mjpeg", "-q:v", "3"])
    data = whole.read_bytes()
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]
    (folder / "mjpeg_cut.avi").write_bytes(data[: starts[72] + 20])
    whole.unlink()
    result["mjpeg_cut.avi"] = Clip(folder / "mjpeg_cut.avi", 72)
    return result


@pytest.fixture(scope="session")
def one_frame_video(video_dir) -> Path:
    return videogen.write_ffmpeg(video_dir / "one_frame.mp4", 1, codec=X264)


@pytest.fixture(scope="session")
def latin1_named_video(video_dir, good_videos) -> Path:
    """A copy of a good video under a file name that is not valid UTF-8 (b'caf\\xe9.mp4')."""
    target = Path(os.fsdecode(bytes(video_dir) + b"/caf\xe9.mp4"))
    shutil.copy(good_videos["h264_bframes.mp4"].path, target)
    return target
