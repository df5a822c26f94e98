"""What every command shares: one-line errors and exit codes, text safe for the terminal, SIGTERM
handled like Ctrl-C, and the options of the model commands.

Exit codes (as the README states): 0 all fine, 1 some inputs failed (a video, a checkpoint, a data
set), 2 usage errors (options, arguments); 130 after Ctrl-C or SIGTERM."""
from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import logging
import re
import signal
import sys
import threading
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape as escape_markup
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.segment import Segment

from vtempo import limits
from vtempo.errors import Reference, UsageError, VtempoError, as_python, param

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


# Off a terminal (a pipe, a file) there is no width to fit: a table keeps its columns whole and a line
# is never broken or cut, whatever the terminal the command was started from or its COLUMNS.
OFF_TERMINAL_WIDTH = 1_000_000


class GuardedConsole(Console):
    """A rich Console that shows control characters in the text it writes as \\xNN: the last guard
    for text printed without `escape`, progress-bar descriptions included. Line breaks and tabs stay;
    rich's own styling and cursor codes are not text (they come from styles and control segments).
    Writing to anything but a terminal, it is `OFF_TERMINAL_WIDTH` wide unless given a `width`."""

    def __init__(self, *args, width: Optional[int] = None, **kwargs) -> None:
        super().__init__(*args, width=width, **kwargs)
        self.fits_terminal = width is None  # rich takes COLUMNS as a width of its own: told apart here

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.fits_terminal and not self.is_terminal:
            return ConsoleDimensions(OFF_TERMINAL_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)

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


_CONTEXT = "typer_context"  # the parameter friendly_errors adds to a command, for typer to pass its context in


