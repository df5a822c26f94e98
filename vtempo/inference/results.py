"""One input's outcome (ranked labels or the reason it failed) and the writers of result files."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from vtempo.errors import UsageError, VtempoError, param
from vtempo.inference.sink import Sink
from vtempo.video import display_path

NOT_FINITE = "model output is not finite (NaN or infinite scores)"


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    prob: float


@dataclass
class VideoResult:
    """One input's outcome: top-k predictions, or the reason it failed.

    A result whose probabilities are not finite numbers is a failure (NOT_FINITE), however it was made:
    a NaN is no prediction, and it is not valid JSON either."""

    path: Path
    top: list[Prediction] = field(default_factory=list)
    error: str | None = None
    num_frames: int | None = None  # frames that decode
    header_frames: int | None = None  # frames the container claims
    fps: float | None = None
    backend: str | None = None
    views: int = 0
    warning: str | None = None
    detail: str | None = None  # a decoder's own words behind `error`, for the record

    def __post_init__(self) -> None:
        if self.error is None and not all(math.isfinite(p.prob) for p in self.top):
            self.top, self.error = [], NOT_FINITE

    @classmethod
    def from_scores(
        cls,
        path: str | os.PathLike,
        item: Mapping[str, Any],
        scores: Any,
        *,
        average: str,
        labels: Sequence[str],
        topk: int,
    ) -> VideoResult:
        """The result for one input, from what decoding it gave (`item`: error and detail, or
        num_frames, header_frames, fps, backend, warning) and its views' logits (a (views, classes)
        tensor, or a list of them). Views combine as the protocol says: `average` "logits" (mean of
        logits, then softmax) or "prob" (mean of softmaxes). Logits that are NaN or infinite make the
        result a failure (NOT_FINITE)."""
        info = dict(num_frames=item.get("num_frames"), header_frames=item.get("header_frames"),
                    backend=item.get("backend"))
        if item.get("error") is not None:
            return cls(Path(path), error=item["error"], detail=item.get("detail"), **info)
        if isinstance(scores, (list, tuple)):
            # here, not at the top: `vtempo --help` imports this module
            import torch

            scores = torch.cat(list(scores))
        logits = scores.float()
        if not bool(logits.isfinite().all()):
            return cls(Path(path), error=NOT_FINITE, views=len(logits), **info)
        probs = logits.softmax(-1).mean(0) if average == "prob" else logits.mean(0).softmax(-1)
        values, indices = probs.topk(min(topk, len(labels)))
        top = [Prediction(labels[i], int(i), float(v)) for v, i in zip(values.tolist(), indices.tolist())]
        return cls(Path(path), top, None, fps=item.get("fps"), views=len(logits), warning=item.get("warning"), **info)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": display_path(self.path)}
        if data["path"] != str(self.path):  # bytes that are not UTF-8: the real name, for --resume
            data["path_bytes"] = os.fsencode(self.path).hex()
        data["status"] = "ok" if self.ok else "error"
        if self.ok:
            data["top"] = [{"label": p.label, "index": p.index, "prob": round(p.prob, 6)} for p in self.top]
            data.update(num_frames=self.num_frames, header_frames=self.header_frames, fps=self.fps,
                        backend=self.backend, views=self.views)
            if self.warning:
                data["warning"] = self.warning
        else:
            data["error"] = self.error
            if self.detail:
                data["detail"] = self.detail
        return data


class ResultWriter:
    """Results to .jsonl (a line per result), .csv (a row per result) or .json (one document, a result
    a line), through a `Sink` (`vtempo.inference.sink`): into `<path>.part`, flushed as each result
    comes, renamed over `path` at close; an existing file at `path` stays whole until then. After an
    interruption (`close(complete=False)`, or leaving a `with` block by an exception) the finished
    results replace it all the same, as a well-formed file; only when there are none is the old file
    kept (and the empty part removed). A write error is one line naming the file and the part that
    holds the results so far.

    `provenance` (`Recognizer.provenance()`: model, weights' sha256, frames, views, dtype, vtempo
    version) goes into every JSONL line as `provenance`, into the JSON document beside `results`, and
    into CSV columns of their own after the result's.
    """

    FORMATS = (".jsonl", ".json", ".csv")
    PART_SUFFIX = ".part"

    def __init__(self, path: str | os.PathLike, topk: int, provenance: dict[str, Any] | None = None):
        self.path, self.topk = Path(path), topk
        self.provenance = dict(provenance or {})
        self.kind = self.path.suffix.lower()
        if self.kind not in self.FORMATS:
            raise UsageError(f"{param('output', display_path(self.path))}: the name must end in .jsonl, .json or .csv")
        self.sink = Sink(self.path)
        self.part = self.sink.part
        self._begin()

    @property
    def count(self) -> int:
        return self.sink.records

    def _begin(self) -> None:
        if self.kind == ".csv":
            ranks = [f"top{r}_{part}" for r in range(1, self.topk + 1) for part in ("label", "prob")]
            self._row(["path", "status", *ranks, "num_frames", "header_frames", "backend", "error", *self.provenance])
        elif self.kind == ".json":
            if self.provenance:
                self.sink.write('{"provenance": ' + json.dumps(self.provenance, ensure_ascii=False) + ',\n"results": ')
            self.sink.write("[")

    def _row(self, row: list[Any]) -> None:
        text = io.StringIO(newline="")
        csv.writer(text).writerow(row)
        self.sink.write(text.getvalue())

    def write(self, result: VideoResult) -> None:
        data = result.to_dict()
        if self.kind == ".jsonl" and self.provenance:
            data["provenance"] = self.provenance
        if self.kind == ".csv":
            ranks: list[Any] = []
            for rank in range(self.topk):
                p = result.top[rank] if rank < len(result.top) else None
                ranks += [p.label, f"{p.prob:.6f}"] if p else ["", ""]
            self._row([data["path"], data["status"], *ranks, result.num_frames or "", result.header_frames or "",
                       result.backend or "", result.error or "",
                       *("" if v is None else v for v in self.provenance.values())])
        else:
            line = json.dumps(data, ensure_ascii=False, allow_nan=False)
            self.sink.write(line + "\n" if self.kind == ".jsonl" else ("," if self.count else "") + "\n  " + line)
        self.sink.records += 1

    def close(self, complete: bool = True) -> None:
        """Finish the file and put it in place (see the class notes for `complete=False`)."""
        if self.sink.handle.closed:
            return
        if self.kind == ".json" and not self.sink.failed:
            try:
                self.sink.write("\n]" if self.count else "]")
                self.sink.write("}\n" if self.provenance else "\n")
            except VtempoError:
                self.sink.close()
                raise
        self.sink.close(complete)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(complete=exc_type is None)
