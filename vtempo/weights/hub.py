"""From a registry entry to a verified checkpoint file: bundled, cached, downloaded or imported.

The cache lives in `registry.home()` ($VTEMPO_HOME, else the platform cache dir):

    checkpoints/<file>        a checkpoint ready to load: the published file as downloaded (verified), or
                              a hand-downloaded file converted to the vtempo format by `import_file`
    checkpoints/<file>.json   its record: source URL or path, the source's sha256 and size, the file's size
    downloads/<file>.part     a partial download, resumed with an HTTP Range request (+ .part.json)
    downloads/<file>.lock     held by the process downloading or importing <file>

`<file>` comes from the registry (`weights.filename`, else `<entry name>.pth`), never from the server.
A file is "cached" only when its record matches the registry (the source's sha256 starts with the
registry's hash, or, for entries without a hash, the file came from the registry's URL or an import)
and its size is the recorded one. Only http(s) URLs are fetched, redirects included; a download is
checked against the registry's size and hash before it is moved into place, and deleted on mismatch.
A download the registry gives no hash for must load as a checkpoint (weights-only) to be kept.
A user entry whose url is a local path is used where it is (checked against size and hash), not copied.

The server is not trusted: a download stops at the registry's `size` (else at DOWNLOAD_MAX_BYTES),
fails over when it stalls (under DOWNLOAD_MIN_BYTES_PER_S over DOWNLOAD_STALL_WINDOW_S) and gives up
at DOWNLOAD_DEADLINE_S; see vtempo.limits for the defaults and how to raise them. Progress
goes to a `progress(bytes_done, bytes_total | None)` callback; notices (retries, waiting for another
process) go to the `vtempo.weights.hub` logger.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from filelock import FileLock, Timeout

from vtempo import __version__, limits
from vtempo.errors import UsageError, VtempoError
from vtempo.paths import home
from vtempo.weights.registry import ModelEntry, is_remote

OFFLINE_VARIABLE = "VTEMPO_OFFLINE"
RETRIES = 4  # further attempts after network errors, timeouts, 5xx, 408 and 429 answers
BACKOFF_S = 1.0  # wait before retry k: BACKOFF_S * 2**k
CHUNK = 1 << 20
STATES = ("bundled", "cached", "local file", "downloadable", "manual download", "none published")

Progress = Callable[[int, "int | None"], None]  # progress(bytes_done, bytes_total or None when unknown)
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ where things are


def cache_dir() -> Path:
    return home() / "checkpoints"


def cache_path(entry: ModelEntry) -> Path:
    """Where the entry's checkpoint is cached; the name comes from the registry only."""
    return cache_dir() / _file_name(entry)


def _file_name(entry: ModelEntry) -> str:
    return (entry.weights and entry.weights.filename) or f"{entry.name}.pth"


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _part_path(entry: ModelEntry) -> Path:
    return home() / "downloads" / (_file_name(entry) + ".part")


def bundled_path(entry: ModelEntry) -> Path:
    assert entry.weights is not None and entry.weights.bundled is not None
    return Path(str(resources.files("vtempo.weights") / "bundled" / entry.weights.bundled))


