"""The lifecycle of a batch run over many inputs, the same for classify, timeline and embed.

    runner = BatchRunner(device)                      # joins torchrun's process group, if any
    run = runner.start(videos, output, shard=..., resume=..., overwrite=..., provenance=...,
                       writer=lambda run: ResultWriter(output, topk, provenance))
    with runner.writing():                            # Ctrl-C: what is done is kept, `Interrupted`
        for position, result in enumerate(results):
            runner.write(position, result)
    done, failed = runner.totals(done, failed)        # summed over torchrun's ranks
    runner.finish()                                   # rank 0 merges the ranks' parts

`start` decides this process's share of the inputs (`vtempo.inference.sharding.start_run`: shards,
torchrun ranks, `--resume`, `--overwrite`) and opens where its results go: a JSON Lines output that is
appended to (a shard's part, a resumed file), or a whole-file writer (`ResultWriter`,
`TimelineWriter`, `ParquetWriter`, `EmbeddingWriter`) that writes by the rule of
`vtempo.inference.sink`. Both lock the output, so a second run on it stops at once.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from vtempo.errors import VtempoError
from vtempo.inference.sharding import RANKS_TIMEOUT, ShardedRun, start_run


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during `BatchRunner.writing`; the results so far are kept (`where`), and with
    `resumable` a run with `resume` goes on from them."""

    def __init__(self, where: str, resumable: bool = False):
        super().__init__(where)
        self.where, self.resumable = where, resumable


class BatchRunner:
    """One batch run in this process (one of torchrun's ranks, or the only one)."""

    def __init__(self, device: str):
        # here, not at the top: it imports torch, and `vtempo --help` imports this module
        from vtempo import distributed

        self.ranks = distributed.start(device, timeout=RANKS_TIMEOUT)  # one process unless torchrun started this
        self.device = str(self.ranks.device) if self.ranks.distributed else device
        self.run: ShardedRun | None = None
        self.writer: Any = None
        self.output: Path | None = None
        self._record: Callable[[Any], dict] = lambda item: item

    @property
    def main(self) -> bool:
        return self.ranks.main

    def start(
        self,
        inputs: Sequence[str | os.PathLike],
        output: str | os.PathLike | None,
        *,
        shard: str | None = None,
        resume: bool = False,
        overwrite: bool = False,
        provenance: dict[str, Any] | None = None,
        key: str = "path",
        final: Callable[[dict], bool] | None = None,
        writer: Callable[[ShardedRun], Any] | None = None,
        record: Callable[[Any], dict] | None = None,
    ) -> ShardedRun:
        """This process's share of `inputs`, less what a run before finished, and where its results go.
        `writer(run)` makes the format's writer (called when there is an output); `record` turns
        what `write` is given into the JSON Lines record an appended output takes."""
        self.output = None if output is None else Path(output)
        self.run = start_run(inputs, output, shard=shard, resume=resume, overwrite=overwrite, ranks=self.ranks,
                             provenance=provenance, key=key, final=final)
        if record is not None:
            self._record = record
        try:
            self.writer = writer(self.run) if writer is not None and output is not None else None
        except BaseException:
            self.run.close()
            raise
        return self.run

    def write(self, position: int, item: Any) -> None:
        """The result of `run.todo[position]`: to the appended output, else to the writer."""
        if self.run.writes:
            self.run.write(position, self._record(item))
        elif self.writer is not None:
            self.writer.write(item)

    @property
    def where(self) -> str:
        """Where the results of this process are, for messages ('' without an output)."""
        if self.output is None:
            return ""
        if self.run is None:
            return str(self.output)
        return f"{self.run.target or self.output}"

    def close(self, complete: bool = True) -> None:
        try:
            if self.writer is not None:
                self.writer.close(complete)
        finally:
            if self.run is not None:
                self.run.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """The loop over the results: the output is closed when it ends, by the format's rule; Ctrl-C
        (KeyboardInterrupt) closes it with what is done and raises `Interrupted`."""
        try:
            yield
        except KeyboardInterrupt:
            self.close(complete=False)
            raise Interrupted(self.where, self.run is not None and self.run.writes) from None
        except BaseException:
            with contextlib.suppress(VtempoError):
                self.close(complete=False)
            raise
        self.close()

    def totals(self, *counts: int) -> list[int]:
        """`counts` summed over torchrun's ranks (as they are, in one process)."""
        from vtempo import distributed

        return [round(n) for n in distributed.all_sum(list(counts), self.ranks)]

    def finish(self) -> int | None:
        """Under torchrun: wait for every rank; rank 0 merges the parts into the output (the number
        of records merged there, else None)."""
        return self.run.finish() if self.run is not None else None

    def merge_ranks(self, merge: Callable[[], Any]) -> Any:
        """Under torchrun: wait for every rank, run `merge` on rank 0 (the parts into the output); a
        VtempoError there is raised on every rank, so all leave together. Returns what `merge` gave
        on rank 0, else None."""
        from vtempo import distributed

        if not self.ranks.distributed:
            return None
        distributed.barrier(self.ranks)
        merged, failure = None, ""
        if self.ranks.main:
            try:
                merged = merge()
            except VtempoError as error:
                failure = error.message  # its parameters kept, for the command line to name
        failure = distributed.all_gather_objects(failure, self.ranks)[0]
        if failure:
            raise VtempoError(failure)
        return merged

    def summary_target(self) -> Path | None:
        """The file the user's results are in once the run is finished."""
        if self.output is None:
            return None
        return self.output if self.run.shard is None or self.ranks.distributed else self.run.target
