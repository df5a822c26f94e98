"""Benchmark scripts, run from the root of a checkout (`python -m benchmarks.shift`, ...); not part of
the installed package. Each prints what it measured; docs/ holds the figures with their commands."""
