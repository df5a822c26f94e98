"""Long runs over many files: shards balanced by size, resume after a crash, merging the parts, and the
commands that use them (one process, several shards, torchrun ranks)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import videogen
from vtempo.cli import app
from vtempo.errors import UsageError, VtempoError
from vtempo.inference.sharding import (
    JsonlAppender,
    Shard,
    input_size,
    merge_parts,
    parse_shard,
    read_finished,
    shard_files,
    start_run,
)


def run_cli(args: list[str]):
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, args, catch_exceptions=False)


def iter_records(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def one_line(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message


@pytest.fixture
def sized_files(tmp_path) -> list[Path]:
    """Files whose sizes differ a lot: a few big ones, many small, a frame folder, a missing file."""
    rng = random.Random(0)
    paths = []
    for i in range(30):
        path = tmp_path / f"v{i:02d}.mp4"
        path.write_bytes(b"x" * (rng.choice([10, 50, 200, 5_000, 40_000]) + i))
        paths.append(path)
    frames = tmp_path / "frames_clip"
    frames.mkdir()
    for i in range(5):
        (frames / f"img_{i:05d}.jpg").write_bytes(b"j" * 3_000)
    paths.insert(7, frames)
    paths.append(tmp_path / "gone.mp4")
    return paths


# ---------------------------------------------------------------------------------------------- shards


def test_shards_partition_the_inputs_exactly_in_input_order(sized_files):
    shards = [shard_files(sized_files, k, 3) for k in range(3)]
    together = [path for shard in shards for path in shard]
    assert sorted(together) == sorted(sized_files) and len(together) == len(sized_files)  # each exactly once
    for shard in shards:
        assert shard == [path for path in sized_files if path in shard]  # input order within a shard


def test_shards_are_balanced_by_size_not_count(sized_files):
    sizes = {path: input_size(path) for path in sized_files}
    loads = [sum(sizes[p] for p in shard_files(sized_files, k, 3)) for k in range(3)]
    # greedy largest-first keeps every shard within one largest file of the others
    assert max(loads) - min(loads) <= max(sizes.values())
    # one huge file and many small ones: the huge file's shard holds (almost) nothing else
    paths = [f"f{i}" for i in range(11)]
    sizes_list = [1000] + [10] * 10
    big = shard_files(paths, 0, 2, sizes_list)
    small = shard_files(paths, 1, 2, sizes_list)
    assert big == ["f0"] and len(small) == 10


def test_a_frame_folder_counts_its_files_and_a_missing_file_nothing(sized_files):
    assert input_size(sized_files[7]) == 5 * 3_000
    assert input_size(sized_files[-1]) == 0


def test_shard_assignment_does_not_depend_on_input_order_or_machine(sized_files):
    shuffled = list(sized_files)
    random.Random(1).shuffle(shuffled)
    for k in range(4):
        assert set(shard_files(sized_files, k, 4)) == set(shard_files(shuffled, k, 4))
        assert shard_files(sized_files, k, 4) == shard_files(list(sized_files), k, 4)


def test_equal_sizes_spread_by_count():
    paths = [f"f{i}" for i in range(10)]
    counts = [len(shard_files(paths, k, 3, [5] * 10)) for k in range(3)]
    assert sorted(counts) == [3, 3, 4]


def test_more_shards_than_inputs_leaves_some_empty():
    shards = [shard_files(["a", "b"], k, 4, [1, 2]) for k in range(4)]
    assert sorted(p for s in shards for p in s) == ["a", "b"] and shards.count([]) == 2


def test_parse_shard():
    assert parse_shard("0/3") == Shard(0, 3) and parse_shard(" 2 / 3 ") == Shard(2, 3)
    assert parse_shard("1/3").part("out/res.jsonl") == Path("out/res.part-1-of-3.jsonl")
    for text, needle in [("3/3", "0..2"), ("0/0", "at least 1"), ("1", "K/N"), ("a/b", "K/N"), ("-1/3", "K/N"), ("", "K/N")]:
        with pytest.raises(UsageError) as caught:
            parse_shard(text, {})
        assert needle in str(caught.value) and one_line(str(caught.value))


def test_shard_auto_reads_slurm_arrays_and_kubernetes_indexed_jobs():
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert parse_shard("auto", slurm) == Shard(2, 4)
    assert parse_shard("auto/4", slurm) == Shard(2, 4)
    stepped = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
               "SLURM_ARRAY_TASK_COUNT": "5"}
    assert parse_shard("auto", stepped) == Shard(3, 5)
    assert parse_shard("auto/6", {"JOB_COMPLETION_INDEX": "5"}) == Shard(5, 6)
    for text, env, needle in [
        ("auto", {}, "SLURM_ARRAY_TASK_ID"),
        ("auto", {"JOB_COMPLETION_INDEX": "1"}, "auto/N"),
        ("auto/3", slurm, "4 tasks"),
        ("auto/2", {"JOB_COMPLETION_INDEX": "2"}, "0..1"),
        ("auto", {**stepped, "SLURM_ARRAY_TASK_ID": "5"}, "steps"),
        ("auto", {**slurm, "SLURM_ARRAY_TASK_ID": "x"}, "whole number"),
    ]:
        with pytest.raises(UsageError) as caught:
            parse_shard(text, env)
        assert needle in str(caught.value) and one_line(str(caught.value))


# ---------------------------------------------------------------------------------------------- resume


def write_lines(path: Path, records: list[dict], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)


def test_read_finished_drops_a_line_cut_by_a_crash(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, [{"path": "a.mp4"}, {"path": "b.mp4", "status": "error"}])
    whole = out.stat().st_size
    assert read_finished(out) == ({"a.mp4", "b.mp4"}, whole)
    for tail in (b'{"path": "c.mp4", "top": [{"lab', b'{"path": "c.mp4"}', b'{"path": "c.mp4", "to\n', b"\x00\x00\x00\n"):
        write_lines(out, [{"path": "a.mp4"}, {"path": "b.mp4", "status": "error"}], tail)
        assert read_finished(out) == ({"a.mp4", "b.mp4"}, whole), tail


def test_read_finished_refuses_a_file_bad_in_the_middle(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"path": "a.mp4"}\nnot json\n{"path": "b.mp4"}\n')
    with pytest.raises(VtempoError, match="line 2 is not JSON") as caught:
        read_finished(out)
    assert one_line(str(caught.value))
    out.write_bytes(b'{"path": "a.mp4"}\n[1, 2]\n')
    with pytest.raises(VtempoError, match="line 2 is not a result record"):
        read_finished(out)


def test_appender_writes_over_the_cut_line(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, [{"path": "a.mp4"}], b'{"path": "b.m')
    _, offset = read_finished(out)
    with JsonlAppender(out, offset) as appender:
        appender.write({"path": "b.mp4"})
    assert [r["path"] for r in iter_records(out)] == ["a.mp4", "b.mp4"]


def test_appender_errors_are_one_line(tmp_path):
    with JsonlAppender(tmp_path / "out.jsonl") as appender:
        with pytest.raises(VtempoError, match="a.mp4: its result holds a number JSON cannot"):
            appender.write({"path": "a.mp4", "top": [{"prob": float("nan")}]})
    if Path("/dev/full").exists():  # a device is no place for results (a write error: tests/test_outputs.py)
        with pytest.raises(UsageError, match="is a device") as caught:
            JsonlAppender("/dev/full")
        assert one_line(str(caught.value))


def fake_record(path: Path) -> dict:
    return {"path": str(path), "status": "ok", "top": [{"label": "x", "index": 0, "prob": 0.5}]}


def run_some(run, stop: int | None = None) -> None:
    """Write the records of the first `stop` of the run's inputs (all by default)."""
    for position, path in enumerate(run.todo_paths[:stop]):
        run.write(position, fake_record(path))
    run.close()


