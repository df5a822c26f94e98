"""`python -m vtempo`: the same command line as `vtempo` (and what `torchrun -m vtempo` runs)."""
from vtempo.cli import run

run()
