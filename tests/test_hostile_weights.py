"""Checkpoint files written to hurt: code in the pickle, metadata out of bounds, terminal escapes in
class names, unwritable destinations, a garbage `last.pt`. Each is one line naming the file."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.data import synth
from vtempo.errors import UsageError, VtempoError
from vtempo.inference.recognizer import load
from vtempo.models import build
from vtempo.training.train import TrainConfig, train
from vtempo.weights.checkpoint import load_weights, read_file, read_state, read_training_state, save_checkpoint
from vtempo.weights.metadata import MetadataError, checked_metadata

runner = CliRunner()


class RunsCode:
    """Pickles as a call to os.system: what a malicious checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    return save_checkpoint(build("tsn-r10w8", num_classes=3, frames=2), folder / "tiny.pt", input_size=32,
                           classes=["a", "b", "c"])


def tiny_with(folder: Path, **meta) -> Path:
    """A good tiny checkpoint whose metadata fields are then overwritten with `meta`."""
    torch.manual_seed(0)
    path = save_checkpoint(build("tsn-r10w8", num_classes=3, frames=2), folder / "meta.pt")
    torch.save({**torch.load(path, weights_only=True), **meta}, path)
    return path


def one_line(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert str(path) in message and "\n" not in message and len(message) < 600, message
    return message


def test_a_checkpoint_that_runs_code_is_refused_by_name(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "x": RunsCode(marker)}, path)
    with pytest.raises(VtempoError) as error:
        read_file(path)
    message = one_line(error, path)
    assert "asks to run code when loaded (it calls posix.system)" in message or "(it calls nt.system)" in message
    assert "vtempo will not load it" in message
    assert "weights_only" not in message and "Re-running" not in message  # no advice to turn the check off
    assert not marker.exists()
    result = runner.invoke(app, ["convert", str(path), str(tmp_path / "out.pt")])
    assert result.exit_code == 1 and "will not load it" in result.output and not marker.exists()


def test_symbolic_links_and_web_pages_say_what_they_are(tmp_path):
    loop = tmp_path / "loop.pt"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.pt"
    dangling.symlink_to(tmp_path / "gone.pt")
    page = tmp_path / "page.pt"
    page.write_text("<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n")
    model = build("tsn-r10w8", num_classes=3)
    for path, reason in ((loop, "a symbolic link loop, not a checkpoint file"),
                         (dangling, f"a broken symbolic link (points to {tmp_path / 'gone.pt'})"),
                         (tmp_path, "a folder, not a checkpoint file"),
                         (page, "an HTML page, not a PyTorch checkpoint")):
        with pytest.raises(VtempoError) as error:
            load_weights(model, path)
        assert reason in one_line(error, path)


BAD_METADATA = [
    ({"frames": "abc"}, "metadata.frames: expected int, got 'abc'"),
    ({"input_size": -5}, "metadata.input_size: must be between 8 and 1024, got -5"),
    ({"num_classes": 10**12}, "metadata.num_classes: must be between 1 and 100000"),
    ({"protocol": {"clips": 0}}, "metadata.protocol.clips: must be between 1 and 32, got 0"),
    ({"protocol": {"clips": 100000}}, "metadata.protocol.clips: must be between 1 and 32, got 100000"),
    ({"protocol": {"sampling": "stride", "stride": 0}}, "metadata.protocol.stride: must be between 1 and 64, got 0"),
    ({"protocol": {"crop": "fourteen"}}, "metadata.protocol.crop: must be one of"),
    ({"protocol": "ten crops"}, "metadata.protocol: expected a mapping"),
    ({"resize": [-1]}, "metadata.resize: expected a short side or [height, width]"),
    ({"mean": ["x"] * 3}, "metadata.mean: expected a list of 3 numbers"),
    ({"arch": "resnet50"}, "metadata.arch: unknown architecture 'resnet50'"),
    ({"classes": ["a", "b"]}, "metadata.classes: 2 names for num_classes 3"),
    ({"classes": ["a", "\x1b]0;pwned\x07b", "c"]}, "metadata.classes[1]: holds the control character U+001B"),
    ({"classes": ["a", "b\u202ec", "c"]}, "metadata.classes[1]: holds the control character U+202E"),
    ({"classes": ["a", "b" * 5000, "c"]}, "metadata.classes[1]: 5000 characters, more than 256"),
]


