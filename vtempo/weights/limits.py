"""Bounds on untrusted input: downloads, registry files and checkpoint metadata.

A download server, a registry file and a checkpoint's metadata are all written by someone else, so
what vtempo reads from them is bounded. Each bound below is a module-level default; set the
environment variable `VTEMPO_<NAME>` (e.g. `VTEMPO_DOWNLOAD_MAX_BYTES=8e9`) to raise it.

=============================  ===========  ============================================================
name                           default      what it bounds
=============================  ===========  ============================================================
DOWNLOAD_MAX_BYTES             4 GiB        a download whose size the registry does not give (with
                                            `size:` the download stops at exactly that many bytes)
DOWNLOAD_TIMEOUT_S             30 s         one connection attempt or one read that waits for data
DOWNLOAD_MIN_BYTES_PER_S       1024 B/s     the slowest transfer accepted, averaged over a stall window
DOWNLOAD_STALL_WINDOW_S        60 s         the window over which that minimum rate is measured
DOWNLOAD_DEADLINE_S            14400 s      one download, all attempts and retries together (4 h)
REGISTRY_MAX_BYTES             1 MiB        the size of a registry file (checkpoints.yaml)
REGISTRY_MAX_DEPTH             32           how deeply a registry file's mappings and lists nest
REGISTRY_MAX_ALIAS_NODES       10000        the values YAML aliases (`*name`) may add to a registry
MAX_CLASSES                    100000       num_classes and the length of a class-name list
MAX_CLASS_NAME_CHARS           256          one class name in a checkpoint's metadata
MAX_FRAMES                     256          frames per clip (registry entries and checkpoints)
MAX_CLIPS                      32           clips per video in a test protocol
MAX_STRIDE                     64           the frame stride of `stride` sampling
MAX_INPUT_SIZE                 1024         input_size, the side of the square crop fed to the model
MAX_RESIZE                     4096         each number of `resize` (short side, or height and width)
=============================  ===========  ============================================================
"""
from __future__ import annotations

import os
import sys

from vtempo.errors import UsageError

ENV_PREFIX = "VTEMPO_"

DOWNLOAD_MAX_BYTES = 4 * 2**30
DOWNLOAD_TIMEOUT_S = 30.0
DOWNLOAD_MIN_BYTES_PER_S = 1024.0
DOWNLOAD_STALL_WINDOW_S = 60.0
DOWNLOAD_DEADLINE_S = 4 * 3600.0
REGISTRY_MAX_BYTES = 2**20
REGISTRY_MAX_DEPTH = 32
REGISTRY_MAX_ALIAS_NODES = 10_000
MAX_CLASSES = 100_000
MAX_CLASS_NAME_CHARS = 256
MAX_FRAMES = 256
MAX_CLIPS = 32
MAX_STRIDE = 64
MAX_INPUT_SIZE = 1024
MAX_RESIZE = 4096

NAMES = (
    "DOWNLOAD_MAX_BYTES", "DOWNLOAD_TIMEOUT_S", "DOWNLOAD_MIN_BYTES_PER_S", "DOWNLOAD_STALL_WINDOW_S",
    "DOWNLOAD_DEADLINE_S", "REGISTRY_MAX_BYTES", "REGISTRY_MAX_DEPTH", "REGISTRY_MAX_ALIAS_NODES",
    "MAX_CLASSES", "MAX_CLASS_NAME_CHARS", "MAX_FRAMES", "MAX_CLIPS", "MAX_STRIDE", "MAX_INPUT_SIZE",
    "MAX_RESIZE",
)


def get(name: str) -> int | float:
    """The bound `name`: $VTEMPO_<name> when set, else the module default."""
    default = getattr(sys.modules[__name__], name)  # read at call time, so a changed default counts
    raw = os.environ.get(ENV_PREFIX + name, "").strip()
    if not raw:
        return default
    try:
        number = float(raw)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise UsageError(f"{ENV_PREFIX}{name}={raw[:40]!r}: expected a positive number")
    return int(number) if isinstance(default, int) else number


def hint(name: str) -> str:
    """How to raise the bound, for error messages."""
    return f"set {ENV_PREFIX}{name} to raise the limit of {shown(get(name))}"


def shown(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