def friendly_errors(command: Callable) -> Callable:
    """Turn user-fixable errors into one line on stderr and an exit code, never a traceback, naming the
    command's own options (`as_options`); SIGTERM interrupts the command as Ctrl-C does, so it writes
    what is finished before it exits."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from vtempo.weights import hub

        context = kwargs.pop(_CONTEXT, None)
        hub.first_use_progress = download_progress  # checkpoints downloaded on first use show a bar
        try:
            with sigterm_interrupts():
                return command(*args, **kwargs)
        except UsageError as error:
            raise fail(as_options(error, context), EXIT_USAGE) from None
        except VtempoError as error:
            raise fail(as_options(error, context), EXIT_SOME_FAILED) from None
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
            name = error.filename if error.filename is not None else "a path"
            raise fail(f"{name}: a name in this path is longer than the file system allows", EXIT_USAGE) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    signature = inspect.signature(command)
    context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), context])
    return run


def as_options(error: VtempoError, context: Optional[typer.Context]) -> str:
    """`error` as the command line says it: each Python parameter it names is written as the option of
    the running command (`context`) that sets it, from the command's own parameter list (`frames=0` →
    `--frames 0`, `strides` → `--stride`, `resume=True` → `--resume`); a name the command has no option
    for stays as Python writes it."""
    options = {option.name: option for option in context.command.params} if context is not None else {}

    def named(reference: Reference) -> str:
        option = options.get(reference.name)
        if option is None:
            return as_python(reference)
        if option.param_type_name == "argument":  # a positional: its value, or its metavar
            return reference.value if reference.value is not None else option.metavar or option.name.upper()
        flags = [opt for opt in option.opts if opt.startswith("--")] or option.opts
        if getattr(option, "is_flag", False) and reference.value in ("True", "False"):
            off = [opt for opt in option.secondary_opts if opt.startswith("--")]
            return off[0] if reference.value == "False" and off else flags[0]
        return flags[0] if reference.value is None else f"{flags[0]} {reference.value}"

    return error.render(named)


# ------------------------------------------------------------------------------------------ model options
# The options of every command that runs a model (classify, evaluate, robustness, cam), defined once.

MODEL_HELP = "A registry model (`vtempo models`), an architecture with --weights, or a checkpoint written by `vtempo train`."


def model_option(default=..., many: bool = False):
    help_text = MODEL_HELP + (" Repeat to compare models." if many else "")
    return typer.Option(default, "--model", "-m", metavar="NAME", help=help_text)


def weights_option(many: bool = False):
    help_text = "Checkpoint file in any supported layout (default: the registry's)" + (
        "; one per --model, in the same order." if many else ".")
    return typer.Option(None, "--weights", metavar="FILE", help=help_text)


def registry_option():
    return typer.Option(None, "--registry", metavar="FILE", help="A user registry file extending checkpoints.yaml.")


def frames_option(default: Optional[int] = None, help_text: str = "Frames per clip (default: the model's)."):
    return typer.Option(default, "--frames", help=help_text)


def device_option():
    return typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N.")


def dtype_option(int8: bool = False):
    help_text = "fp32, bf16 or fp16 (autocast)" + (", or int8 (x86 CPU, quantized on --calibrate's clips)." if int8 else ".")
    return typer.Option("fp32", "--dtype", help=help_text)


def calibrate_option():
    return typer.Option(None, "--calibrate", metavar="DIR",
                        help="Videos to calibrate --dtype int8 on (a few clips like the ones to classify).")


COMPILE_MODES = ("off", "on", "auto")


def compile_option():
    return typer.Option("off", "--compile", metavar="off|on|auto",
                        help="torch.compile the model; auto: when the run is long enough to repay compiling.")


RUNTIME_CHOICES = ("torch", "auto", "onnxruntime", "openvino")


def runtime_option():
    return typer.Option("torch", "--runtime", metavar="|".join(RUNTIME_CHOICES),
                        help="What runs the model on the CPU (fp32): torch; onnxruntime or openvino on vtempo's "
                             "export of it (parity-checked); auto: whichever measured fastest on this CPU (once, cached).")


def check_runtime(runtime: str, compile: str) -> None:
    if runtime not in RUNTIME_CHOICES:
        raise UsageError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {runtime!r}")
    if runtime != "torch" and compile == "on":
        raise UsageError(f"--runtime {runtime} and --compile on: compiling is PyTorch's; choose one")


def at_least(name: str, value, minimum: int, bound: Optional[str] = None) -> None:
    """The count option for the parameter `name` must be at least `minimum` and at most the limit named
    `bound` (vtempo.limits): one line naming the option otherwise (exit code 2)."""
    if value is not None and value < minimum:
        raise UsageError(f"{param(name)} must be at least {minimum}, got {value}")
    limits.check_int(name, value, minimum, bound)


def check_model_options(frames=None, dtype: str = "fp32", device: str = "auto", calibrate=None,
                        compile: str = "off", *, int8: bool = False) -> None:
    """What can be checked about the shared model options before anything is loaded (`int8`: the
    command has --calibrate and runs int8 models)."""
    from vtempo.runtime import check_dtype, pick_device

    at_least("frames", frames, 1, "MAX_FRAMES")
    check_dtype(dtype)
    pick_device(device)
    if dtype == "int8" and not int8:
        raise UsageError("--dtype int8: this command runs fp32, bf16 or fp16 models (classify runs int8)")
    if dtype == "int8" and calibrate is None:
        raise UsageError("--dtype int8 needs --calibrate DIR: a folder of a few videos like the ones to classify")
    if calibrate is not None and dtype != "int8":
        raise UsageError("--calibrate goes with --dtype int8")
    if compile not in COMPILE_MODES:
        raise UsageError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")


@contextlib.contextmanager
def progress_callback(title: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A `progress(done, total, status="")` callback drawing a transient bar on stderr (started on the
    first call, so worker processes started before it never fork the bar's thread)."""
    state: dict = {}

    def update(done: int, total: int, status: str = "") -> None:
        if not enabled or not err_console.is_terminal:
            return
        if "bar" not in state:
            state["bar"] = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                    console=err_console, transient=True)
            state["bar"].start()
            state["task"] = state["bar"].add_task(title, total=total, status="")
        state["bar"].update(state["task"], completed=done, total=total, status=status)

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].stop()
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


# ------------------------------------------------------------------------------------------ downloads

class _ConsoleHandler(logging.Handler):
    """The hub's notices (retries, waiting for another process) as plain lines above the bar."""

    def __init__(self, bar) -> None:
        super().__init__(logging.INFO)
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        self.bar.console.print(record.getMessage(), markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def download_progress(name: str, enabled: bool = True) -> Iterator[Callable[[int, Optional[int]], None]]:
    """A `progress(bytes_done, bytes_total)` callback for `hub.download`/`hub.weights_path` drawing a
    rich bar on stderr; the bar appears with the first bytes, so a failed connection prints one line."""
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=err_console, disable=not enabled, transient=False,
    )
    task = bar.add_task(name, total=None)

    def progress(done: int, total: Optional[int]) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    handler = _ConsoleHandler(bar)
    logger = logging.getLogger("vtempo.weights.hub")
    logger.addHandler(handler)
    try:
        yield progress
    finally:
        logger.removeHandler(handler)
        if bar.live.is_started:
            bar.stop()
