"""int8 and compiled inference from the command line: `classify --dtype int8 --calibrate DIR` and
`classify --compile off|on|auto`, and the `vtempo.load` parameters behind them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.errors import UsageError, VtempoError

CLIPS = Path(__file__).resolve().parent.parent / "examples" / "clips"


def run_cli(args: list[str]):
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, args, catch_exceptions=False)


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_int8_without_calibration_clips_is_a_usage_error_saying_what_to_pass():
    result = run_cli(["classify", str(CLIPS), "--model", "tsn-demo", "--dtype", "int8"])
    assert result.exit_code == 2
    assert "--calibrate DIR" in one_error_line(result)


def test_calibration_clips_without_int8_and_an_unknown_compile_mode_are_usage_errors():
    result = run_cli(["classify", str(CLIPS), "--model", "tsn-demo", "--calibrate", str(CLIPS)])
    assert result.exit_code == 2 and "--dtype int8" in one_error_line(result)
    result = run_cli(["classify", str(CLIPS), "--model", "tsn-demo", "--compile", "sometimes"])
    assert result.exit_code == 2 and "--compile" in one_error_line(result)


def test_a_command_without_calibration_refuses_int8_in_one_line():
    result = run_cli(["cam", str(CLIPS / "grow.mp4"), "--model", "tsn-demo", "--dtype", "int8"])
    assert result.exit_code == 2
    assert "classify runs int8" in one_error_line(result)


def test_int8_without_torchao_names_the_extra_to_install(monkeypatch):
    import vtempo
    from vtempo.fast import quantize

    def missing():
        raise VtempoError("int8 needs the torchao package: pip install 'vtempo[int8]' (No module named 'torchao')")

    monkeypatch.setattr(quantize, "_pt2e", missing)
    with pytest.raises(UsageError, match=r"pip install 'vtempo\[int8\]'"):
        vtempo.load("tsn-demo", dtype="int8", calibrate=CLIPS, device="cpu")
    result = run_cli(["classify", str(CLIPS), "--model", "tsn-demo", "--dtype", "int8", "--calibrate", str(CLIPS)])
    assert result.exit_code == 2 and "pip install 'vtempo[int8]'" in one_error_line(result)


def test_calibration_folder_without_a_decodable_video_is_a_usage_error(tmp_path):
    pytest.importorskip("torchao")
    import vtempo

    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(UsageError, match="no video there decodes"):
        vtempo.load("tsn-demo", dtype="int8", calibrate=tmp_path, device="cpu")


def test_auto_compile_decides_off_for_two_files_and_says_why(tmp_path):
    files = [str(CLIPS / "grow.mp4"), str(CLIPS / "shrink.mp4")]
    result = run_cli(["classify", *files, "--model", "tsn-demo", "--compile", "auto", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "not compiled (auto: 0 clip(s) left" in result.output and "would not repay" in result.output


def test_auto_compile_times_the_first_batch_and_compiles_when_the_run_repays_it(monkeypatch):
    from vtempo.fast import compile as compiling

    model = torch.nn.Linear(3, 2)
    compiled = []
    monkeypatch.setattr(compiling, "compile_model", lambda m: compiled.append(m) or (lambda x: m(x) + 1))
    many = compiling.AutoCompile(model, clips=10**9)
    x = torch.randn(4, 3)
    assert torch.equal(many(x), model(x))  # the first batch runs eagerly, timed
    assert many.compiled and compiled == [model] and "repay" in many.reason
    assert torch.equal(many(x), model(x) + 1)  # later batches run the compiled model
    few = compiling.AutoCompile(model, clips=4)
    few(x)
    assert few.compiled is False and "0 clip(s) left" in few.reason and len(compiled) == 1


@pytest.mark.slow
def test_compile_on_gives_the_eager_logits():
    import vtempo
    from vtempo.inference.decoding import decode_views

    eager = vtempo.load("tsn-demo", device="cpu")
    compiled = vtempo.load("tsn-demo", device="cpu", compile=True)
    assert compiled.compiled == "on" and compiled.compile_note.startswith("compiled")
    views = decode_views(CLIPS / "grow.mp4", eager.plan())["views"]
    with torch.inference_mode():
        expected, got = eager.model(views), compiled.model(views)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.slow
def test_int8_classify_runs_records_its_provenance_and_agrees_with_fp32_on_the_examples(tmp_path, monkeypatch):
    pytest.importorskip("torchao")
    import vtempo

    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path / "home"))  # calibrates afresh, caches there
    out = tmp_path / "int8.jsonl"
    result = run_cli(["classify", str(CLIPS), "--model", "tsn-demo", "--dtype", "int8", "--calibrate", str(CLIPS),
                      "--topk", "1", "--workers", "0", "--batch-size", "4", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "int8, compiled by the quantizer" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(list(CLIPS.glob("*.mp4"))) and all(row["status"] == "ok" for row in rows)
    provenance = rows[0]["provenance"]
    assert provenance["dtype"] == "int8" and len(provenance["calibration"]) == 16
    assert all(0 < row["top"][0]["prob"] <= 1 for row in rows)
    fp32 = vtempo.load("tsn-demo", device="cpu")
    expected = {Path(r.path).name: r.top[0].label for r in fp32.classify_files(CLIPS, topk=1, workers=0)}
    assert {Path(row["path"]).name: row["top"][0]["label"] for row in rows} == expected
    assert list((tmp_path / "home" / "int8").glob("*.pt2"))  # the quantized graph is cached


@pytest.mark.slow
def test_the_int8_accuracy_benchmark_compares_a_demo_model_on_fresh_clips():
    pytest.importorskip("torchao")
    from benchmarks.int8 import compare

    result = compare("tsm-demo", clips=16, seed=7, calibration=8, batch=8)
    assert result["clips"] == 16 and 0 <= result["top1_int8"] <= 100
    assert result["agreement"] >= 75, result  # int8 follows fp32 on a bundled model


@pytest.mark.slow
@pytest.mark.parametrize("options", [["--dtype", "int8", "--calibrate", str(CLIPS)], ["--compile", "on"]],
                         ids=["int8", "compile"])
def test_int8_and_compiled_runs_print_no_torch_notice(tmp_path, options):
    """torchao's Enum registration (deprecated by torch) and "No CUDA runtime is found" (a CUDA_HOME
    on a host without a GPU) are torch's business, not the user's: stderr holds the summary only."""
    if options[0] == "--dtype":
        pytest.importorskip("torchao")
    cuda_home = tmp_path / "cuda"
    cuda_home.mkdir()
    env = dict(os.environ, PYTHONPATH=str(CLIPS.parents[1]), CUDA_HOME=str(cuda_home), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "vtempo", "classify", str(CLIPS / "grow.mp4"), "--model", "tsn-demo",
                             "--device", "cpu", "--workers", "0", *options],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Enum subclass" not in result.stderr and "No CUDA runtime" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "1 classified" in lines[0], result.stderr
