"""`vtempo export`: for every family, the exported file (ONNX in onnxruntime, TorchScript in torch)
scores clips as eager PyTorch does, for batch sizes other than the one traced; its metadata describes
the model; `classify --model FILE` ranks the example clips as the eager model does; each export form
equals the module it replaces; missing packages and bad files are one line."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vtempo
from vtempo.cli import app
from vtempo.errors import UsageError, VtempoError
from vtempo.export import export_model, load_exported
from vtempo.export.exporting import OPSET, relative_error
from vtempo.export.forms import SWAP_INS, ExportForm, apply_export_forms, banded_correlation
from vtempo.inference.recognizer import load
from vtempo.models import build
from vtempo.models.correlation import spatial_correlation
from vtempo.models.stc import SpatioTemporalCollaboration
from vtempo.weights.checkpoint import save_checkpoint
from vtempo.weights.hub import sha256_file, weights_path
from vtempo.weights.registry import get_entry, labels_path, read_labels

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
CLIPS = sorted((ROOT / "examples" / "clips").glob("*.mp4"))
DEMOS = ["tsn-demo", "tsm-demo", "tam-demo", "tcm-demo", "stc-demo", "stc-light-demo", "tefe-demo", "tsi-demo"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every demo model in both formats, exported once for the module."""
    folder = tmp_path_factory.mktemp("exported")
    return {(name, fmt): export_model(load(name, device="cpu"), fmt, folder / f"{name}{SUFFIX[fmt]}").path
            for name in DEMOS for fmt in SUFFIX}


def eager(name: str) -> torch.nn.Module:
    return vtempo.create_model(name, weights="default").eval()


def outputs(model, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model(clips), model.features(clips)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(SUFFIX))
@pytest.mark.parametrize("name", DEMOS)
def test_exported_model_matches_eager_pytorch(exported, name, fmt):
    """Logits and features within 1e-4 (relative to the largest value) of the eager model, for batches
    of 1 and 3 clips (the export traced 2) and for a real clip."""
    model, meta = load_exported(exported[name, fmt])
    reference = eager(name)
    generator = torch.Generator().manual_seed(1)
    size = meta["input_size"]
    batches = [torch.randn(n, meta["frames"], 3, size, size, generator=generator) for n in (1, 3)]
    for clips in batches:
        logits, features = outputs(model, clips)
        expected_logits, expected_features = outputs(reference, clips)
        assert logits.shape == expected_logits.shape and features.shape == expected_features.shape
        assert relative_error(logits, expected_logits) <= TOLERANCE
        assert relative_error(features, expected_features) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name", DEMOS)
