"""Long batch runs over many files: split the inputs into shards, resume after a crash, merge the parts.

Nothing here schedules work. Each process takes its share of the inputs from what launched it:

- `--shard K/N`, explicit, for any launcher (one machine per shard, a loop in a shell script, ...);
- `--shard auto`: K and N from a SLURM job array (SLURM_ARRAY_TASK_ID, _COUNT, _MIN, _STEP), or
  `--shard auto/N` with K from a Kubernetes indexed job (JOB_COMPLETION_INDEX; Kubernetes does not give
  N, so it is written in the flag);
- torchrun (RANK, WORLD_SIZE, LOCAL_RANK): no flag; `vtempo.distributed.start` joins the process group,
  rank K of N takes shard K/N on its own GPU (cuda:LOCAL_RANK) and rank 0 merges the parts at the end.

Shards are balanced by bytes, not by file count (`shard_files`). A sharded process writes its own part,
`STEM.part-K-of-N.jsonl` beside the output `STEM.jsonl` (the part keeps the .jsonl ending, so any JSON
Lines reader opens it, and its name says which shard of how many it holds). Each record in a part
carries `"input": i`, its position in the full input list, so `merge_parts` can restore input order and
check that every input appears exactly once without seeing the inputs again; the merged file drops the
field and so reads like the output of a one-process run.

A JSON Lines output is appended to as results come, a flushed line each. `--resume` reads what is
there (`read_finished`), cuts away a last line that a crash left incomplete, skips the inputs that
already have a record (a failure is a record too) and appends the rest. Without `--resume` an existing
output is never overwritten or mixed into: the run stops unless `--overwrite` says to start again.
"""
from __future__ import annotations

import heapq
import json
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from vtempo import limits
from vtempo.errors import UsageError, VtempoError, param
from vtempo.inference.sink import PART_SUFFIX, OutputLock, Sink, check_target
from vtempo.video import display_path

RANKS_TIMEOUT = timedelta(days=7)  # torchrun ranks of a long run wait this long for each other at the end
Final = Callable[[dict], bool]  # whether a record is an input's last (None: every record is)
PART_NAME = re.compile(r"(?P<stem>.*)\.part-(?P<index>\d+)-of-(?P<count>\d+)\.jsonl")


def input_key(path: str | os.PathLike) -> str:
    """What names an input in `--resume`: its real file name (bytes that are not UTF-8 kept, as
    surrogates), so a name with a raw byte and one with that byte's `\\xNN` escape are two inputs."""
    return os.fsdecode(os.fsencode(path))


def name_fields(path: str | os.PathLike, key: str = "path") -> dict[str, str]:
    """The record field `KEY_bytes` (the name's bytes in hex) for a name the printable `key` field
    cannot hold exactly (bytes that are not UTF-8), else nothing."""
    return {} if display_path(path) == str(path) else {f"{key}_bytes": os.fsencode(path).hex()}


def record_key(record: Mapping[str, Any], key: str = "path") -> str:
    """The `input_key` of the input a record is about (`KEY_bytes` when it has one, else `key`)."""
    raw = record.get(f"{key}_bytes")
    if isinstance(raw, str):
        try:
            return os.fsdecode(bytes.fromhex(raw))
        except ValueError:
            pass
    return record[key]


