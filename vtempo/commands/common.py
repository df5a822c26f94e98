"""What every command shares: one-line errors and exit codes."""
from __future__ import annotations

import functools
import sys
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

from vtempo.errors import UsageError, VtempoError

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    # The message is text, not markup: "[height, width]" or a path with brackets must print as written.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def friendly_errors(command: Callable) -> Callable:
    """Turn user-fixable errors into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UsageError as error:
            raise fail(str(error), EXIT_USAGE) from None
        except VtempoError as error:
            raise fail(str(error), EXIT_SOME_FAILED) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return run