def test_metadata_describes_the_model(exported, name):
    entry = get_entry(name)
    for fmt in SUFFIX:
        _, meta = load_exported(exported[name, fmt])
        assert meta["model"] == name and meta["arch"] == entry.arch
        assert meta["labels"] == read_labels(labels_path(entry))
        assert meta["frames"] == entry.frames and meta["input_size"] == entry.input_size
        assert meta["resize"] == list(entry.resize)
        assert meta["mean"] == list(entry.mean) and meta["std"] == list(entry.std)
        assert meta["protocol"]["sampling"] == entry.protocol.sampling
        assert meta["protocol"]["stride"] == entry.protocol.stride
        assert meta["weights_sha256"] == sha256_file(weights_path(entry)) == entry.weights.sha256


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A small TSM checkpoint (r10w8, 2 frames of 32²): quick to export."""
    torch.manual_seed(0)
    model = build("tsm-r10w8", num_classes=3, frames=2)
    torch.nn.init.normal_(model.fc.weight, 0, 0.5)
    return save_checkpoint(model, tmp_path_factory.mktemp("tiny") / "tiny.pt", frames=2,
                           classes=["left", "right", "still"], input_size=32, resize=[37])


@pytest.mark.slow
def test_onnx_metadata_is_plain_json_strings(tiny, tmp_path):
    """What a user of onnxruntime alone reads: every metadata value is a JSON string."""
    import onnxruntime

    path = export_model(load(tiny, device="cpu"), "onnx", tmp_path / "tiny.onnx").path
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map
    assert json.loads(raw["labels"]) == ["left", "right", "still"]
    assert json.loads(raw["frames"]) == 2 and json.loads(raw["arch"]) == "tsm-r10w8"
    assert [i.name for i in session.get_inputs()] == ["clips"]
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    assert session.get_inputs()[0].shape[1:] == [2, 3, 32, 32]
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # the batch axis is free


@pytest.mark.slow
@pytest.mark.parametrize("name", DEMOS)
def test_classify_with_the_exported_file_ranks_the_examples_as_eager(exported, name):
    expected = [r.top[0].label for r in load(name).classify_files(CLIPS, workers=0, topk=1)]
    for fmt in SUFFIX:
        results = list(load(exported[name, fmt]).classify_files(CLIPS, workers=0, topk=1))
        assert [r.top[0].label for r in results] == expected
    assert len(expected) == len(CLIPS) == 6


@pytest.mark.slow
def test_an_architecture_with_every_export_form_and_a_checkpoint(tmp_path):
    """TEFE on r26w16 has FE blocks (the r14w16 demo has none); random weights and BN statistics in a
    checkpoint file, exported as an architecture with --weights."""
    torch.manual_seed(0)
    model = build("tefe-r26w16", num_classes=3, frames=4).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    checkpoint = save_checkpoint(model, tmp_path / "tefe.pt", frames=4, classes=["a", "b", "c"], input_size=32, resize=[37])
    for fmt in SUFFIX:
        report = export_model(load("tefe-r26w16", checkpoint, device="cpu"), fmt, tmp_path / f"tefe{SUFFIX[fmt]}")
        exported_model, meta = load_exported(report.path)
        assert meta["labels"] == ["a", "b", "c"] and meta["input_size"] == 32 and meta["resize"] == [37]
        assert meta["weights_sha256"] == sha256_file(checkpoint)
        clips = torch.randn(3, 4, 3, 32, 32)
        logits, features = outputs(exported_model, clips)
        expected_logits, expected_features = outputs(model, clips)
        assert relative_error(logits, expected_logits) <= TOLERANCE
        assert relative_error(features, expected_features) <= TOLERANCE


@pytest.mark.slow
def test_the_export_time_check_can_fail_and_then_writes_nothing(tiny, tmp_path):
    with pytest.raises(VtempoError, match="differs from eager PyTorch"):
        export_model(load(tiny, device="cpu"), "onnx", tmp_path / "tiny.onnx", tolerance=0.0)  # onnxruntime's sums round differently
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ export forms


@pytest.mark.parametrize("shape,radius", [((3, 8, 6, 6), 7), ((2, 5, 9, 7), 2), ((1, 4, 16, 16), 7)])
def test_banded_correlation_equals_the_strided_one(shape, radius):
    """Maps smaller than the window, non-square maps, and the R-50 window (radius 7)."""
    generator = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator)
    expected = spatial_correlation(f1, f2, radius)
    got = banded_correlation(f1, f2, radius)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["tcm-r26w16", "stc-r26w16", "stc-light-r18", "tefe-r26w16"])
def test_each_export_form_computes_what_the_module_it_replaces_computes(arch):
    """Module by module: the swapped-in form and the model's own module on the same input."""
    torch.manual_seed(0)
    model = build(arch, num_classes=4, frames=4).eval()
    model.set_frames(4)
    swapped_model = copy.deepcopy(model)
    assert apply_export_forms(swapped_model) > 0
    originals = dict(model.named_modules())
    checked = 0
    for name, module in swapped_model.named_modules():
        if type(module) not in SWAP_INS:
            continue
        attribute = SWAP_INS[type(module)][0]
        original = originals[name]
        x = _input(original)
        with torch.no_grad():
            expected = getattr(original, attribute)(x)
            got = getattr(module, attribute)(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked > 0


def _input(module: torch.nn.Module) -> torch.Tensor:
    """What the replaced method takes: (N·T, C, H, W) features, or for STC's temporal conv (N, C, T, H, W)."""
    if isinstance(module, SpatioTemporalCollaboration):
        return torch.randn(2, module.temporal.in_channels, 4, 8, 8)
    first = next(m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    return torch.randn(2 * 4, first.in_channels, 8, 8)


def test_export_form_leaves_the_batch_size_free_and_the_clip_length_fixed():
    model = build("tam-r10w8", num_classes=2, frames=4).eval()
    form = ExportForm(model, 4)
    apply_export_forms(form)
    with torch.no_grad():
        assert form(torch.randn(3, 4, 3, 32, 32)).shape == (3, 2)
        with pytest.raises(RuntimeError):
            form(torch.randn(1, 5, 3, 32, 32))


# ------------------------------------------------------------------------------------------ bad input


def test_without_onnxruntime_the_command_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    result = CliRunner().invoke(app, ["export", "tsn-demo", "--output", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert "pip install 'vtempo[export]'" in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(UsageError, match=r"vtempo\[export\]"):
        load_exported(_any_onnx(tmp_path))


def _any_onnx(folder: Path) -> Path:
    path = folder / "x.onnx"
    path.write_bytes(b"not onnx")
    return path


@pytest.mark.parametrize("content", [b"", b"not a model at all"])
def test_a_bad_file_is_one_line_naming_it(tmp_path, content):
    for suffix in (".onnx", ".ts"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(VtempoError, match="bad") as error:
            load_exported(path)
        assert "\n" not in str(error.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the exporter announces its successor
def test_an_onnx_file_not_written_by_vtempo_is_refused(tmp_path):
    import onnx

    path = tmp_path / "plain.onnx"
    # vtempo's opset: torch's default one can be newer than the oldest onnxruntime supported reads
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),), str(path), opset_version=OPSET, dynamo=False)
    assert onnx.load(str(path)).graph.node
    with pytest.raises(VtempoError, match="not exported by vtempo"):
        load_exported(path)


def test_cli_usage_errors(tmp_path):
    runner = CliRunner()
    wrong_suffix = runner.invoke(app, ["export", "tsn-demo", "--format", "onnx", "--output", str(tmp_path / "m.ts")])
    assert wrong_suffix.exit_code == 2 and "must end in .onnx" in wrong_suffix.output
    no_format = runner.invoke(app, ["export", "tsn-demo", "--output", str(tmp_path / "m.bin")])
    assert no_format.exit_code == 2 and "--format" in no_format.output
    unknown = runner.invoke(app, ["export", "nope-demo", "--output", str(tmp_path / "m.onnx")])
    assert unknown.exit_code == 2 and "unknown model" in unknown.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_exports_and_reports_the_parity(tiny, tmp_path):
    out = tmp_path / "tiny.ts"
    result = CliRunner().invoke(app, ["export", str(tiny), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "max relative error" in result.output and "example clip" in result.output
    _, meta = load_exported(out)
    assert meta["arch"] == "tsm-r10w8" and meta["weights_sha256"] == sha256_file(tiny)
    classify = CliRunner().invoke(app, ["classify", str(CLIPS[0]), "--model", str(out), "--topk", "1", "--workers", "0"])
    assert classify.exit_code == 0, classify.output
    assert any(label in classify.output for label in ("left", "right", "still"))
