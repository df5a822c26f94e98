"""The errors vtempo raises for problems the user can fix.

A message names the Python parameters it is about with `param`, as a Python caller knows them:

    raise UsageError(f"{param('frames', 0)}: must be at least 1")   # frames=0: must be at least 1

The command line prints the same error with the running command's own options in their place
(`--frames 0: must be at least 1`, vtempo.commands.common), so the library spells no flag of the
command that runs it; a message that asks for another command writes that command line as it is
(`vtempo download NAME --force`)."""
from __future__ import annotations

import os
import re
from typing import Callable, NamedTuple, Optional

# A reference is kept in the message as NUL, the name, then (with a value) US, the value as the command
# line shows it, US, the value as Python shows it, and NUL: text from outside cannot end a reference early.
_MARK, _SPLIT = "\x00", "\x1f"
_REFERENCE = re.compile("\x00([A-Za-z_][A-Za-z0-9_]*)(?:\x1f([^\x00\x1f]*)\x1f([^\x00\x1f]*))?\x00")
_NO_VALUE = object()


class Reference(NamedTuple):
    """A parameter named in a message: `value` as the command line shows it (None: the name alone),
    `python` as Python shows it."""
    name: str
    value: Optional[str] = None
    python: Optional[str] = None


def _plain(text: str) -> str:
    return text.replace(_MARK, "\\x00").replace(_SPLIT, "\\x1f")


def param(name: str, value: object = _NO_VALUE, *, text: Optional[str] = None) -> str:
    """The Python parameter `name` in an error message: `frames`; with `value` `frames=0` (strings and
    paths as Python writes them: `device='cuda:3'`); with `text`, written as it is, a placeholder or a
    value formatted already (`weights=FILE`, `window=2.5`). The command line shows the option that sets
    it instead: `--frames`, `--frames 0`, `--weights FILE`, and `--resume` for `param("resume", True)`."""
    if text is not None:
        shown = python = text
    elif value is _NO_VALUE:
        return f"{_MARK}{name}{_MARK}"
    else:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        shown, python = str(value), repr(value) if isinstance(value, (str, bytes)) else str(value)
    return f"{_MARK}{name}{_SPLIT}{_plain(shown)}{_SPLIT}{_plain(python)}{_MARK}"


def as_python(reference: Reference) -> str:
    return reference.name if reference.python is None else f"{reference.name}={reference.python}"


class VtempoError(Exception):
    """A problem the user can fix: printed as one line by the CLI, never as a traceback.

    `str(error)` reads as Python (`frames=0: must be at least 1`); `parameters` are the names the
    message gives with `param`, in order, and `parameter` the first, the one the error is about."""

    @property
    def message(self) -> str:
        """The message with its references kept (for `render`, or to put it inside another error)."""
        return str(self.args[0]) if self.args else ""

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(match.group(1) for match in _REFERENCE.finditer(self.message))

    @property
    def parameter(self) -> Optional[str]:
        return next(iter(self.parameters), None)

    def render(self, name: Callable[[Reference], str]) -> str:
        """The message with each parameter written by `name` (the command line names its options)."""
        return _REFERENCE.sub(lambda match: name(Reference(*match.groups())), self.message)

    def __str__(self) -> str:
        return self.render(as_python)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class UsageError(VtempoError):
    """Bad arguments or options (exit code 2)."""