@pytest.mark.parametrize("meta, reason", BAD_METADATA, ids=[reason.split(":")[0] for _, reason in BAD_METADATA])
def test_checkpoint_metadata_is_checked_wherever_it_is_read(tmp_path, meta, reason):
    path = tiny_with(tmp_path, **meta)
    with pytest.raises(MetadataError) as error:
        read_state(path)
    assert reason in one_line(error, path)
    with pytest.raises(VtempoError, match="metadata"):  # the classifier (the 18 GB `clips` case) and convert
        load("tsn-r10w8", weights=path)
    result = runner.invoke(app, ["convert", str(path), str(tmp_path / "out.pt")])
    assert result.exit_code == 1 and "metadata" in result.output and "Traceback" not in result.output
    assert "\x1b" not in result.output and not (tmp_path / "out.pt").exists()


def test_good_metadata_is_normalised_and_foreign_arch_names_are_dropped(tmp_path):
    checked = checked_metadata({"arch": "tsm-r50", "resize": 256, "input_size": None, "epoch": 3,
                                "protocol": {"clips": 2, "crop": "three"}}, "x.pt")
    assert checked == {"arch": "tsm-r50", "resize": [256], "epoch": 3, "protocol": {
        "sampling": "uniform", "clips": 2, "crop": "three", "average": "logits", "stride": None}}
    # the official TSM/TAM containers name their backbone: not a vtempo architecture, not an error
    assert checked_metadata({"arch": "resnet50", "best_prec1": 71.2}, "x.pt") == {"best_prec1": 71.2}
    with pytest.raises(MetadataError, match="x.pt: metadata.arch: unknown architecture"):
        checked_metadata({"format": "vtempo", "arch": "resnet50"}, "x.pt")


def test_a_limit_is_raised_by_its_environment_variable(tmp_path, monkeypatch):
    path = tiny_with(tmp_path, protocol={"clips": 40})
    with pytest.raises(MetadataError, match="set VTEMPO_MAX_CLIPS to raise the limit of 32"):
        read_state(path)
    monkeypatch.setenv("VTEMPO_MAX_CLIPS", "40")
    assert read_state(path)[1]["protocol"]["clips"] == 40
    monkeypatch.setenv("VTEMPO_MAX_CLIPS", "-1")
    with pytest.raises(UsageError, match="VTEMPO_MAX_CLIPS='-1': expected a positive number"):
        read_state(path)


def test_load_errors_through_weights_name_the_file(tmp_path):
    path = save_checkpoint(build("tsm-r10w8", num_classes=3, frames=2), tmp_path / "tsm.pt")
    with pytest.raises(VtempoError) as error:
        load("tsn-r10w8", weights=path)  # TSM weights into a TSN
    message = one_line(error, path)
    assert message.startswith(f"{path} (vtempo layout) does not fit the model") and "state dict" not in message


def test_a_loaded_file_saved_again_still_loads_weights_only(tiny, tmp_path):
    loaded = read_file(tiny)
    assert loaded.path == tiny
    torch.save(loaded, tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert again.keys() == loaded.keys() and torch.equal(again["state_dict"]["fc.weight"], loaded["state_dict"]["fc.weight"])


def test_convert_into_a_folder_or_an_unwritable_place_leaves_nothing(tiny, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["convert", str(tiny), str(folder)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{folder}: a folder; give the checkpoint a file name" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for target in (blocker / "out.pt", blocker / "deeper" / "out.pt"):
        result = runner.invoke(app, ["convert", str(tiny), str(target)])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"{target}: cannot write the checkpoint ({blocker} is a file, not a folder)" in " ".join(result.output.split())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "existing"]

    fresh = tmp_path / "new" / "sub" / "out.pt"  # folders that do not exist yet are made
    assert runner.invoke(app, ["convert", str(tiny), str(fresh)]).exit_code == 0
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["out.pt"]


def test_resume_reads_last_pt_weights_only_with_one_line_errors(tmp_path):
    data = tmp_path / "data"
    synth.generate(data, classes="grow,shrink", clips_per_class=3, frames=6, size=32, seed=0)
    out = tmp_path / "run"
    out.mkdir()
    last = out / "last.pt"
    marker = tmp_path / "ran"
    config = TrainConfig(data=str(data), model="tsn-r10w8", out=str(out), epochs=1, resume=True, frames=2, size=32,
                         resize=32, batch_size=2, workers=0, progress=False, threads=1, val_split=0.34)
    for content, reason in (
        (os.urandom(4096), "not a"),
        (None, "asks to run code when loaded"),
        ({"model": {}, "epoch": "three"}, "not a vtempo training state ('optimizer' is missing"),
    ):
        if isinstance(content, bytes):
            last.write_bytes(content)
        elif content is None:
            torch.save({"model": RunsCode(marker)}, last)
        else:
            torch.save(content, last)
        with pytest.raises(VtempoError) as error:
            train(config)
        assert reason in one_line(error, last)
    assert not marker.exists()
    with pytest.raises(VtempoError, match="not a vtempo training state"):
        read_training_state(save_checkpoint(build("tsn-r10w8", num_classes=2), tmp_path / "model.pt"))
