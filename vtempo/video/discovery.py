"""Finding the videos that paths name: files, frame folders, and folders of them."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from vtempo.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS


@dataclass(frozen=True)
class FailedInput:
    """An input found unusable while looking for videos (a symbolic link loop, a folder that cannot be
    listed, a named folder without videos). It takes a video's place in the list so that it gets a
    failed result with `reason`; `str`, `os.fspath` and `Path()` give its path."""

    path: Path
    reason: str

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


Input = Union[Path, FailedInput]

NO_VIDEOS = "no videos in this folder (its subfolders are searched only when recursive)"
NO_VIDEOS_RECURSIVE = "no videos in this folder or its subfolders"


def is_frame_folder(folder: str | os.PathLike) -> bool:
    """A folder is one video made of frames when it holds images and nothing that is a video; a stray
    image beside videos (a thumbnail) leaves it a folder of videos."""
    try:
        suffixes = {Path(name).suffix.lower() for name in os.listdir(folder)}
    except OSError:
        return False
    return bool(suffixes & IMAGE_EXTENSIONS) and not suffixes & VIDEO_EXTENSIONS


def collect_videos(paths: Sequence[str | os.PathLike] | str | os.PathLike, recursive: bool = False) -> list[Input]:
    """The inputs named by `paths`, in order.

    A file is taken as it is (a non-video is reported when it fails to decode; a path that does not
    exist, or a symbolic link loop, likewise). A frame folder (see `is_frame_folder`) is one video;
    another folder gives its video files (by extension) and frame-folder subfolders, sorted, and with
    `recursive` those of its other subfolders too, each folder once however links lead back to it.
    Problems found on the way (a subfolder that cannot be listed, a link loop, a named folder without
    videos) are `FailedInput` entries in the list, so every one is reported. When nothing at all is
    found the list is empty, so a caller can refuse the run before it starts.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    videos: list[Input] = []
    for path in map(Path, paths):
        if not path.is_dir() or is_frame_folder(path):
            videos.append(path)
            continue
        found = _scan_folder(path, recursive, set())
        if found:
            videos.extend(found)
        else:
            videos.append(FailedInput(path, NO_VIDEOS_RECURSIVE if recursive else NO_VIDEOS))
    if all(isinstance(video, FailedInput) and video.reason in (NO_VIDEOS, NO_VIDEOS_RECURSIVE) for video in videos):
        return []
    return videos


def _scan_folder(folder: Path, recursive: bool, visited: set[tuple[int, int]]) -> list[Input]:
    try:
        info = os.stat(folder)
        visited.add((info.st_dev, info.st_ino))
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        return [FailedInput(folder, _reason(error, "cannot list folder"))]
    found: list[Input] = []
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()
        except OSError as error:  # a symbolic link loop, or a link into a folder we may not search
            found.append(FailedInput(path, _reason(error, "cannot read")))
            continue
        if is_dir:
            if is_frame_folder(path):
                found.append(path)
            elif recursive:
                try:
                    info = os.stat(path)
                except OSError as error:
                    found.append(FailedInput(path, _reason(error, "cannot list folder")))
                    continue
                if (info.st_dev, info.st_ino) not in visited:  # a link back up would loop forever
                    found.extend(_scan_folder(path, recursive, visited))
        elif path.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(path)  # broken links included: they are reported, not silently skipped
    return found


def _reason(error: OSError, doing: str) -> str:
    if error.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(error, PermissionError):
        return f"{doing}: permission denied"
    return f"{doing} ({error.strerror or error})"
