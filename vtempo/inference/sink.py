"""Where a batch run's results go: one rule for every file it writes.

- The output is a regular file or nothing yet: a symbolic link, a folder, a device, a FIFO or a socket
  at its name is refused (`check_target`), so `--overwrite` replaces only what it names and `--resume`
  never blocks on a pipe.
- The folder takes a file before any work starts (`check_writable`): a read-only folder, a name under
  a file or a file-size limit fails the run at once, not after the videos are decoded.
- One run at a time per output: a `Sink` holds a lock beside it (`.NAME.lock`, `filelock`, removed
  when the run ends) while it writes, and a second run on the same output stops with one line (a
  usage error).
- A whole-file output is written into `NAME.part` beside it, flushed record by record (a killed
  process leaves its results there), fsynced and renamed over `NAME` when complete: an existing file
  stays whole until the new one is. An output that is appended to (`--resume`, a shard's part) is
  written in place from the end of its last complete record.
- A write error (disk full, a file-size limit, EFBIG) is one line naming the file and where the
  results so far are (`OutputError`); the part file is left for them, never removed.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator

from filelock import FileLock, Timeout

from vtempo.errors import UsageError, VtempoError, param
from vtempo.video import display_path

PART_SUFFIX = ".part"


class OutputError(VtempoError):
    """A result file could not be written; the message names it and where the results so far are."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def check_target(path: str | os.PathLike, parameter: str = "output") -> None:
    """Refuse an existing `path` (given as `parameter`) that is not a regular file (a link, even to one,
    included)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there (whether it can be written is `check_writable`'s question)
    except OSError as error:
        raise UsageError(f"{param(parameter, display_path(path))}: cannot be looked at ({_reason(error)})") from None
    if stat.S_ISREG(mode):
        return
    kind = ("a symbolic link (name the file itself: a link's target is never replaced)" if stat.S_ISLNK(mode)
            else "a folder" if stat.S_ISDIR(mode)
            else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise UsageError(f"{param(parameter, display_path(path))}: is {kind}; results go to a regular file")


def check_writable(path: str | os.PathLike, parameter: str = "output") -> None:
    """Make the folder of `path` and write a byte into a scratch file there, removed again: a one-line
    UsageError when that fails, so an output that cannot be written is found before the work."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        try:
            os.write(handle, b"\0")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        raise UsageError(f"{param(parameter, display_path(path))}: cannot write there ({_reason(error)})") from None


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


class OutputLock:
    """An exclusive hold on an output for one run (`filelock`, not waiting: a second run stops)."""

    def __init__(self, path: str | os.PathLike, parameter: str = "output"):
        self.path = Path(path)
        self._lock = FileLock(str(lock_path(self.path)), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise UsageError(f"{param(parameter, display_path(self.path))}: another run is writing it; wait for that "
                             f"run to end, or write to another {param(parameter)}") from None
        except OSError as error:
            raise UsageError(f"{param(parameter, display_path(self.path))}: cannot write there "
                             f"({_reason(error)})") from None

    def release(self) -> None:
        """Let go, leaving no lock file behind (removed while still held, so no run takes a lock on a
        file that is about to go)."""
        if self._lock.is_locked:
            with contextlib.suppress(OSError):
                os.unlink(self._lock.lock_file)
            self._lock.release()


class Sink:
    """One output file, written by the module's rule: a `.part` renamed over it at the end, or, with
    `append_at` (a byte offset), the file itself from there on (what lies beyond is cut away first).

    `write` takes text or bytes and flushes; `close(complete)` puts the file in place. After an
    interruption (`complete=False`) the results written so far replace the output all the same, as
    the caller's format finished them; only a sink without `records` keeps the old file. A write error
    raises `OutputError` and leaves the part file, named in the message. `part` names the part file
    when `NAME.part` is taken (by a format's own scratch file)."""

    def __init__(self, path: str | os.PathLike, *, parameter: str = "output", append_at: int | None = None,
                 part: str | os.PathLike | None = None):
        self.path, self.parameter = Path(path), parameter
        check_target(self.path, parameter)
        self.appending = append_at is not None
        self.part = (self.path if self.appending else Path(part) if part is not None
                     else self.path.with_name(self.path.name + PART_SUFFIX))
        self.records = 0  # counted by the format that writes them
        self.failed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"{param(parameter, display_path(self.path))}: cannot write there "
                             f"({_reason(error)})") from None
        self._lock = OutputLock(self.path, parameter)
        try:
            if self.appending and append_at:
                self.handle: IO[bytes] = open(self.path, "r+b")
                self.handle.truncate(append_at)
                self.handle.seek(append_at)
            else:
                self.handle = open(self.part, "wb")
        except OSError as error:
            self._lock.release()
            raise UsageError(f"{param(parameter, display_path(self.path))}: cannot write ({_reason(error)})") from None

    @property
    def where(self) -> str:
        """Where the results so far are, as a part of an error message (its parameter given by `param`)."""
        if self.appending:
            return f"the results so far are in {display_path(self.path)}, and {param('resume', True)} goes on from them"
        return f"the results so far are in {display_path(self.part)}"

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Writes to `handle` inside: an OSError becomes the sink's one-line OutputError."""
        try:
            yield
        except OSError as error:
            self.failed = True
            raise OutputError(f"{param(self.parameter, display_path(self.path))}: cannot write ({_reason(error)}); "
                              f"{self.where}", _reason(error)) from None

    def write(self, data: str | bytes) -> None:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        with self.guard():
            self.handle.write(raw)
            self.handle.flush()

    def close(self, complete: bool = True) -> None:
        """Flush, fsync and put the file in place (a no-op once closed). After a write error the part
        is closed and left where the error message said."""
        if self.handle.closed:
            return
        try:
            if self.failed:
                with contextlib.suppress(OSError):
                    self.handle.close()
                return
            with self.guard():
                self.handle.flush()
                os.fsync(self.handle.fileno())
                self.handle.close()
                if not self.appending:
                    if complete or self.records:
                        os.replace(self.part, self.path)
                    else:
                        os.unlink(self.part)
        finally:
            if not self.handle.closed:
                with contextlib.suppress(OSError):
                    self.handle.close()
            self._lock.release()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(complete=exc_type is None)


def write_file(path: str | os.PathLike, data: str | bytes, parameter: str = "output") -> Path:
    """`data` as the whole of the file at `path`, by this module's rule; returns the path."""
    with Sink(path, parameter=parameter) as sink:
        sink.write(data)
    return sink.path
