"""The `vtempo` command line: a thin layer over the Python API. Each command lives in vtempo/commands/."""
from __future__ import annotations

import sys

import typer

from vtempo.commands import (
    cam,
    classify,
    convert,
    download,
    embed,
    export,
    merge,
    models,
    profile,
    stream,
    tempo,
    timeline,
)


class _Typer(typer.Typer):
    """Typer whose own usage errors (a value that is not a number, a missing argument) are one line on
    stderr with exit code 2, like the commands' errors, instead of a usage block and a framed panel."""

    def __call__(self, *args, **kwargs):
        from typer.core import _click

        if kwargs.get("standalone_mode", True) is False:
            return super().__call__(*args, **kwargs)
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except _click.exceptions.NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except _click.exceptions.ClickException as error:
            from vtempo.commands.common import fail

            context = getattr(error, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            raise SystemExit(fail(error.format_message() + hint, error.exit_code).exit_code) from None
        except _click.exceptions.Abort:
            sys.exit(1)
        finally:
            _leave_process_group()
        sys.exit(code if isinstance(code, int) else 0)


def _leave_process_group() -> None:
    """Under torchrun a command ends inside its process group: leave it while the interpreter is whole."""
    if "torch.distributed" in sys.modules:
        from vtempo import distributed

        distributed.stop()


app = _Typer(
    name="vtempo",
    help="Video action recognition with temporal-module CNNs (TSN, TSM, TAM, TCM, STC, TEFE, TSI).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _version(value: bool) -> None:
    if value:
        from vtempo import __version__

        typer.echo(f"vtempo {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Video action recognition with temporal-module CNNs (TSN, TSM, TAM, TCM, STC, TEFE, TSI)."""


for command_module in (models, profile, convert, download, classify, merge, timeline, stream, tempo, cam, export, embed):
    command_module.register(app)

if __name__ == "__main__":
    app()