# ---------------------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UsageError(f"{param('shard', str(self))}: the shard count must be at least 1")
        if self.count > limits.get("MAX_SHARDS"):
            raise UsageError(f"{param('shard', str(self))}: more than {limits.get('MAX_SHARDS')} shards "
                             f"({limits.hint('MAX_SHARDS')})")
        if not 0 <= self.index < self.count:
            raise UsageError(f"{param('shard', str(self))}: K must be 0..{self.count - 1} (shards are numbered from 0)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def part(self, output: str | os.PathLike) -> Path:
        """Where this shard writes its results: `STEM.part-K-of-N.jsonl` beside `output`."""
        output = Path(output)
        return output.with_name(f"{output.stem}.part-{self.index}-of-{self.count}.jsonl")


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> Shard:
    """`K/N` (shard K of N, K in 0..N-1); `auto` (a SLURM job array's task); `auto/N` (task K from a
    SLURM array or a Kubernetes indexed job's JOB_COMPLETION_INDEX, N as written)."""
    environ = os.environ if environ is None else environ
    match = re.fullmatch(r"\s*(\d+|auto)\s*(?:/\s*(\d+)\s*)?", text or "")
    if not match or (match.group(1) != "auto" and match.group(2) is None):
        raise UsageError(f"{param('shard')} must be K/N (shard K of N, from 0), auto or auto/N, got {text!r}")
    count = int(match.group(2)) if match.group(2) is not None else None
    if match.group(1) != "auto":
        return Shard(int(match.group(1)), count)
    return _shard_from_environment(environ, count)


def _shard_from_environment(environ: Mapping[str, str], count: int | None) -> Shard:
    def number(name: str, default: int | None = None) -> int:
        raw = environ.get(name)
        if raw is None and default is not None:
            return default
        try:
            return int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UsageError(f"{param('shard', 'auto')}: {name}={raw!r} is not a whole number") from None

    if "SLURM_ARRAY_TASK_ID" in environ:
        task, first = number("SLURM_ARRAY_TASK_ID"), number("SLURM_ARRAY_TASK_MIN", 0)
        step, tasks = number("SLURM_ARRAY_TASK_STEP", 1), number("SLURM_ARRAY_TASK_COUNT")
        if step < 1 or (task - first) % step:
            raise UsageError(f"{param('shard', 'auto')}: SLURM array task {task} is not on the array's steps "
                             f"(min {first}, step {step}); use --array=A-B[:S] or an explicit "
                             f"{param('shard', text='K/N')}")
        if count is not None and count != tasks:
            raise UsageError(f"{param('shard', f'auto/{count}')}: the SLURM array has {tasks} tasks")
        return Shard((task - first) // step, tasks)
    if "JOB_COMPLETION_INDEX" in environ:
        if count is None:
            raise UsageError(f"{param('shard', 'auto')}: a Kubernetes indexed job does not say how many shards there "
                             f"are; pass {param('shard', text='auto/N')} with N the job's completions")
        return Shard(number("JOB_COMPLETION_INDEX"), count)
    raise UsageError(f"{param('shard', 'auto')}: no SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX in the environment; "
                     f"pass {param('shard', text='K/N')} (under torchrun leave {param('shard')} out: each rank "
                     f"takes its share)")


def input_size(path: str | os.PathLike) -> int:
    """Bytes to decode for one input: a file's size, a frame folder's files summed; 0 when unreadable
    (the input is then reported as failed, quickly)."""
    try:
        if not os.path.isdir(path):
            return os.stat(path).st_size
        total = 0
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file():
                    total += entry.stat().st_size
        return total
    except OSError:
        return 0


def shard_files(paths: Sequence[Any], index: int, count: int, sizes: Sequence[int] | None = None) -> list:
    """The inputs of shard `index` of `count`, in input order (`sizes`: their sizes, when known).

    Every input lands in exactly one shard, the same one on every machine that sees the same files:
    inputs go, largest first (ties by path, then position), to the shard with the fewest bytes so far
    (ties: fewest files, then lowest shard number), the greedy longest-processing-time rule, which
    keeps every shard within one largest file of the ideal share.
    """
    return [paths[i] for i in shard_positions(paths, index, count, sizes)]


def shard_positions(paths: Sequence[Any], index: int, count: int, sizes: Sequence[int] | None = None) -> list[int]:
    """Like `shard_files`, but the positions of the shard's inputs in `paths`."""
    shard = Shard(index, count)
    sizes = [input_size(path) for path in paths] if sizes is None else list(sizes)
    if len(sizes) != len(paths):
        raise ValueError(f"{len(sizes)} sizes for {len(paths)} inputs")
    order = sorted(range(len(paths)), key=lambda i: (-sizes[i], display_path(paths[i]), i))
    loads = [(0, 0, k) for k in range(count)]  # (bytes, files, shard): already a heap
    mine: list[int] = []
    for i in order:
        size, files, k = heapq.heappop(loads)
        if k == shard.index:
            mine.append(i)
        heapq.heappush(loads, (size + sizes[i], files + 1, k))
    return sorted(mine)


# ---------------------------------------------------------------------------------------------- resume


def read_finished(path: str | os.PathLike, key: str = "path", final: Final | None = None) -> tuple[set[str], int]:
    """(the inputs that have a record in the JSON Lines file `path`, the byte offset just past its last
    complete record). A last line without its newline, or not valid JSON, is what a crash leaves: it is
    left out (appending starts at the offset, over it). A bad line before the last one is an error.

    `key` is the field that names the input. Outputs with several records per input (windows, then a
    summary) pass `final`, which tells an input's last record: an input is finished once that is
    written, and the records after the last final one (an input cut off midway) are left out too."""
    finished: set[str] = set()
    offset = 0  # past the last final record
    read = 0  # past the last line read
    cut: tuple[int, str] | None = None  # (line number, reason) of a bad line, if any
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if cut is not None:
                    raise VtempoError(f"{display_path(path)}: line {cut[0]} {cut[1]}, and more follow: "
                                      f"not a file this program appended to; pass {param('overwrite', True)} to start "
                                      f"again")
                if not line.endswith(b"\n"):
                    cut = (number, "is cut short")
                    continue
                read += len(line)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    cut = (number, "is not JSON")
                    continue
                if not isinstance(record, dict) or not isinstance(record.get(key), str):
                    raise VtempoError(f"{display_path(path)}: line {number} is not a result record (no \"{key}\")")
                if final is None or final(record):
                    finished.add(record_key(record, key))
                    offset = read
    except OSError as error:
        raise VtempoError(f"{display_path(path)}: cannot read ({error.strerror or error})") from None
    return finished, offset


class JsonlAppender:
    """Appends records to a JSON Lines file from `offset` on (what lies beyond is cut away first), one
    flushed line per record, so a killed process leaves at most its last line incomplete: a `Sink`
    (`vtempo.inference.sink`) in place, holding the output's lock while it is open."""

    def __init__(self, path: str | os.PathLike, offset: int = 0):
        self.path = Path(path)
        self.sink = Sink(self.path, append_at=offset)

    def write(self, record: dict[str, Any]) -> None:
        try:
            line = json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"
        except ValueError:
            raise VtempoError(f"{record.get('path')}: its result holds a number JSON cannot (NaN or infinity)") from None
        self.sink.write(line)
        self.sink.records += 1

    def close(self) -> None:
        self.sink.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _setup(provenance: Any) -> dict[str, Any] | None:
    """What must match for results to be mixed: the provenance less the vtempo version."""
    return {k: v for k, v in provenance.items() if k != "vtempo"} if isinstance(provenance, dict) else None


def _setup_difference(recorded: dict[str, Any], current: dict[str, Any], there: str = "there", here: str = "here") -> str:
    key = next(k for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k))
    return f"{key} {recorded.get(key)} {there}, {current.get(key)} {here}"


def check_same_setup(path: str | os.PathLike, provenance: dict[str, Any] | None) -> None:
    """Refuse to add results to a file whose records another model or protocol made (the `provenance`
    of the first record that has one, against this run's)."""
    current = _setup(provenance)
    if current is None:
        return
    with open(path, "rb") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            recorded = _setup(record.get("provenance")) if isinstance(record, dict) else None
            if recorded is None:
                continue
            if recorded != current:
                raise UsageError(f"{display_path(path)} holds results of another setup "
                                 f"({_setup_difference(recorded, current)}): resume with the same model and "
                                 f"options, write to another {param('output')}, or pass {param('overwrite', True)}")
            return


def check_output(path: str | os.PathLike, *, resume: bool, overwrite: bool, parameter: str = "output") -> None:
    """Refuse to overwrite or mix into an existing output unless told which, and an output that is not
    a regular file (a link, a FIFO, a device, a folder: `check_target`); `parameter` names the output."""
    if resume and overwrite:
        raise UsageError(f"{param('resume')} and {param('overwrite')} exclude each other: go on with the output, "
                         f"or start again")
    if not resume and not overwrite and os.path.lexists(path):
        raise UsageError(f"{display_path(path)} exists: pass {param('resume', True)} to go on with it, or "
                         f"{param('overwrite', True)} to start again")
    if resume and Path(path).suffix.lower() != ".jsonl":
        raise UsageError(f"{param('resume')} needs a .jsonl output (a line per result), got {display_path(path)}")
    check_target(path, parameter)


# ----------------------------------------------------------------------------------------------- merge


def part_files(output: str | os.PathLike) -> list[Path]:
    """The part files beside `output` (any shard count), sorted by name."""
    output = Path(output)
    folder = output.parent if str(output.parent) else Path(".")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(folder / name for name in names
                  if (match := PART_NAME.fullmatch(name)) and match.group("stem") == output.stem)


def _check_part_names(parts: Sequence[Path]) -> None:
    """When the parts are named `STEM.part-K-of-N.jsonl`, all N of one run must be there, each once."""
    matches = [PART_NAME.fullmatch(part.name) for part in parts]
    if not all(matches):
        return
    counts = {(m.group("stem"), int(m.group("count"))) for m in matches}  # type: ignore[union-attr]
    if len(counts) > 1:
        raise VtempoError("the parts come from different runs: " + ", ".join(
            f"{stem}.part-*-of-{count}.jsonl" for stem, count in sorted(counts)))
    (stem, count), = counts
    seen: dict[int, Path] = {}
    for part, match in zip(parts, matches):
        index = int(match.group("index"))  # type: ignore[union-attr]
        if index in seen:
            raise VtempoError(f"{display_path(part)} is given twice")
        seen[index] = part
    missing = [index for index in range(count) if index not in seen]
    if missing:
        raise VtempoError(f"part {missing[0]} of {count} is missing: {stem}.part-{missing[0]}-of-{count}.jsonl"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def _indexed_records(part: Path, k: int, key: str, final: Final | None) -> Iterator[tuple[int, int, int, dict[str, Any], bool]]:
    """(input index, `k`, line number, record, whether final) for each record of a part, checking the
    indices rise and each input's records end with a final one."""
    previous, previous_final, previous_name = -1, True, ""
    try:
        with open(part, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{display_path(part)}: line {number}"
                if not line.endswith(b"\n"):
                    raise VtempoError(f"{where} is cut short (the shard did not finish): run it again with "
                                      f"{param('resume', True)}")
                try:
                    record = json.loads(line)
                except ValueError:
                    raise VtempoError(f"{where} is not JSON") from None
                index = record.get("input") if isinstance(record, dict) else None
                if not isinstance(index, int) or not isinstance(record.get(key), str):
                    raise VtempoError(f"{where} has no \"input\" index and \"{key}\": not a part written by a sharded run")
                if index == previous and previous_final:
                    raise VtempoError(f"{record[key]} appears twice (input {index}, {where} and before it)")
                if index < previous:
                    raise VtempoError(f"{where}: input {index} after input {previous}, not in input order")
                if index > previous and not previous_final:
                    raise VtempoError(f"{previous_name} is incomplete in {display_path(part)}: run its shard again with "
                                      f"{param('resume', True)}")
                previous, previous_final, previous_name = index, final is None or final(record), record[key]
                yield index, k, number, record, previous_final
    except OSError as error:
        raise VtempoError(f"{display_path(part)}: cannot read ({error.strerror or error})") from None
    if not previous_final:
        raise VtempoError(f"{previous_name} is incomplete in {display_path(part)}: run its shard again with "
                          f"{param('resume', True)}")


def merge_parts(
    parts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    expected_inputs: Sequence[str | os.PathLike] | None = None,
    key: str = "path",
    final: Final | None = None,
) -> int:
    """Join part files into `out` in input order; returns the number of records (`key`, `final`: as
    for `read_finished`).

    Every input must appear exactly once: a duplicate, a gap in the input indices, or (with
    `expected_inputs`, the full input list) a missing input or one whose path differs is an error naming
    the file, and `out` is left as it was. Streams: memory does not grow with the number of records.
    `out` is replaced in one step (a temporary file beside it, then a rename).
    """
    parts = [Path(part) for part in parts]
    if not parts:
        raise UsageError("no part files to merge")
    _check_part_names(parts)
    expected = None if expected_inputs is None else [display_path(path) for path in expected_inputs]
    out = Path(out)
    temporary = out.with_name(f".{out.name}.merging")
    streams = [_indexed_records(part, k, key, final) for k, part in enumerate(parts)]
    written = 0
    last: tuple | None = None  # (input index, where, part, final, key, path) of the record written last
    first_setup: tuple[dict[str, Any] | None, str] | None = None  # (setup, where) of the first record
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            for index, k, number, record, is_final in heapq.merge(*streams, key=lambda item: item[:2]):
                path, where = record[key], f"{display_path(parts[k])} line {number}"
                if last is not None and index == last[0]:
                    if last[2] != k and last[4] != record_key(record, key):
                        raise VtempoError(f"input {index} is {last[5]} in {last[1]} but {path} in {where}: the shards "
                                          f"ran on different inputs (files added or removed between their runs); "
                                          f"run them again on the same inputs")
                    if last[2] != k:  # the same input in two parts (a part's own records were checked)
                        raise VtempoError(f"{path} appears twice (input {index}): {last[1]} and {where}")
                    last = (index, where, k, is_final, record_key(record, key), path)
                    handle.write(_merged_line(record))
                    written += 1
                    continue
                first_missing = 0 if last is None else last[0] + 1
                if index > first_missing:
                    name = expected[first_missing] if expected and first_missing < len(expected) else None
                    raise VtempoError(f"{name or f'input {first_missing}'} is missing from the parts"
                                      + ("" if name else f" (the inputs jump from {first_missing - 1} to {index})"))
                if expected is not None:
                    if index >= len(expected):
                        raise VtempoError(f"{display_path(parts[k])} line {number}: input {index} ({path}), "
                                          f"but there are {len(expected)} inputs")
                    if expected[index] != path:
                        raise VtempoError(f"{display_path(parts[k])} line {number}: input {index} is {path}, "
                                          f"expected {expected[index]} (were the inputs changed?)")
                setup = _setup(record.get("provenance"))
                if first_setup is None:
                    first_setup = (setup, f"{display_path(parts[k])} line {number}")
                elif setup != first_setup[0]:
                    difference = (_setup_difference(first_setup[0], setup, f"in {first_setup[1]}", f"in {where}")
                                  if first_setup[0] and setup else f"provenance in only one of {first_setup[1]} and {where}")
                    raise VtempoError(f"the parts come from different setups: {difference}")
                handle.write(_merged_line(record))
                written += 1
                last = (index, where, k, is_final, record_key(record, key), path)
        inputs = 0 if last is None else last[0] + 1
        if expected is not None and inputs < len(expected):
            raise VtempoError(f"{expected[inputs]} is missing from the parts"
                              + (f" (and {len(expected) - inputs - 1} more)" if len(expected) - inputs > 1 else ""))
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return written


def _merged_line(record: dict[str, Any]) -> bytes:
    """A part's record as the merged file has it: without its input index."""
    return json.dumps({k: v for k, v in record.items() if k != "input"}, ensure_ascii=False).encode("utf-8") + b"\n"


# --------------------------------------------------------------------------------------- a whole run


@dataclass
class ShardedRun:
    """What this process does in a long run over `inputs`: which inputs are its own and not yet done
    (`todo`, positions in `inputs`), and where their records go. Built by `start_run`."""

    inputs: list[Path]
    output: Path | None  # the file the user asked for
    target: Path | None  # the file this process appends to: `output`, or its part
    todo: list[int]
    done_before: int  # this process's inputs that a previous run finished
    shard: Shard | None
    ranks: Any  # vtempo.distributed.Ranks
    merge: bool = False  # rank 0 merges the parts at the end (torchrun)
    provenance: dict[str, Any] | None = None  # what made the results, recorded in each
    key: str = "path"  # the record field naming the input
    final: Final | None = None  # tells an input's last record, when it has several
    _writer: JsonlAppender | None = field(default=None, repr=False)

    @property
    def todo_paths(self) -> list[Path]:
        return [self.inputs[i] for i in self.todo]

    @property
    def writes(self) -> bool:
        """Whether `write` takes the records (a JSON Lines output); else the caller writes them."""
        return self._writer is not None

    def write(self, position: int, record: dict[str, Any]) -> None:
        """Append the record of `todo[position]`; a part's records carry their input index."""
        if self._writer is None:
            raise VtempoError("this run has no JSON Lines output to write to")
        name = name_fields(self.inputs[self.todo[position]], self.key)
        if name.keys() - record.keys():
            record = {self.key: record[self.key], **name, **{k: v for k, v in record.items() if k != self.key}}
        if self.shard is not None:
            record = {self.key: record[self.key], "input": self.todo[position],
                      **{k: v for k, v in record.items() if k != self.key}}
        if self.provenance:
            record = {**record, "provenance": self.provenance}
        self._writer.write(record)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def finish(self) -> int | None:
        """Close this process's output. Under torchrun, wait for every rank, and on rank 0 merge the parts
        into the output and delete them; returns the number of merged records there, else None."""
        # here, not at the top: it imports torch, and `vtempo --help` imports this module
        from vtempo import distributed

        self.close()
        if not self.ranks.distributed:
            return None
        distributed.barrier(self.ranks)
        merged, failure = None, ""
        if self.ranks.main and self.merge:
            parts = [Shard(k, self.ranks.world).part(self.output) for k in range(self.ranks.world)]
            try:
                merged = merge_parts(parts, self.output, self.inputs, self.key, self.final)
                for part in parts:
                    part.unlink(missing_ok=True)
            except VtempoError as error:
                failure = error.message  # its parameters kept, for the command line to name
        failure = distributed.all_gather_objects(failure, self.ranks)[0]  # every rank leaves together
        if failure:
            raise VtempoError(failure)
        return merged


def start_run(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike | None,
    *,
    shard: str | Shard | None = None,
    resume: bool = False,
    overwrite: bool = False,
    ranks: Any = None,
    provenance: dict[str, Any] | None = None,
    key: str = "path",
    final: Final | None = None,
) -> ShardedRun:
    """Decide this process's share of `inputs` and open where its results go.

    One process: `output` itself; with `resume` it is a .jsonl opened here to append to, else the caller
    writes it (`writes` is False: `ResultWriter` replaces the file when complete). With `shard` (K/N, auto, auto/N) or under torchrun (`ranks` from
    `vtempo.distributed.start` with world > 1): the part `STEM.part-K-of-N.jsonl`, and `output` must end
    in .jsonl. Checks the existing files first: nothing is overwritten without `overwrite`, and
    `resume` skips what is done, provided the same setup made it (`provenance`, written into every
    record: model, weights, frames, views, dtype). `key` and `final` describe the records as for
    `read_finished`; then each input's records go to `write` one after another, its final one last.
    """
    from vtempo import distributed

    inputs = [Path(path) for path in inputs]
    ranks = ranks if ranks is not None else distributed.Ranks(0, 1, None)  # type: ignore[arg-type]
    torchrun = ranks.distributed
    if torchrun and shard not in (None, "auto"):
        raise UsageError(f"{param('shard')} with torchrun: each rank already takes its share; leave {param('shard')} out")
    shard = Shard(ranks.rank, ranks.world) if torchrun else parse_shard(shard) if isinstance(shard, str) else shard
    if shard is not None and (output is None or Path(output).suffix.lower() != ".jsonl"):
        raise UsageError(f"a sharded run ({param('shard')} or torchrun) needs {param('output', text='FILE.jsonl')}: "
                         f"each shard writes a part of it")
    if output is None:
        if resume or overwrite:
            raise UsageError(f"{param('resume')} and {param('overwrite')} need {param('output', text='FILE.jsonl')}")
        return ShardedRun(inputs, None, None, list(range(len(inputs))), 0, None, ranks)
    output = Path(output)
    if shard is None:
        check_output(output, resume=resume, overwrite=overwrite)
        if not resume:
            return ShardedRun(inputs, output, output, list(range(len(inputs))), 0, None, ranks)
        _adopt_unfinished(output)
        target, mine = output, list(range(len(inputs)))
    else:
        target, mine = shard.part(output), shard_positions(inputs, shard.index, shard.count)
        _check_sharded_output(output, shard, resume=resume, overwrite=overwrite, torchrun=torchrun)
    finished_run = torchrun and resume and output.exists() and not part_files(output)
    # every rank looks at the files before any rank creates its part
    distributed.barrier(ranks)
    if finished_run:
        # a torchrun run that finished: its parts were merged into the output and deleted
        finished, _ = read_finished(output, key, final)
        check_same_setup(output, provenance)
        missing = [display_path(path) for path in inputs if input_key(path) not in finished]
        if missing:
            raise UsageError(f"{display_path(output)} holds a finished run without {missing[0]}"
                             + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                             + f": write to another {param('output')}, or pass {param('overwrite', True)}")
        return ShardedRun(inputs, output, None, [], len(mine), shard, ranks)
    finished, offset = set(), 0
    if resume and target.exists():
        finished, offset = read_finished(target, key, final)
        check_same_setup(target, provenance)
    todo = [i for i in mine if input_key(inputs[i]) not in finished]
    return ShardedRun(inputs, output, target, todo, len(mine) - len(todo), shard, ranks, merge=torchrun,
                      provenance=provenance, key=key, final=final, _writer=JsonlAppender(target, offset))


def _adopt_unfinished(output: Path) -> None:
    """A run without --resume that was killed outright left its results in `OUT.part` (`ResultWriter`
    renames it to OUT only when it closes): --resume takes them up from there."""
    unfinished = output.with_name(output.name + PART_SUFFIX)
    if not unfinished.exists():
        return
    lock = OutputLock(output)  # a part that a running run writes is not taken from it
    try:
        if output.exists():
            raise UsageError(f"{display_path(unfinished)} holds the results of a run that was cut off while replacing "
                             f"{display_path(output)}: keep one of the two (rename it to {display_path(output)}), then "
                             f"{param('resume', True)}")
        check_target(unfinished)
        os.replace(unfinished, output)
    finally:
        lock.release()


def _check_sharded_output(output: Path, shard: Shard, *, resume: bool, overwrite: bool, torchrun: bool) -> None:
    check_output(shard.part(output), resume=resume, overwrite=overwrite)
    others = [part for part in part_files(output) if not part.name.endswith(f"-of-{shard.count}.jsonl")]
    if others and not overwrite:
        raise UsageError(f"{display_path(others[0])} is from a run with another number of shards: "
                         f"resume that run with as many, merge it (`vtempo merge`), or pass {param('overwrite', True)}")
    if torchrun and not resume and not overwrite and output.exists():
        raise UsageError(f"{display_path(output)} exists: pass {param('resume', True)} to go on with it, or "
                         f"{param('overwrite', True)} to start again")
    if overwrite:
        for part in others:  # starting again: another shard count's parts would only be mixed in later
            part.unlink(missing_ok=True)
