"""Readers: frame accuracy per backend and codec, header counts that lie, bad inputs, frame folders."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from videogen import read_index

from vtempo.video import VideoError, auto_backends, available_backends, display_path, open_video
from vtempo.video import readers
from vtempo.video.readers import scaled_size

# torchcodec is tested where it is installed (it needs a system FFmpeg); the others always
BACKENDS = [name for name in ("pyav", "sequential", "opencv", "decord", "torchcodec") if name in available_backends()]
UNINDEXED = "cannot seek frame-accurately in an MPEG"
# files a backend must refuse (it would return wrong frames or crash), with the reason it gives
REFUSES = {
    "pyav": {"mpeg2.mpg": UNINDEXED, "h264.ts": UNINDEXED},
    "sequential": {},
    "decord": {"mpeg2.mpg": UNINDEXED, "h264.ts": UNINDEXED, "portrait.mp4": "72-pixel-wide"},
    "torchcodec": {"mpeg2.mpg": UNINDEXED, "h264.ts": UNINDEXED},
    "opencv": {},
}


def indices_read(reader, indices) -> list[int]:
    return [read_index(frame) for frame in reader.get(indices)]


def test_backends_installed():
    assert {"pyav", "sequential", "opencv", "decord"} <= set(available_backends())
    assert auto_backends() == ["pyav", "sequential", "opencv"]  # decord and torchcodec by name only


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_accurate_on_every_codec(good_videos, backend):
    rng = random.Random(0)
    for name, clip in good_videos.items():
        if name in REFUSES[backend]:
            with pytest.raises(VideoError, match=REFUSES[backend][name]):
                open_video(clip.path, backend)
            continue
        with open_video(clip.path, backend) as reader:
            assert reader.backend == backend
            assert reader.num_frames == clip.frames, name
            assert (reader.height, reader.width) == (clip.height, clip.width), name
            # unsorted, repeated, first and last frames: the same pictures, in the order asked
            wanted = [clip.frames - 1, 0, *rng.sample(range(clip.frames), 6), 3, 3]
            frames = reader.get(wanted)
            assert frames.dtype == np.uint8 and frames.shape == (len(wanted), clip.height, clip.width, 3)
            assert [read_index(f) for f in frames] == wanted, name
            # a second, backwards request on the same reader
            assert indices_read(reader, [5, 1]) == [5, 1], name


@pytest.mark.skipif(not {"pyav", "decord"} <= set(available_backends()), reason="needs PyAV and decord")
def test_pyav_gives_decords_pixels(good_videos):
    """Both convert with FFmpeg's scaler: the same bytes, so results do not depend on which one reads."""
    compared = 0
    for name, clip in good_videos.items():
        if name in REFUSES["pyav"] or name in REFUSES["decord"]:
            continue
        wanted = [clip.frames - 1, 0, clip.frames // 2]
        with open_video(clip.path, "pyav") as ours, open_video(clip.path, "decord") as theirs:
            assert (ours.num_frames, ours.fps) == (theirs.num_frames, theirs.fps), name
            np.testing.assert_array_equal(ours.get(wanted), theirs.get(wanted), err_msg=name)
        compared += 1
    assert compared >= 5


@pytest.mark.skipif("pyav" not in available_backends(), reason="needs PyAV")
def test_pyav_decodes_from_the_start_when_a_seek_lands_past_the_frame(good_videos, monkeypatch):
    clip = good_videos["h264_bframes.mp4"]  # a key frame every 12
    with open_video(clip.path, "pyav") as reader:
        start, timestamps = reader._start, reader._timestamps

        def overshooting(timestamp):  # a container whose index sends every seek a key frame too far
            if timestamp != timestamps[0]:
                timestamp = int(timestamps[min(len(timestamps) - 1, np.searchsorted(timestamps, timestamp) + 13)])
            return start(timestamp)

        monkeypatch.setattr(reader, "_start", overshooting)
        assert indices_read(reader, [40, 5, 6]) == [40, 5, 6]


def test_rgb_order(good_videos):
    # the lower half of videogen frames has red = texture, blue = 80: BGR would swap them
    for backend in BACKENDS:
        with open_video(good_videos["mjpeg.avi"].path, backend) as reader:
            frame = reader.get([0])[0]
        lower = frame[frame.shape[0] // 2 + 2 :].reshape(-1, 3).astype(float)
        assert abs(lower[:, 2].mean() - 80) < 8, backend
        assert lower[:, 0].std() > 20, backend


def test_auto_picks_a_reader_that_is_right(good_videos):
    for name, clip in good_videos.items():
        with open_video(clip.path) as reader:
            expected = next(b for b in auto_backends() if name not in REFUSES[b])
            assert reader.backend == expected, name
            assert indices_read(reader, [0, clip.frames // 2, clip.frames - 1]) == [0, clip.frames // 2, clip.frames - 1]


def test_fps_and_variable_frame_rate(good_videos):
    with open_video(good_videos["fps29.97.mp4"].path) as reader:
        assert reader.fps == pytest.approx(29.97, abs=0.01)
    for backend in BACKENDS:  # every frame of a VFR file is there, in order, whatever the gaps
        with open_video(good_videos["vfr.mp4"].path, backend) as reader:
            assert reader.num_frames == 60
            assert indices_read(reader, list(range(25, 35))) == list(range(25, 35))


def test_rotated_video_is_upright(rotated_video):
    with pytest.raises(VideoError, match="rotation"):
        open_video(rotated_video, "decord")
    for backend in ["auto", *(b for b in BACKENDS if b != "decord")]:
        with open_video(rotated_video, backend) as reader:
            assert reader.backend != "decord"
            assert (reader.height, reader.width) == (64, 48), backend  # displayed portrait
            frames = reader.get([0, 17])
        assert frames.shape[1:3] == (64, 48), backend
        assert [read_index(np.rot90(f, -1)) for f in frames] == [0, 17], backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_time_resize(large_video, backend):
    with open_video(large_video.path, backend, max_side=320) as reader:
        assert (reader.height, reader.width) == (180, 320)
        frames = reader.get([1, 0])
    assert frames.shape == (2, 180, 320, 3)
    assert [read_index(f) for f in frames] == [1, 0]


def test_scaled_size():
    assert scaled_size(2160, 3840, 512) == (288, 512)
    assert scaled_size(3840, 2160, 512) == (512, 288)
    assert scaled_size(240, 320, 512) == (240, 320)  # never enlarged
    assert scaled_size(240, 320, None) == (240, 320)


def test_damaged_files_clamp_to_what_decodes(damaged_videos):
    for name, clip in damaged_videos.items():
        with open_video(clip.path, "opencv") as sequential:
            decodable = sequential.num_frames
            assert 0 < decodable < 120, name
            assert sequential.header_frames is None or sequential.header_frames >= decodable
            early = [0, decodable // 3, decodable // 2]
            assert indices_read(sequential, early) == early, name
            sequential.get([decodable - 1])  # the last counted frame decodes
            with pytest.raises(IndexError):
                sequential.get([decodable])
        with open_video(clip.path) as reader:  # auto: whichever reader, never more than decodes
            assert reader.num_frames == decodable, name
            reader.get([reader.num_frames - 1])
            assert indices_read(reader, early) == early, name


def test_seeking_readers_refuse_a_file_whose_header_lies(damaged_videos):
    # the cut AVI lists a 73rd frame that does not decode; random access into such files proved
    # unreliable, so the seeking readers refuse them and auto falls back to sequential decoding
    for backend in ("pyav", "decord"):
        with pytest.raises(VideoError, match="lists (73|120) frames but the last one does not decode"):
            open_video(damaged_videos["mjpeg_cut.avi"].path, backend)
    with open_video(damaged_videos["mjpeg_cut.avi"].path) as reader:
        assert reader.backend == "sequential"
        assert reader.header_frames == 120 and reader.num_frames == 72
        assert indices_read(reader, [71, 0, 40]) == [71, 0, 40]


@pytest.mark.parametrize(
    "name, reason",
    [
        ("text", "not a video"),
        ("empty", "empty file"),
        ("cut_index", "MP4/QuickTime file that no decoder can open"),
        ("zero_frames", "no video frames"),
        ("broken_link", "broken symbolic link"),
        ("missing", "no such file"),
    ],
)
def test_bad_inputs_fail_with_one_line_naming_file_and_reason(bad_videos, name, reason):
    path = bad_videos[name]
    for backend in ["auto", *BACKENDS]:
        with pytest.raises(VideoError) as caught:
            open_video(path, backend)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"{path}: ")
        if backend == "auto":
            assert reason in message, message


def test_unreadable_file(good_videos):
    """A file the user may not read. Tests often run as root, which reads anything: then a forked child
    drops to `nobody` first, so the permission check is a real one, not a mock."""
    folder = Path(tempfile.mkdtemp())
    try:
        os.chmod(folder, 0o755)
        secret = folder / "secret.mp4"
        secret.write_bytes(good_videos["mp4v.mp4"].path.read_bytes())
        os.chmod(secret, 0)
        if os.geteuid() != 0:
            with pytest.raises(VideoError, match="permission denied"):
                open_video(secret)
            return
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody, try, report the message
            try:
                os.close(read)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                try:
                    open_video(secret)
                    message = "opened"
                except VideoError as error:
                    message = str(error)
                os.write(write, message.encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            message = pipe.read().decode()
        os.waitpid(pid, 0)
        assert message == f"{secret}: permission denied"
    finally:
        os.chmod(folder / "secret.mp4", 0o600)
        for entry in folder.iterdir():
            entry.unlink()
        folder.rmdir()


def test_one_frame_video(one_frame_video):
    for backend in ["auto", *BACKENDS]:
        with open_video(one_frame_video, backend) as reader:
            assert reader.num_frames == 1
            assert indices_read(reader, [0, 0, 0]) == [0, 0, 0]


def test_non_utf8_file_name(latin1_named_video):
    for backend in BACKENDS:
        with open_video(latin1_named_video, backend) as reader:
            assert indices_read(reader, [2, 40]) == [2, 40]
    assert display_path(latin1_named_video).endswith("caf\\xe9.mp4")
    with pytest.raises(VideoError) as caught:
        open_video(Path(str(latin1_named_video) + ".missing"))
    str(caught.value).encode("utf-8")  # printable whatever the file name


def test_out_of_range_and_empty_requests(good_videos):
    with open_video(good_videos["mp4v.mp4"].path) as reader:
        with pytest.raises(IndexError):
            reader.get([60])
        with pytest.raises(IndexError):
            reader.get([-1])
        with pytest.raises(ValueError):
            reader.get([])


def test_frame_folders(frame_folders):
    for name, folder in frame_folders.items():
        with open_video(folder) as reader:
            assert reader.backend == "frames" and reader.fps is None
            last = reader.num_frames - 1
            assert indices_read(reader, [0, 9, last, 1]) == [0, 9, last, 1], name
    with open_video(frame_folders["img_00001.jpg"], max_side=32) as reader:
        assert reader.get([0]).shape == (1, 24, 32, 3)


def test_frame_folder_problems(tmp_path, frame_folders):
    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(VideoError, match="no image files"):
        open_video(empty)
    broken = tmp_path / "broken_frames"
    broken.mkdir()
    for source in sorted(frame_folders["00001.jpg"].iterdir())[:5]:
        (broken / source.name).write_bytes(source.read_bytes())
    (broken / "00003.jpg").write_bytes(b"not a jpeg")
    with open_video(broken) as reader:
        assert indices_read(reader, [0, 1]) == [0, 1]
        with pytest.raises(VideoError, match="frame 00003.jpg is not a readable image"):
            reader.get([2])


def test_unknown_backend(good_videos):
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(good_videos["mp4v.mp4"].path, "gstreamer")


def test_one_pixel_limit_for_every_reader(good_videos):
    """The random-access readers and the front-to-back reader (timeline, stream, embed --window) refuse
    frames over the limit before decoding them; 64×48 frames are 3072 pixels."""
    from vtempo.video.sequential import SequentialVideo

    path = good_videos["h264_bframes.mp4"].path
    for backend in ["auto", *BACKENDS]:
        with pytest.raises(VideoError, match="over the limit of 3000 pixels"):
            open_video(path, backend, max_pixels=3000)
    with pytest.raises(VideoError, match="over the limit of 3000 pixels"):
        SequentialVideo(path, max_pixels=3000)
    with SequentialVideo(path, max_pixels=3072) as video:
        assert video.read().shape == (48, 64, 3)


def _spoil_packet(source: Path, target: Path, index: int) -> Path:
    """A copy of `source` whose `index`-th video packet (in file order) is overwritten with noise."""
    import av

    with av.open(str(source)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(source.read_bytes())
    position, size = packets[index]
    data[position:position + size] = random.Random(index).randbytes(size)
    target.write_bytes(bytes(data))
    return target


def test_auto_moves_a_file_to_sequential_decoding_when_a_read_fails(tmp_path):
    """An MJPEG AVI whose 21st packet does not decode: PyAV opens it (counting 40 packets) and a read that
    passes the packet fails; auto moves the file to sequential decoding, which counts the 39 frames that
    decode, and `sample` chooses the indices again from that count."""
    from videogen import write_ffmpeg

    source = write_ffmpeg(tmp_path / "source.avi", 40, codec=["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"])
    spoilt = _spoil_packet(source, tmp_path / "spoilt.avi", 20)
    truth = [i for i in range(40) if i != 20]
    with open_video(spoilt) as reader:
        assert (reader.backend, reader.num_frames) == ("pyav", 40)
        chosen, frames = reader.sample(lambda count: list(range(count)))
        assert (reader.backend, reader.num_frames) == ("sequential", 39)
        assert chosen == list(range(39)) and [read_index(f) for f in frames] == truth
    with open_video(spoilt, "sequential") as reader:
        assert reader.num_frames == 39 and indices_read(reader, [38, 20, 19]) == [truth[38], truth[20], truth[19]]
    with open_video(spoilt, "opencv") as reader:  # OpenCV goes on past the frame too
        assert reader.num_frames == 39 and indices_read(reader, [38, 20, 19]) == [truth[38], truth[20], truth[19]]


def test_sequential_reads_stop_at_the_last_frame_asked_for(good_videos, monkeypatch):
    path = good_videos["h264_bframes.mp4"].path
    with open_video(path, "sequential") as reader:  # a short file: the frames decoded to count them are kept
        assert len(reader._kept) == 60
        kept = reader.get([59, 7, 3, 0])
    monkeypatch.setattr(readers, "SEQUENTIAL_KEPT_BYTES", 0)
    with open_video(path, "sequential") as reader:
        assert reader._kept is None
        np.testing.assert_array_equal(reader.get([59, 7, 3, 0]), kept)
    with open_video(path, "sequential") as reader:
        assert reader.num_frames == 60
        assert indices_read(reader, [7, 3]) == [7, 3]
        assert reader._position == 8  # decoded up to frame 7, not to the end
        assert indices_read(reader, [9]) == [9] and reader._position == 10  # on from there
        assert indices_read(reader, [2]) == [2] and reader._position == 3  # from the start again


def test_pyav_refuses_decode_order_timestamps(tmp_path):
    """H.264 with B-frames in AVI: the container has only decode-order times, which PyAV would take for
    presentation times; it refuses the file on opening and auto decodes it in order."""
    from videogen import write_ffmpeg

    path = write_ffmpeg(tmp_path / "b.avi", 40, codec=["-c:v", "libx264", "-preset", "ultrafast", "-bf", "3",
                                                       "-pix_fmt", "yuv420p"])
    with pytest.raises(VideoError, match="not presentation order"):
        open_video(path, "pyav")
    with open_video(path) as reader:
        assert reader.backend == "sequential" and reader.num_frames == 40
        assert indices_read(reader, [39, 0, 17, 18]) == [39, 0, 17, 18]


def test_pyav_skips_what_an_edit_list_discards(tmp_path):
    from videogen import run_ffmpeg, write_ffmpeg

    source = write_ffmpeg(tmp_path / "source.mp4", 60, codec=["-c:v", "libx264", "-preset", "ultrafast",
                                                               "-pix_fmt", "yuv420p", "-bf", "3", "-g", "12"])
    cut = run_ffmpeg(["-ss", "0.5", "-i", str(source), "-c", "copy", str(tmp_path / "cut.mp4")])
    with open_video(cut, "sequential") as sequential:
        truth = indices_read(sequential, range(sequential.num_frames))
    assert truth[0] > 0 and truth == list(range(truth[0], 60))  # the cut starts at a later frame
    with open_video(cut, "pyav") as reader:
        assert reader.num_frames == len(truth)
        assert indices_read(reader, [len(truth) - 1, 0, 5]) == [truth[-1], truth[0], truth[5]]