def offline() -> bool:
    return os.environ.get(OFFLINE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


# ------------------------------------------------------------------------------------------ state and lookup


def cache_state(entry: ModelEntry) -> str:
    """One of STATES: where this entry's weights are, or would come from."""
    weights = entry.weights
    if weights is None:
        return "none published"
    if weights.bundled:
        return "bundled"
    if weights.url and not is_remote(weights.url):
        return "local file"
    if cached_file(entry) is not None:
        return "cached"
    return "downloadable" if weights.url else "manual download"


def cached_file(entry: ModelEntry) -> Path | None:
    """The cached checkpoint if its record matches the registry entry and its size is intact."""
    path = cache_path(entry)
    record = _read_json(_record_path(path))
    if record is None or entry.weights is None or not path.is_file():
        return None
    if path.stat().st_size != record.get("size"):
        return None
    expected = entry.weights.sha256
    if expected:
        matches = str(record.get("source_sha256", "")).startswith(expected.lower())
    else:
        matches = bool(record.get("imported")) or record.get("source") == entry.weights.url
    return path if matches else None


# Set by the command line so that downloads made on first use (classify, cam, evaluate, train ...)
# draw its progress bar: a function of the entry's name giving a context manager that yields a
# `Progress` callback. The library itself prints nothing.
first_use_progress: Callable[[str], ContextManager[Progress]] | None = None


def weights_path(entry: ModelEntry, progress: Progress | None = None) -> Path:
    """A local checkpoint for the entry: bundled, cached, a local file, or downloaded now.

    Downloads happen on first use unless VTEMPO_OFFLINE=1 (reporting to `progress`, see `download`);
    otherwise the error names the URL and how to supply the file by hand.
    """
    weights = entry.weights
    if weights is None:
        raise UsageError(none_published(entry))
    if weights.bundled:
        path = bundled_path(entry)
        if not path.is_file():
            raise VtempoError(f"{entry.name}: the bundled weights {path} are missing; reinstall vtempo")
        return path
    if weights.url and not is_remote(weights.url):
        return _local_file(entry, Path(weights.url))
    cached = cached_file(entry)
    if cached is not None:
        return _intact(entry, _not_a_page(entry, cached))
    if weights.url and not offline():
        if progress is None and first_use_progress is not None:
            with first_use_progress(entry.name) as shown:
                return download(entry, progress=shown)
        return download(entry, progress=progress)
    raise VtempoError(how_to_supply(entry))


def _not_a_page(entry: ModelEntry, cached: Path) -> Path:
    """The cached file, unless it is a web page (saved by a download from before checks existed)."""
    # here, not at the top: it imports torch, and every command imports this module before it runs
    from vtempo.weights.checkpoint import text_kind

    kind = text_kind(cached)
    if kind is not None:
        raise VtempoError(
            f"{entry.name}: the cached {cached} is {kind}, not a checkpoint (a login or error page saved in its "
            f"place?); fetch it again with `vtempo download {entry.name} --force`"
        )
    return cached


def _intact(entry: ModelEntry, cached: Path) -> Path:
    """The cached file, unless its sha256 is no longer the one recorded when it was stored (the
    download's, checked against the registry then; an import's converted file)."""
    record = _read_json(_record_path(cached)) or {}
    expected = record.get("sha256") if record.get("imported") else record.get("source_sha256")
    if not isinstance(expected, str) or not expected:
        return cached  # an import recorded before the converted file's hash was kept
    digest = sha256_file(cached)
    if digest != expected.lower():
        again = (f"`vtempo download {entry.name} --from-file {record.get('source')}`" if record.get("imported")
                 else f"`vtempo download {entry.name} --force`")
        raise VtempoError(f"{entry.name}: the cached {cached} has changed since it was stored (sha256 {digest[:16]}…, "
                          f"expected {expected.lower()[:16]}…); fetch it again with {again}")
    return cached


def none_published(entry: ModelEntry) -> str:
    return (
        f"{entry.name}: no weights are published for it; build the architecture ({entry.arch}) and "
        f"train it, or pass your own checkpoint"
    )


def how_to_supply(entry: ModelEntry) -> str:
    weights = entry.weights
    assert weights is not None
    command = f"`vtempo download {entry.name} --from-file PATH`"
    if weights.url:
        return (
            f"{entry.name}: not cached and {OFFLINE_VARIABLE}=1 forbids downloading {weights.url}; "
            f"fetch that file elsewhere and run {command}"
        )
    return f"{entry.name}: download the checkpoint by hand from {weights.manual_url}, then run {command}"


def _local_file(entry: ModelEntry, path: Path) -> Path:
    """A user entry's local checkpoint, checked against the entry's size and hash."""
    if not path.is_file():
        raise VtempoError(f"{entry.name}: the registered checkpoint {path} does not exist")
    _verify(entry, path, f"{path}", delete=False)
    return path


# ------------------------------------------------------------------------------------------ verification


_digests: dict[tuple, str] = {}  # (path, inode, size, mtime) → sha256: a file checked at load is not hashed again


def sha256_file(path: Path) -> str:
    info = os.stat(path)
    key = (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key in _digests:
        return _digests[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    _digests[key] = digest.hexdigest()
    return _digests[key]


def _verify(entry: ModelEntry, path: Path, what: str, delete: bool) -> str:
    """Check size and sha256 (full or prefix) against the registry; returns the full sha256."""
    weights = entry.weights
    assert weights is not None
    size = path.stat().st_size
    problem = None
    if weights.size is not None and size != weights.size:
        problem = f"{what} has {size} bytes, the registry expects {weights.size}"
    digest = sha256_file(path) if problem is None else ""
    if problem is None and weights.sha256 and not digest.startswith(weights.sha256.lower()):
        problem = f"{what} has sha256 {digest}, the registry expects {weights.sha256.lower()}"
    if problem is not None:
        if delete:
            path.unlink(missing_ok=True)
            problem += "; the download was deleted"
        raise VtempoError(f"{entry.name}: {problem}")
    return digest


# ------------------------------------------------------------------------------------------ downloading


def download(entry: ModelEntry, force: bool = False, progress: Progress | None = None) -> Path:
    """Fetch the entry's checkpoint into the cache (unless cached and not `force`) and return its path.

    Resumes a partial download, retries with backoff, verifies size and hash (and, when the registry
    has no hash, that the file loads as a checkpoint), then renames into place. Another process
    downloading the same file is waited for rather than raced. `progress(bytes_done, bytes_total)` is
    called as data arrives (bytes_total None while the size is unknown).
    """
    weights = entry.weights
    if weights is None:
        raise UsageError(none_published(entry))
    if weights.bundled or (weights.url and not is_remote(weights.url)):
        return weights_path(entry)  # nothing to download
    if not weights.url:
        raise VtempoError(how_to_supply(entry))
    if not force and (cached := cached_file(entry)) is not None:
        return cached
    if offline():
        raise VtempoError(how_to_supply(entry))
    part = _part_path(entry)
    with _lock(part.with_suffix(".lock"), entry.name):
        if not force and (cached := cached_file(entry)) is not None:
            return cached  # another process finished it while we waited
        if force:
            _discard(part)
        _fetch(entry, weights.url, part, progress)
        _discard(part, keep_data=True)  # complete: its resume state is done with
        digest = _verify(entry, part, f"the download from {weights.url}", delete=True)
        if not weights.sha256:
            _check_loads(entry, part, weights.url)
        if len(weights.sha256 or "") < 64:
            known = "a prefix of its hash" if weights.sha256 else "no hash"
            log.warning("%s: the registry has %s; recorded the full sha256 %s", entry.name, known, digest)
        return _store(entry, part, {"source": weights.url, "source_sha256": digest, "source_size": part.stat().st_size})


def _check_loads(entry: ModelEntry, part: Path, url: str) -> None:
    """Delete and refuse a download that no hash vouches for unless it loads as a checkpoint."""
    from vtempo.weights.checkpoint import read_state

    try:
        read_state(part)
    except VtempoError as error:
        part.unlink(missing_ok=True)
        reason = str(error).removeprefix(f"{part}: ")
        raise VtempoError(f"{entry.name}: the download from {url} is not a usable checkpoint ({reason}); nothing kept") from None


def _one_line(text: Any, most: int = 200) -> str:
    return " ".join(str(text).split())[:most]


class _Retry(Exception):
    """A failure worth another attempt (network error, timeout, 5xx, truncated body)."""


class _RefusedRedirect(urllib.error.URLError):
    pass


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib alone would follow ftp), never from https down to http."""

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001 - urllib's signature
        target = urllib.parse.urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
        downgrade = req.full_url.lower().startswith("https:") and not target.lower().startswith("https:")
        if not is_remote(target) or downgrade:
            fp.close()
            raise _RefusedRedirect(f"refused redirect from {req.full_url} to {target}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_opener = urllib.request.build_opener(_HttpOnlyRedirects)


def _fetch(entry: ModelEntry, url: str, part: Path, progress: Progress | None) -> None:
    """Download `url` into `part`, resuming what is there; returns once `part` holds the whole body."""
    part.parent.mkdir(parents=True, exist_ok=True)
    state_path = part.with_name(part.name + ".json")
    state = _read_json(state_path) or {}
    if state.get("url") != url:  # a partial file from another URL is worthless
        _discard(part)
        state = {"url": url}
    hint = f"to supply the file yourself: `vtempo download {entry.name} --from-file PATH`"
    deadline = time.monotonic() + limits.get("DOWNLOAD_DEADLINE_S")
    reason = "no attempt made"
    for attempt in range(RETRIES + 1):
        _check_deadline(entry, url, deadline)
        try:
            return _fetch_once(entry, url, part, state, state_path, progress, deadline)
        except _Retry as why:
            reason = str(why)
        except _RefusedRedirect as refused:
            raise VtempoError(f"{entry.name}: {refused.reason} (only http(s) is followed); {hint}") from None
        except urllib.error.HTTPError as error:
            if error.code in (408, 429) or error.code >= 500:
                reason = f"HTTP {error.code} {_one_line(error.reason)}"
            elif 300 <= error.code < 400:  # urllib gives up on a loop or after 10 redirects
                raise VtempoError(f"{entry.name}: {url} redirects in a loop (HTTP {error.code}); {hint}") from None
            else:
                raise VtempoError(
                    f"{entry.name}: {url} answered HTTP {error.code} {_one_line(error.reason)}; {hint}"
                ) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, socket.gaierror):  # no DNS: offline, retrying will not help
                raise VtempoError(f"{entry.name}: cannot reach {url} ({_one_line(error.reason)}); {hint}") from None
            timed_out = isinstance(error.reason, (TimeoutError, socket.timeout))
            reason = _timeout_reason() if timed_out else _one_line(error.reason)
        except (TimeoutError, socket.timeout):
            reason = _timeout_reason()
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            reason = _one_line(f"{type(error).__name__}: {error}").rstrip(": ")
        if attempt < RETRIES:
            log.warning("%s: %s; retrying", entry.name, reason)
            time.sleep(max(0.0, min(BACKOFF_S * 2**attempt, deadline - time.monotonic())))
    raise VtempoError(f"{entry.name}: download from {url} failed after {RETRIES + 1} attempts ({reason}); {hint}")


def _check_deadline(entry: ModelEntry, url: str, deadline: float) -> None:
    if time.monotonic() > deadline:
        raise VtempoError(
            f"{entry.name}: the download from {url} took longer than {limits.shown(limits.get('DOWNLOAD_DEADLINE_S'))} s "
            f"({limits.hint('DOWNLOAD_DEADLINE_S')}); what arrived is kept and the next run resumes it"
        )


def _timeout_reason() -> str:
    return f"no answer within {limits.shown(limits.get('DOWNLOAD_TIMEOUT_S'))} s (timed out)"


def _fetch_once(
    entry: ModelEntry, url: str, part: Path, state: dict[str, Any], state_path: Path, progress: Progress | None,
    deadline: float,
) -> None:
    """One HTTP request that leaves `part` complete, or raises (_Retry for failures worth retrying)."""
    expected = entry.weights.size if entry.weights else None
    most = expected if expected is not None else limits.get("DOWNLOAD_MAX_BYTES")
    offset = part.stat().st_size if part.exists() else 0
    total = state.get("total") or expected
    if total is not None and offset == total:
        return
    if (total is not None and offset > total) or offset > most:
        _discard(part)
        offset = 0
    headers = {"User-Agent": f"vtempo/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state.get("validator"):
            headers["If-Range"] = state["validator"]
    request = urllib.request.Request(url, headers=headers)
    timeout = max(0.01, min(limits.get("DOWNLOAD_TIMEOUT_S"), deadline - time.monotonic()))
    try:
        response = _opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416:
            raise
        # Range not satisfiable: the partial file is already whole, or longer than the file is now.
        whole = _content_range_total(error.headers.get("Content-Range"))
        if whole is not None and whole == offset:
            state["total"] = whole
            _write_json(state_path, state)
            return
        _discard(part)
        raise _Retry("the partial download did not match the server's file; starting over") from None
    with response:
        if response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                _discard(part)
                raise _Retry(f"the server resumed at byte {start}, not {offset}; starting over")
            total = _content_range_total(response.headers.get("Content-Range"))
            mode = "ab"
        else:
            offset = 0  # a full answer (the server ignores ranges, or the file changed)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        if expected is not None and total is not None and total != expected:
            _discard(part)
            raise VtempoError(f"{entry.name}: the server offers {total} bytes, the registry expects {expected}; nothing kept")
        if total is not None and total > most:
            _discard(part)
            raise VtempoError(f"{entry.name}: {_too_large(url, total)}; nothing kept")
        state.update(total=total, validator=response.headers.get("ETag") or response.headers.get("Last-Modified"))
        _write_json(state_path, state)
        written = _receive(entry, url, response, part, mode, offset, total, most, progress, deadline)
    if total is not None and written < total:
        raise _Retry(f"connection closed after {written} of {total} bytes")
    if total is None:
        state["total"] = written
        _write_json(state_path, state)


def _receive(
    entry: ModelEntry, url: str, response: Any, part: Path, mode: str, offset: int, total: int | None, most: int,
    progress: Progress | None, deadline: float,
) -> int:
    """Append the body to `part`, never past `most` bytes, failing a stalled or overdue transfer."""
    window_s, min_rate = limits.get("DOWNLOAD_STALL_WINDOW_S"), limits.get("DOWNLOAD_MIN_BYTES_PER_S")
    written = offset
    window_start, window_bytes = time.monotonic(), written
    if progress:
        progress(written, total)
    with open(part, mode) as out:
        while True:
            try:
                # read1: at most one read from the socket, so a server trickling bytes cannot hold this
                # loop inside one call; one byte past `most` shows the body is longer than allowed.
                block = response.read1(min(CHUNK, most - written + 1))
            except http.client.IncompleteRead as incomplete:
                out.write(incomplete.partial[: max(0, most - written)])
                written += len(incomplete.partial)
                raise _Retry(f"connection closed after {written} of {total} bytes") from None
            if not block:
                return written
            if written + len(block) > most:
                out.close()
                _discard(part)
                expected = entry.weights.size if entry.weights else None
                if expected is not None:
                    raise VtempoError(
                        f"{entry.name}: {url} sends more than the {expected} bytes the registry expects; nothing kept"
                    )
                raise VtempoError(f"{entry.name}: {_too_large(url, None)}; nothing kept")
            out.write(block)
            written += len(block)
            if progress:
                progress(written, total)
            now = time.monotonic()
            _check_deadline(entry, url, deadline)
            if now - window_start >= window_s:
                if (written - window_bytes) < min_rate * (now - window_start):
                    raise _Retry(
                        f"stalled: {written - window_bytes} bytes in {now - window_start:.0f} s, under "
                        f"{min_rate:g} bytes/s ({limits.hint('DOWNLOAD_MIN_BYTES_PER_S')})"
                    )
                window_start, window_bytes = now, written


def _too_large(url: str, size: int | None) -> str:
    most = limits.get("DOWNLOAD_MAX_BYTES")
    offered = f"offers {size} bytes" if size is not None else f"sends more than {most} bytes"
    return (
        f"{url} {offered}, more than the {most} allowed without a size in the registry "
        f"(add `size:` to the entry, or {limits.hint('DOWNLOAD_MAX_BYTES')})"
    )


def _content_range_start(value: str | None) -> int | None:
    """'bytes 100-199/200' → 100."""
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _content_range_total(value: str | None) -> int | None:
    """'bytes 100-199/200' or 'bytes */200' → 200 (None when absent or '*')."""
    try:
        return int(value.rsplit("/", 1)[1]) if value else None
    except (IndexError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ importing


def import_file(entry: ModelEntry, path: str | os.PathLike) -> Path:
    """Verify a hand-downloaded checkpoint, convert it to the vtempo format and cache it under the entry.

    The file must fit the entry's architecture, class count and clip length (every tensor placed).
    A file failing the registry's size or hash is refused and left where it is.
    """
    from vtempo.weights.checkpoint import convert_file

    weights = entry.weights
    if weights is None:
        raise VtempoError(f"{none_published(entry)}; register your file in a user registry instead")
    if weights.bundled:
        raise VtempoError(f"{entry.name}: its weights ship with vtempo; there is nothing to import")
    source = Path(path).expanduser()
    if not source.is_file():
        raise VtempoError(f"{source}: no such file")
    digest = _verify(entry, source, str(source), delete=False)
    target = cache_path(entry)
    with _lock(_part_path(entry).with_suffix(".lock"), entry.name):
        target.parent.mkdir(parents=True, exist_ok=True)
        converted = target.with_name(f".{target.name}.{os.getpid()}.import")
        try:
            written = convert_file(source, converted, arch=entry.arch, frames=entry.frames)
            if written["num_classes"] != entry.num_classes:
                raise VtempoError(
                    f"{source}: a {written['num_classes']}-class checkpoint, but {entry.name} has "
                    f"{entry.num_classes} classes; not imported"
                )
            record = {
                "source": str(source.resolve()),
                "source_sha256": digest,
                "source_size": source.stat().st_size,
                "source_layout": written["layout"],
                "imported": True,
                "sha256": sha256_file(converted),
            }
            return _store(entry, converted, record)
        finally:
            converted.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ storing


def _store(entry: ModelEntry, file: Path, record: dict[str, Any]) -> Path:
    """Move a verified file into the cache under the entry's name, then write its record."""
    target = cache_path(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    record_path = _record_path(target)
    record_path.unlink(missing_ok=True)  # the old record must not vouch for the new file
    staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.move(str(file), staged)  # a rename within one file system, else a copy
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
    record.update(
        name=entry.name,
        size=target.stat().st_size,
        stored=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    _write_json(record_path, record)
    return target


def _discard(part: Path, keep_data: bool = False) -> None:
    """Forget a partial download (its resume state; its data too unless `keep_data`)."""
    part.with_name(part.name + ".json").unlink(missing_ok=True)
    if not keep_data:
        part.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staged.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(staged, path)


# ------------------------------------------------------------------------------------------ locking


@contextlib.contextmanager
def _lock(path: Path, name: str) -> Iterator[None]:
    """An exclusive inter-process lock on `path` (filelock); a wait for another process is logged once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.warning("%s: waiting for another vtempo process using %s", name, path.name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
