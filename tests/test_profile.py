"""`vtempo profile` and its API: fields, ratios, errors, and bf16-vs-fp32 logit agreement (no timings asserted)."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from vtempo.bench.flops import count_macs
from vtempo.bench.profile import Settings, Timing, logit_agreement, paired_ratio, profile_models, relative_to
from vtempo.cli import app
from vtempo.errors import UsageError
from vtempo.fast import prepare
from vtempo.models import FAMILIES, VideoRecognizer, build
from vtempo.models.backbone import resnet

TINY = ["--size", "64", "--frames", "2", "--iters", "2", "--warmup", "1"]
CLIPS = Path(__file__).resolve().parent.parent / "examples" / "clips"

# bf16 autocast vs fp32, tiny random-weight models, random clips: the largest logit difference
# measured was 0.5–1.2 % of the largest |logit| (tsn r10w8…r18); allowed: 3 %. Top-1 cannot change
# where the fp32 top-1 margin exceeds twice that, and no clip may change class there.
BF16_RELATIVE_TOLERANCE = 0.03


def run(*args: str):
    return CliRunner().invoke(app, ["profile", *args])


def test_profile_json_has_every_field():
    result = run("tsn-r10w8", *TINY, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["settings"]["frames"] == 2 and document["environment"]["threads"] >= 1
    (model,) = document["models"]
    assert (model["name"], model["arch"], model["frames"], model["size"]) == ("tsn-r10w8", "tsn-r10w8", 2, 64)
    cost = model["cost"]
    assert cost["params"] == sum(p.numel() for p in build("tsn-r10w8", 400, 2).parameters())
    assert math.isclose(cost["head_gmacs"], 2 * 64 * 400 / 1e9)
    assert math.isclose(cost["gmacs"], cost["gmacs_without_head"] + cost["head_gmacs"])
    assert {"batch_norm", "relu", "add"} <= set(cost["uncounted_gops"]) and cost["unusual_uncounted"] == []
    assert model["paper_gmacs"] is None and model["paper_diff"] is None and model["errors"] == []
    timing = model["timings"]["fp32"]
    assert len(timing["times_ms"]) == 2
    assert timing["first_ms"] > 0 and timing["warmup_ms"] >= timing["first_ms"]
    assert timing["median_ms"] <= timing["p90_ms"] <= max(timing["times_ms"])
    assert math.isclose(timing["clips_per_s"], 1000 / timing["median_ms"])
    assert math.isclose(timing["frames_per_s"], 2 * timing["clips_per_s"])
    assert timing["peak_mib"] is None or timing["peak_mib"] >= 0


def test_tables_compare_models_and_dtypes(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "models:\n  tiny-demo:\n    arch: tsn-r10w8\n    num_classes: 10\n    frames: 2\n    input_size: 64\n"
        "    paper_gmacs: 0.005\n"
    )
    result = run("tsn-r10w8", "tiny-demo", *TINY, "--dtype", "fp32,bf16", "--registry", str(registry),
                 "--json", "--relative-to", "tiny-demo", "--threads", "1")
    assert result.exit_code == 0, result.output
    arch, entry = json.loads(result.stdout)["models"]
    # the architecture name borrows the paper figure of the registry entry with the same arch and frames;
    # papers quote 224² figures, so at 64² there is no difference to show
    assert arch["paper_gmacs"] == entry["paper_gmacs"] == 0.005 and arch["paper_entry"] == "tiny-demo"
    assert entry["paper_diff"] is None
    assert entry["cost"]["head_gmacs"] * 1e9 == pytest.approx(2 * 64 * 10)
    assert set(entry["timings"]) == {"fp32", "bf16"} and entry["bf16_speedup"] > 0
    assert entry["ratios"]["tiny-demo"]["bf16"]["time"] == 1.0
    ratio = arch["ratios"]["tiny-demo"]["fp32"]
    assert math.isclose(ratio["macs"], arch["cost"]["gmacs"] / entry["cost"]["gmacs"])
    assert math.isclose(ratio["time_per_macs"], ratio["time"] / ratio["macs"])
    assert entry["agreement"]["bf16"]["relative"] < BF16_RELATIVE_TOLERANCE

    table = run("tsn-r10w8", "tiny-demo", *TINY, "--size", "224", "--registry", str(registry), "--no-channels-last",
                "--threads", "1")
    assert table.exit_code == 0, table.output
    macs = count_macs(build("tsn-r10w8", 10, 2), frames=2, size=224).complete / 1e9
    for text in ("Cost per clip", "0.005", f"{macs / 0.005 - 1:+.1%}", "1 threads, contiguous", "vs tsn-r10w8",
                 "time/MACs"):
        assert text in table.stdout


def timing(*times_ms: float) -> Timing:
    median = sorted(times_ms)[len(times_ms) // 2]
    return Timing("fp32", times_ms[0], times_ms[0], median, max(times_ms), 1000 / median, 8000 / median, None, list(times_ms))


def test_time_ratios_pair_the_rounds():
    # round 2 was slowed for both models: per round the model takes 2×, 1.05× and 2× the reference's time
    model, reference = timing(100, 200, 300), timing(50, 190, 150)
    assert paired_ratio(model, reference) == 2.0  # the ratio of the medians would read 200 / 150
    assert paired_ratio(timing(100, 200), reference) == 200 / 150  # rounds that do not pair up: the medians


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dtype", "fp64"], "unknown --dtype 'fp64'"),
        (["--device", "tpu"], "--device"),
        (["--iters", "0"], "--iters must be at least 1"),
        (["--relative-to", "tsm-r50"], "--relative-to tsm-r50"),
        (["--device", "cpu", "--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
        (["--cuda-graphs", "--compile"], "--cuda-graphs and --compile"),
        (["--calibrate", "no-such-folder", "--dtype", "int8"], "--calibrate no-such-folder: no such folder"),
        (["--calibrate", "examples", "--dtype", "bf16"], "--calibrate goes with --dtype int8"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(args, message):
    result = run("tsn-r10w8", *TINY, *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_int8_times_the_quantized_model_calibrated_on_synthetic_clips():
    settings = Settings(frames=2, size=64, iters=2, warmup=1, dtypes=("fp32", "int8"), device="cpu")
    (profile,) = profile_models(["tsm-demo"], settings)
    assert not profile.errors and set(profile.timings) == {"fp32", "int8"}
    assert profile.int8.calibration == "synthetic" and profile.int8.calibration_clips >= 1
    assert profile.int8.int8_ops > 0 and profile.int8.compiled
    # the int8 row ran other kernels than the fp32 one: its logits differ, within int8's rounding
    agreement = profile.agreement["int8"]
    assert 0 < agreement.relative < 0.5


@pytest.mark.slow
def test_int8_from_the_command_line_calibrates_on_a_folder_and_says_what_it_timed():
    result = CliRunner().invoke(app, ["profile", "tsn-demo", *TINY, "--device", "cpu", "--dtype", "int8",
                                      "--calibrate", str(CLIPS), "--json"])
    assert result.exit_code == 0, result.output
    (model,) = json.loads(result.stdout)["models"]
    assert list(model["timings"]) == ["int8"] and model["timings"]["int8"]["median_ms"] > 0
    assert model["int8"]["calibration"] == str(CLIPS) and model["int8"]["int8_ops"] > 0


def test_int8_without_torchao_is_refused_in_one_line(monkeypatch):
    from vtempo.errors import VtempoError
    from vtempo.fast import quantize

    def missing():
        raise VtempoError("int8 needs the torchao package: pip install 'vtempo[int8]' (No module named 'torchao')")

    monkeypatch.setattr(quantize, "_pt2e", missing)
    result = run("tsn-demo", *TINY, "--device", "cpu", "--dtype", "fp32,int8")
    assert result.exit_code == 2
    assert "pip install 'vtempo[int8]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_against_other_runtimes_times_each_exported_model_after_checking_its_logits():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    result = run("tsm-demo", *TINY, "--device", "cpu", "--against", "onnxruntime,openvino", "--against", "compiled",
                 "--json")
    assert result.exit_code == 0, result.output
    (model,) = json.loads(result.stdout)["models"]
    assert set(model["against"]) == {"onnxruntime", "openvino", "compiled"} and list(model["timings"]) == ["fp32"]
    for runtime, timing in model["against"].items():
        assert timing["dtype"] == "fp32" and len(timing["times_ms"]) == 2 and timing["median_ms"] > 0
        assert 0 <= model["against_parity"][runtime] <= 1e-4
        assert model["against_ratio"][runtime] > 0
    table = run("tsm-demo", *TINY, "--device", "cpu", "--against", "onnxruntime")
    assert table.exit_code == 0 and "vtempo (eager)" in table.stdout and "onnxruntime" in table.stdout


def test_the_openvino_model_runs_vtempos_export_like_the_model():
    pytest.importorskip("openvino")
    from vtempo.bench.runtimes import OpenVinoModel, export_onnx

    torch.manual_seed(0)
    model = build("tcm-r10w8", 5, 4).eval()  # TCM: the export forms of its correlation
    clip = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        expected = model(clip)
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, 4, 32, Path(folder), "tcm")
        got = OpenVinoModel(path, tuple(clip.shape), threads=1)(clip)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-4


@pytest.mark.parametrize("args, message", [
    (["--against", "tensorrt"], "unknown --against 'tensorrt'"),
    (["--against", "onnxruntime", "--dtype", "bf16"], "include --dtype fp32"),
])
def test_against_refuses_unknown_runtimes_and_a_run_without_fp32(args, message):
    result = run("tsn-demo", *TINY, *args)
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unknown_model_is_a_usage_error():
    result = run("no-such-model", *TINY)
    assert result.exit_code == 2 and "unknown model 'no-such-model'" in result.stderr


class Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("kaboom")


def test_a_failing_model_keeps_the_others_results(monkeypatch):
    def build_broken(backbone, num_classes, frames, **options):
        net = resnet(backbone)
        net.avgpool = nn.Sequential(Broken(), net.avgpool)
        return VideoRecognizer(net, num_classes)

    monkeypatch.setitem(FAMILIES, "broken", build_broken)
    settings = Settings(frames=2, size=64, iters=1, warmup=0, threads=1)
    good, bad = profile_models(["tsn-r10w8", "broken-r10w8"], settings)
    assert good.errors == [] and good.timings["fp32"].median_ms > 0
    assert bad.timings == {} and any("kaboom" in error for error in bad.errors)
    assert set(relative_to([good, bad], "tsn-r10w8")) == {("tsn-r10w8", "fp32")}
    result = run("tsn-r10w8", "broken-r10w8", *TINY, "--threads", "1")
    assert result.exit_code == 1 and "broken-r10w8" in result.stderr and "tsn-r10w8" in result.stdout


@pytest.fixture
def one_thread():
    """Small models run faster (and steadier on a busy machine) without OpenMP's hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_keeps_top1_and_logits_within_tolerance(family, device, one_thread):
    torch.manual_seed(0)
    model = build(f"{family}-r14w16", num_classes=10, frames=4)
    # a trained-like head: logits of order 1 that differ between classes (the N(0, 0.001) init gives near-ties)
    nn.init.normal_(model.fc.weight, 0, 1 / math.sqrt(model.fc.in_features))
    model = prepare(model, torch.device(device), channels_last=True)
    clips = torch.randn(8, 4, 3, 64, 64).to(device)
    agreement = logit_agreement(model, clips, "bf16")
    assert 0 < agreement.relative < BF16_RELATIVE_TOLERANCE, agreement  # > 0: autocast really ran in bf16

    with torch.inference_mode():
        logits = model(clips)
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * BF16_RELATIVE_TOLERANCE * logits.abs().max()
    assert clear.sum() >= 2  # the check below is not vacuous
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
        reduced = model(clips).float()
    assert torch.equal(reduced.argmax(-1)[clear], logits.argmax(-1)[clear])


