"""Bounds on untrusted input (downloads, registry files, checkpoints, exported files' metadata) and
on the numbers given to the library and the command line.

A download server, a registry file and a checkpoint are all written by someone else, and a number
typed by mistake (`--frames 100000`, `--shard 0/30000000`) must not reach an allocation, so what
vtempo reads or is told is bounded. Each bound below is a module-level default; set the environment
variable `VTEMPO_<NAME>` (e.g. `VTEMPO_DOWNLOAD_MAX_BYTES=8e9`) to raise it. `check_int` and
`check_number` apply them: the library names its parameter (`frames=100000: ...`), the command line
its option (`--frames 100000: ...`).

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
CHECKPOINT_MAX_BYTES           4 GiB        a checkpoint's tensors and records together, uncompressed
                                            (read from its zip directory before loading)
CHECKPOINT_MAX_ENTRIES         100000       the records in a checkpoint's zip archive
MAX_SHARDS                     100000       N of `--shard K/N`
MAX_BATCH                      1024         clips, windows or videos per model call (`--batch-size`, `--batch`)
MAX_SECONDS                    86400 s      a duration in seconds: `--window`, `--hop`, `--every`, `--min-duration`
MAX_ITERS                      100000       timed or untimed calls of `profile`, epochs of `train`
MAX_THREADS                    1024         `--threads`, `--workers`, `--jobs`
MAX_SYNTH_CLIPS                100000       clips per class of `vtempo synth`
MAX_WINDOW_FRAMES              4096         the frames of one timeline or embedding window, all held at once
MAX_SEED                       2**64 - 1    a random seed (torch's range)
=============================  ===========  ============================================================
"""
from __future__ import annotations

import math
import os
import sys

from vtempo.errors import UsageError, param

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
CHECKPOINT_MAX_BYTES = 4 * 2**30
CHECKPOINT_MAX_ENTRIES = 100_000
MAX_SHARDS = 100_000
MAX_BATCH = 1024
MAX_SECONDS = 86400.0
MAX_ITERS = 100_000
MAX_THREADS = 1024
MAX_SYNTH_CLIPS = 100_000
MAX_WINDOW_FRAMES = 4096
MAX_SEED = 2**64 - 1

NAMES = (
    "DOWNLOAD_MAX_BYTES", "DOWNLOAD_TIMEOUT_S", "DOWNLOAD_MIN_BYTES_PER_S", "DOWNLOAD_STALL_WINDOW_S",
    "DOWNLOAD_DEADLINE_S", "REGISTRY_MAX_BYTES", "REGISTRY_MAX_DEPTH", "REGISTRY_MAX_ALIAS_NODES",
    "MAX_CLASSES", "MAX_CLASS_NAME_CHARS", "MAX_FRAMES", "MAX_CLIPS", "MAX_STRIDE", "MAX_INPUT_SIZE",
    "MAX_RESIZE", "CHECKPOINT_MAX_BYTES", "CHECKPOINT_MAX_ENTRIES", "MAX_SHARDS", "MAX_BATCH", "MAX_SECONDS",
    "MAX_ITERS", "MAX_THREADS", "MAX_SYNTH_CLIPS", "MAX_WINDOW_FRAMES", "MAX_SEED",
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


def _named(name: str, value: object) -> str:
    """The parameter `name` given `value` (long values cut short) in a message."""
    text = str(value)
    return param(name, value if len(text) <= 40 else text[:37] + "...")


def check_int(name: str, value, low: int, bound: str | None = None) -> None:
    """`value` (None: not given) is a whole number from `low` to the bound named `bound` (or no upper
    bound): a UsageError naming `name` otherwise."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{_named(name, value)}: must be a whole number")
    high = get(bound) if bound is not None else None
    if value < low or (high is not None and value > high):
        where = f"at least {low}" if high is None else f"from {low} to {shown(high)}"
        raise UsageError(f"{_named(name, value)}: must be {where}" + (f" ({hint(bound)})" if bound and value > low else ""))


def check_number(name: str, value, low: float, bound: str | float | None = None, *, above: bool = False,
                 below: bool = False) -> None:
    """`value` (None: not given) is a finite number with low <= value <= high (`above`: low < value;
    `below`: value < high); `bound` names a limit or is the number itself. A UsageError naming `name`
    otherwise: nan and inf never pass."""
    if value is None:
        return
    high = get(bound) if isinstance(bound, str) else bound
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = float("nan")
    fits = math.isfinite(number) and (number > low if above else number >= low)
    if fits and high is not None:
        fits = number < high if below else number <= high
    if fits:
        return
    lower = f"more than {low:g}" if above else f"at least {low:g}"
    upper = "" if high is None else f" and {'less than' if below else 'at most'} {shown(high)}"
    extra = f" ({hint(bound)})" if isinstance(bound, str) and math.isfinite(number) and number > high else ""
    raise UsageError(f"{_named(name, value)}: must be a finite number, {lower}{upper}{extra}")
