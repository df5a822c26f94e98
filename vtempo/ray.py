"""Classify videos on a Ray cluster with Ray Data (the optional extra `vtempo[ray]`).

    import ray, vtempo.ray
    records = vtempo.ray.classify(["/data/videos"], model="tsm-r50-k400", concurrency=4, num_gpus=1)
    records.write_parquet("s3://bucket/results")   # or iterate: records.iter_rows()

The pipeline is three Ray Data stages:

1. a Dataset of paths (`ray.data.from_items`, or a Dataset of the caller's with a `path` column);
2. a CPU stage (`map`, one task slot per core) that opens each video with vtempo's readers, picks the
   frames the model's test protocol asks for and makes its views (`decode_views`): only the sampled
   frames are decoded, never the whole video;
3. a model stage (`map_batches` with a callable class: an actor pool of `concurrency` actors, each
   loading the model once, with `num_gpus` each where the cluster has GPUs) that scores whole videos:
   the V views of a video are always in one batch and combine as the protocol says
   (`VideoResult.from_scores`).

Each output row is a record with the fields of the local engine's `VideoResult.to_dict()` (a fixed
schema: a field that record leaves out is null here) and the run's `provenance`. A file that fails
is a record with `status` "error", never a failed job. Ray retries lost work (tasks, and actors that
die: `max_restarts`, `max_task_retries`), so a record can come twice after a failure; `results`
drops the repeats by path.

Nothing in `vtempo` imports this module, and it imports ray only when used.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

from vtempo.errors import UsageError, param
from vtempo.inference.decoding import decode_views
from vtempo.inference.engine import Engine
from vtempo.inference.recognizer import at_least, load
from vtempo.inference.results import Prediction, VideoResult
from vtempo.inference.sharding import record_key
from vtempo.inference.sink import Sink
from vtempo.runtime import available_cores
from vtempo.video import display_path
from vtempo.video.discovery import FailedInput, collect_videos

__all__ = ["classify", "results", "to_result", "start", "require_ray", "RECORD_FIELDS", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'vtempo[ray]'"
# the record's fields in order: `VideoResult.to_dict()`'s, then the run's provenance
RECORD_FIELDS = ("path", "path_bytes", "status", "top", "num_frames", "header_frames", "fps", "backend", "views", "warning",
                 "error", "detail", "provenance")
_OK_ONLY = ("top", "num_frames", "header_frames", "fps", "backend", "views", "warning")


def require_ray():
    """The `ray` module with Ray Data, or a UsageError saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"the Ray engine needs Ray Data: {INSTALL_HINT}") from None
    return ray


def start(address: str | None = None, num_cpus: int | None = None):
    """Connect to the Ray cluster at `address` (`auto`, `HOST:PORT`, `ray://HOST:PORT`), or with None
    start a local one on this machine's cores (no dashboard, warnings only). A connection made
    before is kept."""
    ray = require_ray()
    if not ray.is_initialized():
        options: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
        if address is None:
            options.update(num_cpus=num_cpus or available_cores(), include_dashboard=False)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(f"{param('address', address)}: cannot connect to Ray ({first})") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


# ------------------------------------------------------------------------------------------ stages


def _path_rows(paths, recursive: bool) -> list[dict[str, Any]]:
    rows = []
    for video in collect_videos(paths, recursive):
        failed = video.reason if isinstance(video, FailedInput) else None
        rows.append({"path": display_path(video), "source": os.fsencode(video), "failed": failed})
    return rows


class _Decode:
    """The CPU stage: a path row → its views (float32 (V, T, 3, S, S)) and what decoding said."""

    def __init__(self, plan):
        self.plan, self.ready = plan, False

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if not self.ready:  # once per worker process: it decodes one file at a time, on one core
            cv2.setNumThreads(1)
            torch.set_num_threads(1)
            self.ready = True
        source = row.get("source")
        path = Path(os.fsdecode(source if source is not None else row["path"]))
        failed = row.get("failed")
        item = decode_views(FailedInput(path, failed) if failed else path, self.plan)
        views = item.pop("views")
        shape = (0, self.plan.frames, 3, self.plan.preprocess.input_size, self.plan.preprocess.input_size)
        array = views.numpy() if views is not None else np.zeros(shape, np.float32)
        return {"path": row["path"], "source": source, "item": json.dumps(item), "views": array}