@CUDA
def test_cuda_graphs_are_timed_and_keep_the_logits():
    result = run("tsn-r10w8", "tsm-r10w8", *TINY, "--device", "cuda", "--cuda-graphs", "--dtype", "fp32,bf16", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["settings"]["cuda_graphs"] is True
    for model in document["models"]:
        assert set(model["timings"]) == {"fp32", "bf16"} and model["errors"] == []
        assert model["agreement"]["bf16"]["relative"] < BF16_RELATIVE_TOLERANCE


def test_pipeline_option_times_the_classify_pipeline(tmp_path):
    import videogen  # tests/videogen.py, on the path through conftest

    for index in range(2):
        videogen.write_opencv(tmp_path / f"clip{index}.avi", 12, fourcc="MJPG")
    result = run("tsn-r10w8", *TINY, "--threads", "1", "--batch", "2", "--pipeline", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["pipeline"]["tsn-r10w8"]
    assert report["files"] == 2 and report["failed"] == 0
    assert report["model_clips_per_s"] > 0 and report["end_to_end_clips_per_s"] > 0

    missing = run("tsn-r10w8", *TINY, "--pipeline", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "--pipeline" in missing.stderr


def test_the_op_breakdown_sums_to_the_whole_and_finds_the_convolutions():
    from benchmarks.ops import CONVOLUTIONS, op_shares

    shares = op_shares("tsm-r14w16", calls=1, frames=4, size=64)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert sum(share for key, share in shares.items() if key in CONVOLUTIONS) > 0.05, shares


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_load_in_another_runtime_runs_the_export_with_the_eager_logits(runtime, tmp_path, monkeypatch):
    pytest.importorskip(runtime)
    import vtempo

    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path))
    other = vtempo.load("tsn-demo", device="cpu", runtime=runtime)
    eager = vtempo.load("tsn-demo", device="cpu")
    assert other.runtime == runtime and other.compile_note == f"run by {runtime}"
    assert other.provenance()["runtime"] == runtime and list((tmp_path / "exported").glob("*.onnx"))
    clip = torch.randn(2, eager.frames, 3, eager.preprocess.input_size, eager.preprocess.input_size)
    with torch.inference_mode():
        expected = eager.model(clip)
        assert float((other.model(clip) - expected).abs().max() / expected.abs().max()) <= 1e-4
    with pytest.raises(UsageError, match="drop dtype"):
        vtempo.load("tsn-demo", device="cpu", runtime=runtime, dtype="bf16")
