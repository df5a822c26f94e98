"""One input's outcome (ranked labels or the reason it failed) and the writers of result files."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtempo.errors import UsageError
from vtempo.video import display_path


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    prob: float


@dataclass
class VideoResult:
    """One input's outcome: top-k predictions, or the reason it failed."""

    path: Path
    top: list[Prediction] = field(default_factory=list)
    error: str | None = None
    num_frames: int | None = None  # frames that decode
    header_frames: int | None = None  # frames the container claims
    fps: float | None = None
    backend: str | None = None
    views: int = 0
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": display_path(self.path), "status": "ok" if self.ok else "error"}
        if self.ok:
            data["top"] = [{"label": p.label, "index": p.index, "prob": round(p.prob, 6)} for p in self.top]
            data.update(num_frames=self.num_frames, header_frames=self.header_frames, fps=self.fps,
                        backend=self.backend, views=self.views)
            if self.warning:
                data["warning"] = self.warning
        else:
            data["error"] = self.error
        return data


class ResultWriter:
    """Writes results to .jsonl (a line per result, flushed as it comes), .csv (a row per result,
    likewise) or .json (one document, written when closed, also after an interruption).

    `provenance` (`Recognizer.provenance()`: model, weights' sha256, frames, views, dtype, vtempo
    version) goes into every JSONL line as `provenance`, into the JSON document beside `results`, and
    into CSV columns of their own after the result's."""

    FORMATS = (".jsonl", ".json", ".csv")

    def __init__(self, path: str | os.PathLike, topk: int, provenance: dict[str, Any] | None = None):
        self.path, self.topk = Path(path), topk
        self.provenance = dict(provenance or {})
        self.kind = self.path.suffix.lower()
        if self.kind not in self.FORMATS:
            raise UsageError(f"--output {display_path(self.path)}: the name must end in .jsonl, .json or .csv")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "w", encoding="utf-8", newline="")
        except OSError as error:
            raise UsageError(f"--output {display_path(self.path)}: cannot write ({error.strerror or error})") from None
        self._rows: list[dict[str, Any]] = []
        if self.kind == ".csv":
            import csv

            self._csv = csv.writer(self._handle)
            ranks = [f"top{r}_{part}" for r in range(1, topk + 1) for part in ("label", "prob")]
            self._csv.writerow(["path", "status", *ranks, "num_frames", "header_frames", "backend", "error",
                                *self.provenance])

    def write(self, result: VideoResult) -> None:
        import json

        data = result.to_dict()
        if self.kind == ".jsonl":
            if self.provenance:
                data["provenance"] = self.provenance
            self._handle.write(json.dumps(data, ensure_ascii=False) + "\n")
        elif self.kind == ".csv":
            ranks: list[Any] = []
            for rank in range(self.topk):
                p = result.top[rank] if rank < len(result.top) else None
                ranks += [p.label, f"{p.prob:.6f}"] if p else ["", ""]
            self._csv.writerow([data["path"], data["status"], *ranks, result.num_frames or "",
                                result.header_frames or "", result.backend or "", result.error or "",
                                *("" if v is None else v for v in self.provenance.values())])
        else:
            self._rows.append(data)
            return
        self._handle.flush()

    def close(self) -> None:
        import json

        if self._handle.closed:
            return
        if self.kind == ".json":
            document = {"provenance": self.provenance, "results": self._rows} if self.provenance else self._rows
            json.dump(document, self._handle, ensure_ascii=False, indent=2)
            self._handle.write("\n")
        self._handle.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
