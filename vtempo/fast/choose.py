"""Choosing between equivalent implementations by timing them once, per CPU and shape.

Which of two exact ways to compute something is faster depends on the machine (Intel's and AMD's
CPUs run the same GEMM library's kernels at different speeds, oneDNN and MKL differ by shape and
dtype), so no rule tuned on one CPU is kept in the code. A `Chooser` times the candidates the first
time a key (CPU model, threads, what is computed, shapes, dtype) is met and remembers the winner, in a
JSON file under vtempo's cache folder, so later processes on the same machine do not time again.
Delete the file to measure again (after a library upgrade, say).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

Candidates = Mapping[str, Callable[[], object]]
Measure = Callable[[Candidates], dict[str, float]]

MAX_FILE_BYTES = 1 << 20  # a choice file larger than this is not ours: ignored
MIN_ROUNDS, MAX_ROUNDS, MIN_SECONDS = 7, 41, 0.1
# The first candidate is the reference; another replaces it only when measured this much faster, so
# that timing noise (a busy machine) does not trade the reference for an equal or slower way for good.
MARGIN = 0.05


def time_alternating(candidates: Candidates) -> dict[str, float]:
    """Median wall time (s) of each candidate: one untimed call each, then rounds of one call each,
    alternating, so a change in machine load hits every candidate alike; at least MIN_ROUNDS rounds
    and, for small ops, more (up to MAX_ROUNDS) until MIN_SECONDS have passed, so that a few calls
    slowed by other processes do not decide."""
    for run in candidates.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    started_all = time.perf_counter()
    for round_index in range(MAX_ROUNDS):
        if round_index >= MIN_ROUNDS and time.perf_counter() - started_all >= MIN_SECONDS:
            break
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


class Chooser:
    """Picks the fastest candidate per key, keeping the first (the reference) unless another is faster
    by more than MARGIN; `path=None` keeps the choices in memory only."""

    def __init__(self, path: Path | None, measure: Measure = time_alternating) -> None:
        self.path, self.measure = path, measure
        self.choices: dict[str, str] = self._read()
        self.timings: dict[str, dict[str, float]] = {}  # what this process measured, for reports

    def choose(self, key: str, candidates: Candidates) -> str:
        chosen = self.choices.get(key)
        if chosen in candidates:
            return chosen
        times = self.measure(candidates)
        reference = next(iter(candidates))
        fastest = min(times, key=times.__getitem__)
        chosen = fastest if times[fastest] < (1 - MARGIN) * times[reference] else reference
        self.choices[key], self.timings[key] = chosen, times
        self._write()
        return chosen

    def _read(self) -> dict[str, str]:
        try:
            if self.path is None or self.path.stat().st_size > MAX_FILE_BYTES:
                return {}
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {key: value for key, value in data.items() if isinstance(key, str) and isinstance(value, str)}

    def _write(self) -> None:
        """Merged with what other processes wrote meanwhile, replaced atomically; a read-only cache
        folder only costs the timing again next time."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self._read(), **self.choices}
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".choices-", suffix=".json")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(merged, out, indent=1, sort_keys=True)
            os.replace(temporary, self.path)
        except OSError:
            pass


_shared: Chooser | None = None


def shared_chooser() -> Chooser:
    """The process-wide chooser, its choices in `<vtempo home>/fast-choices.json`."""
    global _shared
    if _shared is None:
        from vtempo.paths import home

        _shared = Chooser(home() / "fast-choices.json")
    return _shared
