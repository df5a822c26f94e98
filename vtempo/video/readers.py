"""Frame-accurate video readers behind one interface: PyAV, decord, torchcodec, OpenCV and frame folders.

`open_video(path)` returns a `VideoReader` whose `num_frames` counts the frames that actually decode
(container headers often promise more) and whose `get(indices)` returns exactly those frames as
(len, H, W, 3) uint8 RGB. Any problem with the file raises `VideoError` with one line naming the file
and the reason.

Decoding traps handled here:
- PyAV and decord number frames by the packets' timestamps and seek by them; a file without usable
  ones is left to the next backend.
- decord: only `get_batch` (its `seek`+`next` returns key frames). Containers without an index (MPEG
  program and transport streams) make even `get_batch` return wrong frames (torchcodec's too), and
  rotated videos and some frame widths crash it, so such files go to the next backend.
- OpenCV: BGR, and its header frame count and frame seeking are unreliable, so it counts frames by
  decoding and reads sequentially: slow for long files, but always right.
- Damaged (e.g. truncated) files: the last frames a header lists may not decode, and random access
  into them is unreliable; the seeking backends refuse them and OpenCV counts what decodes.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import itertools
import math
import os
import re
import stat
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import cv2
import numpy as np

from vtempo.errors import VtempoError
from vtempo.video.images import (
    ImageError,
    check_pixels,
    frame_byte_limit,
    image_format,
    image_size,
    pixel_limit,
    read_regular_file,
)

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .vob .ts .mts .m2ts .wmv .flv .3gp .ogv .gif .mjpeg".split()
)
IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .png .bmp .webp .tif .tiff".split())

NO_FRAME_DECODES = "truncated or corrupt: no frame decodes"
CORRUPT_FRAME = "truncated or corrupt: a frame does not decode"
IMAGE_CODECS = frozenset("png mpng mjpg mjpeg jpeg bmp tiff webp gif jp2 j2k".split())
"""Picture codecs, as the lower-cased FourCCs OpenCV reports: a single frame of one is a still image."""


T = TypeVar("T")


class VideoError(VtempoError):
    """A video that cannot be read; the message is one line: `<file>: <reason>`. `detail` keeps a
    decoder's own words (for the record) when the reason puts them plainly."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str | None = None):
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{display_path(path)}: {reason}")


class CannotOpen(VideoError):
    """A backend could not open the file at all (as opposed to failing part-way through decoding)."""


def display_path(path: str | os.PathLike) -> str:
    """A printable path: bytes that are not UTF-8 (possible in Linux file names) shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def natural_key(name: str) -> list:
    """Sort key that puts img_2 before img_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def scaled_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) shrunk so the longer side is at most `max_side`; never enlarged."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(round(height * scale), 1), max(round(width * scale), 1)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C-level writes to stderr (decoder libraries log there) for the duration."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # decord's messages carry source locations like "[12:00:00] /path/file.cc:123: "; keep the reason
    line = re.sub(r"^(\[[\d:]+\] \S+:\d+: )+", "", lines[-1] if lines else text)
    # torchcodec's carry "Function, /path/file.cpp:123, "
    line = re.sub(r"^.*?\.cpp:\d+,\s*", "", line)
    return line[:200]