class _Score:
    """The model stage: an actor that loads the model once and scores batches of whole videos."""

    def __init__(self, load_options: dict[str, Any], provenance: dict[str, Any], topk: int, batch_size: int,
                 threads: int | None):
        self.recognizer = load(**load_options)
        if self.recognizer.device.type == "cpu":  # Ray gives an actor one thread per CPU it reserves
            torch.set_num_threads(threads or available_cores())
        self.provenance, self.topk, self.batch_size = provenance, topk, batch_size

    def __call__(self, batch: dict[str, Any]):
        import pyarrow as pa

        recognizer = self.recognizer
        engine = Engine(recognizer.model, recognizer.device, recognizer.dtype, self.batch_size)
        items = [json.loads(text) for text in batch["item"]]

        def views():
            for item, array in zip(items, batch["views"]):
                yield item, (torch.from_numpy(array) if item.get("error") is None and len(array) else None)

        records = []
        sources = batch["source"] if "source" in batch else [None] * len(items)
        for (item, logits), path, source in zip(engine.scores(views(), None), batch["path"], sources):
            real = os.fsdecode(bytes(source)) if source is not None else path
            result = VideoResult.from_scores(real, item, logits, average=recognizer.protocol.average,
                                             labels=recognizer.labels, topk=self.topk)
            records.append(_row(result.to_dict(), self.provenance))
        return pa.Table.from_pylist(records, schema=_schema(self.provenance))


