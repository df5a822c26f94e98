"""Absurd numbers, bombs and tampered files: every option and every field read from a file is bounded
(vtempo.limits), and each refusal is one line naming the option, the parameter or the file."""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import videogen
from vtempo import limits
from vtempo.cli import app
from vtempo.errors import UsageError, VtempoError
from vtempo.evaluation.robustness import parse_strides
from vtempo.inference.recognizer import load
from vtempo.inference.sharding import parse_shard
from vtempo.inference.stream import run_stream
from vtempo.models import build
from vtempo.weights import hub, registry
from vtempo.weights.checkpoint import read_file, save_checkpoint

runner = CliRunner()
CLIP = Path(__file__).parent.parent / "examples" / "clips" / "move_left.mp4"
LONG_NAME = "a" * 300


def refused(args: list[str], flag: str, code: int = 2, **env) -> str:
    result = runner.invoke(app, args, env=env or None)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert flag in lines[0], result.output
    return lines[0]


# ------------------------------------------------------------------------------------------ options

CLIP_ARGS = [str(CLIP)]
ABSURD = [
    (["classify", *CLIP_ARGS, "--shard", "0/30000000"], "--shard 0/30000000"),
    (["robustness", "--stride", "1..100000"], "--stride 100000"),
    (["robustness", "--stride", "9999999999999999999999"], "--stride 9999999999999999999999"),
    (["export", "tsn-demo", "-o", "never.onnx", "--frames", "100000"], "--frames 100000"),
    (["timeline", *CLIP_ARGS, "--frames", "100000"], "--frames 100000"),
    (["cam", *CLIP_ARGS, "-m", "tsn-demo", "--frames", "100000"], "--frames 100000"),
    (["profile", "tsn-r18", "--size", "100000"], "--size 100000"),
    (["profile", "tsn-r18", "--batch", "100000"], "--batch 100000"),
    (["profile", "tsn-r18", "--threads", "1000000"], "--threads 1000000"),
    (["profile", "tsn-r18", "--iters", "1000000000"], "--iters 1000000000"),
    (["timeline", *CLIP_ARGS, "--window", "nan"], "--window nan"),
    (["timeline", *CLIP_ARGS, "--hop", "inf"], "--hop inf"),
    (["timeline", *CLIP_ARGS, "--min-duration", "inf"], "--min-duration inf"),
    (["timeline", *CLIP_ARGS, "--threshold", "nan"], "--threshold nan"),
    (["timeline", *CLIP_ARGS, "--batch-size", "100000000"], "--batch-size 100000000"),
    (["embed", *CLIP_ARGS, "-m", "tsn-demo", "--window", "inf"], "--window inf"),
    (["embed", *CLIP_ARGS, "-m", "tsn-demo", "--window", "2", "--hop", "nan"], "--hop nan"),
    (["stream", str(CLIP), "--every", "nan"], "--every nan"),
    (["stream", str(CLIP), "--every", "inf"], "--every inf"),
    (["classify", *CLIP_ARGS, "--batch-size", "100000000"], "--batch-size 100000000"),
    (["classify", *CLIP_ARGS, "--workers", "100000000"], "--workers 100000000"),
    (["check-videos", *CLIP_ARGS, "--frames", "100000"], "--frames 100000"),
    (["train", "nowhere", "-m", "tsn-r18", "--lr", "-1"], "--lr -1"),
    (["train", "nowhere", "-m", "tsn-r18", "--lr", "nan"], "--lr nan"),
    (["train", "nowhere", "-m", "tsn-r18", "--dropout", "1.5"], "--dropout 1.5"),
    (["train", "nowhere", "-m", "tsn-r18", "--weight-decay", "inf"], "--weight-decay inf"),
    (["train", "nowhere", "-m", "tsn-r18", "--clip-grad", "nan"], "--clip-grad nan"),
    (["train", "nowhere", "-m", "tsn-r18", "--val-split", "2"], "--val-split 2"),
    (["train", "nowhere", "-m", "tsn-r18", "--epochs", "1000000000"], "--epochs 1000000000"),
    (["train", "nowhere", "-m", "tsn-r18", "--stride", "9999999999999999999999"], "--stride 9999999999999999999999"),
    (["train", "nowhere", "-m", "tsn-r18", "--seed", "-1"], "--seed"),
    (["synth", "never", "--size", "100000"], "--size 100000"),
    (["synth", "never", "--frames", "100000"], "--frames 100000"),
    (["synth", "never", "--clips", "1000000000"], "--clips 1000000000"),
    (["synth", "never", "--seed", str(2**70)], "--seed"),
]


