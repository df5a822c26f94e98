"""Feature vectors of videos: the pooled features a model's classifier reads, written to disk.

    rows = embed(rec, paths)                        # one vector per video
    rows = embed(rec, paths, per_frame=True)        # one per sampled frame
    rows = embed(rec, paths, window=2.0, hop=1.0)   # one per 2-second window, every second

A video's vector is `model.features(views)` (V views × T frames × C channels) averaged over the views
and the frames: exactly what the model's head scores. Per frame, the average runs over the crops only
(one row per sampled frame of each clip); per window, the video is read once front to back with the
timeline's sliding windows (memory bounded by one window), each window one clip of T frames spread
over it (centre crop), averaged over its frames; windows are embedded in this process (no workers). Decoding runs in worker processes as in
`classify`; a file that fails gives an `EmbeddedVideo` with `error` set and no rows.

`EmbeddingWriter` streams the rows to a float32 .npy (with a .jsonl or .csv index beside it) or an
.npz holding both, in chunks, so memory stays flat however many videos there are.
"""
from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from vtempo.errors import UsageError, VtempoError, param
from vtempo.inference.classify import parse_views
from vtempo.inference.decoding import ViewPlan, decode_loader
from vtempo.inference.sharding import name_fields, record_key
from vtempo.inference.sink import OutputError, Sink, check_target
from vtempo.inference.timeline import check_seconds, frames_per_window, score_windows
from vtempo.protocol import CROPS
from vtempo.runtime import autocast
from vtempo.video import VideoError, display_path, open_video
from vtempo.video.sampling import clip_indices
from vtempo.video.sequential import SequentialVideo
from vtempo.video.transforms import make_views


@dataclass(frozen=True)
class EmbedPlan:
    """What a worker needs to cut a video into the clips to embed (picklable, no model)."""

    views: ViewPlan
    per_frame: bool = False


@dataclass
class EmbeddedVideo:
    path: Path
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (rows, D)
    rows: list[dict[str, Any]] = field(default_factory=list)  # per row: frame or window times
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def decode_clips(path: Path, plan: EmbedPlan) -> dict[str, Any]:
    """A video's clips as views (K·crops, T, 3, S, S) and what each clip is (frames or window times)."""
    item: dict[str, Any] = {"views": None, "error": None, "clips": []}
    views = plan.views
    try:
        with open_video(path, views.backend, views.max_side) as reader:
            clips, decoded = reader.sample(lambda count: clip_indices(views.protocol, count, views.frames, views.clips))
            item["clips"] = [{"frames": indices} for indices in clips]
            item["fps"] = reader.fps
        decoded = decoded.reshape(len(clips), views.frames, *decoded.shape[1:])
        item["views"] = torch.cat([make_views(clip, views.preprocess, views.crop) for clip in decoded])
    except VideoError as error:
        item["error"] = error.reason
    except Exception as error:  # noqa: BLE001 - one odd file must never end a batch
        item["error"] = f"unexpected {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return item


class _Clips(torch.utils.data.Dataset):
    def __init__(self, videos: Sequence[Path], plan: EmbedPlan):
        self.videos, self.plan = list(videos), plan

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_clips(self.videos[index], self.plan)


