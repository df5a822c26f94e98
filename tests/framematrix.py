"""A frame-accuracy matrix: small videos in many containers, codecs and oddities, each with its truth.

The truth of a file is FFmpeg's sequential decode of every frame, in the order the decoder outputs them
(presentation order), through PyAV, converted to RGB and rotated the way `PyAVReader` does. A packet
the decoder rejects is skipped and decoding goes on, as `ffmpeg -i FILE -f null -` does, so the count
is how many frames decode (`Case.error` keeps the decoder's first complaint); a file where nothing
decodes has no frames, and every reader must refuse it. A case whose two sequential decodes differ
is a broken case and is not made.
The index bars `videogen.frame_picture` draws only explain a difference; pixels decide it.

`check(case, backend)` opens a case with `vtempo.video.open_video` and reads (through `VideoReader.sample`)
the last frame, the first, a random unsorted sample with repeats and then every frame: the verdict is "ok"
(true count, every frame within `Case.tolerance` of the truth, but for damaged frames, whose pixels depend
on the decoder's threads), "refused" (a `VideoError` on opening), "refused on reading" (a `VideoError` on
the first read that fails, before any wrong frame: no wrong frame returned), or "WRONG" with what was
wrong. For "auto", refusing a file that FFmpeg decodes, on opening or reading, is WRONG.

Standalone: `python tests/framematrix.py OUT [--cases a,b] [--backends pyav,auto]` writes the files to OUT
and prints one line per case and backend.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import videogen  # noqa: E402

N = 50  # frames per generated file
SIZE = (48, 64)  # height, width
# Two backends' RGB of the same frame of a video may differ by colour-conversion rounding (measured: not
# at all, they share FFmpeg's converter); JPEG frame folders by two JPEG decoders' chroma upsampling
# (FFmpeg's against OpenCV's libjpeg: up to 42, mean 2.2). Neighbouring frames differ by a mean of 18.
MAX_DIFF, MEAN_DIFF = 2, 0.5
JPEG_MAX_DIFF, JPEG_MEAN_DIFF = 48, 3.0
# A damaged frame's error concealment depends on the decoder's threads (OpenCV's FFmpeg decodes with
# several, and its frame 19 of corrupt_xvid.avi differed from run to run), so its pixels are not compared.

X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
X265 = ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error"]
VP9 = ["-c:v", "libvpx-vp9", "-deadline", "good", "-cpu-used", "8", "-b:v", "0", "-crf", "30"]
MPEG4 = ["-c:v", "mpeg4", "-q:v", "3"]
MJPEG = ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"]
MPEG2 = ["-c:v", "mpeg2video", "-q:v", "3", "-bf", "2", "-g", "12"]
H264_B2 = [*X264, "-bf", "2", "-g", "12"]
XVID_B2 = [*MPEG4, "-vtag", "XVID", "-bf", "2", "-g", "12"]
# libxvid packs B-frames DivX-style (P and B in one packet, then a placeholder) outside MP4/MOV
LIBXVID_PACKED = ["-c:v", "libxvid", "-q:v", "3", "-vtag", "DX50", "-bf", "2", "-g", "12"]


@dataclass
class Case:
    name: str
    path: Path
    about: str
    truth: np.ndarray  # (frames, H, W, 3) uint8 RGB, display rotation applied
    bars: list[int]  # the index each truth frame shows
    rotation: int = 0  # degrees the truth frames were turned (anticlockwise) for display
    error: str | None = None  # the decoder's first error in sequential decoding, if any
    facts: dict = field(default_factory=dict)  # what the file is: packets, B-frames, header count...
    tolerance: tuple[int, float] = (MAX_DIFF, MEAN_DIFF)  # (largest, mean) pixel difference allowed
    damaged: frozenset[int] = frozenset()  # frames that match no frame of the intact file's decode: only
    # their position is checked

    @property
    def frames(self) -> int:
        return len(self.truth)


@dataclass
class Verdict:
    status: str  # "ok", "refused", "refused on reading" or "WRONG"
    detail: str = ""
    backend: str = ""  # the reader's `backend` on opening, and after the reads if it changed ("pyav→sequential")


# ---------------------------------------------------------------- writing the files

def _encode(path: Path, codec: list[str], extra_input: list[str] = (), extra_output: list[str] = (),
            frames: int = N, size: tuple[int, int] = SIZE, fps: float = 25) -> Path:
    return videogen.write_ffmpeg(path, frames, size=size, fps=fps, codec=list(codec),
                                 extra_input=list(extra_input), extra_output=list(extra_output))


def _copy(source: Path, target: Path, input_options: list[str] = (), output_options: list[str] = ()) -> Path:
    return videogen.run_ffmpeg([*input_options, "-i", str(source), "-c", "copy", *output_options, str(target)])


def _scratch(path: Path, suffix: str) -> Path:
    return path.with_name(f"source_{path.stem}{suffix}")


INTACT: dict[Path, np.ndarray] = {}
"""For each damaged file made: the sequential decode of the intact file it was made from."""


def _intact(path: Path, whole: Path) -> None:
    INTACT[path] = sequential_truth(whole)[0]


def _truncated(path: Path, make: Callable[[Path], Path], fraction: float = 0.8) -> Path:
    whole = make(_scratch(path, path.suffix))
    _intact(path, whole)
    data = whole.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    whole.unlink()
    return path


def _truncated_jpeg(path: Path) -> Path:
    """An MJPEG AVI cut 20 bytes into the frame at 80% of its bytes. (A JPEG cut further in decodes in
    part, the rest of the picture left as whatever the decoder's buffer held: no truth to compare with.)"""
    whole = _encode(_scratch(path, ".avi"), MJPEG)
    _intact(path, whole)
    data = whole.read_bytes()
    position = next(p for p, _, _ in _packet_spans(whole) if p >= 0.8 * len(data))
    path.write_bytes(data[: position + 20])
    whole.unlink()
    return path


def _packet_spans(path: Path) -> list[tuple[int, int, bool]]:
    """(byte position, size, key frame) of each video packet, in file order."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(p.pos, p.size, p.is_keyframe) for p in container.demux(stream) if p.size and p.pos is not None]


def _corrupt_middle(path: Path, make: Callable[[Path], Path]) -> Path:
    """A copy of `make`'s file with the bytes of one middle, non-key packet overwritten by noise."""
    whole = make(_scratch(path, path.suffix))
    _intact(path, whole)
    spans = _packet_spans(whole)
    middle = [s for s in spans[len(spans) // 3 : 2 * len(spans) // 3] if s[1] >= 40]
    middle = [s for s in middle if not s[2]] or middle  # every MJPEG packet is a key frame
    position, size, _ = max(middle, key=lambda s: s[1])
    data = bytearray(whole.read_bytes())
    start, stop = position + size // 4, position + size - 4  # keep the packet's own header bytes
    data[start:stop] = np.random.default_rng(3).integers(0, 256, stop - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    whole.unlink()
    return path


def _garbage_last_packet(path: Path, make: Callable[[Path], Path]) -> Path:
    """The last packet's bytes replaced by zeros: the container lists it, it does not decode."""
    whole = make(_scratch(path, path.suffix))
    _intact(path, whole)
    position, size, _ = max(_packet_spans(whole), key=lambda s: s[0])
    data = bytearray(whole.read_bytes())
    data[position : position + size] = bytes(size)
    path.write_bytes(bytes(data))
    whole.unlink()
    return path


def _avi_header_more(path: Path, extra: int = 5) -> Path:
    """An MJPEG AVI whose main and stream headers list `extra` more frames than it holds."""
    whole = _encode(_scratch(path, ".avi"), MJPEG)
    data = bytearray(whole.read_bytes())
    avih = data.index(b"avih")
    total = int.from_bytes(data[avih + 24 : avih + 28], "little")  # dwTotalFrames
    data[avih + 24 : avih + 28] = (total + extra).to_bytes(4, "little")
    strh = data.index(b"strh")
    length = int.from_bytes(data[strh + 40 : strh + 44], "little")  # dwLength
    data[strh + 40 : strh + 44] = (length + extra).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    whole.unlink()
    return path


def _edit_list(path: Path) -> Path:
    """An MP4 cut with input -ss and stream copy from one with B-frames: the frames from the key frame
    before the cut point to the cut are in the file but an edit list hides them."""
    source = _encode(_scratch(path, ".mp4"), [*X264, "-bf", "3", "-g", "12"])
    _copy(source, path, ["-ss", "0.6"])
    source.unlink()
    return path


def _rotated(path: Path, degrees: int) -> Path:
    source = _encode(_scratch(path, path.suffix), H264_B2)
    _copy(source, path, ["-display_rotation", str(degrees)])
    source.unlink()
    return path


def _frame_folder(path: Path, pattern: str) -> Path:
    return videogen.write_frame_folder(path, 30, SIZE, pattern=pattern)


VFR = ["-vf", "setpts='if(lt(N,20),N*2,40+(N-20)*5)'", "-fps_mode", "passthrough"]
VFR_MKV = ["-vf", "setpts='if(lt(N,20),N,20+(N-20)*3)'", "-fps_mode", "passthrough"]
OPEN_GOP = [*X264, "-bf", "3", "-g", "12", "-x264-params", "open-gop=1", "-flags", "-cgop"]

# name: (what it is, maker(path) -> path)
SPECS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    # H.264
    "h264.mp4": ("H.264 without B-frames in MP4", lambda p: _encode(p, [*X264, "-bf", "0", "-g", "12"])),
    "h264_bf3.mp4": ("H.264, 3 B-frames, in MP4", lambda p: _encode(p, [*X264, "-bf", "3", "-g", "12"])),
    "h264_bf3.mov": ("H.264, 3 B-frames, in QuickTime", lambda p: _encode(p, [*X264, "-bf", "3", "-g", "12"])),
    "h264_bf3.mkv": ("H.264, 3 B-frames, in Matroska", lambda p: _encode(p, [*X264, "-bf", "3", "-g", "12"])),
    "h264_bf3.ts": ("H.264, 3 B-frames, in MPEG-TS", lambda p: _encode(p, [*X264, "-bf", "3", "-g", "12"],
                                                                       extra_output=["-f", "mpegts"])),
    "h264.avi": ("H.264 without B-frames in AVI", lambda p: _encode(p, [*X264, "-bf", "0", "-g", "12"])),
    "h264_bf3.avi": ("H.264, 3 B-frames, in AVI (no presentation timestamps)",
                     lambda p: _encode(p, [*X264, "-bf", "3", "-g", "12"])),
    "h264_opengop.mp4": ("H.264 open GOP, 3 B-frames, in MP4", lambda p: _encode(p, OPEN_GOP)),
    "h264_opengop.mkv": ("H.264 open GOP, 3 B-frames, in Matroska", lambda p: _encode(p, OPEN_GOP)),
    # HEVC (x265 makes open GOPs by default)
    "hevc.mp4": ("HEVC with B-frames, open GOP, in MP4", lambda p: _encode(p, [*X265, "-g", "12", "-tag:v", "hvc1"])),
    "hevc.mkv": ("HEVC with B-frames, open GOP, in Matroska", lambda p: _encode(p, [*X265, "-g", "12"])),
    # MPEG-4 part 2
    "xvid.avi": ("MPEG-4 part 2, XVID tag, no B-frames, in AVI",
                 lambda p: _encode(p, [*MPEG4, "-vtag", "XVID", "-bf", "0", "-g", "12"])),
    "xvid_bf2.avi": ("MPEG-4 part 2, XVID tag, 2 B-frames, in AVI",
                     lambda p: _encode(p, XVID_B2)),
    "divx_packed.avi": ("MPEG-4 part 2 by libxvid, DX50 tag, 2 B-frames packed DivX-style, in AVI",
                        lambda p: _encode(p, LIBXVID_PACKED)),
    "divx_bf2.avi": ("MPEG-4 part 2, DIVX tag, 2 B-frames, in AVI",
                     lambda p: _encode(p, [*MPEG4, "-vtag", "DIVX", "-bf", "2", "-g", "12"])),
    "mpeg4_bf2.mp4": ("MPEG-4 part 2, 2 B-frames, in MP4", lambda p: _encode(p, [*MPEG4, "-bf", "2", "-g", "12"])),
    # MJPEG, VP9, MPEG-2
    "mjpeg.avi": ("MJPEG in AVI", lambda p: _encode(p, MJPEG)),
    "mjpeg.mov": ("MJPEG in QuickTime", lambda p: _encode(p, MJPEG)),
    "vp9.webm": ("VP9 in WebM", lambda p: _encode(p, [*VP9, "-g", "12"])),
    "vp9.mp4": ("VP9 in MP4", lambda p: _encode(p, [*VP9, "-g", "12"])),
    "mpeg2.mpg": ("MPEG-2 with B-frames in MPEG-PS", lambda p: _encode(p, MPEG2, extra_output=["-f", "vob"])),
    "mpeg2.ts": ("MPEG-2 with B-frames in MPEG-TS", lambda p: _encode(p, MPEG2, extra_output=["-f", "mpegts"])),
    "mpeg2.mkv": ("MPEG-2 with B-frames in Matroska", lambda p: _encode(p, MPEG2)),
    # oddities
    "vfr.mp4": ("variable frame rate (2- then 5-tick gaps), H.264 B-frames, MP4",
                lambda p: _encode(p, H264_B2, extra_output=VFR)),
    "vfr.mkv": ("variable frame rate (1- then 3-tick gaps), H.264 B-frames, Matroska",
                lambda p: _encode(p, H264_B2, extra_output=VFR_MKV)),
    "editlist.mp4": ("edit list: cut with -ss 0.6 and stream copy from H.264 with B-frames", _edit_list),
    "rotate90.mp4": ("display rotation 90° (H.264 B-frames, MP4)", lambda p: _rotated(p, 90)),
    "rotate270.mov": ("display rotation 270° (H.264 B-frames, QuickTime)", lambda p: _rotated(p, 270)),
    "header_more.avi": ("MJPEG AVI whose headers list 5 more frames than it holds", _avi_header_more),
    "last_garbage.mp4": ("H.264 MP4 whose last packet is zeros: listed, does not decode",
                         lambda p: _garbage_last_packet(p, lambda q: _encode(q, H264_B2))),
    "truncated.mp4": ("H.264 B-frames MP4 (index first) cut at 80% of its bytes",
                      lambda p: _truncated(p, lambda q: _encode(q, H264_B2,
                                                                extra_output=["-movflags", "+faststart"]))),
    "truncated.mkv": ("H.264 B-frames Matroska cut at 80% of its bytes",
                      lambda p: _truncated(p, lambda q: _encode(q, H264_B2))),
    "truncated_xvid.avi": ("MPEG-4 part 2 B-frames AVI cut at 80% of its bytes (index lost)",
                           lambda p: _truncated(p, lambda q: _encode(q, XVID_B2))),
    "truncated_mjpeg.avi": ("MJPEG AVI cut 20 bytes into the frame at 80% of its bytes (index lost)",
                            _truncated_jpeg),
    "corrupt.mp4": ("H.264 B-frames MP4 with noise over a middle P/B packet",
                    lambda p: _corrupt_middle(p, lambda q: _encode(q, H264_B2))),
    "corrupt.mkv": ("H.264 Matroska without B-frames, noise over a middle packet",
                    lambda p: _corrupt_middle(p, lambda q: _encode(q, [*X264, "-bf", "0", "-g", "12"]))),
    "corrupt_xvid.avi": ("MPEG-4 part 2 B-frames AVI with noise over a middle packet",
                         lambda p: _corrupt_middle(p, lambda q: _encode(q, XVID_B2))),
    "corrupt_mjpeg.avi": ("MJPEG AVI with noise over a middle frame",
                          lambda p: _corrupt_middle(p, lambda q: _encode(q, MJPEG))),
    # frame folders
    "frames_jpg": ("frame folder, img_00001.jpg ...", lambda p: _frame_folder(p, "img_{:05d}.jpg")),
    "frames_png": ("frame folder, 1.png ... (unpadded)", lambda p: _frame_folder(p, "{}.png")),
}

CASE_NAMES = list(SPECS)
FAST = ["h264_bf3.mp4", "h264_bf3.avi", "h264_opengop.mp4", "divx_packed.avi", "editlist.mp4", "rotate90.mp4",
        "truncated.mp4"]
"""A few cases that cover the main traps, cheap enough for the unmarked test run."""


# ---------------------------------------------------------------- the truth

def _rgb(converter, frame) -> tuple[np.ndarray, int]:
    """A decoded frame as PyAVReader shows it: RGB at the coded size, turned by the display rotation."""
    pixels = converter.reformat(frame, frame.width, frame.height, "rgb24", interpolation="AREA", threads=1)
    pixels = pixels.to_ndarray()
    rotation = frame.rotation % 360
    return (np.rot90(pixels, rotation // 90) if rotation else pixels), rotation


def bars_of(frame: np.ndarray, rotation: int = 0) -> int:
    """The index a (displayed) frame shows, reading the bars upright."""
    upright = np.rot90(frame, -(rotation // 90)) if rotation else frame
    return videogen.read_index(np.ascontiguousarray(upright))


def sequential_truth(path: Path) -> tuple[np.ndarray, int, str | None, dict]:
    """(frames, rotation, error, facts) from decoding `path` front to back with PyAV."""
    import av

    if path.is_dir():
        return _folder_truth(path)
    converter = av.video.reformatter.VideoReformatter()
    frames, rotation, error, types = [], 0, None, []
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        header = stream.frames
        decoded, errors = [], 0
        for packet in container.demux(stream):  # ends with an empty packet: the decoder's flush
            try:
                decoded.extend(packet.decode())
            except av.FFmpegError as exc:  # a packet the decoder rejects: skipped, as ffmpeg does
                errors += 1
                error = error or f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        times = [frame.time for frame in decoded]
        for frame in decoded:
            pixels, rotation = _rgb(converter, frame)
            frames.append(pixels)
            types.append(str(frame.pict_type).rsplit(".", 1)[-1])
    facts = {"header_frames": header, "b_frames": sum(t in ("B", "3") for t in types),
             "rejected_packets": errors, **_packet_facts(path)}
    stamps = [frame.pts for frame in decoded]
    if None not in stamps:  # frames whose timestamp is not after the one shown before: not presentation times
        facts["pts_out_of_order"] = sum(b <= a for a, b in zip(stamps, stamps[1:]))
    if None not in times and len(times) > 2:
        facts["frame_gaps"] = len(set(np.round(np.diff(times), 4)))  # more than one: variable frame rate
    shape = (0, *SIZE, 3)
    return (np.stack(frames) if frames else np.zeros(shape, np.uint8)), rotation, error, facts


def _packet_facts(path: Path) -> dict:
    import av

    packets = no_pts = discarded = packed = leading = 0
    key_pts = None
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                packets += 1
                no_pts += packet.pts is None
                discarded += bool(packet.is_discard)
                if packet.is_keyframe:
                    key_pts = packet.pts
                elif None not in (key_pts, packet.pts) and packet.pts < key_pts:
                    leading += 1  # decoded after a key frame, shown before it: an open GOP
                if codec == "mpeg4" and bytes(packet).count(b"\x00\x00\x01\xb6") > 1:  # two VOPs in one packet
                    packed += 1
    except av.FFmpegError:
        pass
    return {"packets": packets, "packets_without_pts": no_pts, "discarded_packets": discarded,
            "packed_packets": packed, "leading_packets": leading}


def _folder_truth(folder: Path):
    import av

    from vtempo.video.readers import IMAGE_EXTENSIONS, natural_key

    converter = av.video.reformatter.VideoReformatter()
    names = sorted((f.name for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS), key=natural_key)
    frames = []
    for name in names:
        with av.open(str(folder / name)) as container:
            frames.append(_rgb(converter, next(container.decode(video=0)))[0])
    return np.stack(frames), 0, None, {"images": len(names)}


def make_case(name: str, folder: Path) -> Case:
    about, maker = SPECS[name]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    maker(path)
    truth, rotation, error, facts = sequential_truth(path)
    damaged: frozenset[int] = frozenset()
    if path in INTACT:
        intact = INTACT.pop(path)
        damaged = frozenset(i for i, frame in enumerate(truth) if not (intact == frame).all(axis=(1, 2, 3)).any())
        facts["frames_damaged"] = len(damaged)
        facts["frames_lost"] = len(intact) - len(truth)
    again = sequential_truth(path)[0]
    if again.shape != truth.shape or np.any(again != truth):
        raise RuntimeError(f"{name}: two sequential decodes differ, so the file has no truth to check against")
    bars = [bars_of(frame, rotation) for frame in truth]
    jpeg = path.is_dir() and any(f.suffix.lower() in (".jpg", ".jpeg") for f in path.iterdir())
    tolerance = (JPEG_MAX_DIFF, JPEG_MEAN_DIFF) if jpeg else (MAX_DIFF, MEAN_DIFF)
    return Case(name, path, about, truth, bars, rotation, error, facts, tolerance, damaged)


def build(folder: Path, names: list[str] | None = None) -> list[Case]:
    """Write the matrix's files (all, or `names`) into `folder`; their cases, with the truth."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [make_case(name, folder) for name in (names or CASE_NAMES)]


class Matrix:
    """Cases made on first use, for a test session's fixture."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._cases: dict[str, Case] = {}

    def case(self, name: str) -> Case:
        if name not in self._cases:
            self._cases[name] = make_case(name, self.folder)
        return self._cases[name]


# ---------------------------------------------------------------- checking a backend

def requests(frames: int, seed: int = 0) -> list[list[int]]:
    """The reads `check` makes: last, first, a random unsorted sample with repeats, all in order."""
    rng = random.Random(seed)
    sample = [rng.randrange(frames) for _ in range(min(10, frames))]
    sample += [sample[0], frames - 1, 0]
    return [[frames - 1], [0], sample, list(range(frames))]


def _differences(got: np.ndarray, want: np.ndarray) -> tuple[int, float]:
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    return int(diff.max()), float(diff.mean())


def _same(got: np.ndarray, want: np.ndarray, tolerance: tuple[int, float] = (MAX_DIFF, MEAN_DIFF)) -> bool:
    if got.shape != want.shape:
        return False
    largest, mean = _differences(got, want)
    return largest <= tolerance[0] and mean <= tolerance[1]


def _matches(case: Case, index: int, frame: np.ndarray) -> bool:
    if index in case.damaged:
        return frame.shape == case.truth.shape[1:]
    return _same(frame, case.truth[index], case.tolerance)


def _which(case: Case, frame: np.ndarray) -> str:
    """Which truth frame `frame` is closest to, for the diagnosis."""
    if frame.shape != case.truth.shape[1:]:
        return f"shape {frame.shape[0]}x{frame.shape[1]}"
    means = np.abs(case.truth.astype(np.int16) - frame.astype(np.int16)).mean(axis=(1, 2, 3))
    best = int(means.argmin())
    if _same(frame, case.truth[best], case.tolerance):
        return f"truth {best}"
    return f"bars {bars_of(frame, case.rotation)}, nearest truth {best} (max diff %d, mean %.2f)" % _differences(
        frame, case.truth[best])


def check(case: Case, backend: str, seed: int = 0) -> Verdict:
    from vtempo.video import VideoError, open_video

    try:
        reader = open_video(case.path, backend)
    except VideoError as error:
        if backend == "auto" and case.frames:
            return Verdict("WRONG", f"refused a file FFmpeg decodes {case.frames} frames of: {error.reason}")
        return Verdict("refused", error.reason)
    except Exception as error:  # noqa: BLE001 - any other exception is a finding
        return Verdict("WRONG", f"open raised {type(error).__name__}: {str(error)[:120]}")
    problems: list[str] = []
    with reader:
        picked = reader.backend
        if not case.frames:
            return Verdict("WRONG", f"opened a file where no frame decodes ({reader.num_frames} frames)", picked)
        wrong: dict[int, str] = {}
        for read in range(len(requests(1, seed))):
            try:  # `sample`: indices chosen from the count, again if auto moves the file to another backend
                request, got = reader.sample(lambda count: requests(min(count, case.frames), seed)[read])
            except VideoError as error:
                if backend != "auto" and not problems and not wrong:
                    return Verdict("refused on reading", error.reason, picked)
                problems.append(f"read {read} failed: {error.reason}")
                continue
            except Exception as error:  # noqa: BLE001
                problems.append(f"read raised {type(error).__name__}: {str(error)[:100]}")
                continue
            if got.shape[0] != len(request):
                problems.append(f"{got.shape[0]} frames for {len(request)} asked")
                continue
            for index, frame in zip(request, got):
                if index not in wrong and not _matches(case, index, frame):
                    wrong[index] = _which(case, frame)
        if reader.num_frames != case.frames:
            problems.insert(0, f"count {reader.num_frames}, true {case.frames}")
        if (reader.height, reader.width) != case.truth.shape[1:3]:
            problems.append(f"size {reader.height}x{reader.width}, true {case.truth.shape[1]}x{case.truth.shape[2]}")
        if wrong:
            shown = ", ".join(f"{i}→{what}" for i, what in sorted(wrong.items())[:4])
            problems.append(f"{len(wrong)} frames wrong ({shown}{', ...' if len(wrong) > 4 else ''})")
        if reader.backend != picked:
            picked = f"{picked}→{reader.backend}"
    return Verdict("WRONG", "; ".join(problems), picked) if problems else Verdict("ok", "", picked)


def _listed(indices: list[int]) -> str:
    if indices == list(range(indices[0], indices[0] + len(indices))) and len(indices) > 1:
        return f"{indices[0]}..{indices[-1]}"
    return f"[{', '.join(map(str, indices[:5]))}{', ...' if len(indices) > 5 else ''}]"


def backends() -> list[str]:
    from vtempo.video import available_backends

    return [*available_backends(), "auto"]


def describe(case: Case) -> str:
    facts = ", ".join(f"{k}={v}" for k, v in case.facts.items() if v)
    error = f"; decoder: {case.error}" if case.error else ""
    return f"{case.name}: {case.frames} frames decode (bars {_span(case.bars)}); {facts}{error}"


def _span(bars: list[int]) -> str:
    if not bars:
        return "none"
    if bars == list(range(bars[0], bars[0] + len(bars))):
        return f"{bars[0]}..{bars[-1]}"
    odd = [f"{i}:{b}" for i, b in enumerate(bars) if i and b != bars[i - 1] + 1][:4]
    return f"{bars[0]}..{bars[-1]}, breaks at {' '.join(odd)}"


def report(cases: list[Case], names: list[str]) -> str:
    """One line per case (what the file is, what decodes), one per backend under it, then the WRONG ones."""
    lines, wrong = [], []
    for case in cases:
        lines.append(describe(case))
        for backend in names:
            verdict = check(case, backend)
            picked = f" [{verdict.backend}]" if backend == "auto" and verdict.backend else ""
            detail = f": {verdict.detail}" if verdict.detail else ""
            lines.append(f"    {backend:<11}{verdict.status}{picked}{detail}")
            if verdict.status == "WRONG":
                wrong.append(f"{case.name} × {backend}{picked}")
    lines += ["", f"{len(cases)} cases × {len(names)} backends: {len(wrong)} WRONG", *(f"    {w}" for w in wrong)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the frame-accuracy matrix and check every backend on it.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--backends", help="comma-separated backends (default: the installed ones and auto)")
    args = parser.parse_args()
    names = args.cases.split(",") if args.cases else None
    cases = build(args.out, names)
    print(report(cases, args.backends.split(",") if args.backends else backends()))


if __name__ == "__main__":
    main()
