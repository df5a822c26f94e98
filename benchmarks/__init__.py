"""Benchmark scripts, run from the root of a checkout (`python -m benchmarks.shift`, ...); not part of
the installed package. Each prints what it measured; docs/ holds the figures with their commands."""
from __future__ import annotations

import os


def as_the_program() -> None:
    """Models prepared from here on keep the buffers a call frees, as in the `vtempo` program
    (`vtempo.fast.heap`), unless VTEMPO_KEEP_FREED_BUFFERS is set already."""
    os.environ.setdefault("VTEMPO_KEEP_FREED_BUFFERS", "1")