def embed(
    rec,
    videos: Sequence[str | os.PathLike],
    *,
    per_frame: bool = False,
    window: float | None = None,
    hop: float | None = None,
    views: str | None = None,
    batch_size: int = 8,
    workers: int = 0,
    normalize: bool = False,
) -> Iterator[EmbeddedVideo]:
    """Rows of feature vectors for each video, in input order. `rec`: a loaded model (`vtempo.load`)."""
    if batch_size < 1:
        raise UsageError(f"{param('batch_size')} must be at least 1")
    check_seconds(window=window, hop=hop)
    if hop is not None and window is None:
        raise UsageError(f"{param('hop')} needs {param('window')}")
    if per_frame and window is not None:
        raise UsageError(f"choose one of {param('per_frame')} and {param('window')}")
    if views is not None and window is not None:
        raise UsageError(f"{param('views')} does not apply to {param('window')}: each window is one clip, centre crop")
    paths = [Path(v) for v in videos]
    if window is not None:
        for path in paths:
            yield _embed_windows(rec, path, window, hop or window, batch_size, normalize)
        return
    clips, crop = parse_views(views) if views else (rec.protocol.clips, rec.protocol.crop)
    plan = EmbedPlan(ViewPlan(rec.frames, rec.protocol, clips, crop, rec.preprocess), per_frame)
    crops = CROPS[crop]
    for path, item in zip(paths, decode_loader(_Clips(paths, plan), workers)):
        if item["error"] is not None:
            yield EmbeddedVideo(path, error=item["error"])
            continue
        chunks = []
        with torch.inference_mode(), autocast(rec.device, rec.dtype):
            for start in range(0, len(item["views"]), batch_size):
                batch = item["views"][start : start + batch_size].to(rec.device)
                chunks.append(rec.model.features(batch).float().cpu())
        features = torch.cat(chunks)  # (K·crops, T, C), clip-major
        features = features.view(len(item["clips"]), crops, rec.frames, -1).mean(1)  # (K, T, C)
        fps = item.get("fps")
        if per_frame:
            vectors = features.flatten(0, 1)
            rows = [{"clip": k, "frame": f, **({"time": round(f / fps, 3)} if fps else {})}
                    for k, clip in enumerate(item["clips"]) for f in clip["frames"]]
        else:
            vectors = features.mean((0, 1), keepdim=True).squeeze(1)
            rows = [{}]
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        yield EmbeddedVideo(path, vectors.numpy().astype(np.float32, copy=False), rows)


def _embed_windows(rec, path: Path, window: float, hop: float, batch_size: int, normalize: bool) -> EmbeddedVideo:
    """One row per window, the video read once front to back: the timeline's sliding windows
    (`score_windows`), so only the frames of the earliest unfinished window are held, however long the
    video. Each window is one clip of the model's T frames spread over it, centre crop."""
    vectors, rows = [], []
    try:
        with SequentialVideo(path, rec.max_side) as source:
            if not source.fps:
                raise VideoError(path, "no frame rate in the file: windows in seconds cannot be placed")
            window_frames, hop_frames = frames_per_window(rec, source.fps, window, hop)
            for scored in score_windows(source, rec, window_frames, hop_frames, source.fps, topk=1,
                                        batch_size=batch_size, pooled=True):
                if scored.length < window_frames and scored.number:
                    continue  # the tail the full windows leave out: a window only when it is the whole video
                vectors.append(scored.features)
                rows.append({"start": round(scored.start, 3), "end": round(scored.end, 3)})
    except VideoError as error:
        return EmbeddedVideo(path, error=error.reason)
    except Exception as error:  # noqa: BLE001 - one odd file must never end a batch
        return EmbeddedVideo(path, error=f"unexpected {type(error).__name__}: {str(error).strip()[:200]}")
    stacked = torch.stack(vectors)
    if normalize:
        stacked = torch.nn.functional.normalize(stacked, dim=-1)
    return EmbeddedVideo(path, stacked.numpy().astype(np.float32, copy=False), rows)