def test_an_existing_output_is_never_overwritten_silently(tmp_path, sized_files):
    for name in ("out.jsonl", "out.csv", "out.json"):
        out = tmp_path / name
        out.write_text("precious\n")
        with pytest.raises(UsageError) as caught:
            start_run(sized_files, out)
        message = str(caught.value)
        assert "resume=True" in message and "overwrite=True" in message and one_line(message)
        assert out.read_text() == "precious\n"
    with pytest.raises(UsageError, match="needs a .jsonl"):
        start_run(sized_files, tmp_path / "out.csv", resume=True)
    with pytest.raises(UsageError, match="exclude"):
        start_run(sized_files, tmp_path / "out.jsonl", resume=True, overwrite=True)
    run = start_run(sized_files, tmp_path / "out.jsonl", overwrite=True)
    # without --resume the caller's ResultWriter replaces the file once the new one is complete
    assert not run.writes and run.todo == list(range(len(sized_files)))
    assert (tmp_path / "out.jsonl").read_text() == "precious\n"


def test_resume_takes_up_what_a_run_without_it_left_in_its_part_file(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    unfinished = tmp_path / "out.jsonl.part"  # ResultWriter's file while it writes
    write_lines(unfinished, [fake_record(path) for path in sized_files[:4]], b'{"path": "cut')
    run = start_run(sized_files, out, resume=True)
    assert run.done_before == 4 and not unfinished.exists()
    run_some(run)
    assert [r["path"] for r in iter_records(out)] == [str(p) for p in sized_files]
    unfinished.write_text("")
    with pytest.raises(UsageError, match="keep one of the two") as caught:
        start_run(sized_files, out, resume=True)
    assert one_line(str(caught.value))


def test_resume_skips_finished_files_and_appends_the_rest(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    run = start_run(sized_files, out, resume=True)  # nothing there yet: a first run
    assert run.todo == list(range(len(sized_files))) and run.done_before == 0
    run_some(run, stop=11)
    with open(out, "ab") as handle:  # the crash: half a line
        handle.write(b'{"path": "' + str(sized_files[11]).encode() + b'", "status": "o')
    run = start_run(sized_files, out, resume=True)
    assert run.done_before == 11 and run.todo_paths == sized_files[11:]
    run_some(run)
    assert [r["path"] for r in iter_records(out)] == [str(p) for p in sized_files]  # once each, in order


SETUP = {"model": "tsm-demo", "weights_sha256": "ab12", "frames": 8, "views": "1x1", "dtype": "fp32", "vtempo": "0.1"}


def test_resume_refuses_results_of_another_setup(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    run = start_run(sized_files, out, resume=True, provenance=SETUP)
    run_some(run, stop=3)
    assert all(record["provenance"] == SETUP for record in iter_records(out))
    newer = start_run(sized_files, out, resume=True, provenance={**SETUP, "vtempo": "0.2"})  # another version: fine
    newer.close()
    with pytest.raises(UsageError) as caught:
        start_run(sized_files, out, resume=True, provenance={**SETUP, "model": "tcm-demo"})
    message = str(caught.value)
    assert "another setup (model tsm-demo there, tcm-demo here)" in message and one_line(message)
    assert len(list(iter_records(out))) == 3


# ----------------------------------------------------------------------------------------------- merge


def sharded(sized_files, out: Path, count: int, **options) -> list:
    return [start_run(sized_files, out, shard=f"{k}/{count}", **options) for k in range(count)]


def test_shards_write_parts_that_merge_back_in_input_order(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    runs = sharded(sized_files, out, 3)
    for run in runs:
        run_some(run)
    parts = [tmp_path / f"out.part-{k}-of-3.jsonl" for k in range(3)]
    assert all(part.exists() for part in parts) and not out.exists()
    assert all("input" in record for part in parts for record in iter_records(part))
    assert merge_parts(parts[::-1], out, sized_files) == len(sized_files)
    merged = list(iter_records(out))
    assert [r["path"] for r in merged] == [str(p) for p in sized_files]
    assert merged[0] == fake_record(sized_files[0])  # the input index is dropped: a one-process file


def test_a_killed_shard_resumes_and_the_merge_has_every_file_once(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    runs = sharded(sized_files, out, 3)
    killed = max(range(3), key=lambda k: len(runs[k].todo))
    half = len(runs[killed].todo) // 2
    for k, run in enumerate(runs):
        run_some(run, stop=half if k == killed else None)
    with open(runs[killed].target, "ab") as handle:
        handle.write(b'{"path": "cut')
    with pytest.raises(VtempoError, match="cut short"):
        merge_parts(sorted(tmp_path.glob("out.part-*")), out)
    with pytest.raises(UsageError, match="resume=True"):
        start_run(sized_files, out, shard=f"{killed}/3")
    run = start_run(sized_files, out, shard=f"{killed}/3", resume=True)
    assert run.done_before == half and len(run.todo) == len(runs[killed].todo) - half
    run_some(run)
    merge_parts(sorted(tmp_path.glob("out.part-*")), out, sized_files)
    assert [r["path"] for r in iter_records(out)] == [str(p) for p in sized_files]


def test_merge_names_a_duplicate_or_missing_file(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    for run in sharded(sized_files, out, 2):
        run_some(run)
    parts = sorted(tmp_path.glob("out.part-*"))
    lines = parts[1].read_bytes().splitlines(keepends=True)
    first = json.loads(lines[0])
    out.write_text("untouched\n")

    parts[1].write_bytes(lines[0] + b"".join(lines))  # a record twice in one part
    with pytest.raises(VtempoError) as caught:
        merge_parts(parts, out)
    assert f"{first['path']} appears twice" in str(caught.value) and one_line(str(caught.value))
    assert out.read_text() == "untouched\n"  # a failed merge leaves the output as it was

    parts[1].write_bytes(b"".join(lines))
    other = parts[0].read_bytes()
    in_both = sorted(other.splitlines(keepends=True) + [lines[0]], key=lambda line: json.loads(line)["input"])
    parts[0].write_bytes(b"".join(in_both))  # a record in two parts
    with pytest.raises(VtempoError) as caught:
        merge_parts(parts, out, sized_files)
    assert f"{first['path']} appears twice" in str(caught.value) and one_line(str(caught.value))
    assert parts[0].name in str(caught.value) and parts[1].name in str(caught.value)
    parts[0].write_bytes(other)

    parts[1].write_bytes(b"".join(lines[1:]))  # a record lost
    with pytest.raises(VtempoError, match=f"{first['path']} is missing") as caught:
        merge_parts(parts, out, sized_files)
    assert one_line(str(caught.value))
    if first["input"] > 0:  # without the input list, a gap is still seen
        with pytest.raises(VtempoError, match=f"input {first['input']} is missing"):
            merge_parts(parts, out)

    last = json.loads(lines[-1])
    parts[1].write_bytes(b"".join(lines[:-1]))  # the last input lost: only the input list tells
    if last["input"] == len(sized_files) - 1:
        merge_parts(parts, out)
    with pytest.raises(VtempoError, match=f"{last['path']} is missing"):
        merge_parts(parts, out, sized_files)

    parts[1].write_bytes(b"".join(lines))
    with pytest.raises(VtempoError, match="part 1 of 2 is missing: out.part-1-of-2.jsonl"):
        merge_parts(parts[:1], out)
    with pytest.raises(VtempoError, match="changed"):
        merge_parts(parts, out, list(reversed(sized_files)))
    assert not list(tmp_path.glob(".out.jsonl.merging"))


def test_merge_refuses_parts_of_different_setups(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    for k, setup in enumerate([SETUP, {**SETUP, "views": "10x3"}]):
        run_some(start_run(sized_files, out, shard=f"{k}/2", provenance=setup))
    with pytest.raises(VtempoError, match="different setups: views") as caught:
        merge_parts(sorted(tmp_path.glob("out.part-*")), out)
    message = str(caught.value)
    assert "1x1 in" in message and "10x3 in" in message and one_line(message) and not out.exists()
    assert "out.part-0-of-2.jsonl" in message and "out.part-1-of-2.jsonl" in message


def test_parts_of_another_shard_count_are_not_mixed_in(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    for run in sharded(sized_files, out, 2):
        run_some(run)
    with pytest.raises(UsageError, match="another number of shards"):
        start_run(sized_files, out, shard="0/3", resume=True)
    (tmp_path / "out.part-0-of-3.jsonl").write_text("")
    with pytest.raises(VtempoError, match="different runs"):
        merge_parts(sorted(tmp_path.glob("out.part-*")), out)
    start_run(sized_files, out, shard="0/3", overwrite=True).close()  # starting again clears them
    assert sorted(p.name for p in tmp_path.glob("out.part-*")) == ["out.part-0-of-3.jsonl"]


def test_a_sharded_run_needs_a_jsonl_output(tmp_path, sized_files):
    for output in (None, tmp_path / "out.csv"):
        with pytest.raises(UsageError, match="needs output=FILE.jsonl"):
            start_run(sized_files, output, shard="0/2")


def windows_then_summary(run, stop: int | None = None, cut_in: int | None = None) -> None:
    """Write two window records and a final summary per input, as a timeline does; with `cut_in`, that
    input's summary never comes (the process died inside it)."""
    for position, path in enumerate(run.todo_paths[:stop]):
        for second in (0, 1):
            run.write(position, {"video": str(path), "kind": "window", "start": second})
        if position == cut_in:
            break
        run.write(position, {"video": str(path), "kind": "summary"})
    run.close()


def is_summary(record: dict) -> bool:
    return record["kind"] == "summary"


def test_several_records_per_input_resume_from_the_last_finished_input(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    windows_then_summary(start_run(sized_files, out, resume=True, key="video", final=is_summary), cut_in=5)
    finished, offset = read_finished(out, "video", is_summary)
    assert finished == {str(p) for p in sized_files[:5]}
    assert offset == sum(len(line) for line in out.read_bytes().splitlines(keepends=True)[:15])
    run = start_run(sized_files, out, resume=True, key="video", final=is_summary)
    assert run.done_before == 5
    windows_then_summary(run)
    records = list(iter_records(out))
    assert [r["video"] for r in records if is_summary(r)] == [str(p) for p in sized_files]
    assert len(records) == 3 * len(sized_files)  # the cut-off input's windows were not kept twice


def test_several_records_per_input_merge_and_an_incomplete_input_is_named(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    runs = [start_run(sized_files, out, shard=f"{k}/2", key="video", final=is_summary) for k in range(2)]
    windows_then_summary(runs[0])
    windows_then_summary(runs[1], cut_in=1)
    with pytest.raises(VtempoError) as caught:
        merge_parts(sorted(tmp_path.glob("out.part-*")), out, sized_files, "video", is_summary)
    assert f"{runs[1].todo_paths[1]} is incomplete in" in str(caught.value) and one_line(str(caught.value))
    run = start_run(sized_files, out, shard="1/2", resume=True, key="video", final=is_summary)
    assert run.done_before == 1
    windows_then_summary(run)
    assert merge_parts(sorted(tmp_path.glob("out.part-*")), out, sized_files, "video", is_summary) == 3 * len(sized_files)
    records = list(iter_records(out))
    assert [r["video"] for r in records] == [str(p) for p in sized_files for _ in range(3)]
    assert [r["kind"] for r in records[:3]] == ["window", "window", "summary"] and "input" not in records[0]


@pytest.fixture
def two_ranks(monkeypatch):
    """The ranks of a torchrun run of 2, played one after the other in this process."""
    from vtempo import distributed

    monkeypatch.setattr(distributed, "barrier", lambda ranks: None)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda value, ranks: [value])
    return [distributed.Ranks(rank, 2, None) for rank in range(2)]


def test_torchrun_ranks_write_parts_and_rank_0_merges_them(tmp_path, sized_files, two_ranks):
    out = tmp_path / "out.jsonl"
    with pytest.raises(UsageError, match="leave shard out"):
        start_run(sized_files, out, shard="0/2", ranks=two_ranks[0])
    with pytest.raises(UsageError, match="needs output=FILE.jsonl"):
        start_run(sized_files, tmp_path / "out.csv", ranks=two_ranks[0])
    runs = [start_run(sized_files, out, shard="auto", ranks=ranks) for ranks in two_ranks]
    assert [run.target.name for run in runs] == ["out.part-0-of-2.jsonl", "out.part-1-of-2.jsonl"]
    assert sorted(runs[0].todo + runs[1].todo) == list(range(len(sized_files)))
    for run in runs:
        run_some(run)
    assert runs[1].finish() is None and not out.exists()  # rank 1 leaves the merge to rank 0
    assert runs[0].finish() == len(sized_files)
    assert [r["path"] for r in iter_records(out)] == [str(p) for p in sized_files]
    assert not list(tmp_path.glob("out.part-*"))

    with pytest.raises(UsageError, match="resume=True"):
        start_run(sized_files, out, ranks=two_ranks[0])
    again = [start_run(sized_files, out, resume=True, ranks=ranks) for ranks in two_ranks]
    assert [run.todo for run in again] == [[], []]  # a finished run: nothing to do, nothing merged
    assert sum(run.done_before for run in again) == len(sized_files)
    assert again[0].finish() is None and len(list(iter_records(out))) == len(sized_files)
    extra = tmp_path / "new.mp4"
    extra.write_bytes(b"new")
    with pytest.raises(UsageError, match="new.mp4") as caught:
        start_run([*sized_files, extra], out, resume=True, ranks=two_ranks[0])
    assert "another output, or pass overwrite=True" in str(caught.value) and one_line(str(caught.value))


def test_a_torchrun_merge_that_fails_leaves_the_parts(tmp_path, sized_files, two_ranks):
    out = tmp_path / "out.jsonl"
    runs = [start_run(sized_files, out, ranks=ranks) for ranks in two_ranks]
    run_some(runs[0])
    run_some(runs[1], stop=len(runs[1].todo) - 1)  # rank 1 lost its last video
    with pytest.raises(VtempoError, match="is missing"):
        runs[0].finish()
    assert not out.exists() and len(list(tmp_path.glob("out.part-*"))) == 2


def test_merge_command(tmp_path, sized_files):
    out = tmp_path / "out.jsonl"
    for run in sharded(sized_files, out, 3):
        run_some(run)
    parts = [str(p) for p in sorted(tmp_path.glob("out.part-*"))]
    inputs = [arg for path in sized_files for arg in ("--inputs", str(path))]
    result = run_cli(["merge", *parts, "-o", str(out), *inputs])
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in iter_records(out)] == [str(p) for p in sized_files]
    result = run_cli(["merge", *parts, "-o", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = run_cli(["merge", *parts[:2], "-o", str(out), "--overwrite"])
    assert result.exit_code == 1 and "part 2 of 3 is missing" in result.output and "Traceback" not in result.output
    assert run_cli(["merge", *parts, "-o", str(out), "--overwrite"]).exit_code == 0


# ------------------------------------------------------------------------ classify: shards and ranks

REPO = Path(__file__).resolve().parents[1]
CLASSIFY = ["classify", "--model", "tsn-demo", "--workers", "0", "--device", "cpu", "--topk", "3"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vtempo", *args]


@pytest.fixture(scope="module")
def forty_videos(tmp_path_factory) -> Path:
    """40 small videos of different lengths (so of different sizes)."""
    folder = tmp_path_factory.mktemp("forty")
    for i in range(40):
        videogen.write_opencv(folder / f"v{i:02d}.mp4", 12 + (i * 7) % 30)
    return folder


@pytest.fixture(scope="module")
def one_process(forty_videos, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("one") / "out.jsonl"
    result = run_cli([*CLASSIFY, str(forty_videos), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return list(iter_records(out))


def assert_same_results(records: list[dict], reference: list[dict]) -> None:
    assert [r["path"] for r in records] == [r["path"] for r in reference]  # every file once, in input order
    for record, expected in zip(records, reference):
        assert [p["label"] for p in record["top"]] == [p["label"] for p in expected["top"]], record["path"]
        assert [p["prob"] for p in record["top"]] == pytest.approx([p["prob"] for p in expected["top"]], abs=1e-5)


@pytest.mark.slow
def test_classify_shards_merge_into_the_one_process_results(forty_videos, one_process, tmp_path):
    out = tmp_path / "out.jsonl"
    for k in range(3):
        result = run_cli([*CLASSIFY, str(forty_videos), "-o", str(out), "--shard", f"{k}/3"])
        assert result.exit_code == 0, result.output
        assert f"out.part-{k}-of-3.jsonl" in result.output
    assert not out.exists()
    result = run_cli(["merge", *map(str, sorted(tmp_path.glob("out.part-*"))), "-o", str(out),
                      "--inputs", str(forty_videos)])
    assert result.exit_code == 0, result.output
    assert_same_results(list(iter_records(out)), one_process)


@pytest.mark.slow
def test_classify_refuses_an_existing_output_and_resumes_it(forty_videos, one_process, tmp_path):
    out = tmp_path / "out.jsonl"
    lines = [json.dumps(record) + "\n" for record in one_process]
    out.write_text("".join(lines[:15]) + lines[15][:40])  # a run killed in the middle of a line
    result = run_cli([*CLASSIFY, str(forty_videos), "-o", str(out)])
    assert result.exit_code == 2 and "--resume" in result.output and "--overwrite" in result.output
    result = run_cli([*CLASSIFY, str(forty_videos), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "25 classified, 0 failed, 15 done before, of 40" in result.output
    assert_same_results(list(iter_records(out)), one_process)


@pytest.mark.slow
def test_two_torchrun_ranks_give_the_one_process_results(forty_videos, one_process, tmp_path):
    out = tmp_path / "out.jsonl"
    done = subprocess.run(torchrun(*CLASSIFY, str(forty_videos), "-o", str(out)), env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "40 classified, 0 failed, of 40" in done.stderr
    assert_same_results(list(iter_records(out)), one_process)
    assert not list(tmp_path.glob("out.part-*"))  # merged, then deleted


def rank_pid(parent: int, rank: int) -> int | None:
    """The process torchrun (`parent`) started as `rank`, found through /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_rank_killed_mid_run_resumes_with_every_file_once(forty_videos, one_process, tmp_path):
    out = tmp_path / "out.jsonl"
    part = tmp_path / "out.part-1-of-2.jsonl"
    command = torchrun(*CLASSIFY, str(forty_videos), "-o", str(out), "--batch-size", "1")
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (not part.exists() or part.read_bytes().count(b"\n") < 2):
            time.sleep(0.02)
        pid = rank_pid(process.pid, 1)
        assert pid is not None, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert not out.exists()
    written = sum(read_finished(p)[0].__len__() for p in tmp_path.glob("out.part-*"))
    assert 2 <= written < 40, stderr.decode()[-3000:]

    done = subprocess.run([*command, "--resume"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{40 - written} classified, 0 failed, {written} done before, of 40" in done.stderr  # nothing redone
    assert_same_results(list(iter_records(out)), one_process)


@pytest.mark.slow
def test_a_rank_that_stops_leaves_no_process_group_threads_behind(tmp_path):
    """Modules imported after the group exists (torchvision's, through torch._dynamo) must not keep it
    alive past `stop`: gloo's threads would outlive it and can abort the interpreter as it exits."""
    script = tmp_path / "rank.py"
    script.write_text(
        "import os\n"
        "from vtempo import distributed\n"
        "ranks = distributed.start('cpu')\n"
        "import torchvision.models  # noqa: E402,F401\n"
        "distributed.all_gather_objects(ranks.rank, ranks)\n"
        "distributed.stop()\n"
        "names = [open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')]\n"
        f"open(r'{tmp_path}' + f'/rank{{ranks.rank}}.txt', 'w').write(str(sum('gloo' in n for n in names)))\n"
    )
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(tmp_path / f"rank{k}.txt").read_text() for k in (0, 1)] == ["0", "0"]
