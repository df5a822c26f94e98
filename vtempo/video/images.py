"""Still images before they are decoded: their format and declared size, read from the header by
Pillow, and the pixel limit that keeps one small file from claiming gigabytes when decoded.

A PNG of 30000×30000 pixels can be 100 KB on disk and 2.7 GB once decoded; the header says so first.
Every image (frame-folder frames, and files passed as videos that turn out to be images) and every
video stream is checked against `MAX_PIXELS` before any pixel is decoded.
"""
from __future__ import annotations

import io
import os
import stat

from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

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
    """The still-image format that a file's first bytes announce (PNG, JPEG, GIF, BMP, WebP, TIFF, PPM)."""
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
    if head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():  # the Netpbm family: PBM, PGM, PPM
        return "PPM"
    return None


# Pillow's reader of each format's header. Built directly rather than by `Image.open`, whose own pixel
# limit (`Image.MAX_IMAGE_PIXELS`, one setting for the whole process) would refuse a huge image before
# its size could be told against vtempo's limit.
_HEADER_READERS = {"PNG": PngImagePlugin.PngImageFile, "JPEG": JpegImagePlugin.JpegImageFile,
                   "GIF": GifImagePlugin.GifImageFile, "BMP": BmpImagePlugin.BmpImageFile,
                   "WebP": WebPImagePlugin.WebPImageFile, "TIFF": TiffImagePlugin.TiffImageFile,
                   "PPM": PpmImagePlugin.PpmImageFile}


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, height, width) that an image's header declares, read without decoding a pixel; None
    when `data` (the file, or enough of its start) is not an image in a known format or its header is
    cut or damaged."""
    kind = image_format(data)
    if kind is None:
        return None
    try:
        with _HEADER_READERS[kind](io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - Pillow raises many types for a damaged header
        return None
    return kind, height, width


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