class EmbeddingWriter:
    """Streams rows to `out`: .npy (float32 N×D) with an index file beside it (.jsonl, or .csv with
    `index=`), or .npz holding `embeddings` and `index` (one JSON object per row, as strings).

    Through `Sink`s (`vtempo.inference.sink`): the rows go into `OUT.part` and the index lines into
    the index file, each flushed as a video comes (what `--resume` goes on from); at close the .npy or
    .npz is written from the rows into a part of its own, fsynced and renamed over `out`. A write
    error is one line naming the file and where the rows so far are."""

    FORMATS = (".npy", ".npz")

    DIM_BYTES = 8  # the raw rows file begins with the vector length, so a resumed run can read it back

    def __init__(self, out: str | os.PathLike, describe: dict[str, Any], index: str | os.PathLike | None = None,
                 resume: bool = False):
        self.out = Path(out)
        if self.out.suffix.lower() not in self.FORMATS:
            raise UsageError(f"{param('out', out)}: the name must end in .npy or .npz")
        self.index_path = None if self.out.suffix.lower() == ".npz" else Path(index) if index else self.out.with_suffix(".jsonl")
        if self.index_path is not None and self.index_path.suffix.lower() not in (".jsonl", ".csv"):
            raise UsageError(f"{param('index', index)}: the name must end in .jsonl or .csv")
        self.describe = describe  # model, weights_sha256: on every index row
        self.raw_path = self.out.with_name(self.out.name + ".part")
        for path in (self.out, self.raw_path, self.index_path):
            if path is not None:
                check_target(path, "out")
        self.rows, self.dim = 0, None
        self.index_records: list[str] = []  # .npz only: the index goes into the archive at the end
        self.index = None
        self.csv_fields = None
        self.finished: set[str] = set()  # with `resume`: the inputs whose rows are already there
        # the final file: its part opened (and the output locked) now, filled at close
        self.final = Sink(self.out, parameter="out", part=self.out.with_name(f".{self.out.name}.writing"))
        try:
            keep, offset = self._resume() if resume else (0, 0)
            self.raw = Sink(self.raw_path, parameter="out", append_at=keep)
            if self.index_path is not None:
                self.index = Sink(self.index_path, parameter="index", append_at=offset)
                if self.index_path.suffix.lower() == ".csv":
                    self.csv_fields = ["row", "path", "clip", "frame", "time", "start", "end", "model", "weights_sha256"]
                    self._csv_row({name: name for name in self.csv_fields})
        except BaseException:
            self.final.close(complete=False)
            raise

    def _csv_row(self, record: dict[str, Any]) -> None:
        text = io.StringIO(newline="")
        csv.DictWriter(text, self.csv_fields, extrasaction="ignore").writerow(record)
        self.index.write(text.getvalue())

    def write(self, video: EmbeddedVideo, input: int | None = None) -> None:
        """Append a video's rows; `input`, the video's position among all inputs, goes into the index rows
        of a shard's part (`merge_embedding_parts` restores input order by it)."""
        if not video.ok or not len(video.rows):
            return
        if self.dim is None:
            self.dim = video.vectors.shape[1]
            self.raw.write(self.dim.to_bytes(self.DIM_BYTES, "little"))
        # the rows before their index lines: a crash leaves no index line without its row
        self.raw.write(np.ascontiguousarray(video.vectors, dtype="<f4").tobytes())
        position = {} if input is None else {"input": input}
        lines = []
        for extra in video.rows:
            record = {"row": self.rows, "path": display_path(video.path), **name_fields(video.path), **position,
                      **extra, **self.describe}
            self.rows += 1
            if self.csv_fields is not None:
                self._csv_row(record)
            elif self.index is not None:
                lines.append(json.dumps(record) + "\n")
            else:
                self.index_records.append(json.dumps(record))
        if lines:
            self.index.write("".join(lines))
        self.final.records += 1

    def _resume(self) -> tuple[int, int]:
        """Go on from what a run before left: the rows of a cut run (OUT.npy.part) or of a finished one
        (OUT.npy), and the index lines that have their rows. The last video in the index of a cut run may
        lack rows that a crash kept from its index, so it is dropped and done again. Returns (the bytes
        of the rows file to keep, the index's offset to go on from)."""
        if self.index_path is None or self.index_path.suffix.lower() != ".jsonl":
            raise UsageError(f"{param('resume')} needs {param('out', text='FILE.npy')} with a .jsonl index, got "
                             f"{display_path(self.out)}"
                             + (f" and {display_path(self.index_path)}" if self.index_path else ""))
        cut = True
        if not self.raw_path.exists() and self.out.exists():
            cut = False
            array = np.load(self.out, mmap_mode="r", allow_pickle=False)
            with self.raw_path.open("wb") as raw:
                if len(array):
                    raw.write(int(array.shape[1]).to_bytes(self.DIM_BYTES, "little"))
                for start in range(0, len(array), 4096):
                    raw.write(np.ascontiguousarray(array[start : start + 4096], dtype="<f4").tobytes())
            del array
        records, offsets = [], [0]  # offsets[i]: where index line i starts
        if self.index_path.exists():
            with self.index_path.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.endswith(b"\n"):
                        break  # cut by a crash
                    try:
                        record = json.loads(line)
                    except ValueError:
                        break
                    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
                        raise VtempoError(f"{display_path(self.index_path)}: line {number} is not an index row")
                    for key, value in self.describe.items():
                        if record.get(key) != value:
                            raise UsageError(f"{display_path(self.index_path)} holds rows of another model ({key} "
                                             f"{record.get(key)} there, {value} here): write to another "
                                             f"{param('out')}, or pass {param('overwrite', True)}")
                    records.append(record)
                    offsets.append(offsets[-1] + len(line))
        if cut and records:
            last = records[-1]["path"]
            while records and records[-1]["path"] == last:
                records.pop()
        raw_size = self.raw_path.stat().st_size if self.raw_path.exists() else 0
        if raw_size >= self.DIM_BYTES:
            with self.raw_path.open("rb") as raw:
                self.dim = int.from_bytes(raw.read(self.DIM_BYTES), "little")
        if records and not self.dim:
            raise VtempoError(f"{display_path(self.raw_path)} holds no rows for {display_path(self.index_path)}: "
                              f"pass {param('overwrite', True)} to start again")
        keep = self.DIM_BYTES + 4 * len(records) * self.dim if records and self.dim else 0
        if raw_size < keep:
            raise VtempoError(f"{display_path(self.raw_path)} holds fewer rows than {display_path(self.index_path)}: "
                              f"not the rows of that index; pass {param('overwrite', True)} to start again")
        if not keep:
            self.dim = None
        self.rows = len(records)
        self.finished = {record_key(record) for record in records}
        return keep, offsets[len(records)]

    def close(self, complete: bool = True) -> Path:
        """Write the .npy (or .npz) from the rows on disk, a chunk at a time; returns its path."""
        self.raw.close()
        if self.index is not None:
            self.index.close()
        shape = (self.rows, self.dim or 0)
        final = self.final
        if final.handle.closed:
            return self.out
        try:
            with final.guard():
                if self.out.suffix.lower() == ".npy":
                    self._copy_npy(final.handle, shape)
                else:
                    with zipfile.ZipFile(final.handle, "w", zipfile.ZIP_STORED) as archive:
                        with archive.open("embeddings.npy", "w", force_zip64=True) as out:
                            self._copy_npy(out, shape)
                        with archive.open("index.npy", "w") as out:
                            np.lib.format.write_array(out, np.array(self.index_records, dtype=str), allow_pickle=False)
        except OutputError as error:
            final.close(complete=False)
            final.part.unlink(missing_ok=True)
            raise OutputError(f"{param('out', display_path(self.out))}: cannot write ({error.reason}); the rows so far "
                              f"are in {display_path(self.raw_path)}" + (f" and {display_path(self.index_path)}"
                                                                         if self.index_path else "")
                              + f", and {param('resume', True)} goes on from them",
                              error.reason) from None
        except BaseException:
            final.close(complete=False)
            raise
        final.records = max(final.records, 1 if complete or self.rows else 0)
        final.close(complete)
        if final.path.exists() and not final.part.exists():
            self.raw_path.unlink(missing_ok=True)
        return self.out

    def _copy_npy(self, out, shape: tuple[int, int]) -> None:
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
        with self.raw_path.open("rb") as raw:
            raw.seek(self.DIM_BYTES if self.rows else 0)
            while chunk := raw.read(1 << 22):
                out.write(chunk)


