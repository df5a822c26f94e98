"""Outputs are never destroyed or mixed: one run at a time on an output, links and non-regular files
refused, an unwritable output found before the work, write errors mid-run (a file-size limit) as one
line with the results so far kept, `--resume` keyed by the real file name, `merge` naming what is
wrong, and `stream` writing its output by the same rule (and printing its labels when piped).

Real files and processes throughout: concurrent `vtempo classify` processes, RLIMIT_FSIZE set in the
child (SIGXFSZ ignored, so a write past the limit fails with EFBIG), FIFOs. An unwritable folder is a
path under a regular file (no user, root included, can create files there), and a read-only folder
where the tests do not run as root (root writes through permission bits)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import vtempo
from vtempo.cli import app
from vtempo.errors import UsageError, VtempoError
from vtempo.inference.results import Prediction, ResultWriter, VideoResult
from vtempo.inference.sharding import JsonlAppender, merge_parts, start_run
from vtempo.inference.sink import Sink
from vtempo.weights.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "examples" / "clips"
LABELS = ["archery", "bowling", "cycling", "diving", "fencing"]
VTEMPO = [sys.executable, "-m", "vtempo.cli"]


def environment() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                COLUMNS="250")


def one_line(text: str) -> bool:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return len(lines) == 1 and "Traceback" not in text


def run_cli(args) -> object:
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    model = vtempo.create_model("tsn-r10w8", num_classes=len(LABELS), frames=4)
    checkpoint = save_checkpoint(model, folder / "tiny.pt", arch="tsn-r10w8", frames=4, input_size=32, resize=[37])
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return SimpleNamespace(args=["--model", "tsn-r10w8", "--weights", str(checkpoint), "--labels", str(labels),
                                 "--device", "cpu"])


@pytest.fixture
def videos(tmp_path, good_videos) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(6):
        os.symlink(good_videos["mjpeg.avi"].path, folder / f"clip_{i}.avi")
    return folder


def a_result(name: str) -> VideoResult:
    return VideoResult(Path(name), [Prediction("diving", 3, 0.75)], num_frames=60)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def file_size_limit(limit: int):
    """A child process's preexec_fn: files it writes stop at `limit` bytes (EFBIG, not SIGXFSZ)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


# ----------------------------------------------------------------------------- one run at a time


