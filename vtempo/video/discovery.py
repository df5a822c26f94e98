"""Finding the videos that paths name: files, frame folders, and folders of them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from vtempo.errors import VtempoError
from vtempo.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, display_path


def _is_frame_folder(folder: Path) -> bool:
    try:
        return any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in os.listdir(folder))
    except OSError:
        return False


def collect_videos(paths: Sequence[str | os.PathLike] | str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The inputs named by `paths`, in order.

    A file is taken as it is (a non-video is reported when it fails to decode). A folder holding
    images is one video (a frame folder); otherwise its video files (by extension) and its frame-folder
    subfolders are taken, sorted, and with `recursive` the other subfolders are searched too. A path
    that does not exist is kept, so it is reported as a failed input like any other.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    videos: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            videos.append(path)
        elif _is_frame_folder(path):
            videos.append(path)
        else:
            videos.extend(_scan_folder(path, recursive))
    return videos


def _scan_folder(folder: Path, recursive: bool) -> list[Path]:
    found: list[Path] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise VtempoError(f"{display_path(folder)}: cannot list folder ({error.strerror or error})") from None
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir():
            if _is_frame_folder(path):
                found.append(path)
            elif recursive:
                found.extend(_scan_folder(path, recursive))
        elif path.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(path)  # broken links included: they are reported, not silently skipped
    return found
