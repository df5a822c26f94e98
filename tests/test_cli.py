"""The command line keeps its promises: counts and ranges are checked with one-line errors (exit code
2) in every command, clip-length mismatches and unknown names are explained, `--version` and
`python -m vtempo` work, exit codes are the documented ones, result files say what produced them, and
`robustness` with no data and no model sweeps the bundled demo models on the synthetic test set."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

import vtempo
from vtempo.cli import app
from vtempo.commands import common
from vtempo.weights.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT / "examples" / "clips"


def run_cli(args: list[str]):
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_usage_error(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])


def usage_cases(tmp_path: Path) -> list[tuple[list, tuple[str, ...]]]:
    video = next(CLIPS.iterdir())
    return [
        (["classify", CLIPS, "--frames", "0"], ("--frames", "at least 1", "0")),
        (["classify", CLIPS, "--frames", "-3"], ("--frames", "-3")),
        (["classify", CLIPS, "--topk", "0"], ("--topk",)),
        (["classify", CLIPS, "--batch-size", "0"], ("--batch-size",)),
        (["classify", CLIPS, "--workers", "-1"], ("--workers",)),
        (["classify", CLIPS, "--views", "0x1"], ("--views",)),
        (["classify", CLIPS, "--dtype", "fp8"], ("--dtype",)),
        (["evaluate", tmp_path, "--model", "tsm-demo", "--frames", "0"], ("--frames",)),
        (["evaluate", tmp_path, "--model", "tsm-demo", "--batch-size", "0"], ("--batch-size",)),
        (["evaluate", tmp_path, "--model", "tsm-demo", "--views", "2x4"], ("--views",)),
        (["robustness", tmp_path, "--stride", "9..2"], ("--stride", "LOW must not exceed HIGH")),
        (["robustness", tmp_path, "--stride", "0..3"], ("--stride", "at least 1")),
        (["robustness", tmp_path, "--frames", "0"], ("--frames",)),
        (["robustness", tmp_path, "--workers", "-2"], ("--workers",)),
        (["cam", video, "--model", "tsm-demo", "--frames", "0"], ("--frames",)),
        (["cam", video, "--model", "tsm-demo", "--alpha", "2"], ("--alpha",)),
        (["train", tmp_path, "--model", "tsn-r10w8", "--epochs", "0"], ("--epochs",)),
        (["train", tmp_path, "--model", "tsn-r10w8", "--frames", "-1"], ("--frames",)),
        (["synth", tmp_path / "set", "--clips", "0"], ("--clips",)),
        (["profile", "tsn-r10w8", "--batch", "0"], ("--batch",)),
        (["profile", "tsn-r10w8", "--threads", "0"], ("--threads",)),
        (["train-demo-zoo", tmp_path / "zoo", "--jobs", "0"], ("--jobs",)),
    ]


def test_counts_and_ranges_are_checked_in_every_command(tmp_path):
    for args, expected in usage_cases(tmp_path):
        one_line_usage_error(run_cli(args), *expected)
    assert not (tmp_path / "set").exists() and not (tmp_path / "zoo").exists()


def test_a_clip_length_the_model_cannot_take_is_explained():
    one_line_usage_error(run_cli(["classify", CLIPS, "--model", "tam-demo", "--frames", "8"]),
                         "tam-demo was trained on 4 frames per clip", "--frames 4")
    one_line_usage_error(run_cli(["classify", CLIPS, "--frames", "1"]),  # the default model, tcm-demo
                         "tcm-demo was trained on 4 frames per clip")


def test_unknown_models_get_suggestions_in_every_command(tmp_path):
    video = next(CLIPS.iterdir())
    for args in (["classify", CLIPS, "--model", "tsm-dmeo"], ["evaluate", tmp_path, "--model", "tsm-dmeo"],
                 ["robustness", tmp_path, "--model", "tsm-dmeo"], ["cam", video, "--model", "tsm-dmeo"]):
        one_line_usage_error(run_cli(args), "unknown model 'tsm-dmeo'", "did you mean tsm-demo")


def test_version_and_python_dash_m():
    result = run_cli(["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"vtempo {vtempo.__version__}"
    module = subprocess.run([sys.executable, "-m", "vtempo", "--version"], capture_output=True, text=True)
    assert module.returncode == 0 and module.stdout.strip() == f"vtempo {vtempo.__version__}"
    # the parser's own errors (not a number, a missing argument) are one line too
    for args, expected in ((["classify", str(CLIPS), "--frames", "abc"], "'--frames'"),
                           (["evaluate"], "Missing argument")):
        bad = subprocess.run([sys.executable, "-m", "vtempo", *args], capture_output=True, text=True)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith("error: ") and expected in bad.stderr and "--help" in bad.stderr


@pytest.mark.slow
def test_exit_codes_are_the_documented_ones(tmp_path):
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text()).replace("**", "")
    statement = re.search(r"Exit codes: 0 ([^,]+), 1 ([^,]+), 2 ([^.]+)\.", readme)
    assert statement, "the README states the exit codes"
    assert (common.EXIT_OK, common.EXIT_SOME_FAILED, common.EXIT_USAGE) == (0, 1, 2)
    assert "fail" in statement.group(2) and "usage" in statement.group(3)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert run_cli(["classify", CLIPS, "--workers", "0"]).exit_code == common.EXIT_OK
    assert run_cli(["classify", CLIPS, tmp_path, "--workers", "0"]).exit_code == common.EXIT_SOME_FAILED
    assert run_cli(["classify", CLIPS, "--topk", "0"]).exit_code == common.EXIT_USAGE
    bad = subprocess.run([sys.executable, "-m", "vtempo", "classify", str(CLIPS), "--frames", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --frames must be at least 1, got 0"


def test_result_lines_record_what_produced_them(tmp_path):
    out = tmp_path / "results.jsonl"
    result = run_cli(["classify", CLIPS, "--model", "tsm-demo", "--views", "1x3", "--dtype", "bf16", "--workers", "0",
                      "-o", out])
    assert result.exit_code == 0, result.output
    entry = load_registry()["tsm-demo"]
    bundled = ROOT / "vtempo" / "weights" / "bundled" / entry.weights.bundled
    expected = {"model": "tsm-demo", "arch": entry.arch, "weights_sha256": hashlib.sha256(bundled.read_bytes()).hexdigest(),
                "frames": entry.frames, "views": "1x3", "dtype": "bf16", "vtempo": vtempo.__version__}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(list(CLIPS.iterdir()))
    assert all(line["provenance"] == expected and line["views"] == 3 for line in lines)


def test_a_checkpoint_written_by_train_is_a_model(tmp_path):
    from vtempo.weights.checkpoint import save_checkpoint

    model = vtempo.create_model("tsn-r10w8", num_classes=3, frames=4)
    checkpoint = save_checkpoint(model, tmp_path / "best.pt", arch="tsn-r10w8", frames=4, input_size=32,
                                 classes=["a", "b", "c"])
    out = tmp_path / "results.json"
    result = run_cli(["classify", CLIPS, "--model", checkpoint, "--workers", "0", "--topk", "2", "-o", out])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["provenance"]["model"] == "tsn-r10w8 (best.pt)" and document["provenance"]["frames"] == 4
    assert all(row["top"][0]["label"] in "abc" and len(row["top"]) == 2 for row in document["results"])
    one_line_usage_error(run_cli(["classify", CLIPS, "--model", tmp_path / "missing.pt"]), "no such checkpoint file")


def test_a_library_error_names_python_parameters_and_no_flag(tmp_path):
    from vtempo.errors import UsageError
    from vtempo.inference.sharding import check_output

    with pytest.raises(UsageError) as caught:
        vtempo.load("tsm-demo", dtype="int8")
    assert caught.value.parameter == "dtype" and caught.value.parameters == ("dtype", "calibrate")
    assert str(caught.value).startswith("dtype='int8' needs calibrate=DIR: a folder of a few videos")
    (tmp_path / "out.jsonl").write_text("")
    with pytest.raises(UsageError) as caught:
        check_output(tmp_path / "out.jsonl", resume=False, overwrite=False)
    assert str(caught.value).endswith("out.jsonl exists: pass resume=True to go on with it, or overwrite=True to start "
                                      "again")
    assert caught.value.parameters == ("resume", "overwrite") and "--" not in str(caught.value)


def test_the_command_line_names_each_parameter_by_the_commands_own_option(tmp_path):
    import typer

    from vtempo.errors import UsageError, param

    tool = typer.Typer()

    @tool.command()
    @common.friendly_errors
    def check(
        video: str = typer.Argument(..., metavar="VIDEO"),
        out: str = typer.Option("a.jsonl", "--output", "-o"),
        strides: str = typer.Option("2", "--stride"),
        resume: bool = typer.Option(False, "--resume"),
        flip: bool = typer.Option(True, "--flip/--no-flip"),
    ) -> None:
        raise UsageError(f"{param('strides', strides)}: bad; {param('video')} {param('video', video)}: write to "
                         f"another {param('out')}, pass {param('resume', True)} or {param('flip', False)}; "
                         f"{param('elsewhere', 1)}")

    result = CliRunner().invoke(tool, ["clip.mp4", "--stride", "9..x"])
    assert result.exit_code == 2 and result.stderr.strip() == (
        "error: --stride 9..x: bad; VIDEO clip.mp4: write to another --output, pass --resume or --no-flip; elsewhere=1")
    # vtempo's own commands: the library's `strides` and `out`, `fmt` are the options --stride, --output, --format
    one_line_usage_error(run_cli(["robustness", "--stride", "2..x"]), "error: --stride 2..x: must look like 2..8")
    one_line_usage_error(run_cli(["export", "tsm-demo", "-o", tmp_path / "model.txt"]),
                         "--output", "model.txt: pass --format onnx or torchscript")


def piped(args: list, home: Path) -> str:
    """stdout of a real `vtempo` process writing into a pipe, COLUMNS=80 exported as a shell may."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), VTEMPO_HOME=str(home), COLUMNS="80")
    result = subprocess.run([sys.executable, "-m", "vtempo", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_piped_tables_keep_long_names_whole_on_one_line(tmp_path):
    from vtempo.data import synth

    data = tmp_path / "data"
    synth.generate(data, classes=2, clips_per_class=1, frames=16, size=64, seed=0)
    clip = next(data.rglob("*.mp4"))
    long_clip = tmp_path / ("a_clip_with_a_long_name_" * 8 + ".mp4")
    long_clip.write_bytes(clip.read_bytes())
    for command in (["check-videos", long_clip], ["classify", long_clip, "--model", "tsm-demo", "--workers", "0"]):
        out = piped(command, tmp_path / "home")
        assert any(str(long_clip) in line for line in out.splitlines()), out
    label = "a-model-with-a-long-label-" * 5
    out = piped(["robustness", data, "--model", f"{label}=" + str(ROOT / "vtempo/weights/bundled/tsm-demo.pt"),
                 "--stride", "2,4", "--workers", "0", "--no-progress", "--output", tmp_path / "rob"], tmp_path / "home")
    assert any(label in line and "τ" not in line and "*" in line for line in out.splitlines()), out


@pytest.mark.slow
def test_robustness_without_data_or_models_sweeps_the_demo_zoo(tmp_path, monkeypatch):
    from vtempo.evaluation import robustness

    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(robustness, "SYNTH_TEST_CLIPS", 1)  # 10 clips keep the test short
    out = tmp_path / "rob"
    result = run_cli(["robustness", "--stride", "3..4", "--workers", "0", "--output", out, "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "robustness.json").read_text())
    demos = sorted(name for name in load_registry() if name.endswith("-demo"))
    assert sorted(report["models"]) == demos and report["videos"] == 10 and report["strides"] == [3, 4]
    assert all(report["provenance"][name]["weights_sha256"] for name in demos)
    assert cv2.imread(str(out / "robustness.png")) is not None
    rendered = next((tmp_path / "home" / "synth").iterdir())
    stamp = (rendered / "synth.json").stat().st_mtime_ns
    again = run_cli(["robustness", "--model", "tsm-demo", "--stride", "4", "--workers", "0", "--output", out,
                     "--no-progress"])
    assert again.exit_code == 0, again.output
    assert (rendered / "synth.json").stat().st_mtime_ns == stamp  # rendered once, then reused


@pytest.mark.parametrize("command", [["timeline", str(CLIPS / "grow.mp4")], ["stream", str(CLIPS / "grow.mp4")],
                                     ["embed", str(CLIPS / "grow.mp4"), "--model", "tsn-demo", "--output", "x.npy"]])
def test_commands_without_calibration_refuse_int8_in_one_line(command, tmp_path):
    result = run_cli([*command, "--dtype", "int8"])
    assert result.exit_code == 2 and "classify runs int8" in result.output and "Traceback" not in result.output


def test_the_command_line_leaves_its_process_group_before_exiting(tmp_path):
    """Under torchrun a process that exits inside its process group can abort while the interpreter
    shuts down, turning a finished run into a failed one."""
    import torch.distributed as dist

    from vtempo.cli import app

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit) as exit:
            app(["models"], prog_name="vtempo")
        assert exit.value.code == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
