"""Still images before they are decoded: their format and declared size, read from the header, and
the pixel limit that keeps one small file from claiming gigabytes when decoded.

A PNG of 30000×30000 pixels can be 100 KB on disk and 2.7 GB once decoded; the header says so first.
Every image (frame-folder frames, and files passed as videos that turn out to be images) and every
video stream is checked against `MAX_PIXELS` before any pixel is decoded.
"""
from __future__ import annotations

import os
import stat
import struct

MAX_PIXELS = 64_000_000
"""Largest width × height accepted for an image or a video frame (64 Mpixel: 8K UHD is 33 Mpixel).
Raise it with the environment variable `VTEMPO_MAX_PIXELS` or the `max_pixels` argument of
`open_video`."""

MAX_PIXELS_ENV = "VTEMPO_MAX_PIXELS"

BYTES_PER_PIXEL_BOUND = 8
"""A frame file larger than this many bytes per allowed pixel (plus 1 MiB) cannot be an image within
the limit (even 16-bit RGBA PNG without compression stays below it), so it is not read into memory."""


class ImageError(ValueError):
    """An image file that is refused before decoding; the message is the reason (without the path)."""


def pixel_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: `max_pixels` if given, else $VTEMPO_MAX_PIXELS, else MAX_PIXELS."""
    if max_pixels is not None:
        value: object = max_pixels
    else:
        value = os.environ.get(MAX_PIXELS_ENV, "").strip() or MAX_PIXELS
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if limit < 1:
        raise ImageError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {value!r}")
    return limit


def check_pixels(height: int, width: int, limit: int, subject: str = "frames are") -> None:
    """Raise ImageError when `height × width` exceeds `limit`; `subject` starts the message."""
    if height * width > limit:
        raise ImageError(
            f"{subject} {width}×{height} pixels ({_amount(height * width)}), over the limit of {_amount(limit)} "
            f"(raise it with {MAX_PIXELS_ENV})"
        )


def _amount(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} Mpixel" if pixels >= 1_000_000 else f"{pixels} pixels"


def image_format(head: bytes) -> str | None:
    """The still-image format that a file's first bytes announce (PNG, JPEG, GIF, BMP, WebP, TIFF)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM") and len(head) >= 26:
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, height, width) that an image's header declares, read without decoding; None when
    `data` (the file, or enough of its start) is not an image in a known format or its header is cut."""
    kind = image_format(data)
    try:
        size = _SIZE_READERS[kind](data) if kind else None
    except (struct.error, IndexError, KeyError):
        size = None
    return (kind, *size) if size else None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _JPEG_FRAME_MARKERS:
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return height, width
        if marker in (0xDA, 0xD9) or length < 2:  # scan data or end before any frame header
            return None
        position += 2 + length
    return None


def _gif(data: bytes) -> tuple[int, int] | None:
    width, height = struct.unpack("<HH", data[6:10])
    return height, width


def _bmp(data: bytes) -> tuple[int, int] | None:
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(height), abs(width)  # negative height: rows stored top-down


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits >> 14 & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return height, width
    return None


def _tiff(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    found: dict[int, int] = {}
    for n in range(count):
        entry = data[offset + 2 + 12 * n : offset + 14 + 12 * n]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8 : 10 if kind == 3 else 12])[0]
    return found[257], found[256]


_SIZE_READERS = {"PNG": _png, "JPEG": _jpeg, "GIF": _gif, "BMP": _bmp, "WebP": _webp, "TIFF": _tiff}


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most `max_bytes`.

    Opened without blocking and checked before reading: a FIFO or device named like an image would
    otherwise block the reader forever (or never end). Raises ImageError for non-regular or oversized
    files and OSError when the file cannot be read."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("not a regular file")
        if info.st_size > max_bytes:
            raise ImageError(f"{info.st_size / 2**20:.0f} MiB, larger than any image within the pixel limit")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(descriptor, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:  # grew while being read
        raise ImageError("larger than any image within the pixel limit")
    return data


def frame_byte_limit(limit: int) -> int:
    return BYTES_PER_PIXEL_BOUND * limit + (1 << 20)