@pytest.mark.parametrize("args, named", ABSURD, ids=[" ".join(args[:1] + args[-2:]) for args, _ in ABSURD])
def test_an_absurd_number_is_one_usage_line_naming_the_option(args, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is written, but a mistake would land here
    refused(args, named)
    assert not any(tmp_path.iterdir())


def test_the_library_names_its_parameters_and_a_limit_is_raised_by_its_variable(monkeypatch):
    with pytest.raises(UsageError, match="shard='0/30000000': more than 100000 shards.*VTEMPO_MAX_SHARDS") as caught:
        parse_shard("0/30000000")
    assert caught.value.parameter == "shard" and "--" not in str(caught.value)
    with pytest.raises(UsageError, match=r"strides=100000: must be from 1 to 64 \(set VTEMPO_MAX_STRIDE") as caught:
        parse_strides("1..100000")
    assert caught.value.parameter == "strides" and "--" not in str(caught.value)
    rec = load("tsm-demo")
    for every in (math.nan, math.inf, -1.0):
        with pytest.raises(UsageError, match=f"every={every}: must be a finite number"):
            run_stream(str(CLIP), rec, every=every)
    with pytest.raises(UsageError, match="frames=300: must be from 1 to 256"):
        load("tsm-demo", frames=300)
    monkeypatch.setenv("VTEMPO_MAX_STRIDE", "128")
    assert parse_strides("100..101") == [100, 101]
    monkeypatch.setenv("VTEMPO_MAX_FRAMES", "512")
    limits.check_int("frames", 300, 1, "MAX_FRAMES")


def test_a_window_too_long_to_hold_is_refused_before_it_is_read():
    rec = load("tcm-timeline-demo")
    from vtempo.inference.timeline import frames_per_window

    assert frames_per_window(rec, 30.0, 10.0, None) == (300, 150)
    with pytest.raises(UsageError, match=r"window=3000: 90000 frames at 30 fps, more than the 4096 .*VTEMPO_MAX_WINDOW_FRAMES"):
        frames_per_window(rec, 30.0, 3000.0, None)


def test_an_over_long_file_name_is_one_line(tmp_path):
    line = refused(["classify", str(tmp_path / f"{LONG_NAME}.mp4")], "longer than the file system allows")
    assert LONG_NAME in line
    refused(["classify", str(CLIP), "-o", str(tmp_path / f"{LONG_NAME}.jsonl")], "cannot write there (File name too long)")


def test_vtempo_home_must_be_a_folder(tmp_path):
    a_file = tmp_path / "home"
    a_file.write_text("not a folder")
    for home in (a_file, a_file / "below"):
        line = refused(["download", "tsm-r50-k400"], "VTEMPO_HOME", VTEMPO_HOME=str(home), VTEMPO_OFFLINE="1")
        assert f"{a_file} is a file, not a folder" in line


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    return save_checkpoint(build("tsn-r10w8", num_classes=3, frames=2), folder / "tiny.pt", input_size=32,
                           classes=["a", "b", "c"])


def deflated(source: Path, target: Path, **extra) -> Path:
    """`source`'s contents plus `extra`, saved by torch, then every record deflated: a real checkpoint
    that torch.load reads, much smaller on disk than in memory."""
    buffer = io.BytesIO()
    torch.save({**torch.load(source, weights_only=True), **extra}, buffer)
    with zipfile.ZipFile(buffer) as plain, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as packed:
        for info in plain.infolist():
            packed.writestr(info.filename, plain.read(info.filename))
    return target


def test_a_zip_bomb_checkpoint_is_refused_from_its_directory(tiny, tmp_path):
    bomb = deflated(tiny, tmp_path / "bomb.pt", padding=torch.zeros(48 * 2**20 // 4))
    assert bomb.stat().st_size < 2**20  # 48 MiB of zeros in under a megabyte
    assert torch.load(bomb, weights_only=True)["padding"].numel() == 12 * 2**20  # torch inflates it
    env = {**os.environ, "VTEMPO_CHECKPOINT_MAX_BYTES": str(32 * 2**20), "PYTHONPATH": os.getcwd()}
    script = ("import resource, sys\n"
              "from vtempo.cli import app\n"
              "try:\n    app(['classify', sys.argv[1], '--model', sys.argv[2]])\n"
              "finally:\n    print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", script, str(CLIP), str(bomb)], capture_output=True, text=True,
                            env=env, timeout=300)
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr
    assert lines[0].startswith(f"error: {bomb}: ") and "bytes uncompressed" in lines[0], result.stderr
    assert "VTEMPO_CHECKPOINT_MAX_BYTES" in lines[0] and len(lines) == 2, result.stderr


def test_an_archive_of_too_many_records_is_refused(tiny, tmp_path, monkeypatch):
    many = deflated(tiny, tmp_path / "many.pt", **{f"extra{i}": torch.zeros(1) for i in range(60)})
    monkeypatch.setenv("VTEMPO_CHECKPOINT_MAX_ENTRIES", "50")
    with pytest.raises(VtempoError, match=r"records in its archive, more than 50 \(set VTEMPO_CHECKPOINT_MAX_ENTRIES"):
        read_file(many)
    monkeypatch.delenv("VTEMPO_CHECKPOINT_MAX_ENTRIES")
    assert "extra59" in read_file(many)


@pytest.mark.parametrize("kind", ["int64", "bool", "complex64", "sparse"])
def test_weights_that_are_not_dense_real_numbers_are_refused(tiny, tmp_path, kind):
    saved = torch.load(tiny, weights_only=True)
    weight = saved["state_dict"]["fc.weight"]
    saved["state_dict"]["fc.weight"] = weight.to_sparse() if kind == "sparse" else (weight * 10).to(getattr(torch, kind))
    path = tmp_path / f"{kind}.pt"
    torch.save(saved, path)
    with pytest.raises(VtempoError) as error:
        load(str(path))
    message = str(error.value)
    assert str(path) in message and "fc.weight" in message and "\n" not in message
    assert ("sparse" in message) if kind == "sparse" else (f"holds {kind} values" in message)
    result = runner.invoke(app, ["classify", str(CLIP), "--model", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output and "fc.weight" in result.output


# ------------------------------------------------------------------------------------------ the cache


def _cached_entry(tmp_path: Path, tiny: Path, monkeypatch) -> registry.ModelEntry:
    """A user entry whose (never fetched) URL's file sits in the cache as a download stores it."""
    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VTEMPO_OFFLINE", "1")
    digest = hub.sha256_file(tiny)
    spec = {"arch": "tsn-r10w8", "num_classes": 3, "frames": 2,
            "weights": {"layout": "vtempo", "url": "http://127.0.0.1:9/tiny.pt", "sha256": digest,
                        "size": tiny.stat().st_size}}
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump({"models": {"mine": spec}}), encoding="utf-8")
    registry._load.cache_clear()
    entry = registry.get_entry("mine", path)
    staged = tmp_path / "download.part"
    staged.write_bytes(tiny.read_bytes())
    hub._store(entry, staged, {"source": spec["weights"]["url"], "source_sha256": digest, "source_size": tiny.stat().st_size})
    return entry


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the hash can tell
    path.write_bytes(bytes(data))


def test_a_cached_checkpoint_that_no_longer_matches_is_refused(tiny, tmp_path, monkeypatch):
    entry = _cached_entry(tmp_path, tiny, monkeypatch)
    assert hub.weights_path(entry) == hub.cache_path(entry)
    _tamper(hub.cache_path(entry))
    assert hub.cache_state(entry) == "cached"  # the record and the size still match
    with pytest.raises(VtempoError, match=r"mine: the cached .* has changed since it was stored .*`vtempo download mine --force`"):
        hub.weights_path(entry)
    result = runner.invoke(app, ["classify", str(CLIP), "--model", "mine", "--registry", str(tmp_path / "user.yaml")])
    assert result.exit_code == 1 and "vtempo download mine --force" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_an_imported_checkpoint_that_changed_is_refused(tiny, tmp_path, monkeypatch):
    entry = _cached_entry(tmp_path, tiny, monkeypatch)
    imported = hub.import_file(entry, tiny)
    assert hub.weights_path(entry) == imported
    _tamper(imported)
    with pytest.raises(VtempoError, match=rf"fetch it again with `vtempo download mine --from-file {tiny.resolve()}`"):
        hub.weights_path(entry)


# ------------------------------------------------------------------------------------------ exported files


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    from vtempo.export import export_model

    return export_model(load("tsn-demo", device="cpu"), "onnx", tmp_path_factory.mktemp("onnx") / "tsn.onnx").path


def _edited(source: Path, target: Path, **changes) -> Path:
    """A copy of `source` whose vtempo metadata has `changes` applied (None deletes a field)."""
    import onnx

    model = onnx.load(str(source))
    entries = {item.key: item.value for item in model.metadata_props}
    for key, value in changes.items():
        entries.pop(key, None) if value is None else entries.__setitem__(key, json.dumps(value))
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


BAD_EXPORTS = [
    ({"labels": ["one", "two"]}, "2 names for num_classes 10"),
    ({"frames": None}, "its metadata lacks frames"),
    ({"frames": 10**7}, "frames"),
    ({"frames": 8}, "its metadata says frames 8, its graph takes 4"),
    ({"input_size": 10**6}, "input_size"),
    ({"mean": [0.5]}, "mean"),
    ({"labels": ["\x1b[2J"] * 10}, "control character"),
]


@pytest.mark.parametrize("changes, reason", BAD_EXPORTS, ids=[reason[:30] for _, reason in BAD_EXPORTS])
def test_exported_metadata_is_checked_like_a_checkpoints(exported, tmp_path, changes, reason):
    path = _edited(exported, tmp_path / "edited.onnx", **changes)
    with pytest.raises(VtempoError) as error:
        load(str(path))
    message = str(error.value)
    assert str(path) in message and reason in message and "\n" not in message, message
    result = runner.invoke(app, ["classify", str(CLIP), "--model", str(path)])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output and reason in result.output


def test_an_unchanged_export_still_loads(exported, tmp_path):
    rec = load(str(_edited(exported, tmp_path / "same.onnx")))
    assert rec.frames == 4 and len(rec.labels) == 10
    assert rec.classify(str(CLIP), topk=1)[0].label


# ------------------------------------------------------------------------------------------ cam


def test_cam_on_a_huge_frame_works_at_the_models_size(tmp_path):
    video = videogen.write_ffmpeg(tmp_path / "wide.avi", 12, size=(16, 4000), codec=["-c:v", "mjpeg", "-q:v", "5"])
    maps = tmp_path / "maps.npz"
    result = runner.invoke(app, ["cam", str(video), "-m", "tsn-demo", "-m", "tsm-demo", "--output", str(tmp_path / "cam.jpg"),
                                 "--save-maps", str(maps)])
    assert result.exit_code == 0, result.output
    most = max(load(name).max_side for name in ("tsn-demo", "tsm-demo"))
    with np.load(maps) as saved:
        for name in ("tsn-demo", "tsm-demo"):
            assert saved[name].shape[2] == most and saved[name].shape[1] <= 16, saved[name].shape