class VideoReader:
    """Base class: subclasses set `num_frames`, `fps`, `height`, `width` and implement `_read`."""

    backend = "base"

    def __init__(self, path: str | os.PathLike, max_pixels: int | None = None):
        self.path = Path(path)
        self.num_frames = 0
        self.header_frames: int | None = None  # what the container claims, when it claims anything
        self.fps: float | None = None
        self.height = self.width = 0
        self._descriptor: int | None = None
        try:
            self._pixel_limit = pixel_limit(max_pixels)
        except ImageError as error:
            raise VideoError(self.path, str(error)) from None

    def _check_pixels(self, height: int, width: int, subject: str = "frames are") -> None:
        """Refuse frames larger than the pixel limit; called with the container's size, before decoding."""
        try:
            check_pixels(height, width, self._pixel_limit, subject)
        except ImageError as error:
            raise VideoError(self.path, str(error)) from None

    def _native_path(self) -> str:
        """A path string the C libraries can open. decord and OpenCV take UTF-8 strings only, so a file
        name with other bytes is reached through a /proc/self/fd link where Linux offers one."""
        text = str(self.path)
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
        if not os.path.isdir("/proc/self/fd"):
            raise VideoError(self.path, "file name is not valid UTF-8; rename the file")
        if self._descriptor is None:
            self._descriptor = os.open(self.path, os.O_RDONLY)
        return f"/proc/self/fd/{self._descriptor}"

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as (len, H, W, 3) uint8 RGB."""
        wanted = [int(i) for i in indices]
        if not wanted:
            raise ValueError("no frame indices given")
        outside = [i for i in wanted if not 0 <= i < self.num_frames]
        if outside:
            raise IndexError(f"{display_path(self.path)}: frame {outside[0]} is outside 0..{self.num_frames - 1}")
        unique = sorted(set(wanted))
        frames = self._read(unique)
        if len(frames) != len(unique):
            raise VideoError(self.path, f"decoder returned {len(frames)} frames for {len(unique)} requested")
        if unique == wanted:
            return frames
        position = {index: n for n, index in enumerate(unique)}
        return frames[[position[i] for i in wanted]]

    def sample(self, choose: Callable[[int], T]) -> tuple[T, np.ndarray]:
        """`choose(num_frames)`'s indices (a list of them, or a list of clips' lists) and their frames,
        flattened in order: the way to read frames chosen from the count, since `auto` may move a file
        to a backend that counts differently, and then the indices are chosen again."""
        for attempt in (1, 2):
            chosen = choose(self.num_frames)
            flat = [i for item in chosen for i in item] if chosen and not isinstance(chosen[0], (int, np.integer)) \
                else list(chosen)
            try:
                return chosen, self.get(flat)
            except FrameCountChanged:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read(self, indices: list[int]) -> np.ndarray:
        """Frames at sorted, unique, in-range indices."""
        raise NotImplementedError

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {display_path(self.path)!r} frames={self.num_frames} fps={self.fps} "
            f"size={self.height}x{self.width}>"
        )


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def _probe_opencv(path: str) -> tuple[int, int, int]:
    """(height, width, rotation in degrees) from the container, without decoding."""
    with quiet_stderr():
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            return 0, 0, 0
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        rotation = int(capture.get(cv2.CAP_PROP_ORIENTATION_META)) % 360
        if rotation in (90, 270):  # OpenCV reports the displayed size; the coded one is swapped
            height, width = width, height
        return height, width, rotation
    finally:
        capture.release()


class DecordReader(VideoReader):
    backend = "decord"

    def __init__(self, path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None):
        super().__init__(path, max_pixels)
        import decord

        self._decord = decord
        decord.logging.set_level(decord.logging.QUIET)
        _refuse_unindexed(self.path, self.backend)
        self._uri = self._native_path()
        coded_height, coded_width, rotation = _probe_opencv(self._uri)
        self._check_pixels(coded_height, coded_width)
        if rotation:
            raise VideoError(self.path, f"decord ignores the {rotation}° rotation in this file")
        if coded_height and coded_width:
            self.height, self.width = scaled_size(coded_height, coded_width, max_side)
            size = {"height": self.height, "width": self.width} if max_side else {}
        else:
            size = {}
        self._size = size
        self._reader = self._open()
        self.header_frames = len(self._reader)
        self.fps = _valid_fps(self._reader.get_avg_fps())
        # decord seeks by timestamp: without valid, ordered ones get_batch returns wrong frames (a second
        # guard for unindexed files `_refuse_unindexed` does not recognise)
        starts = self._reader.get_frame_timestamp(range(self.header_frames))[:, 0]
        if not (np.all(np.isfinite(starts)) and np.all(np.abs(starts) < 1e7) and np.all(np.diff(starts) >= 0)):
            raise VideoError(self.path, "decord cannot seek in this file (no usable frame timestamps)")
        self._check_last_frame()
        self.num_frames = self.header_frames
        if not self.height:
            self.height, self.width = self._reader.get_batch([0]).shape[1:3]
            self._check_pixels(self.height, self.width)

    def _open(self):
        try:
            with quiet_stderr():
                return self._decord.VideoReader(self._uri, num_threads=1, **self._size)
        except (RuntimeError, AssertionError, self._decord.DECORDError) as error:
            message = _first_line(error)
            if "Invalid frame count" in message or "cannot find video stream" in message:
                raise VideoError(self.path, "no video frames") from None
            if message.startswith("Error reading"):
                raise CannotOpen(self.path, "decord cannot open it") from None
            # decord's internals ("Check failed: avfilter_graph_create_filter(...)"): kept as detail
            raise CannotOpen(self.path, "decord cannot decode it", detail=f"decord: {message}") from None

    def _check_last_frame(self) -> None:
        try:
            with quiet_stderr():
                self._reader.get_batch([self.header_frames - 1])
        except self._decord.DECORDError as error:
            if "size must exactly match" in str(error):  # decord mishandles some frame widths (e.g. 72)
                raise VideoError(self.path, f"decord cannot decode {self.width}-pixel-wide frames") from None
            raise VideoError(self.path, _damaged(self.header_frames)) from None

    def _read(self, indices: list[int]) -> np.ndarray:
        try:
            with quiet_stderr():
                return self._reader.get_batch(indices).asnumpy()
        except self._decord.DECORDError as error:
            raise VideoError(self.path, CORRUPT_FRAME, detail=f"decord: {_first_line(error)}") from None

    def close(self) -> None:
        self._reader = None
        super().close()


# Container formats whose packets carry presentation timestamps (MP4/QuickTime, Matroska/WebM). Other
# formats (AVI above all) store decode order at best: PyAV's seeking reader first checks, on opening, that
# the leading frames decode in the order their timestamps give, and refuses the file otherwise.
PRESENTATION_TIMESTAMPS = frozenset({"mov", "mp4", "matroska", "webm"})
LEADING_FRAMES_CHECKED = 16


class _PyAVFile(VideoReader):
    """What both PyAV readers share: the container, its first video stream and one RGB converter."""

    def __init__(self, path: str | os.PathLike, max_side: int | None, max_pixels: int | None):
        super().__init__(path, max_pixels)
        import av

        self._av = av
        self._max_side = max_side
        self._uri = self._native_path()
        self._container = None
        self._open_container()
        self._rotation = 0
        coded = self._stream.codec_context
        self._check_pixels(coded.height, coded.width)
        self.fps = _valid_fps(self._stream.average_rate)
        self.header_frames = self._stream.frames or None

    def _open_container(self) -> None:
        av = self._av
        try:
            with quiet_stderr():
                self._container = av.open(self._uri, metadata_errors="ignore")
        except av.FFmpegError as error:
            raise CannotOpen(self.path, "PyAV cannot open it", detail=f"pyav: {_first_line(error)}") from None
        if not self._container.streams.video:
            raise VideoError(self.path, "no video frames")
        self._stream = self._container.streams.video[0]
        self._stream.thread_count = 1  # one clip per process at a time; workers parallelise across files
        # one converter for the reader, on this thread: a frame's own `to_ndarray` starts a scaler (and
        # its threads) for every frame
        self._converter = av.video.reformatter.VideoReformatter()

    def _set_size(self, frame) -> None:
        """Output size and rotation from a decoded frame (the display matrix travels with the frames)."""
        self._rotation = frame.rotation % 360
        if self._rotation % 90:
            raise VideoError(self.path, f"PyAV cannot apply the {self._rotation}° rotation in this file")
        height, width = frame.height, frame.width
        if self._rotation in (90, 270):
            height, width = width, height
        self._check_pixels(height, width)
        self.height, self.width = scaled_size(height, width, self._max_side)

    def _rgb(self, frame) -> np.ndarray:
        self._check_pixels(frame.height, frame.width)  # a stream may change size part-way
        width, height = (self.width, self.height) if self._rotation in (0, 180) else (self.height, self.width)
        pixels = self._converter.reformat(frame, width, height, "rgb24", interpolation="AREA", threads=1).to_ndarray()
        return np.rot90(pixels, self._rotation // 90) if self._rotation else pixels

    def close(self) -> None:
        if getattr(self, "_container", None) is not None:
            self._container.close()
            self._container = None
        super().close()


class PyAVReader(_PyAVFile):
    """FFmpeg through PyAV, seeking: decodes from the key frame before each wanted frame and converts only
    the wanted ones to RGB. Frames are numbered in presentation order from the packets' timestamps, read
    once on opening (packets an edit list discards are not frames). Every frame decoded on the way is
    checked against that numbering, so a file whose timestamps are not presentation times, or whose
    decoder drops a frame, raises `VideoError` instead of returning a wrong frame; such files are for
    `SequentialReader`. The container's display rotation is applied."""

    backend = "pyav"

    def __init__(self, path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None):
        _refuse_unindexed(Path(path), self.backend)
        super().__init__(path, max_pixels=max_pixels, max_side=max_side)
        timestamps, key_frames = [], []
        try:
            with quiet_stderr():
                for packet in self._container.demux(self._stream):
                    if packet.size == 0:  # the demuxer's end-of-stream marker
                        continue
                    if packet.pts is None:
                        raise VideoError(self.path, "PyAV cannot seek in this file (a frame without a timestamp)")
                    if packet.is_keyframe:
                        key_frames.append(packet.pts)
                    if not packet.is_discard:
                        timestamps.append(packet.pts)
        except self._av.FFmpegError as error:
            raise VideoError(self.path, CORRUPT_FRAME, detail=f"pyav: {_first_line(error)}") from None
        if not timestamps:
            raise VideoError(self.path, "no video frames")
        self._timestamps = np.sort(np.asarray(timestamps, dtype=np.int64))
        if np.any(np.diff(self._timestamps) == 0):
            raise VideoError(self.path, "PyAV cannot seek in this file (frames share a timestamp)")
        self._key_frames = np.sort(np.asarray(key_frames or timestamps[:1], dtype=np.int64))
        self.num_frames = len(self._timestamps)
        formats = set(self._container.format.name.split(","))
        try:
            if not formats & PRESENTATION_TIMESTAMPS:
                self._decode(list(range(min(LEADING_FRAMES_CHECKED, self.num_frames))), convert=False)
            last = self._decode([self.num_frames - 1], convert=False)
        except VideoError as error:
            if error.reason.endswith(NEEDS_SEQUENTIAL):
                raise
            if self.num_frames > 1 and self._decodes(0):
                raise VideoError(self.path, _damaged(self.header_frames or self.num_frames)) from None
            raise VideoError(self.path, NO_FRAME_DECODES) from None
        self._set_size(last[0])

    def _decode(self, indices: list[int], convert: bool = True) -> list:
        """The frames at sorted, unique indices: as RGB arrays, or as PyAV frames if not `convert`."""
        found: list = []
        run = None  # the decoding under way: [frames, index of the next frame it must give]
        try:
            with quiet_stderr():
                for index in indices:
                    target = int(self._timestamps[index])
                    key = self._key_frames[max(0, np.searchsorted(self._key_frames, target, "right") - 1)]
                    # decoding on is cheaper than seeking while no key frame lies between
                    if run is None or run[1] > index or int(self._timestamps[run[1] - 1]) < key:
                        run = self._seek(int(key), index)
                    frame = self._advance(run, index)
                    found.append(self._rgb(frame) if convert else frame)
        except self._av.FFmpegError as error:
            raise VideoError(self.path, CORRUPT_FRAME, detail=f"pyav: {_first_line(error)}") from None
        return found

    def _seek(self, key: int, index: int) -> list:
        """A decoding that starts at the key frame `key` (for frame `index`), whose first frame at or
        after that key must be the first frame numbered there; from the file's start when the seek
        lands elsewhere (past the frame, or on a later key frame)."""
        for start in (key, int(self._key_frames[0])):
            frames = self._start(start)
            first = int(np.searchsorted(self._timestamps, start))
            for frame in frames:
                if frame.pts is None:
                    raise VideoError(self.path, "PyAV cannot seek in this file (a frame without a timestamp)")
                if frame.pts < start:  # leading frames of an open GOP, or the ones before an edit
                    continue
                if first < self.num_frames and frame.pts == self._timestamps[first]:
                    return [itertools.chain([frame], frames), first]
                break
        raise VideoError(self.path, f"PyAV cannot seek to frame {index} of this file")

    def _start(self, timestamp: int):
        """Decoding from the key frame at or before `timestamp`."""
        self._container.seek(timestamp, stream=self._stream, backward=True, any_frame=False)
        return self._container.decode(self._stream)

    def _advance(self, run: list, index: int):
        """Decode on to frame `index`, checking that each frame on the way is the next one numbered."""
        for frame in run[0]:
            if frame.pts is None:
                raise VideoError(self.path, "PyAV cannot seek in this file (a frame without a timestamp)")
            expected = run[1]
            if expected >= self.num_frames or frame.pts != self._timestamps[expected]:
                raise VideoError(self.path, _out_of_order(expected))
            if frame.is_corrupt:  # concealed from the frames decoded before it: those of a seek differ
                raise VideoError(self.path, f"frame {expected} is damaged; {NEEDS_SEQUENTIAL}")
            run[1] += 1
            if expected == index:
                return frame
        raise VideoError(self.path, f"frame {index} does not decode")

    def _decodes(self, index: int) -> bool:
        try:
            self._decode([index], convert=False)
            return True
        except VideoError:
            return False

    def _read(self, indices: list[int]) -> np.ndarray:
        return np.stack(self._decode(indices))