def _row(record: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    row = {name: record.get(name) for name in RECORD_FIELDS}
    row["path"] = record["path"]  # as the local engine writes it: undecodable bytes shown as \xNN
    row["top"] = record.get("top", [])
    row["provenance"] = provenance
    return row


def _schema(provenance: dict[str, Any]):
    import pyarrow as pa

    top = pa.list_(pa.struct([("label", pa.string()), ("index", pa.int64()), ("prob", pa.float64())]))
    setup = pa.struct([(key, pa.int64() if isinstance(value, int) else pa.string()) for key, value in provenance.items()])
    return pa.schema([("path", pa.string()), ("path_bytes", pa.string()), ("status", pa.string()), ("top", top), ("num_frames", pa.int64()),
                      ("header_frames", pa.int64()), ("fps", pa.float64()), ("backend", pa.string()),
                      ("views", pa.int64()), ("warning", pa.string()), ("error", pa.string()),
                      ("detail", pa.string()), ("provenance", setup)])


def record_schema(provenance: dict[str, Any]):
    """The pyarrow schema of the records (`RECORD_FIELDS`) for a run with this provenance."""
    return _schema(provenance)


# ---------------------------------------------------------------------------------------------- API


def classify(
    paths: Sequence[str | os.PathLike] | str | os.PathLike | Any,
    model: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    registry: str | os.PathLike | None = None,
    labels: str | os.PathLike | Sequence[str] | None = None,
    frames: int | None = None,
    dtype: str = "fp32",
    views: str | None = None,
    topk: int = 5,
    batch_size: int = 8,
    concurrency: int | tuple[int, int] = 1,
    num_gpus: float | None = None,
    model_threads: int | None = None,
    decode_cpus: float = 0.5,
    backend: str = "auto",
    recursive: bool = False,
):
    """Classify videos on the Ray cluster this process is connected to (`start`, or `ray.init`; a local
    one is started when there is none): a `ray.data.Dataset` of records (`RECORD_FIELDS`), lazy like
    any Dataset, in no particular order.

    paths: files, frame folders or folders of them (as `vtempo.classify`), or a Dataset with a `path`
    column. The model (model, weights, registry, labels, frames, dtype fp32/bf16/fp16) is loaded here
    first, so a missing checkpoint fails at once, and again once per actor: weights and label files
    must be readable on the cluster's nodes at the same paths. `batch_size`: clips per model call (an
    actor's batch holds whole videos, `batch_size // views` of them, at least one). `concurrency`:
    model actors (n, or (min, max) to autoscale). `num_gpus`: GPUs per actor (default: 1 when the
    cluster has GPUs, else 0, CPU). `model_threads`: torch threads per CPU actor (default: the cores
    of the node it runs on). `decode_cpus`: CPUs each decoding task reserves; below the model stage's
    1 Ray keeps decoding in tasks of its own, running beside the actors, instead of fusing it into
    them, where each batch would be decoded and then scored in turn. `backend`: the video reader
    (auto, pyav, sequential, opencv, ...).
    """
    ray = require_ray()
    at_least("topk", topk, 1)
    at_least("batch_size", batch_size, 1)
    if dtype == "int8":
        raise UsageError(f"{param('dtype', 'int8')} runs on the local engine (quantized on calibration clips); "
                         "the Ray engine runs fp32, bf16 or fp16")
    if not ray.is_initialized():
        start()
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    device = "cuda" if num_gpus else "cpu"
    if isinstance(labels, (str, os.PathLike)):
        labels = Path(labels).read_text(encoding="utf-8").splitlines()
        labels = [line.strip() for line in labels if line.strip()]
    options = dict(model=model, weights=weights, registry=registry, dtype=dtype, frames=frames, labels=labels)
    recognizer = load(**options, device="cpu")
    plan = recognizer.plan(views, backend)
    topk = min(topk, len(recognizer.labels))
    provenance = recognizer.provenance(views)
    if isinstance(paths, ray.data.Dataset):
        dataset = paths
    else:
        rows = _path_rows([paths] if isinstance(paths, (str, os.PathLike)) else list(paths), recursive)
        if not rows:
            raise UsageError("no videos found" + ("" if recursive else " (recursive=True searches subfolders)"))
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), 200))
    # Ray Data's defaults retry what a lost worker or node was doing: tasks without limit
    # (max_retries=-1), model actors restarted (max_restarts=-1) and their batches resubmitted
    # (max_task_retries=-1)
    decoded = dataset.map(_Decode(plan), num_cpus=decode_cpus)
    pool = (ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
            if isinstance(concurrency, tuple) else ray.data.ActorPoolStrategy(size=concurrency))
    return decoded.map_batches(
        _Score,
        fn_constructor_kwargs=dict(load_options={**options, "device": device}, provenance=provenance, topk=topk,
                                   batch_size=batch_size, threads=model_threads),
        batch_size=max(1, batch_size // plan.views),
        batch_format="numpy",
        compute=pool,
        num_gpus=num_gpus,
        num_cpus=1,
    )


def to_result(row: dict[str, Any]) -> VideoResult:
    """The `VideoResult` a record stands for (`to_result(r).to_dict()` is the local engine's record)."""
    error = row.get("error")
    top = row.get("top")
    top = [] if error is not None or top is None else [Prediction(p["label"], int(p["index"]), float(p["prob"])) for p in top]
    result = VideoResult(Path(record_key(row)), top, error, row.get("num_frames"), row.get("header_frames"), row.get("fps"),
                         row.get("backend"), int(row.get("views") or 0), row.get("warning"), row.get("detail"))
    return result


def results(dataset, skip: Iterable[str] = ()) -> Iterator[VideoResult]:
    """The records of `dataset` as `VideoResult`s, streamed as Ray produces them, each path once:
    a record that a retry produced again, or one of a path in `skip`, is dropped. Paths are compared
    as the files' real names (`path_bytes` where a name is not UTF-8), not as printed."""
    seen = set(skip)
    for row in dataset.iter_rows():
        key = record_key(row)
        if key in seen:
            continue
        seen.add(key)
        yield to_result(row)


# ---------------------------------------------------------------------------------------------- CLI


def check_options(*, dtype: str, compile: str, workers: int | None, shard: str | None) -> None:
    """`vtempo classify --engine ray`: Ray Data is there, and no option of the local engine's alone."""
    require_ray()
    if dtype == "int8":
        raise UsageError(f"{param('dtype', 'int8')} runs on the local engine; {param('engine', 'ray')} runs fp32, "
                         f"bf16 or fp16")
    if compile != "off":
        raise UsageError(f"{param('compile')} is for the local engine; {param('engine', 'ray')} runs the model as it "
                         f"loads")
    if workers is not None:
        raise UsageError(f"{param('workers')} is for the local engine; {param('engine', 'ray')} decodes in Ray tasks, "
                         f"a CPU each")
    if shard is not None:
        raise UsageError(f"{param('shard')} is for the local engine; {param('engine', 'ray')} spreads the inputs over "
                         f"the cluster itself")


def classify_run(paths: Sequence[str | os.PathLike], address: str | None, *, device: str = "auto",
                 **options: Any) -> Iterator[VideoResult]:
    """The CLI's Ray run: join (or start) the cluster, classify `paths` there (`classify`'s options;
    `device` cpu runs the actors on CPUs, cuda on a GPU each, auto on GPUs where the cluster has
    them) and stream the results, each path once (`results`)."""
    start(address)
    num_gpus = 0 if str(device) == "cpu" else 1 if str(device).startswith("cuda") else None
    return results(classify(paths, num_gpus=num_gpus, **options))


class ParquetWriter:
    """Writes records (`RECORD_FIELDS`) to a Parquet file, in row groups as they come, through a `Sink`
    (`vtempo.inference.sink`, as `ResultWriter` does): into `<path>.part`, renamed over `path` at close;
    a write error is one line naming the file. (A part cut short by a kill is not readable Parquet.)"""

    ROWS = 1024  # records per row group

    def __init__(self, path: str | os.PathLike, provenance: dict[str, Any]):
        import pyarrow.parquet as pq

        self.path, self.provenance, self.schema = Path(path), provenance, _schema(provenance)
        self.sink = Sink(self.path)
        self.part = self.sink.part
        self.rows: list[dict[str, Any]] = []
        try:
            with self.sink.guard():
                self._writer = pq.ParquetWriter(self.sink.handle, self.schema)
        except BaseException:
            self.sink.close(complete=False)
            raise

    @property
    def count(self) -> int:
        return self.sink.records

    def write(self, result: VideoResult) -> None:
        self.rows.append(_row(result.to_dict(), self.provenance))
        self.sink.records += 1
        if len(self.rows) >= self.ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            with self.sink.guard():
                self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
                self.sink.handle.flush()
            self.rows = []

    def close(self, complete: bool = True) -> None:
        if self._writer is None:
            return
        try:
            if not self.sink.failed:
                self._flush()
                with self.sink.guard():
                    self._writer.close()
        finally:
            self._writer = None
            self.sink.close(complete)