def test_a_second_writer_of_an_output_is_refused_while_the_first_writes(tmp_path):
    out = tmp_path / "results.jsonl"
    first = ResultWriter(out, 1)
    first.write(a_result("one.mp4"))
    for second in (lambda: ResultWriter(out, 1), lambda: JsonlAppender(out), lambda: Sink(out)):
        with pytest.raises(UsageError, match="another run is writing it") as caught:
            second()
        assert one_line(str(caught.value))
    first.close()
    assert [r["path"] for r in records(out)] == ["one.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]  # no part, no lock file left
    with JsonlAppender(out, out.stat().st_size) as appender:  # the lock went with the first writer
        appender.write({"path": "two.mp4"})
    assert [r["path"] for r in records(out)] == ["one.mp4", "two.mp4"]


@pytest.mark.slow
def test_two_classify_processes_on_one_output(tiny, good_videos, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        os.symlink(good_videos["mjpeg.avi"].path, folder / f"clip_{i:04d}.avi")
    out, part = tmp_path / "shared.jsonl", tmp_path / "shared.jsonl.part"
    command = [*VTEMPO, "classify", str(folder), *tiny.args, "--workers", "1", "-o", str(out)]
    first = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not part.exists() or part.read_text().count("\n") < 2):
            time.sleep(0.1)
        assert part.exists() and first.poll() is None, "the first run never started writing"
        os.killpg(first.pid, signal.SIGSTOP)  # held mid-run, with its output open, while the second one tries
        try:
            second = subprocess.run([*command, "--overwrite"], env=environment(), capture_output=True, text=True,
                                    timeout=300)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        os.killpg(first.pid, signal.SIGINT)
        _, first_err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr
    assert "another run is writing it" in second.stderr and one_line(second.stderr), second.stderr
    assert first.returncode == 130, first_err.decode()
    rows = records(out)  # the first run's results only, every line whole
    assert 2 <= len(rows) < 1500 and all(r["status"] == "ok" for r in rows)
    assert len({r["path"] for r in rows}) == len(rows)


# --------------------------------------------------------------------- links and non-regular files


def test_overwrite_refuses_a_link_and_never_replaces_its_target(tiny, videos, tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("kept\n")
    link = tmp_path / "results.jsonl"
    os.symlink(target, link)
    result = run_cli(["classify", videos, *tiny.args, "--workers", "0", "-o", link, "--overwrite"])
    assert result.exit_code == 2, result.output
    assert "symbolic link" in result.output and one_line(result.output)
    assert target.read_text() == "kept\n" and link.is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_a_non_regular_output_is_refused_and_never_blocks(tiny, videos, tmp_path, kind, flag):
    out = tmp_path / "results.jsonl"
    os.mkfifo(out) if kind == "fifo" else out.mkdir()
    # a child process: a FIFO opened for reading would block this one for good
    done = subprocess.run([*VTEMPO, "classify", str(videos), *tiny.args, "--workers", "0", "-o", str(out), flag],
                          env=environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert ("a FIFO" if kind == "fifo" else "a folder") in done.stderr and one_line(done.stderr), done.stderr
    assert (out.is_fifo() if kind == "fifo" else out.is_dir())


def test_a_device_is_refused(tmp_path):
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null here")
    for make in (lambda: Sink("/dev/null"), lambda: JsonlAppender("/dev/null", 0)):
        with pytest.raises(UsageError, match="output='/dev/null': is a device") as caught:
            make()
        assert one_line(str(caught.value))


# ------------------------------------------------------------------------- unwritable, found first


@pytest.fixture(params=["under a file", "read-only folder"])
def unwritable(request, tmp_path) -> Path:
    """A folder no file can be written in."""
    if request.param == "under a file":
        blocker = tmp_path / "a_file"
        blocker.write_text("a regular file, so nothing can be created under it\n")
        return blocker / "out"
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders (the path under a file covers root)")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    request.addfinalizer(lambda: folder.chmod(0o700))
    return folder


def test_unwritable_outputs_are_found_before_the_work(tiny, videos, unwritable, tmp_path):
    clip = CLIPS / "grow.mp4"
    data = tmp_path / "data"
    for name in ("grow", "shrink"):
        (data / name).mkdir(parents=True)
        shutil.copy(CLIPS / f"{name}.mp4", data / name / f"{name}.mp4")
    cases = {
        "classify": ["classify", videos, *tiny.args, "--workers", "0", "-o", unwritable / "r.jsonl"],
        "embed": ["embed", clip, "--model", "tsn-demo", "--device", "cpu", "--workers", "0", "-o", unwritable / "e.npy"],
        "timeline --plot": ["timeline", clip, "--model", "tsn-demo", "--device", "cpu", "--window", "1",
                            "--plot", unwritable / "p.png"],
        "evaluate": ["evaluate", data, "--model", "tsn-demo", "--device", "cpu", "--workers", "0",
                     "--output", unwritable / "eval"],
        "robustness": ["robustness", data, "--model", "tsn-demo", "--device", "cpu", "--workers", "0",
                       "--stride", "1,2", "--output", unwritable / "rob"],
    }
    for name, args in cases.items():
        result = run_cli(args)
        assert result.exit_code == 2, (name, result.output)
        assert "cannot write there" in result.output and one_line(result.output), (name, result.output)
        assert "Traceback" not in result.output


def test_a_file_size_limit_before_the_work_is_a_usage_error(tiny, videos, tmp_path):
    out = tmp_path / "r.jsonl"
    done = subprocess.run([*VTEMPO, "classify", str(videos), *tiny.args, "--workers", "0", "-o", str(out)],
                          env=environment(), capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit(0))
    assert done.returncode == 2, done.stderr
    assert "cannot write there (File too large)" in done.stderr and one_line(done.stderr), done.stderr
    assert not out.exists() and not list(tmp_path.glob(".r.jsonl*"))


# -------------------------------------------------------------------------- write errors mid-run


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_classify_stopped_by_a_file_size_limit_keeps_its_results(tiny, videos, tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    # room for the header and about two results, not six
    done = subprocess.run([*VTEMPO, "classify", str(videos), *tiny.args, "--workers", "0", "-o", str(out)],
                          env=environment(), capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit(700))
    part = tmp_path / f"r{suffix}.part"
    assert done.returncode == 1, done.stderr
    error = [line for line in done.stderr.splitlines() if "cannot write" in line]
    assert len(error) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"r{suffix}: cannot write (File too large)" in error[0] and f"results so far are in {part}" in error[0]
    assert part.exists() and part.stat().st_size > 0 and not out.exists()
    if suffix == ".jsonl":
        text = part.read_text()
        whole = [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]
        assert whole and all(r["status"] == "ok" for r in whole)


def test_timeline_and_embed_stopped_by_a_file_size_limit_keep_their_results(tmp_path):
    clips = [str(CLIPS / name) for name in ("grow.mp4", "shrink.mp4", "move_left.mp4")]
    timeline = tmp_path / "t.jsonl"
    done = subprocess.run([*VTEMPO, "timeline", *clips, "--model", "tsn-demo", "--device", "cpu", "--window", "1",
                           "-o", str(timeline)], env=environment(), capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit(1500))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "t.jsonl: cannot write (File too large); the results so far are in" in done.stderr, done.stderr
    assert (tmp_path / "t.jsonl.part").stat().st_size > 0

    embeddings = tmp_path / "e.npy"
    done = subprocess.run([*VTEMPO, "embed", *clips, "--model", "tsn-demo", "--device", "cpu", "--workers", "0",
                           "-o", str(embeddings)], env=environment(), capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit(5000))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write (File too large)" in done.stderr and "--resume goes on from them" in done.stderr, done.stderr
    # what was written resumes once there is room
    resumed = run_cli(["embed", *clips, "--model", "tsn-demo", "--device", "cpu", "--workers", "0",
                       "-o", embeddings, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    import numpy as np

    assert np.load(embeddings).shape[0] == len(clips)
    assert [r["path"] for r in records(embeddings.with_suffix(".jsonl"))] == clips


@pytest.mark.parametrize("command", ["evaluate", "robustness"])
def test_evaluate_and_robustness_stopped_by_a_file_size_limit_say_so_in_one_line(tmp_path, command):
    data = tmp_path / "data"
    for name in ("grow", "shrink"):
        (data / name).mkdir(parents=True)
        shutil.copy(CLIPS / f"{name}.mp4", data / name / f"{name}.mp4")
    out = tmp_path / "out"
    out.mkdir()
    first = out / f"{command if command == 'robustness' else 'evaluation'}.json"
    first.write_text("a finished run's results\n")  # replaced only by a whole new file
    extra = ["--stride", "1,2"] if command == "robustness" else []
    done = subprocess.run([*VTEMPO, command, str(data), "--model", "tsn-demo", "--device", "cpu", "--workers", "0",
                           "--no-progress", *extra, "--output", str(out)], env=environment(), capture_output=True,
                          text=True, timeout=300, preexec_fn=file_size_limit(600))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert one_line(done.stderr) and f"--output {first}: cannot write (File too large)" in done.stderr, done.stderr
    assert f"the results so far are in {first}.part" in done.stderr
    assert "top-1" in done.stdout  # the table came first
    assert first.read_text() == "a finished run's results\n"
    assert not list(out.glob(".*.lock"))


def test_a_sink_write_error_names_the_file_and_keeps_the_part(tmp_path):
    """In a child, so the limit and SIGXFSZ stay out of the test process."""
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from vtempo.inference.sink import OutputError, Sink
sink = Sink({str(tmp_path / "out.jsonl")!r})
sink.write("first line\\n"); sink.records += 1
try:
    sink.write("x" * 1000)
except OutputError as error:
    print(error)
sink.close()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=file_size_limit(100))
    assert done.returncode == 0, done.stderr
    assert one_line(done.stdout) and "out.jsonl': cannot write (File too large)" in done.stdout
    assert "out.jsonl.part" in done.stdout
    assert (tmp_path / "out.jsonl.part").read_text().startswith("first line\n")
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------------------------- resume by name


def test_resume_keys_records_by_the_real_file_name(tiny, good_videos, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/clip\xe9.avi"  # a byte that is not UTF-8
    escaped = folder / "clip\\xe9.avi"  # the same name as it is printed: another file
    os.symlink(good_videos["mjpeg.avi"].path, raw)
    os.symlink(good_videos["mjpeg.avi"].path, escaped)
    out = tmp_path / "r.jsonl"
    args = [*tiny.args, "--workers", "0", "-o", str(out)]
    first = subprocess.run([*VTEMPO, "classify", os.fsdecode(raw), *args], env=environment(), capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert len(records(out)) == 1
    second = subprocess.run([*VTEMPO, "classify", str(folder), *args, "--resume"], env=environment(),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    rows = records(out)
    assert len(rows) == 2 and [r["path"] for r in rows] == [f"{folder}/clip\\xe9.avi"] * 2
    assert bytes.fromhex(rows[0]["path_bytes"]) == raw and "path_bytes" not in rows[1]
    assert "1 done before" in second.stderr


# ------------------------------------------------------------------------------------------ merge


def test_merge_tells_a_file_added_between_shard_runs_from_a_duplicate(tmp_path):
    def made(name: str, size: int) -> Path:
        path = tmp_path / name
        path.write_bytes(b"x" * size)
        return path

    a, b, c = made("a.mp4", 8), made("b.mp4", 6), made("c.mp4", 5)
    out = tmp_path / "out.jsonl"

    def shard(inputs, k):
        run = start_run(inputs, out, shard=f"{k}/2")
        for position, path in enumerate(run.todo_paths):
            run.write(position, {"path": str(path), "status": "ok"})
        run.close()

    shard([a, b, c], 0)  # shard 0 of the first inputs: a, input 0
    added = made("0_added.mp4", 7)
    shard([added, a, b, c], 1)  # shard 1 after a file was added: 0_added is input 0 now
    parts = [tmp_path / f"out.part-{k}-of-2.jsonl" for k in range(2)]
    with pytest.raises(VtempoError) as caught:
        merge_parts(parts, tmp_path / "merged.jsonl")
    message = str(caught.value)
    assert "appears twice" not in message and "different inputs" in message, message
    assert str(a) in message and str(added) in message

    # a real duplicate is still called one
    lines = parts[0].read_text()
    parts[1].write_text(lines)
    with pytest.raises(VtempoError, match="appears twice"):
        merge_parts(parts, tmp_path / "merged.jsonl")


# ----------------------------------------------------------------------------------------- stream


def test_stream_refuses_an_existing_output_and_never_truncates_it(tmp_path):
    out = tmp_path / "labels.jsonl"
    out.write_text('{"kept": true}\n')
    clip = CLIPS / "grow.mp4"
    stream = ["stream", "--model", "tsm-demo", "--device", "cpu", "--every", "0.5", "-o", out]
    refused = run_cli([stream[0], clip, *stream[1:]])
    assert refused.exit_code == 2 and "exists" in refused.output and "--overwrite" in refused.output, refused.output
    failed = run_cli([stream[0], tmp_path / "missing.mp4", *stream[1:], "--overwrite"])
    assert failed.exit_code != 0, failed.output
    assert out.read_text() == '{"kept": true}\n'  # the source failed: the old output stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl"]
    done = run_cli([stream[0], clip, *stream[1:], "--overwrite"])
    assert done.exit_code == 0, done.output
    rows = records(out)
    assert rows[-1]["summary"] and len(rows) >= 2 and all("top" in r for r in rows[:-1])


def test_stream_piped_prints_its_labels():
    result = CliRunner().invoke(app, ["stream", str(CLIPS / "grow.mp4"), "--model", "tsm-demo", "--device", "cpu",
                                      "--every", "0.5", "--topk", "2"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) >= 2, result.stdout
    for line in lines:
        assert re.fullmatch(r"\d+\.\d\d s(  \S+ \d+\.\d%){2}", line), line


def test_stream_piped_from_a_terminal_prints_its_labels_on_stdout(tmp_path):
    """`vtempo stream clip | grep ...` in a terminal: the live view goes to the terminal (stderr), the
    labels still go down the pipe."""
    import pty
    import threading

    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "vtempo", "stream", str(CLIPS / "grow.mp4"), "--model", "tsm-demo",
                                "--device", "cpu", "--every", "0.5", "--topk", "2"],
                               env=environment(), stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    terminal = []

    def drain():
        with contextlib.suppress(OSError):  # EIO once the process has closed the terminal
            while chunk := os.read(leader, 4096):
                terminal.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = process.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(leader)
    assert process.returncode == 0, b"".join(terminal).decode(errors="replace")
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) >= 2, (out, b"".join(terminal).decode(errors="replace"))
    for line in lines:
        assert re.fullmatch(r"\d+\.\d\d s(  \S+ \d+\.\d%){2}", line), line
    assert b"label 1" in b"".join(terminal)  # the live view's title


class SlowFirstCall(torch.nn.Module):
    """A model whose first call takes seconds, as a first call that sets itself up can."""

    def __init__(self, net: torch.nn.Module, seconds: float):
        super().__init__()
        self.net, self.seconds, self.calls = net, seconds, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.seconds)
        return self.net(x)


@pytest.mark.slow  # runs in real time
def test_a_realtime_file_starts_its_clock_once_the_model_is_ready(tmp_path):
    from vtempo.data.synth import render_clip, write_video
    from vtempo.fast import prepare
    from vtempo.inference.recognizer import Recognizer
    from vtempo.inference.stream import run_stream
    from vtempo.models import build
    from vtempo.video.transforms import Preprocess
    from vtempo.weights.registry import Protocol

    path = tmp_path / "four.mp4"
    write_video(path, render_clip(0, [7, 1], frames=48, size=64).frames, 12)
    torch.manual_seed(0)
    net = prepare(build("tsm-r10w8", num_classes=3, frames=4), torch.device("cpu"))
    rec = Recognizer(model=SlowFirstCall(net, 3.0), name="slow", arch="tsm-r10w8", labels=["a", "b", "c"], frames=4,
                     protocol=Protocol("stride", stride=2), preprocess=Preprocess((32,), 32))
    labels = []
    summary = run_stream(path, rec, every=0.5, realtime=True, on_label=labels.append)
    assert summary.ok and summary.frames == 48
    times = [label.media_time for label in labels]
    # the opening second is labelled, and no stretch of the video goes unlabelled for the first call
    assert times and times[0] < 1.0, times
    assert all(later - earlier < 2.0 for earlier, later in zip(times, times[1:])), times
