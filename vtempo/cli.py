"""The `vtempo` command line: a thin layer over the Python API. Each command lives in vtempo/commands/."""
from __future__ import annotations

import typer

from vtempo.commands import cam, classify, convert, download, models, profile, stream, tempo, timeline

app = typer.Typer(
    name="vtempo",
    help="Video action recognition with temporal-module CNNs (TSN, TSM, TAM, TCM, STC, TEFE, TSI).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for command_module in (models, profile, convert, download, classify, tempo, cam, timeline, stream):
    command_module.register(app)

if __name__ == "__main__":
    app()
