"""The `vtempo` command line: a thin layer over the Python API. Each command lives in vtempo/commands/."""
from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import sys

try:  # Ctrl-C while the modules import (torch takes seconds): exit 130, no traceback
    import typer
    from typer.core import _click

    from vtempo import __version__
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
    from vtempo.commands.common import fail
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None


class _Typer(typer.Typer):
    """Typer whose own usage errors (a value that is not a number, a missing argument) are one line on
    stderr with exit code 2, like the commands' errors, instead of a usage block and a framed panel; a
    reader of stdout that goes away (`vtempo models | head -1`) ends the run quietly with 141, and Ctrl-C
    outside a command (while the options are read) with 130 and "interrupted", never a traceback."""

    def __call__(self, *args, **kwargs):
        if kwargs.get("standalone_mode", True) is False:
            return super().__call__(*args, **kwargs)
        stdout = _Stdout()
        try:
            from vtempo import _start_up_done

            _start_up_done()  # from here a Ctrl-C is a KeyboardInterrupt, for the command to handle
            code = super().__call__(*args, standalone_mode=False, **kwargs)
            sys.stdout.flush()  # here, not at shutdown, where a closed pipe prints "Exception ignored"
        except _click.exceptions.NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except _click.exceptions.ClickException as error:
            context = getattr(error, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            raise SystemExit(fail(error.format_message() + hint, error.exit_code).exit_code) from None
        except typer.Abort:
            sys.exit(1)
        except KeyboardInterrupt:
            raise _interrupted() from None
        except BrokenPipeError:
            stdout.silence()
            sys.exit(EXIT_PIPE_CLOSED)
        except SystemExit:
            # rich and typer turn a write into a closed pipe into SystemExit(1)
            if stdout.reader_gone():
                stdout.silence()
                sys.exit(EXIT_PIPE_CLOSED)
            raise
        finally:
            stdout.close()
            _leave_process_group()
        sys.exit(code if isinstance(code, int) else 0)


class _Group(typer.core.TyperGroup):
    """Ctrl-C while typer reads the command line (before a command's own handling) is 130 and
    "interrupted" too: typer itself would end with 130 and say nothing."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            raise _interrupted() from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _interrupted() from None


def _interrupted() -> SystemExit:
    print("interrupted", file=sys.stderr)
    return SystemExit(EXIT_INTERRUPTED)


EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 130, 141  # 141 = 128 + SIGPIPE, as a shell reports a tool SIGPIPE ended


class _Stdout:
    """The pipe behind stdout, kept open (rich replaces fd 1 with os.devnull when a write fails), to ask
    afterwards whether its reader is gone."""

    def __init__(self) -> None:
        self.fd = None
        try:
            if stat.S_ISFIFO(os.fstat(1).st_mode) and hasattr(select, "poll"):
                self.fd = os.dup(1)
        except OSError:
            pass

    def reader_gone(self) -> bool:
        if self.fd is None:
            return False
        poll = select.poll()
        poll.register(self.fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))

    @staticmethod
    def silence() -> None:
        """What is still buffered for stdout goes nowhere, so the interpreter's exit prints nothing."""
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _leave_process_group() -> None:
    """Under torchrun a command ends inside its process group: leave it while the interpreter is whole.
    Only a torch that finished importing can have started one (Ctrl-C may stop its import half-way)."""
    torch_distributed = sys.modules.get("torch.distributed")
    if torch_distributed is None or not getattr(torch_distributed, "is_initialized", lambda: False)():
        return
    from vtempo import distributed

    distributed.stop()


app = _Typer(
    name="vtempo",
    help="Video action recognition with temporal-module CNNs (TSN, TSM, TAM, TCM, STC, TEFE, TSI).",
    no_args_is_help=True,
    cls=_Group,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _version(value: bool) -> None:
    if value:
        typer.echo(f"vtempo {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Video action recognition with temporal-module CNNs (TSN, TSM, TAM, TCM, STC, TEFE, TSI)."""


for command_module in (models, profile, convert, download, classify, merge, timeline, stream, tempo, cam, export, embed):
    command_module.register(app)


def run() -> None:
    """The `vtempo` program (and `python -m vtempo`). It owns its process, so it keeps the buffers a
    model call frees for the next one (glibc malloc's thresholds, `vtempo.fast.heap`; set
    VTEMPO_KEEP_FREED_BUFFERS=0 to leave malloc as it is). Once the command has ended, its results
    written, a Ctrl-C would only stop the interpreter's teardown, which would then end by the signal
    instead of with the command's code: the program ignores it from there on (`app()` called in a
    process of yours leaves your handler and your malloc alone)."""
    os.environ.setdefault("VTEMPO_KEEP_FREED_BUFFERS", "1")
    try:
        app(prog_name="vtempo")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    run()
