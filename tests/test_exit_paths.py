"""How a run ends when it is stopped from outside: Ctrl-C (SIGINT) and SIGTERM end with 130, a
reader of stdout that goes away ends the run quietly; never a traceback. Real `vtempo` processes."""
from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from vtempo.data import synth

ROOT = Path(__file__).resolve().parents[1]


def vtempo_env(home: Path) -> dict:
    env = dict(os.environ, VTEMPO_HOME=str(home), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.pop("VTEMPO_REGISTRY", None)
    return env


def start(args: list[str], home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vtempo", *args], env=vtempo_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the command never reached the point to stop it at"
        time.sleep(0.05)


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def assert_one_line(err: str, progress: str = "") -> None:
    """No traceback; one message line, after the progress lines (those holding `progress`) if any."""
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in err.strip().splitlines() if not (progress and progress in line)]
    assert len(lines) <= 1, err


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers any GET with a large body sent a few bytes at a time, so a download is still running."""
    requested = threading.Event()

    def do_GET(self):
        type(self).requested.set()
        self.send_response(200)
        self.send_header("Content-Length", str(10**8))
        self.end_headers()
        try:
            for _ in range(6000):
                self.wfile.write(b"\0" * 16)
                self.wfile.flush()
                time.sleep(0.02)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server():
    SlowHandler.requested = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_download_stopped_by_a_signal_is_one_line(slow_server, tmp_path, signum, code):
    spec = {"arch": "tsn-r10w8", "num_classes": 5, "frames": 2,
            "weights": {"layout": "vtempo", "url": slow_server + "/blob.pth", "sha256": "ab" * 32}}
    registry = tmp_path / "user.yaml"
    registry.write_text(yaml.safe_dump({"models": {"blob": spec}}), encoding="utf-8")
    process = start(["download", "blob", "--registry", str(registry)], tmp_path / "home")
    wait_for(SlowHandler.requested.is_set)
    time.sleep(0.5)  # bytes are arriving
    rc, err = stop(process, signum)
    assert rc == code, err
    assert_one_line(err, progress=" MB ")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_profile_stopped_by_a_signal_is_one_line(tmp_path, signum, code):
    # tsn-r10w8 is built before it is timed: once a table header would need it, the loop is running
    process = start(["profile", "tsn-r10w8", "--frames", "2", "--size", "32", "--iters", "100000", "--warmup", "0",
                     "--device", "cpu"], tmp_path / "home")
    time.sleep(8)  # past the imports and into the timing loop
    assert process.poll() is None, process.communicate()
    rc, err = stop(process, signum)
    assert rc == code, err
    assert_one_line(err)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_train_stopped_by_a_signal_is_one_line(tmp_path, signum, code):
    data = tmp_path / "data"
    synth.generate(data, classes="grow,shrink", clips_per_class=10, frames=10, size=32, seed=0)
    out = tmp_path / "run"
    process = start(["train", str(data), "--model", "tsn-r10w8", "--output", str(out), "--epochs", "100000", "--frames", "2",
                     "--size", "32", "--workers", "0", "--device", "cpu"], tmp_path / "home")
    wait_for(lambda: (out / "log.jsonl").exists() or process.poll() is not None)
    assert process.poll() is None, process.communicate()
    rc, err = stop(process, signum)
    assert rc == code, err
    assert_one_line(err)


def test_ctrl_c_while_torch_imports_is_no_traceback(tmp_path, good_videos):
    """The first moments of classify import torch; a Ctrl-C there must not meet a cleanup that imports it again."""
    clip = good_videos["h264.mkv"].path
    for delay in (1.5, 2.0, 2.5, 3.0):  # past OpenCV's import (the package imports it first), into torch's
        process = start(["classify", str(clip), "--model", "tsm-demo"], tmp_path / "home")
        time.sleep(delay)
        if process.poll() is not None:
            continue
        rc, err = stop(process, signal.SIGINT)
        # interrupted, or (the signal came as the interpreter shut down) finished with its summary
        assert (rc, "interrupted" in err) == (130, True) or (rc, "1 classified" in err) == (0, True), (rc, err)
        assert_one_line(err)


def test_ctrl_c_while_torch_imports_comes_once_the_import_has_finished(tmp_path):
    """The program's Ctrl-C handler (installed as a command starts) holds an interrupt that lands while
    torch imports until the import is done: raised inside torch's C++ start-up it would abort the process."""
    code = """
import os, signal, sys, threading, time
import vtempo
signal.signal(signal.SIGINT, vtempo._interrupt_once_torch_is_imported)

def press_ctrl_c_while_torch_imports():
    while not getattr(getattr(sys.modules.get("torch"), "__spec__", None), "_initializing", False):
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=press_ctrl_c_while_torch_imports, daemon=True).start()
try:
    import torch
    print("imported", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code], env=vtempo_env(tmp_path / "home"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["imported", "interrupted"], (done.returncode, done.stdout,
                                                                                          done.stderr)


@pytest.mark.parametrize("program", [
    pytest.param([sys.executable, "-X", "importtime", "-m", "vtempo"], id="python -m vtempo"),
    pytest.param([sys.executable, "-X", "importtime", str(Path(sys.executable).with_name("vtempo"))], id="vtempo script",
                 marks=pytest.mark.skipif(not Path(sys.executable).with_name("vtempo").exists(),
                                          reason="vtempo is not installed in this environment: no `vtempo` script")),
])
@pytest.mark.parametrize("after", ["numpy", "cv2", "vtempo", "typer", "vtempo.commands.common", "vtempo.cli"])
def test_ctrl_c_while_the_program_starts_is_one_line(tmp_path, good_videos, program, after):
    """Ctrl-C at each stage of start-up (the interpreter's import log says where it is: inside the
    package's own import of OpenCV, then the command line's modules) ends with 130 and "interrupted"."""
    clip = good_videos["h264.mkv"].path
    process = subprocess.Popen([*program, "classify", str(clip), "--model", "tsm-demo"], env=vtempo_env(tmp_path / "home"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = []
    for line in process.stderr:
        log.append(line)
        if re.search(rf"\|\s+{re.escape(after)}$", line.rstrip()):
            break
    else:
        raise AssertionError("".join(log[-20:]))
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    err = "".join(line for line in rest.splitlines(keepends=True) if not line.startswith("import time:"))
    assert (process.returncode, "interrupted" in err) == (130, True) or \
        (process.returncode, "1 classified" in err) == (0, True), (process.returncode, err)
    assert_one_line(err)


def pipe(command: str, reader: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(f"{sys.executable} -m vtempo {command} | {reader}; echo \"rc=${{PIPESTATUS[0]}}\" >&2",
                          shell=True, executable="/bin/bash", env=vtempo_env(home), capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("command", ["models", "classify --help"])
def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path, command):
    # `true` is gone before vtempo writes its first byte: every write meets a closed pipe
    result = pipe(command, "true", tmp_path / "home")
    assert result.stderr.strip() == "rc=141", result.stderr
    # `head` reads the first lines; what the pipe's buffer held may have been written before it left
    result = pipe(command, "head -2", tmp_path / "home")
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr.strip() in ("rc=0", "rc=141"), result.stderr


def test_timeline_window_nan_is_a_usage_error(tmp_path, good_videos):
    clip = good_videos["h264.mkv"].path
    result = subprocess.run([sys.executable, "-m", "vtempo", "timeline", str(clip), "--window", "nan"],
                            env=vtempo_env(tmp_path / "home"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert_one_line(result.stderr)
    assert "--window" in result.stderr