# ------------------------------------------------------------------------------------------- shards


def embedding_part(out: str | os.PathLike, index: int, count: int) -> Path:
    """Where shard `index` of `count` writes its rows: `STEM.part-K-of-N.npy` beside `out` (its index
    is the .jsonl of the same name)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.part-{index}-of-{count}.npy")


def _part_index(part: Path) -> list[dict[str, Any]]:
    index = part.with_suffix(".jsonl")
    records = []
    try:
        with index.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{display_path(index)}: line {number}"
                try:
                    record = json.loads(line)
                except ValueError:
                    raise VtempoError(f"{where} is not JSON") from None
                if not isinstance(record, dict) or not isinstance(record.get("input"), int) or not isinstance(record.get("path"), str):
                    raise VtempoError(f"{where} has no \"input\" index and \"path\": not a part written by a sharded run")
                records.append(record)
    except OSError as error:
        raise VtempoError(f"{display_path(index)}: cannot read ({error.strerror or error}); "
                          f"a part's index is the .jsonl beside its .npy") from None
    return records


def merge_embedding_parts(
    parts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    expected_inputs: Sequence[str | os.PathLike] | None = None,
) -> int:
    """Join the .npy parts of a sharded `embed` run (each with its .jsonl index beside it) into `out`
    (.npy) and its index `OUT.jsonl`, rows in input order and renumbered, as one process writes them;
    returns the number of rows. An input in two parts, a part whose index and rows disagree, parts of
    different models, or (with `expected_inputs`) a path that is not the input at its position is an
    error naming the file, and nothing is written. Rows are copied one input at a time from the memory-
    mapped parts. Inputs that failed or gave no rows have no index rows, so a missing input cannot be
    told from a failed one."""
    parts = [Path(part) for part in parts]
    if not parts:
        raise UsageError("no part files to merge")
    out = Path(out)
    expected = None if expected_inputs is None else [display_path(path) for path in expected_inputs]
    arrays, indexes = [], []
    for part in parts:
        try:
            array = np.load(part, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise VtempoError(f"{display_path(part)}: not a .npy of rows ({error})") from None
        records = _part_index(part)
        if array.ndim != 2 or len(array) != len(records):
            raise VtempoError(f"{display_path(part)}: {array.shape[0] if array.ndim else 0} rows but "
                              f"{len(records)} in its index {display_path(part.with_suffix('.jsonl'))}")
        arrays.append(array)
        indexes.append(records)
    dims = {a.shape[1] for a, records in zip(arrays, indexes) if len(records)}
    if len(dims) > 1:
        raise VtempoError(f"the parts hold vectors of different lengths: {sorted(dims)}")
    setups = {(r.get("model"), r.get("weights_sha256")) for records in indexes for r in records}
    if len(setups) > 1:
        raise VtempoError("the parts come from different models: " + ", ".join(sorted(str(m) for m, _ in setups)))
    # (input, part, first row, rows) of each input, in input order
    spans: list[tuple[int, int, int, int]] = []
    for k, records in enumerate(indexes):
        for j, record in enumerate(records):
            if spans and spans[-1][1] == k and spans[-1][0] == record["input"] and spans[-1][2] + spans[-1][3] == j:
                spans[-1] = (*spans[-1][:3], spans[-1][3] + 1)
            else:
                spans.append((record["input"], k, j, 1))
    spans.sort()
    for previous, span in zip(spans, spans[1:]):
        if previous[0] == span[0]:
            path, before = indexes[span[1]][span[2]]["path"], indexes[previous[1]][previous[2]]["path"]
            if path != before:
                raise VtempoError(f"input {span[0]} is {before} in {display_path(parts[previous[1]])} but {path} in "
                                  f"{display_path(parts[span[1]])}: the shards ran on different inputs (files added "
                                  f"or removed between their runs); run them again on the same inputs")
            raise VtempoError(f"{path} appears twice (input {span[0]}): in {display_path(parts[previous[1]])} "
                              f"and {display_path(parts[span[1]])}")
    if expected is not None:
        for input, k, j, _ in spans:
            path = indexes[k][j]["path"]
            if input >= len(expected) or expected[input] != path:
                raise VtempoError(f"{display_path(parts[k].with_suffix('.jsonl'))}: input {input} is {path}, expected "
                                  + (expected[input] if input < len(expected) else f"at most {len(expected)} inputs")
                                  + " (were the inputs changed?)")
    rows = sum(span[3] for span in spans)
    dim = dims.pop() if dims else 0
    index = out.with_suffix(".jsonl")
    temporary, temporary_index = out.with_name(f".{out.name}.merging"), index.with_name(f".{index.name}.merging")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as handle, temporary_index.open("w", encoding="utf-8") as index_handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
            row = 0
            for _, k, j, count in spans:
                handle.write(np.ascontiguousarray(arrays[k][j : j + count], dtype="<f4").tobytes())
                for record in indexes[k][j : j + count]:
                    merged = {key: value for key, value in record.items() if key != "input"}
                    index_handle.write(json.dumps({**merged, "row": row}) + "\n")
                    row += 1
        os.replace(temporary, out)
        os.replace(temporary_index, index)
    except BaseException:
        temporary.unlink(missing_ok=True)
        temporary_index.unlink(missing_ok=True)
        raise
    return rows
