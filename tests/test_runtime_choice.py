"""`load(..., runtime="auto")`: the runtime chosen by timing eager PyTorch against the installed export
runtimes once per CPU, threads, architecture and clip shape, remembered under the vtempo home."""
import json

import pytest
import torch

import vtempo
from vtempo.fast import choose
from vtempo.inference.recognizer import installed_runtimes


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path))
    monkeypatch.setattr(choose, "_shared", None)
    return tmp_path


def _relative_error(recognizer, eager) -> float:
    size = eager.preprocess.input_size
    clip = torch.randn(2, eager.frames, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = eager.model(clip)
        return float((recognizer.model(clip) - expected).abs().max() / expected.abs().max())


def test_auto_measures_once_caches_the_choice_and_keeps_the_eager_logits(home, monkeypatch):
    ways = installed_runtimes()
    if not ways:
        pytest.skip("neither onnxruntime nor openvino is installed")
    chosen = vtempo.load("tsn-demo", device="cpu", runtime="auto")
    timings = choose.shared_chooser().timings
    (key,) = [key for key in timings if key.startswith("runtime |")]
    assert set(timings[key]) == {"torch", *ways}  # every candidate was timed
    recorded = json.loads((home / "fast-choices.json").read_text())
    assert recorded[key] == chosen.runtime
    eager = vtempo.load("tsn-demo", device="cpu")
    assert _relative_error(chosen, eager) <= 1e-4

    # a later process reads the choice instead of timing again, and runs what was recorded
    def no_timing(candidates):
        raise AssertionError("timed again although the choice was cached")

    for way in ["torch", *ways]:
        others = json.loads((home / "fast-choices.json").read_text())  # the fast paths' own choices
        (home / "fast-choices.json").write_text(json.dumps({**others, key: way}))
        monkeypatch.setattr(choose, "_shared", choose.Chooser(home / "fast-choices.json", measure=no_timing))
        again = vtempo.load("tsn-demo", device="cpu", runtime="auto")
        assert again.runtime == way
        assert _relative_error(again, eager) <= 1e-4


def test_auto_runs_in_pytorch_where_only_pytorch_can(home):
    recognizer = vtempo.load("tsn-demo", device="cpu", runtime="auto", dtype="bf16")
    assert recognizer.runtime == "torch" and recognizer.dtype == "bf16"
    assert not (home / "fast-choices.json").exists()


def _classify(args: list[str], out) -> list[dict]:
    from typer.testing import CliRunner

    from vtempo.cli import app

    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["classify", *args, "-o", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("runtime", ["auto", *installed_runtimes()])
def test_classify_runtime_option_gives_the_torch_scores(runtime, home, good_videos, tmp_path):
    video = str(good_videos["h264.mkv"].path)
    (torch_line,) = _classify([video, "--device", "cpu"], tmp_path / "torch.jsonl")
    (line,) = _classify([video, "--device", "cpu", "--runtime", runtime], tmp_path / f"{runtime}.jsonl")
    ran = line["provenance"].get("runtime", "torch")
    assert ran == runtime if runtime != "auto" else ran in ("torch", *installed_runtimes())
    expected = {top["label"]: top["prob"] for top in torch_line["top"]}
    assert line["top"][0]["label"] == torch_line["top"][0]["label"]
    for top in line["top"]:
        assert top["prob"] == pytest.approx(expected.get(top["label"], 0.0), abs=1e-4)


def test_classify_runtime_option_refuses_compile_on(home, good_videos):
    from typer.testing import CliRunner

    from vtempo.cli import app

    result = CliRunner().invoke(app, ["classify", str(good_videos["h264.mkv"].path), "--runtime", "openvino",
                                      "--compile", "on"])
    assert result.exit_code == 2 and "--runtime openvino and --compile on" in result.output


def test_openvino_model_is_compiled_for_each_batch_size_and_keeps_the_last_few(home):
    pytest.importorskip("openvino")
    ov = vtempo.load("tsn-demo", device="cpu", runtime="openvino")
    eager = vtempo.load("tsn-demo", device="cpu")
    size = eager.preprocess.input_size
    for batch in (1, 2, 3, 4, 5, 2):
        clip = torch.randn(batch, eager.frames, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            expected = eager.model(clip)
            assert float((ov.model(clip) - expected).abs().max() / expected.abs().max()) <= 1e-4
    shapes = [shape[0] for shape in ov.model.requests]
    assert shapes == [3, 4, 5, 2]  # the most recently used last, at most SHAPES kept
