"""What every command shares: one-line errors and exit codes, text safe for the terminal, and
SIGTERM handled like Ctrl-C."""
from __future__ import annotations

import contextlib
import functools
import re
import signal
import sys
import threading
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.segment import Segment

from vtempo.errors import UsageError, VtempoError

# C0 controls (ESC starts terminal escape sequences), DEL, C1 controls (0x9b is a one-byte CSI) and the
# bidirectional overrides that reorder what a line appears to say
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_IN_OUTPUT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: object) -> str:
    """`text` to print exactly as written: rich markup escaped, and control characters (newlines too)
    shown as \\xNN, so a file or class name can neither style the output nor drive the terminal
    (move the cursor, retitle the window, ...). Use it for every name or message that comes from
    outside (file names, labels, decoder messages)."""
    return escape_markup(_CONTROL.sub(_escaped, str(text)))


class GuardedConsole(Console):
    """A rich Console that shows control characters in the text it writes as \\xNN: the last guard
    for text printed without `escape`, progress-bar descriptions included. Line breaks and tabs stay;
    rich's own styling and cursor codes are not text (they come from styles and control segments)."""

    def _render_buffer(self, buffer):  # every write passes here, live displays and captures too
        return super()._render_buffer(
            segment if segment.control or not _CONTROL_IN_OUTPUT.search(segment.text)
            else Segment(_CONTROL_IN_OUTPUT.sub(_escaped, segment.text), segment.style, segment.control)
            for segment in buffer
        )


console = GuardedConsole()
err_console = GuardedConsole(stderr=True)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    # The message is text, not markup: "[height, width]" or a path with brackets must print as written.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def friendly_errors(command: Callable) -> Callable:
    """Turn user-fixable errors into one line on stderr and an exit code, never a traceback; SIGTERM
    interrupts the command as Ctrl-C does, so it writes what is finished before it exits."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            with sigterm_interrupts():
                return command(*args, **kwargs)
        except UsageError as error:
            raise fail(str(error), EXIT_USAGE) from None
        except VtempoError as error:
            raise fail(str(error), EXIT_SOME_FAILED) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return run


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside: SIGTERM (`kill`, `timeout`, a job scheduler) raises KeyboardInterrupt, once; a second
    one while the command cleans up is ignored (SIGKILL still ends it). Outside: as before."""

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
