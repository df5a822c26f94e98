"""Where vtempo keeps its cache and configuration."""
from __future__ import annotations

import os
from pathlib import Path

from vtempo.errors import UsageError


def home() -> Path:
    """vtempo's cache and configuration folder: $VTEMPO_HOME, else the platform cache dir."""
    if os.environ.get("VTEMPO_HOME"):
        path = Path(os.environ["VTEMPO_HOME"]).expanduser()
        existing = next((folder for folder in (path, *path.parents) if folder.exists()), None)
        if existing is not None and not existing.is_dir():
            raise UsageError(f"VTEMPO_HOME={os.environ['VTEMPO_HOME']}: {existing} is a file, not a folder; "
                             f"point VTEMPO_HOME at a folder (it is made when missing)")
        return path
    base = os.environ.get("XDG_CACHE_HOME") or (
        Path(os.environ.get("LOCALAPPDATA", "~")) if os.name == "nt" else Path("~/.cache")
    )
    return Path(base).expanduser() / "vtempo"
