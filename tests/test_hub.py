"""The checkpoint hub against a real HTTP server on 127.0.0.1 started here.

The server serves files with Range support and, by URL, misbehaves: `/drop/` cuts the first answer
in half and closes the connection, `/gate/` stalls mid-file until the test opens the gate, `/slow/`
answers after the client's timeout, `/status/N` answers HTTP N, `/redirect/URL` redirects,
`/endless/` sends zeros without end or length, `/trickle/N` sends N bytes every 50 ms. Nothing
leaves this machine: every URL points at the test server, and $VTEMPO_HOME is a fresh folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vtempo import create_model, limits
from vtempo.cli import app
from vtempo.errors import VtempoError
from vtempo.models import build
from vtempo.weights import hub, registry
from vtempo.weights.checkpoint import save_checkpoint

MANIFESTS = Path(__file__).parent / "data" / "manifests"
runner = CliRunner()


# ------------------------------------------------------------------------------------------ the server


class Site:
    """What the test server holds, how it misbehaves, and every request it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | Path] = {}
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.files.clear()
            self.hits: list[tuple[str, dict[str, str]]] = []
            self.dropped: set[str] = set()
            self.gate = threading.Event()
            self.gate_reached = threading.Event()
            self.slow_s = 0.0

    def requests(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [headers for hit, headers in self.hits if hit == path]


class Handler(http.server.BaseHTTPRequestHandler):
    site: Site
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        site = self.site
        with site.lock:
            site.hits.append((self.path, dict(self.headers)))
        kind, _, rest = self.path.lstrip("/").partition("/")
        if kind == "status":
            self.send_error(int(rest))
            return
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", urllib.parse.unquote(rest))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if kind == "endless":  # zeros without a length, until the client hangs up (64 MiB at most)
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            zeros = bytes(1 << 16)
            for _ in range(1024):
                self.wfile.write(zeros)
            return
        if kind == "trickle":  # /trickle/N: N bytes every 50 ms of a 10 MB "file", for 5 s at most
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            self.close_connection = True
            for _ in range(100):
                self.wfile.write(b"x" * int(rest))
                self.wfile.flush()
                time.sleep(0.05)
            return
        if kind == "slow":
            time.sleep(site.slow_s)
        data = site.files.get(rest)
        if data is None:
            self.send_error(404)
            return
        data = data.read_bytes() if isinstance(data, Path) else data
        size, etag = len(data), '"%s"' % hashlib.sha256(data).hexdigest()[:16]
        start, wanted = 0, self.headers.get("Range")
        if wanted and self.headers.get("If-Range") in (None, etag):
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = memoryview(data)[start:]
        half = len(body) // 2
        if kind == "drop" and rest not in site.dropped:
            site.dropped.add(rest)
            self.wfile.write(body[:half])
            self.wfile.flush()
            self.close_connection = True  # the client sees the connection close mid-file
            return
        if kind == "gate":
            self.wfile.write(body[:half])
            self.wfile.flush()
            site.gate_reached.set()
            site.gate.wait(60)
            body = body[half:]
        for offset in range(0, len(body), 1 << 20):
            self.wfile.write(body[offset : offset + (1 << 20)])


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # clients that gave up (timeouts) are expected
        pass


@pytest.fixture(scope="module")
def server():
    site = Site()
    handler = type("SiteHandler", (Handler,), {"site": site})
    httpd = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    site.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield site
    site.gate.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def site(server, monkeypatch, tmp_path):
    """A clean server, an empty VTEMPO_HOME, fast retries, and no proxy between us and 127.0.0.1."""
    server.reset()
    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path / "home"))
    for variable in ("VTEMPO_REGISTRY", "VTEMPO_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(hub, "BACKOFF_S", 0.01)
    monkeypatch.setattr(hub, "RETRIES", 2)
    monkeypatch.setattr(limits, "DOWNLOAD_TIMEOUT_S", 5.0)
    registry._load.cache_clear()
    yield server
    server.gate.set()
    registry._load.cache_clear()


def user_registry(path: Path, models: dict) -> Path:
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    registry._load.cache_clear()
    return path


def entry_for(site: Site, tmp_path: Path, url_path: str, **weights) -> registry.ModelEntry:
    """A user entry for a (tiny) TSN whose weights sit at `url_path` on the test server."""
    spec = {"arch": "tsn-r10w8", "num_classes": 5, "frames": 2,
            "weights": {"layout": "vtempo", "url": site.base + url_path, **weights}}
    path = user_registry(tmp_path / "user.yaml", {"blob": spec})
    return registry.get_entry("blob", path)


def payload(size: int = 300_000, seed: int = 0) -> bytes:
    return torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy().tobytes()


def checkpoint_bytes(tmp_path: Path, seed: int = 0) -> bytes:
    """A real vtempo checkpoint for the tiny TSN of `entry_for` (what a download without a hash must be)."""
    torch.manual_seed(seed)
    return save_checkpoint(build("tsn-r10w8", num_classes=5, frames=2), tmp_path / f"real{seed}.pt").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------ downloads


@pytest.mark.parametrize("hash_length", [64, 8])
def test_download_verifies_caches_and_refetches_with_force(site, tmp_path, hash_length):
    data = payload()
    site.files["blob.pth"] = data
    entry = entry_for(site, tmp_path, "/files/blob.pth", sha256=sha(data)[:hash_length], size=len(data))
    assert hub.cache_state(entry) == "downloadable"

    path = hub.download(entry)
    assert path == hub.cache_dir() / "blob.pth"  # named by the registry, not the URL
    assert path.read_bytes() == data
    record = json.loads(path.with_name("blob.pth.json").read_text())
    assert record["source_sha256"] == sha(data) and record["size"] == len(data)
    assert hub.cache_state(entry) == "cached"
    assert not list((registry.home() / "downloads").glob("*.part*"))

    assert hub.weights_path(entry) == path and hub.download(entry) == path
    assert len(site.requests("/files/blob.pth")) == 1  # cached: no second request
    hub.download(entry, force=True)
    assert len(site.requests("/files/blob.pth")) == 2

    other = entry_for(site, tmp_path, "/files/blob.pth", sha256="0" * hash_length)
    assert hub.cache_state(other) == "downloadable"  # a registry hash the cached file lacks: not cached


def test_resume_after_the_connection_drops(site, tmp_path, monkeypatch):
    data = payload(400_000, seed=1)
    site.files["blob.pth"] = data
    entry = entry_for(site, tmp_path, "/drop/blob.pth", sha256=sha(data))

    monkeypatch.setattr(hub, "RETRIES", 0)  # first run: give up after the drop, keeping the part
    with pytest.raises(VtempoError, match=r"connection closed after 200000 of 400000 bytes.*--from-file"):
        hub.download(entry)
    part = registry.home() / "downloads" / "blob.pth.part"
    assert part.read_bytes() == data[:200_000]

    monkeypatch.setattr(hub, "RETRIES", 2)  # second run resumes where the first stopped
    path = hub.download(entry)
    assert path.read_bytes() == data
    first, second = site.requests("/drop/blob.pth")
    assert "Range" not in first
    assert second["Range"] == "bytes=200000-" and second["If-Range"].startswith('"')
    assert not part.exists()


def test_drop_is_retried_within_one_call(site, tmp_path):
    data = payload(2_500_000, seed=2)  # several read chunks
    site.files["blob.pth"] = data
    entry = entry_for(site, tmp_path, "/drop/blob.pth", sha256=sha(data))
    assert hub.download(entry).read_bytes() == data
    assert [h.get("Range") for h in site.requests("/drop/blob.pth")] == [None, f"bytes={len(data) // 2}-"]


def test_404_fails_at_once_naming_the_url(site, tmp_path):
    entry = entry_for(site, tmp_path, "/status/404")
    with pytest.raises(VtempoError) as error:
        hub.download(entry)
    message = str(error.value)
    assert "HTTP 404" in message and site.base + "/status/404" in message
    assert "vtempo download blob --from-file PATH" in message and "\n" not in message
    assert len(site.requests("/status/404")) == 1
    assert hub.cache_state(entry) == "downloadable"


def test_500_is_retried_then_reported(site, tmp_path):
    entry = entry_for(site, tmp_path, "/status/500")
    with pytest.raises(VtempoError, match=r"failed after 3 attempts \(HTTP 500"):
        hub.download(entry)
    assert len(site.requests("/status/500")) == 3  # RETRIES = 2 in these tests


def test_wrong_hash_deletes_the_download(site, tmp_path):
    data = payload(seed=3)
    site.files["blob.pth"] = data
    entry = entry_for(site, tmp_path, "/files/blob.pth", sha256="ab" * 32)
    with pytest.raises(VtempoError, match=rf"sha256 {sha(data)}, the registry expects abab.*the download was deleted"):
        hub.download(entry)
    assert not list(registry.home().rglob("*.part"))
    assert not hub.cache_path(entry).exists()


def test_wrong_size_is_refused_before_writing(site, tmp_path):
    site.files["blob.pth"] = payload(seed=4)
    entry = entry_for(site, tmp_path, "/files/blob.pth", size=123)
    with pytest.raises(VtempoError, match="the server offers 300000 bytes, the registry expects 123"):
        hub.download(entry)
    assert not hub.cache_path(entry).exists()


def test_slow_server_hits_the_timeout(site, tmp_path, monkeypatch):
    site.files["blob.pth"] = payload(seed=5)
    site.slow_s = 1.5
    monkeypatch.setattr(limits, "DOWNLOAD_TIMEOUT_S", 0.2)
    monkeypatch.setattr(hub, "RETRIES", 1)
    entry = entry_for(site, tmp_path, "/slow/blob.pth")
    started = time.monotonic()
    with pytest.raises(VtempoError, match=r"failed after 2 attempts \(no answer within 0.2 s \(timed out\)\)"):
        hub.download(entry)
    assert time.monotonic() - started < 1.4
    assert len(site.requests("/slow/blob.pth")) == 2


def test_redirects_followed_to_http_only(site, tmp_path):
    data = checkpoint_bytes(tmp_path, seed=6)
    site.files["blob.pth"] = data
    entry = entry_for(site, tmp_path, "/redirect/" + urllib.parse.quote(site.base + "/files/blob.pth", safe=""))
    assert hub.download(entry).read_bytes() == data

    for target in ("file:///etc/passwd", "ftp://127.0.0.1/blob.pth"):
        elsewhere = entry_for(site, tmp_path, "/redirect/" + urllib.parse.quote(target, safe=""))
        with pytest.raises(VtempoError, match=rf"refused redirect .* to {target} \(only http\(s\) is followed\)"):
            hub.download(elsewhere)


def test_offline_mode_names_the_url_and_the_way_out(site, tmp_path, monkeypatch):
    site.files["blob.pth"] = payload(seed=7)
    entry = entry_for(site, tmp_path, "/files/blob.pth")
    monkeypatch.setenv("VTEMPO_OFFLINE", "1")
    expected = rf"blob: not cached and VTEMPO_OFFLINE=1 forbids downloading {site.base}/files/blob.pth; .*`vtempo download blob --from-file PATH`"
    with pytest.raises(VtempoError, match=expected):
        hub.weights_path(entry)
    with pytest.raises(VtempoError, match=expected):
        create_model("blob", weights="default", user_registry=entry.source)
    result = runner.invoke(app, ["download", "blob", "--registry", entry.source])
    assert result.exit_code == 1 and "VTEMPO_OFFLINE=1" in result.output
    assert site.hits == []


def _download_in_child(entry: registry.ModelEntry, log: str) -> None:
    """Runs in a forked process: download, with the hub's notices going to `log`."""
    logging.getLogger("vtempo.weights.hub").addHandler(logging.FileHandler(log))
    hub.download(entry)


def _says(log: str, text: str) -> bool:
    return os.path.exists(log) and text in Path(log).read_text()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with the server thread running (3.12+)
def test_two_processes_downloading_one_file_leave_one_intact_file(site, tmp_path):
    data = payload(600_000, seed=8)
    site.files["blob.pth"] = data
    entry = entry_for(site, tmp_path, "/gate/blob.pth", sha256=sha(data))
    fork = multiprocessing.get_context("fork")
    logs = [str(tmp_path / f"child{i}.log") for i in range(2)]
    first = fork.Process(target=_download_in_child, args=(entry, logs[0]))
    first.start()
    try:
        assert site.gate_reached.wait(30), "the first download never started"
        second = fork.Process(target=_download_in_child, args=(entry, logs[1]))
        second.start()
        deadline = time.monotonic() + 30  # the second process must be waiting on the lock, not downloading
        while not _says(logs[1], "waiting for another vtempo process"):
            assert time.monotonic() < deadline, "the second process did not wait for the first"
            time.sleep(0.02)
        site.gate.set()
        first.join(30)
        second.join(30)
    finally:
        site.gate.set()
        for process in (first, locals().get("second")):
            if process is not None and process.is_alive():
                process.kill()
    assert (first.exitcode, second.exitcode) == (0, 0)
    assert len(site.requests("/gate/blob.pth")) == 1  # the second found the first's file
    assert hub.cache_path(entry).read_bytes() == data
    assert not list(registry.home().rglob("*.part"))


# ------------------------------------------------------------------------------------------ hostile servers


def test_endless_body_stops_at_the_registry_size(site, tmp_path):
    entry = entry_for(site, tmp_path, "/endless/blob.pth", size=1000)
    with pytest.raises(VtempoError) as error:
        hub.download(entry)
    message = str(error.value)
    assert "sends more than the 1000 bytes the registry expects; nothing kept" in message and "\n" not in message
    assert not hub.cache_path(entry).exists() and not list(registry.home().rglob("*.part"))


def test_endless_body_without_a_size_stops_at_the_download_limit(site, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "DOWNLOAD_MAX_BYTES", 200_000)
    seen: list[tuple[int, int | None]] = []
    entry = entry_for(site, tmp_path, "/endless/blob.pth")
    with pytest.raises(VtempoError, match=r"sends more than 200000 bytes, more than the 200000 allowed .*"
                                          r"VTEMPO_DOWNLOAD_MAX_BYTES"):
        hub.download(entry, progress=lambda done, total: seen.append((done, total)))
    assert seen and max(done for done, _ in seen) <= 200_000  # nothing past the limit was written
    assert not hub.cache_path(entry).exists() and not list(registry.home().rglob("*.part"))

    site.files["big.pth"] = bytes(300_000)  # an announced length over the limit: refused before reading
    entry = entry_for(site, tmp_path, "/files/big.pth")
    with pytest.raises(VtempoError, match="offers 300000 bytes, more than the 200000 allowed"):
        hub.download(entry)


@pytest.mark.parametrize("body, kind", [
    (b"<!DOCTYPE html><html><body>Sign in to continue</body></html>", "an HTML page"),
    (bytes(300_000), "not a PyTorch checkpoint"),
])
def test_a_download_without_a_hash_must_load_as_a_checkpoint(site, tmp_path, body, kind):
    site.files["blob.pth"] = body
    entry = entry_for(site, tmp_path, "/files/blob.pth")
    with pytest.raises(VtempoError, match=rf"is not a usable checkpoint \({kind}.*nothing kept"):
        hub.download(entry)
    assert hub.cache_state(entry) == "downloadable" and not hub.cache_path(entry).exists()
    assert not list(registry.home().rglob("*.part"))

    real = checkpoint_bytes(tmp_path)  # a real checkpoint at the same place is kept
    site.files["blob.pth"] = real
    assert hub.download(entry).read_bytes() == real


def test_a_trickling_server_is_a_stall(site, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "DOWNLOAD_STALL_WINDOW_S", 0.3)
    monkeypatch.setattr(limits, "DOWNLOAD_MIN_BYTES_PER_S", 1000.0)
    entry = entry_for(site, tmp_path, "/trickle/1")  # 20 bytes/s, each byte well within the read timeout
    with pytest.raises(VtempoError) as error:
        hub.download(entry)
    message = str(error.value)
    assert "failed after 3 attempts (stalled:" in message and "under 1000 bytes/s" in message
    assert "VTEMPO_DOWNLOAD_MIN_BYTES_PER_S" in message and "\n" not in message
    assert len(site.requests("/trickle/1")) == 3


def test_the_overall_deadline_ends_a_slow_but_steady_download(site, tmp_path, monkeypatch):
    monkeypatch.setenv("VTEMPO_DOWNLOAD_DEADLINE_S", "1")  # the environment raises (here: lowers) a limit
    monkeypatch.setattr(limits, "DOWNLOAD_MIN_BYTES_PER_S", 10.0)
    entry = entry_for(site, tmp_path, "/trickle/500")  # 10 kB/s: never a stall, never done
    with pytest.raises(VtempoError, match=r"took longer than 1 s \(set VTEMPO_DOWNLOAD_DEADLINE_S to raise"):
        hub.download(entry)
    assert len(site.requests("/trickle/500")) == 1
    monkeypatch.setenv("VTEMPO_DOWNLOAD_DEADLINE_S", "soon")
    with pytest.raises(VtempoError, match=r"VTEMPO_DOWNLOAD_DEADLINE_S='soon': expected a positive number"):
        hub.download(entry)


def test_a_redirect_loop_is_one_line(site, tmp_path):
    loop = "/redirect/" + urllib.parse.quote(site.base + "/redirect/x", safe="")
    site_entry = entry_for(site, tmp_path, loop)
    with pytest.raises(VtempoError) as error:
        hub.download(site_entry)
    message = str(error.value)
    assert "redirects in a loop" in message and "--from-file" in message and "\n" not in message


def test_a_cached_web_page_is_named_with_the_way_out(site, tmp_path):
    entry = entry_for(site, tmp_path, "/files/blob.pth")
    cached = hub.cache_path(entry)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\n<html><head><title>Error 403</title></head></html>\n")
    record = {"source": entry.weights.url, "size": cached.stat().st_size}
    cached.with_name(cached.name + ".json").write_text(json.dumps(record))
    assert hub.cache_state(entry) == "cached"
    with pytest.raises(VtempoError, match=r"blob: the cached .*blob.pth is an HTML page, not a checkpoint.*"
                                          r"`vtempo download blob --force`"):
        hub.weights_path(entry)


def test_progress_is_a_callback(site, tmp_path):
    data = payload(2_500_000, seed=11)
    site.files["blob.pth"] = data
    entry = entry_for(site, tmp_path, "/files/blob.pth", sha256=sha(data))
    seen: list[tuple[int, int | None]] = []
    hub.download(entry, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(data), len(data)) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_download_on_first_use_reports_to_the_command_lines_progress(site, tmp_path, monkeypatch):
    data = payload(600_000, seed=12)
    site.files["first.pth"] = data
    entry = entry_for(site, tmp_path, "/files/first.pth", sha256=sha(data))
    seen: list[tuple[str, int]] = []

    @contextlib.contextmanager
    def shown(name):
        yield lambda done, total: seen.append((name, done))

    monkeypatch.setattr(hub, "first_use_progress", shown)
    assert hub.weights_path(entry).read_bytes() == data
    assert seen and seen[-1] == (entry.name, len(data))


@pytest.mark.slow  # a fresh interpreter importing torch
def test_the_weights_package_needs_no_rich():
    code = ("import sys, vtempo.weights.hub, vtempo.weights.checkpoint, vtempo.weights.metadata; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'rich'); print(loaded); sys.exit(bool(loaded))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------ layouts


def _fill(index: int) -> float:
    return ((index % 251) + 1) / 256  # exact in float32, different for neighbouring tensors


LAYOUTS = {
    # layout: (manifest, architecture, classes, key prefix of the released files)
    "tsm_official": ("tsm_r50_official", "tsm-r50", 400, "module."),
    "tam_official": ("tanet_r50_sthv1_official", "tam-r50", 174, ""),
    "tcm_official": ("tcm_r50_official", "tcm-r50", 174, "module."),
    "mmaction2": ("mmaction2_tanet_r50_sthv1", "tam-r50", 174, ""),
}
_generated: dict[str, tuple[Path, dict[str, float]]] = {}


def reference_file(layout: str, folder: Path) -> tuple[Path, dict[str, float]]:
    """A full R-50 checkpoint with the manifest's keys and shapes, in the container its source uses.

    Returns the file and the constant each tensor holds. Made once per test run (they are ~100 MB).
    """
    if layout in _generated:
        return _generated[layout]
    manifest, _, _, prefix = LAYOUTS[layout]
    keys = json.loads((MANIFESTS / f"{manifest}.json").read_text())["keys"]
    state, values = {}, {}
    for index, (key, shape) in enumerate(keys.items()):
        if key.endswith("num_batches_tracked"):
            state[prefix + key] = torch.tensor(index)
        else:
            state[prefix + key] = torch.full(shape, _fill(index))
            values[key] = _fill(index)
    if layout == "mmaction2":
        state["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.5]).view(3, 1, 1)
        state["data_preprocessor.std"] = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
        container = {"meta": {"epoch": 50, "mmengine_version": "0.8.4"}, "state_dict": state}
    elif layout == "tsm_official":
        container = {"epoch": 50, "arch": "resnet50", "state_dict": state, "best_prec1": 71.2,
                     "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}}
    else:
        container = {"epoch": 45, "arch": "resnet50", "state_dict": state, "best_prec1": torch.tensor(47.0)}
    path = folder / f"{manifest}.pth"
    torch.save(container, path)
    _generated[layout] = (path, values)
    return path, values


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory):
    yield tmp_path_factory.mktemp("reference")
    _generated.clear()


@pytest.mark.slow  # ~100 MB ResNet-50 checkpoints served and loaded
@pytest.mark.parametrize("layout", sorted(LAYOUTS) + ["vtempo"])
def test_checkpoint_in_each_layout_is_served_verified_and_loaded(site, tmp_path, reference_folder, layout):
    if layout == "vtempo":  # vtempo's own format, from a narrow network
        source_model = build("tcm-r26w16", num_classes=7, frames=4)
        path = save_checkpoint(source_model, reference_folder / "vtempo.pth", frames=4)
        arch, classes, frames = "tcm-r26w16", 7, 4
    else:
        path, values = reference_file(layout, reference_folder)
        arch, classes, frames = LAYOUTS[layout][1], LAYOUTS[layout][2], 8
    site.files[path.name] = path
    spec = {"arch": arch, "num_classes": classes, "frames": frames,
            "weights": {"layout": layout, "url": f"{site.base}/files/{path.name}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    reg = user_registry(tmp_path / "user.yaml", {"served": spec})

    model = create_model("served", weights="default", user_registry=reg)
    assert hub.cache_state(model.entry) == "cached"
    assert len(site.requests(f"/files/{path.name}")) == 1
    if layout == "vtempo":
        for key, tensor in source_model.state_dict().items():
            assert torch.equal(model.state_dict()[key], tensor), key
        return
    head = "cls_head.fc_cls.weight" if layout == "mmaction2" else "new_fc.weight"
    stem = "backbone.conv1.conv.weight" if layout == "mmaction2" else "base_model.conv1.weight"
    assert torch.all(model.fc.weight == values[head])
    assert torch.all(model.backbone.conv1.weight == values[stem])
    last_bn = next(k for k in values if "layer4.2." in k and k.endswith(("bn3.running_var", "conv3.bn.running_var")))
    assert torch.all(model.backbone.layer4[2].bn3.running_var == values[last_bn])


@pytest.mark.slow  # a ResNet-50 checkpoint
def test_manual_download_then_from_file_import_shows_cached(site, tmp_path, reference_folder):
    entry = registry.get_entry("tam-r50-sthv1")  # the official TAM: a Google Drive folder
    assert hub.cache_state(entry) == "manual download"
    with pytest.raises(VtempoError, match=r"by hand from https://drive\.google\.com/.*`vtempo download tam-r50-sthv1 --from-file PATH`"):
        hub.weights_path(entry)
    result = runner.invoke(app, ["download", "tam-r50-sthv1"])
    assert result.exit_code == 1 and "drive.google.com" in result.output and "--from-file" in result.output

    path, values = reference_file("tam_official", reference_folder)
    hand_downloaded = tmp_path / "ckpt.best.pth.tar"
    os.link(path, hand_downloaded) if hasattr(os, "link") else hand_downloaded.write_bytes(path.read_bytes())
    result = runner.invoke(app, ["download", "tam-r50-sthv1", "--from-file", str(hand_downloaded)])
    assert result.exit_code == 0, result.output
    assert hand_downloaded.exists()  # the user's file is left alone

    listing = json.loads(runner.invoke(app, ["models", "--json"]).output)
    states = {model["name"]: model["weights"] for model in listing["models"]}
    assert states["tam-r50-sthv1"] == "cached" and states["tam-r50-sthv2"] == "manual download"
    assert "tam-r50" in listing["architectures"]
    table = runner.invoke(app, ["models"]).output
    assert any(line.split()[:1] == ["tam-r50-sthv1"] and line.rstrip().endswith("cached") for line in table.splitlines())

    cached = torch.load(hub.weights_path(entry), map_location="cpu", weights_only=True)
    assert cached["format"] == "vtempo" and cached["arch"] == "tam-r50" and cached["frames"] == 8
    assert torch.all(cached["state_dict"]["fc.weight"] == values["new_fc.weight"])
    record = json.loads(hub.cache_path(entry).with_name("tam-r50-sthv1.pth.json").read_text())
    assert record["imported"] and record["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_refuses_a_file_failing_the_registry_hash(site, tmp_path):
    data = payload(seed=9)
    mine = tmp_path / "mine.pth"
    mine.write_bytes(data)
    entry = entry_for(site, tmp_path, "/files/blob.pth", sha256="12345678")
    result = runner.invoke(app, ["download", "blob", "--from-file", str(mine), "--registry", entry.source])
    assert result.exit_code == 1
    assert f"has sha256 {sha(data)}, the registry expects 12345678" in result.output
    assert mine.read_bytes() == data and not hub.cache_path(entry).exists()


def test_local_file_entries_are_used_in_place(site, tmp_path):
    (tmp_path / "runs").mkdir()
    model = build("tsn-r10w8", num_classes=3, frames=2)
    save_checkpoint(model, tmp_path / "runs" / "best.pth")
    digest = hashlib.sha256((tmp_path / "runs" / "best.pth").read_bytes()).hexdigest()
    spec = {"arch": "tsn-r10w8", "num_classes": 3, "frames": 2, "weights": {"url": "runs/best.pth", "sha256": digest}}
    reg = user_registry(tmp_path / "user.yaml", {"mine": spec, "mine-bad": {**spec, "weights": {"url": "runs/best.pth", "sha256": "0" * 64}}})
    entry = registry.get_entry("mine", reg)
    assert entry.weights.url == str(tmp_path / "runs" / "best.pth")  # relative to the registry file
    assert hub.cache_state(entry) == "local file"
    loaded = create_model("mine", weights="default", user_registry=reg)
    assert torch.equal(loaded.fc.weight, model.fc.weight)
    with pytest.raises(VtempoError, match="has sha256 .*, the registry expects 0000"):
        hub.weights_path(registry.get_entry("mine-bad", reg))
    assert (tmp_path / "runs" / "best.pth").exists()  # a user's own file is never deleted


def test_cli_download_all_and_errors(site, tmp_path, monkeypatch):
    data = payload(seed=10)
    site.files["good.pth"] = data
    models = {
        "good": {"arch": "tsn-r10w8", "num_classes": 5, "frames": 2,
                 "weights": {"url": f"{site.base}/files/good.pth", "sha256": sha(data)}},
        "gone": {"arch": "tsn-r10w8", "num_classes": 5, "frames": 2, "weights": {"url": f"{site.base}/status/404"}},
        "by-hand": {"arch": "tsn-r10w8", "num_classes": 5, "frames": 2,
                    "weights": {"manual_url": "https://example.org/folder"}},
        "paper-only": {"arch": "tsn-r10w8", "num_classes": 5, "frames": 2, "notes": "no weights"},
    }
    # Only this registry: --all must not reach the built-in entries' real hosts.
    monkeypatch.setattr(registry, "builtin_registry_path", lambda: user_registry(tmp_path / "only.yaml", models))
    registry._load.cache_clear()

    result = runner.invoke(app, ["download", "--all"])
    assert result.exit_code == 1  # "gone" failed
    assert "good: downloaded" in result.output and "HTTP 404" in result.output
    assert "by hand from https://example.org/folder" in result.output  # reported, not a failure of --all
    assert "paper-only" not in result.output
    assert hub.cache_path(registry.get_entry("good")).read_bytes() == data

    result = runner.invoke(app, ["download", "good"])
    assert result.exit_code == 0 and "good: cached" in result.output
    result = runner.invoke(app, ["download", "paper-only"])
    assert result.exit_code == 2 and "no weights are published" in result.output
    assert runner.invoke(app, ["download", "nonexistent"]).exit_code == 2
    assert runner.invoke(app, ["download"]).exit_code == 2
    assert runner.invoke(app, ["download", "good", "gone", "--from-file", "x"]).exit_code == 2


def test_bundled_weights_need_no_cache(site, tmp_path, monkeypatch):
    package = tmp_path / "package"
    (package / "bundled").mkdir(parents=True)
    model = build("tsn-r10w8", num_classes=3, frames=2)
    save_checkpoint(model, package / "bundled" / "demo.pth")
    monkeypatch.setattr(hub.resources, "files", lambda name: package)  # stands in for vtempo.weights' package folder
    spec = {"arch": "tsn-r10w8", "num_classes": 3, "frames": 2, "weights": {"bundled": "demo.pth"}}
    reg = user_registry(tmp_path / "user.yaml", {"demo": spec, "gone": {**spec, "weights": {"bundled": "gone.pth"}}})
    entry = registry.get_entry("demo", reg)
    assert hub.cache_state(entry) == "bundled"
    assert hub.weights_path(entry) == package / "bundled" / "demo.pth" == hub.download(entry)
    assert torch.equal(create_model("demo", weights="default", user_registry=reg).fc.weight, model.fc.weight)
    result = runner.invoke(app, ["download", "demo", "--registry", str(reg)])
    assert result.exit_code == 0 and "demo: bundled" in result.output
    with pytest.raises(VtempoError, match="the bundled weights .*gone.pth are missing; reinstall vtempo"):
        hub.weights_path(registry.get_entry("gone", reg))
    assert not hub.cache_dir().exists() and site.hits == []