NEEDS_SEQUENTIAL = "the file needs sequential decoding"


def _out_of_order(index: int) -> str:
    return f"frame timestamps are not presentation order (frame {index} decodes out of place); {NEEDS_SEQUENTIAL}"


SEQUENTIAL_KEPT_BYTES = 64 << 20
"""Decoded frames (in the decoder's own pixel format) `SequentialReader` keeps from counting, at most."""


class SequentialReader(_PyAVFile):
    """FFmpeg through PyAV, in order: frame i is the i-th frame the decoder gives, as the `ffmpeg` program
    decodes (a packet that fails to decode is skipped, as ffmpeg does). Opening decodes the whole file
    once to count its frames, and keeps them when they fit in `SEQUENTIAL_KEPT_BYTES`; otherwise a read
    decodes from the start, or on from the last read, up to the last frame it needs. Only the wanted
    frames are converted to RGB. Always right, and the reader for files whose
    timestamps cannot number their frames (AVI with B-frames, streams without timestamps, damaged files)."""

    backend = "sequential"

    def __init__(self, path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None):
        super().__init__(path, max_pixels=max_pixels, max_side=max_side)
        count, kept, held = 0, [], 0
        for frame in self._frames():
            if not count:
                self._set_size(frame)
            count += 1
            if kept is not None:  # a short file's decoded frames are kept, so reads need not decode again
                held += sum(plane.buffer_size for plane in frame.planes)
                if held > SEQUENTIAL_KEPT_BYTES:
                    kept = None
                else:
                    kept.append(frame)
        if not count:
            raise VideoError(self.path, NO_FRAME_DECODES)
        self.num_frames = count
        self._kept = kept
        if kept is None:
            self._restart()

    def _frames(self) -> Iterator:
        codec = self._stream.codec_context
        with quiet_stderr():
            for packet in self._container.demux(self._stream):  # the last, empty packet flushes the decoder
                try:
                    frames = codec.decode(packet)
                except self._av.FFmpegError:
                    continue
                yield from frames

    def _restart(self) -> None:
        self._container.close()
        self._open_container()
        self._position, self._pending = 0, self._frames()

    def _read(self, indices: list[int]) -> np.ndarray:
        if self._kept is not None:
            return np.stack([self._rgb(self._kept[index]) for index in indices])
        if indices[0] < self._position:
            self._restart()
        out = np.empty((len(indices), self.height, self.width, 3), np.uint8)
        for n, index in enumerate(indices):
            for frame in self._pending:
                self._position += 1
                if self._position - 1 == index:
                    out[n] = self._rgb(frame)
                    break
            else:
                raise VideoError(self.path, f"frame {index} does not decode")
        return out

    def close(self) -> None:
        self._kept = None
        super().close()


