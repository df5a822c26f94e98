"""Synthetic videos whose frames say their own index, for frame-accuracy and robustness tests.

Each frame carries its index in binary as `BITS` vertical bars (white = 1) across the top half of the
picture, wide enough to survive lossy codecs and downscaling; `read_index` recovers it. The bottom half
is a moving texture so codecs have real motion to encode.

Also a command for benchmarks: `python tests/videogen.py OUT_DIR --count 60` writes Kinetics-like clips
(10 s, 30 fps, 340×256, mp4v).
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np

BITS = 9  # indices up to 511


def frame_picture(index: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 frame whose top half encodes `index` as BITS bars, most significant bit first."""
    frame = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, BITS + 1).astype(int)
    for bit in range(BITS):
        if index >> (BITS - 1 - bit) & 1:
            frame[: height // 2, edges[bit] : edges[bit + 1]] = 255
    # a smooth moving texture below: different every frame, cheap to make
    yy, xx = np.mgrid[0 : height - height // 2, 0:width].astype(np.float32)
    phase = 0.15 * index + seed
    texture = 127 + 60 * np.sin(xx / 7.0 + phase) + 60 * np.cos(yy / 5.0 - 0.7 * phase)
    frame[height // 2 :, :, 0] = texture.clip(0, 255).astype(np.uint8)
    frame[height // 2 :, :, 1] = (255 - texture).clip(0, 255).astype(np.uint8)
    frame[height // 2 :, :, 2] = 80
    return frame


def read_index(frame: np.ndarray) -> int:
    """The index `frame_picture` drew into an RGB frame (after any codec and resize)."""
    height, width = frame.shape[:2]
    top = frame[: height // 2].mean(axis=(0, 2))
    edges = np.linspace(0, width, BITS + 1)
    index = 0
    for bit in range(BITS):
        lo, hi = edges[bit], edges[bit + 1]
        centre = top[int(lo + 0.3 * (hi - lo)) : max(int(lo + 0.7 * (hi - lo)), int(lo + 0.3 * (hi - lo)) + 1)]
        index = index << 1 | int(centre.mean() > 127)
    return index


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_ffmpeg(
    path: Path,
    frames: int,
    size: tuple[int, int] = (48, 64),
    fps: float = 25,
    codec: list[str] = ("-c:v", "libx264", "-pix_fmt", "yuv420p"),
    extra_input: list[str] = (),
    extra_output: list[str] = (),
    start: int = 0,
) -> Path:
    """Encode frames start..start+frames-1 of `frame_picture` with the ffmpeg from imageio-ffmpeg."""
    height, width = size
    command = [
        ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps),
        *extra_input, "-i", "-", *codec, *extra_output, str(path),
    ]
    data = b"".join(frame_picture(i, height, width).tobytes() for i in range(start, start + frames))
    subprocess.run(command, input=data, check=True, capture_output=True)
    return path


def run_ffmpeg(args: list[str]) -> Path:
    """Run ffmpeg with `args` (the last one the output file) and return the output path."""
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True, capture_output=True)
    return Path(args[-1])


def write_opencv(path: Path, frames: int, size: tuple[int, int] = (48, 64), fps: float = 25, fourcc: str = "mp4v",
                 seed: int = 0) -> Path:
    """Encode with OpenCV's VideoWriter (mp4v, MJPG or XVID in the pip wheel)."""
    import cv2

    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
    for i in range(frames):
        writer.write(np.ascontiguousarray(frame_picture(i, height, width, seed)[..., ::-1]))
    writer.release()
    return path


def write_frame_folder(folder: Path, frames: int, size: tuple[int, int] = (48, 64), pattern: str = "img_{:05d}.jpg",
                       first: int = 1) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    for i in range(frames):
        name = pattern.format(i + first)
        quality = [cv2.IMWRITE_JPEG_QUALITY, 95] if name.endswith((".jpg", ".jpeg")) else []
        cv2.imwrite(str(folder / name), frame_picture(i, height, width)[..., ::-1], quality)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description="Write synthetic clips for pipeline benchmarks.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--size", default="256x340", help="HxW")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        write_opencv(args.out / f"clip_{i:04d}.mp4", args.frames, (height, width), args.fps, seed=i)
    print(f"wrote {args.count} clips to {args.out}")


if __name__ == "__main__":
    main()
