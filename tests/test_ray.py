"""`classify --engine ray` (vtempo.ray) on a real local Ray cluster the test starts (2 CPUs, its own
temp dir) and stops by its own process group: the same labels as the local engine, a model worker
killed mid-run, --resume, and the message without the extra."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vtempo.inference.sharding import record_key

from test_classify import tiny, tiny_args  # noqa: F401  (the tiny TSN fixture)

VTEMPO = [sys.executable, "-m", "vtempo.cli"]


def test_import_vtempo_never_imports_ray():
    code = ("import sys, vtempo, vtempo.cli, vtempo.commands.classify, vtempo.inference.classify; "
            "print('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_without_the_extra_one_line_and_exit_2(tmp_path):
    shim = "import sys; sys.modules['ray'] = None; from vtempo.cli import app; app()"
    run = subprocess.run([sys.executable, "-c", shim, "classify", str(tmp_path), "--engine", "ray"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'vtempo[ray]'" in lines[0] and "Traceback" not in run.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A Ray head with 2 CPUs and its own temp dir; stopped by signalling its own processes only."""
    pytest.importorskip("ray")
    # a test cluster on 127.0.0.1 without Ray's token: the CLI runs below inherit the setting
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short: Ray's socket paths live under it
    ray_exe = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_exe), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
                             "--include-dashboard=false", "--temp-dir", temp, "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            time.sleep(0.5)
    time.sleep(3)  # the raylet registers after the GCS listens
    yield f"127.0.0.1:{port}", temp
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in [head.pid, *_cluster_processes(temp, "")]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
    head.wait(timeout=30)
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE")
    else:
        os.environ["RAY_AUTH_MODE"] = saved


def _cluster_processes(temp: str, marker: str) -> list[int]:
    """The cluster's processes (those started with its temp dir, and their children: Ray daemonises
    its GCS and raylet) whose command line shows `marker`."""
    parents, lines = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
            lines[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue

    roots = {pid for pid, line in lines.items() if temp in line}

    def under_head(pid: int) -> bool:
        while pid > 1:
            if pid in roots:
                return True
            pid = parents.get(pid, 0)
        return False

    return [pid for pid, line in lines.items() if marker in line and under_head(pid)]


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, good_videos):
    folder = tmp_path_factory.mktemp("ray_inputs")
    sources = [good_videos[name].path for name in ("h264_bframes.mp4", "mjpeg.avi", "vp9.webm")]
    for i in range(54):
        os.symlink(sources[i % 3], folder / f"clip_{i:03d}{sources[i % 3].suffix}")
    # a name that is not UTF-8 and the name its bytes print as: two files, two records
    os.symlink(sources[0], os.path.join(os.fsencode(folder), b"name_\xff.mp4"))
    os.symlink(sources[0], folder / "name_\\xff.mp4")
    (folder / "x_text.mp4").write_text("not a video")
    (folder / "y_empty.avi").write_bytes(b"")
    os.symlink(folder / "nowhere.mp4", folder / "z_broken.mp4")
    return folder


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_ray_engine_on_a_cluster(cluster, tiny, inputs, tmp_path):  # noqa: F811
    address, session = cluster
    local = tmp_path / "local.jsonl"
    run = subprocess.run([*VTEMPO, "classify", str(inputs), *tiny_args(tiny), "--workers", "0", "-o", str(local)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    expected = {record_key(r): (r["status"], [p["label"] for p in r.get("top", [])]) for r in _records(local)}
    assert len(expected) == 59 and sum(s == "error" for s, _ in expected.values()) == 3

    # the same labels, each file once, though the model's worker is killed mid-run
    out = tmp_path / "ray.jsonl"
    command = [*VTEMPO, "classify", str(inputs), *tiny_args(tiny), "--engine", "ray", "--ray-address", address,
               "--batch-size", "1", "-o", str(out), "--resume"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 240
    while job.poll() is None and killed is None and time.monotonic() < deadline:
        # the model's actor, past its constructor: scoring (records reach the driver in blocks, so
        # the output file need not show it yet)
        workers = [pid for pid in _cluster_processes(session, "MapWorker(") if "__init__" not in _title(pid)]
        if workers:
            time.sleep(0.3)
            if job.poll() is None:
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
        time.sleep(0.05)
    _, stderr = job.communicate(timeout=300)
    assert killed is not None, f"the run ended before a model worker could be killed: {job.returncode} {stderr[-600:]}"
    assert job.returncode == 1, stderr
    records = _records(out)
    paths = [record_key(r) for r in records]
    assert len(paths) == len(set(paths)) == 59
    assert {record_key(r): (r["status"], [p["label"] for p in r.get("top", [])]) for r in records} == expected
    assert all(r["provenance"]["model"] == "tsn-r10w8" for r in records)

    # --resume: a run cut short goes on with the files it lacks, and writes none twice
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:20]))
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "20 done before" in run.stderr
    records = _records(out)
    assert sorted(record_key(r) for r in records) == sorted(expected)

    # Parquet, with the same fields
    pq = pytest.importorskip("pyarrow.parquet")
    table = tmp_path / "ray.parquet"
    run = subprocess.run([*VTEMPO, "classify", *[str(p) for p in sorted(inputs.iterdir())[:4]], *tiny_args(tiny),
                          "--engine", "ray", "--ray-address", address, "-o", str(table)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = pq.read_table(table).to_pylist()
    assert [(r["path"], [p["label"] for p in r["top"]]) for r in rows] and all(
        [p["label"] for p in r["top"]] == expected[r["path"]][1] for r in rows)