OPENCV_FAILURES_AT_END = 32


class OpenCVReader(VideoReader):
    backend = "opencv"

    def __init__(self, path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None):
        super().__init__(path, max_pixels)
        self._cv2 = cv2
        self._uri = self._native_path()
        self._capture = self._open()
        self._check_pixels(int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
        header = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.header_frames = header if header > 0 else None
        self.fps = _valid_fps(self._capture.get(cv2.CAP_PROP_FPS))
        # headers lie and seeking is inexact: count what decodes
        count = 0
        with quiet_stderr():
            while self._grab():
                count += 1
        if count == 0:
            raise VideoError(self.path, NO_FRAME_DECODES)
        self.num_frames = count
        self._capture.release()
        self._capture, self._position = self._open(), 0
        with quiet_stderr():
            ok = self._grab()
            first = self._capture.retrieve()[1] if ok else None
        if first is None:
            raise VideoError(self.path, NO_FRAME_DECODES)
        self._check_pixels(first.shape[0], first.shape[1])
        self._first = first
        self._position = 1
        self.height, self.width = scaled_size(first.shape[0], first.shape[1], max_side)

    def _grab(self) -> bool:
        """The next frame that decodes; False at the end. OpenCV's grab fails on a packet that does not
        decode and goes on after it, as the ffmpeg program does; only failures in a row mean the end."""
        for _ in range(OPENCV_FAILURES_AT_END):
            if self._capture.grab():
                return True
        return False

    def _open(self):
        with quiet_stderr():
            capture = self._cv2.VideoCapture(self._uri, self._cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise CannotOpen(self.path, "OpenCV cannot open it")
        return capture

    def _read(self, indices: list[int]) -> np.ndarray:
        cv2 = self._cv2
        out = np.empty((len(indices), self.height, self.width, 3), np.uint8)
        for n, index in enumerate(indices):
            if index == 0 and self._first is not None:
                frame = self._first
            else:
                if index < self._position:
                    self._capture.release()
                    self._capture, self._position = self._open(), 0
                with quiet_stderr():
                    while self._position < index:
                        if not self._grab():
                            raise VideoError(self.path, f"frame {self._position} does not decode")
                        self._position += 1
                    frame = self._capture.retrieve()[1] if self._grab() else None
                if frame is None:
                    raise VideoError(self.path, f"frame {index} does not decode")
                self._position += 1
            out[n] = cv2.cvtColor(_resize(frame, self.height, self.width), cv2.COLOR_BGR2RGB)
        return out

    def close(self) -> None:
        if getattr(self, "_capture", None) is not None:
            self._capture.release()
            self._capture = None
        self._first = None
        super().close()


class TorchcodecReader(VideoReader):
    backend = "torchcodec"

    def __init__(self, path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None):
        super().__init__(path, max_pixels)
        from torchcodec.decoders import VideoDecoder

        _refuse_unindexed(self.path, self.backend)
        self._uri = self._native_path()
        try:
            with quiet_stderr():
                self._decoder = VideoDecoder(self._uri, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1)
        except Exception as error:  # torchcodec raises RuntimeError/ValueError from FFmpeg
            raise CannotOpen(self.path, "torchcodec cannot open it", detail=f"torchcodec: {_first_line(error)}") from None
        metadata = self._decoder.metadata
        self._check_pixels(int(metadata.height or 0), int(metadata.width or 0))
        self.header_frames = int(metadata.num_frames or 0)
        self.fps = _valid_fps(metadata.average_fps)
        if self.header_frames < 1:
            raise VideoError(self.path, "no frames")
        try:
            with quiet_stderr():
                self._decoder.get_frames_at(indices=[self.header_frames - 1])
        except Exception:
            raise VideoError(self.path, _damaged(self.header_frames)) from None
        self.num_frames = self.header_frames
        self.height, self.width = scaled_size(int(metadata.height), int(metadata.width), max_side)

    def _read(self, indices: list[int]) -> np.ndarray:
        try:
            with quiet_stderr():
                frames = self._decoder.get_frames_at(indices=indices).data.numpy()
        except Exception as error:
            raise VideoError(self.path, CORRUPT_FRAME, detail=f"torchcodec: {_first_line(error)}") from None
        if frames.shape[1:3] == (self.height, self.width):
            return frames
        return np.stack([_resize(frame, self.height, self.width) for frame in frames])

    def close(self) -> None:
        self._decoder = None
        super().close()


class FrameFolderReader(VideoReader):
    """A folder of images, one per frame, in natural sort order (img_00001.jpg, 00001.jpg, 1.png, ...)."""

    backend = "frames"

    def __init__(self, path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None):
        super().__init__(path, max_pixels)
        try:
            names = [entry.name for entry in os.scandir(self.path) if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS]
        except OSError as error:
            raise VideoError(self.path, f"cannot list folder ({error.strerror or error})") from None
        if not names:
            raise VideoError(self.path, "folder holds no image files")
        self._files = [self.path / name for name in sorted(names, key=natural_key)]
        self.num_frames = self.header_frames = len(self._files)
        first = self._load(0)
        self.height, self.width = scaled_size(first.shape[0], first.shape[1], max_side)

    def _load(self, index: int) -> np.ndarray:
        file = self._files[index]
        name = display_path(file.name)
        try:  # by descriptor, so any file name works (unlike cv2.imread), and never a FIFO's endless wait
            data = read_regular_file(file, frame_byte_limit(self._pixel_limit))
        except ImageError as error:
            raise VideoError(self.path, f"frame {name}: {error}") from None
        except OSError as error:
            raise VideoError(self.path, f"cannot read frame {name} ({error.strerror or error})") from None
        declared = image_size(data)
        if declared is None:
            raise VideoError(self.path, f"frame {name} is not a readable image")
        self._check_pixels(declared[1], declared[2], f"frame {name} is")
        with quiet_stderr():
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise VideoError(self.path, f"frame {name} is not a readable image")
        return image

    def _read(self, indices: list[int]) -> np.ndarray:
        out = np.empty((len(indices), self.height, self.width, 3), np.uint8)
        for n, index in enumerate(indices):
            out[n] = cv2.cvtColor(_resize(self._load(index), self.height, self.width), cv2.COLOR_BGR2RGB)
        return out


def _refuse_unindexed(path: Path, backend: str) -> None:
    """MPEG program and transport streams have no index; the seeking backends returned wrong frames
    for them (decord and torchcodec alike), so they are left to OpenCV's sequential reading."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(189)
    except OSError:
        return  # check_readable already reported what it could
    if head[:4] == b"\x00\x00\x01\xba":
        kind = "an MPEG program stream"
    elif len(head) == 189 and head[0] == head[188] == 0x47:
        kind = "an MPEG transport stream"
    else:
        return
    raise VideoError(path, f"{backend} cannot seek frame-accurately in {kind} (it has no index)")


def _damaged(listed: int) -> str:
    # Random access into a damaged file proved unreliable (decord failed on random frames of a truncated
    # AVI), so the seeking backends refuse such files and the sequential OpenCV reader takes them.
    return f"damaged file: the container lists {listed} frames but the last one does not decode"


def _valid_fps(value: float | None) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


BACKENDS: dict[str, type[VideoReader]] = {
    "pyav": PyAVReader,
    "sequential": SequentialReader,
    "opencv": OpenCVReader,
    "decord": DecordReader,
    "torchcodec": TorchcodecReader,
}
AUTO = ("pyav", "sequential", "opencv")
"""The backends `auto` tries, in order. decord and torchcodec are left out: on the frame-accuracy matrix
(tests/test_frame_matrix.py) they return wrong frames, without an error, for files with an edit list or an
open GOP; name them to use them."""

_MODULES = {"opencv": "cv2", "pyav": "av", "sequential": "av"}


def available_backends() -> list[str]:
    """Installed video backends, `auto`'s first, in the order it tries them."""
    return [name for name in BACKENDS if importlib.util.find_spec(_MODULES.get(name, name))]


def auto_backends() -> list[str]:
    """The installed backends `auto` tries, in order."""
    installed = available_backends()
    return [name for name in AUTO if name in installed]


class FrameCountChanged(VideoError):
    """`auto` moved a file to another backend part-way, and that backend counts a different number of
    frames: indices chosen from the old count must be chosen again (`VideoReader.sample` does)."""


class AutoReader(VideoReader):
    """`auto`'s reader: the first backend that opens the file reads it; a read that fails moves the file
    to the next backend that opens it, for the rest of its reads. `backend` names the one reading now."""

    def __init__(self, reader: VideoReader, fallbacks: list[str], max_side: int | None, max_pixels: int | None):
        self.path = reader.path
        self._descriptor = None
        self._reader, self._fallbacks = reader, list(fallbacks)
        self._max_side, self._max_pixels = max_side, max_pixels
        self._take(reader)

    def _take(self, reader: VideoReader) -> None:
        self._reader = reader
        self.backend, self.num_frames, self.header_frames = reader.backend, reader.num_frames, reader.header_frames
        self.fps, self.height, self.width = reader.fps, reader.height, reader.width

    def get(self, indices: Sequence[int]) -> np.ndarray:
        while True:
            try:
                return self._reader.get(indices)
            except FrameCountChanged:
                raise
            except VideoError as error:
                failed = error
            self._reader.close()
            while self._fallbacks:
                name = self._fallbacks.pop(0)
                try:
                    reader = BACKENDS[name](self.path, self._max_side, self._max_pixels)
                except VideoError:
                    continue
                break
            else:
                raise failed
            counted, before = self.num_frames, self.backend
            self._take(reader)
            if reader.num_frames != counted:
                raise FrameCountChanged(self.path, f"{before} counted {counted} frames, then failed ({failed.reason}); "
                                                   f"{reader.backend} counts {reader.num_frames}")

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None:
            self._reader.close()


def check_readable(path: Path) -> None:
    """Fail early, with the reason, for paths no decoder could read."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise VideoError(path, f"broken symbolic link (points to {display_path(os.readlink(path))})") from None
        raise VideoError(path, "no such file or folder") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise VideoError(path, "symbolic link loop") from None
        if isinstance(error, PermissionError):
            raise VideoError(path, "permission denied") from None
        raise VideoError(path, f"cannot read ({error.strerror or error})") from None
    if stat.S_ISDIR(info.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            raise VideoError(path, "permission denied")
        return
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the decoder forever, a device never end
        raise VideoError(path, "not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(1)
    except PermissionError:
        raise VideoError(path, "permission denied") from None
    except OSError as error:
        raise VideoError(path, f"cannot read ({error.strerror or error})") from None
    if not head:
        raise VideoError(path, "empty file (0 bytes)")


def sniff_container(path: Path) -> str | None:
    """The container a file's first bytes announce, if any (to explain why it failed to open)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return None
    signatures = [
        (head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"), "an MP4/QuickTime"),
        (head[:4] == b"RIFF" and head[8:12] == b"AVI ", "an AVI"),
        (head[:4] == b"\x1a\x45\xdf\xa3", "a Matroska/WebM"),
        (head[:4] == b"\x00\x00\x01\xba", "an MPEG program stream"),
        (head[:4] == b"OggS", "an Ogg"),
        (head[:3] == b"FLV", "an FLV"),
        (head[:4] == b"\x30\x26\xb2\x75", "an ASF/WMV"),
    ]
    return next((name for matches, name in signatures if matches), None)


def open_video(
    path: str | os.PathLike, backend: str = "auto", max_side: int | None = None, max_pixels: int | None = None
) -> VideoReader:
    """Open a video file or a folder of frames.

    backend: "auto" (`AUTO`: PyAV seeking, PyAV sequential, then OpenCV: the first that opens the file
    reads it, and a read that fails moves the file to the next, see `AutoReader`), or one of `BACKENDS`:
    "pyav", "sequential", "opencv", "decord", "torchcodec". max_side: shrink frames at decode
    time so the longer side is at most this many pixels (large inputs cost less to transform and hold). max_pixels: the
    largest frame (width × height) to decode, checked against the header or container first (default
    $VTEMPO_MAX_PIXELS, else `vtempo.video.images.MAX_PIXELS`). A still image (a PNG or JPEG named like
    a video, or one picture in a video container) is refused: it has no motion to recognise.
    """
    path = Path(path)
    check_readable(path)
    if path.is_dir():
        return FrameFolderReader(path, max_side, max_pixels)
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
        if backend not in available_backends():
            raise VtempoError(f"video backend {backend!r} is not installed")
        names = [backend]
    else:
        names = auto_backends()
        if not names:
            raise VtempoError("no video backend installed: install av or opencv-python-headless")
    image = _check_image_file(path, max_pixels)
    if backend != "auto":
        try:
            return _refuse_still(BACKENDS[backend](path, max_side, max_pixels), image)
        except CannotOpen as error:
            if image:  # a picture the backend would not take for a video at all
                raise VideoError(path, f"a still image ({image}), not a video", error.detail) from None
            raise
    reasons: list[str] = []
    details: list[str] = []
    for name in names:
        try:
            reader = BACKENDS[name](path, max_side, max_pixels)
        except VideoError as error:
            if error.detail:
                details.append(error.detail)
            if not isinstance(error, CannotOpen) and error.reason not in reasons:
                reasons.append(error.reason)
            continue
        return AutoReader(_refuse_still(reader, image), names[names.index(name) + 1:], max_side, max_pixels)
    detail = "; ".join(details) or None
    if image:
        raise VideoError(path, f"a still image ({image}), not a video", detail)
    if not reasons:
        container = sniff_container(path)
        if container:
            raise VideoError(path, f"{container} file that no decoder can open: damaged, truncated or an unsupported codec",
                             detail)
        raise VideoError(path, f"not a video, or a format that {' and '.join(names)} cannot read", detail)
    raise VideoError(path, "; ".join(reasons), detail)


def _check_image_file(path: Path, max_pixels: int | None) -> str | None:
    """For a file that is a still image whatever its name: its format, after checking the size its
    header declares (a decoder would otherwise allocate it in full first). None for other files."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            kind = image_format(head)
            if kind is None:
                return None
            head += handle.read(16 << 20)  # enough for the headers before a JPEG's frame marker
    except OSError:
        return None  # check_readable already reported what it could
    declared = image_size(head)
    if declared is None:
        raise VideoError(path, f"a {kind} image whose size cannot be read from its header")
    try:
        check_pixels(declared[1], declared[2], pixel_limit(max_pixels), f"the {kind} image is")
    except ImageError as error:
        raise VideoError(path, str(error)) from None
    return kind


def _refuse_still(reader: VideoReader, image: str | None) -> VideoReader:
    """The reader, unless what it opened is one picture: an image file (PNG, JPEG, ... whatever its
    name) or a container holding a single frame of an image codec (PNG, MJPEG, ...)."""
    if reader.num_frames != 1:
        return reader
    kind = image or _image_codec(reader)
    if kind is None:
        return reader
    reader.close()
    raise VideoError(reader.path, f"a still image ({kind}), not a video")


def _image_codec(reader: VideoReader) -> str | None:
    if reader.backend == "frames":
        return None
    with quiet_stderr():
        capture = cv2.VideoCapture(reader._native_path(), cv2.CAP_FFMPEG)
    try:
        code = int(capture.get(cv2.CAP_PROP_FOURCC)) if capture.isOpened() else 0
    finally:
        capture.release()
    fourcc = bytes((code >> shift) & 0xFF for shift in (0, 8, 16, 24)).decode("latin-1").strip(" \0").lower()
    return fourcc.upper() if fourcc in IMAGE_CODECS else None
