"""`vtempo.load`: the one way to load a model (registry entry, architecture + weights, train checkpoint,
built module), what it reads off each, the errors it gives, and `Recognizer.classify`."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import vtempo
from vtempo.data import synth
from vtempo.errors import UsageError
from vtempo.inference.recognizer import Recognizer, read_checkpoint
from vtempo.video import open_video
from vtempo.weights.checkpoint import save_checkpoint
from vtempo.weights.registry import Protocol, load_registry

CLASSES = ["up", "down", "still"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint as `vtempo train` writes it: it records arch, classes, frames, pixels and sampling."""
    folder = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    model = vtempo.create_model("tsm-r10w8", num_classes=len(CLASSES), frames=4)
    torch.nn.init.normal_(model.fc.weight, 0, 0.5)
    path = save_checkpoint(model, folder / "best.pt", arch="tsm-r10w8", frames=4, classes=CLASSES, input_size=32,
                           resize=[40], protocol={"sampling": "stride", "stride": 3, "clips": 1, "crop": "centre"})
    return path


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "grow.mp4"
    synth.write_video(path, synth.render_clip("grow", seed=5, frames=24, size=64).frames)
    return path


def test_registry_entry_loads_prepared_with_its_protocol_and_provenance():
    rec = vtempo.load("tam-demo", device="cpu")
    entry = load_registry()["tam-demo"]
    assert isinstance(rec, Recognizer) and rec.entry == entry
    assert (rec.name, rec.arch, rec.frames, rec.protocol) == ("tam-demo", entry.arch, entry.frames, entry.protocol)
    assert rec.preprocess.input_size == entry.input_size and len(rec.labels) == entry.num_classes
    assert not rec.model.training and rec.device == torch.device("cpu") and rec.dtype == "fp32"
    digest = hashlib.sha256(rec.checkpoint.read_bytes()).hexdigest()
    assert rec.weights_sha256 == digest == entry.weights.sha256
    provenance = rec.provenance()
    assert provenance == {"model": "tam-demo", "arch": entry.arch, "weights_sha256": digest, "frames": entry.frames,
                          "views": "1x1", "dtype": "fp32", "vtempo": vtempo.__version__}
    assert rec.provenance("2x3")["views"] == "2x3"


def test_a_train_checkpoint_is_a_model_and_says_everything_itself(trained):
    rec = vtempo.load(trained, device="cpu")
    assert rec.arch == "tsm-r10w8" and rec.name == "tsm-r10w8 (best.pt)" and rec.entry is None
    assert rec.labels == CLASSES and rec.frames == 4 and rec.checkpoint == trained
    assert rec.protocol == Protocol(sampling="stride", stride=3)
    assert rec.preprocess.input_size == 32 and rec.preprocess.resize == (40,)
    # the same file as weights= of its architecture gives the same model
    same = vtempo.load("tsm-r10w8", weights=trained, device="cpu")
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rec.model(clips), same.model(clips))
    assert same.name == "tsm-r10w8" and same.labels == CLASSES


def test_labels_override_and_their_count_is_checked(trained, tmp_path):
    assert vtempo.load(trained, labels=["a", "b", "c"]).labels == ["a", "b", "c"]
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(UsageError, match="lists 2 classes but .* has 3 outputs"):
        vtempo.load(trained, labels=tmp_path / "two.txt")


def test_classify_takes_a_path_or_the_same_frames_as_an_array(clip_file):
    rec = vtempo.load("tsm-demo", device="cpu")
    from_path = rec.classify(clip_file, topk=3)
    with open_video(clip_file) as reader:
        frames = reader.get(range(reader.num_frames))
    from_array = rec.classify(frames, topk=3)
    from_tensor = rec.classify(torch.from_numpy(frames), topk=3)
    assert [p.index for p in from_path] == [p.index for p in from_array] == [p.index for p in from_tensor]
    assert [p.prob for p in from_path] == pytest.approx([p.prob for p in from_array], abs=1e-6)
    assert len(from_path) == 3 and from_path[0].label == "grow"
    with pytest.raises(UsageError, match="T×H×W×3"):
        rec.classify(frames.astype(np.float32))


def test_classify_files_reports_progress_in_order(clip_file, tmp_path):
    rec = vtempo.load("tsn-demo", device="cpu")
    missing = tmp_path / "missing.mp4"
    calls = []
    results = list(rec.classify_files([clip_file, missing, clip_file], workers=0, topk=2,
                                      progress=lambda done, total: calls.append((done, total))))
    assert [r.path for r in results] == [clip_file, missing, clip_file]
    assert [r.ok for r in results] == [True, False, True] and len(results[0].top) == 2
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_clip_length_mismatch_names_the_model_not_tensors():
    with pytest.raises(UsageError) as error:
        vtempo.load("tam-demo", frames=8)
    assert str(error.value).startswith("tam-demo was trained on 4 frames per clip")
    assert "frames=8" in str(error.value) and "weight" not in str(error.value)
    assert vtempo.load("tsm-demo", frames=8).frames == 8  # a shift takes any clip length


@pytest.mark.parametrize("options, message", [
    ({"frames": 0}, "frames=0"),
    ({"frames": -3}, "frames=-3"),
    ({"dtype": "fp8"}, "dtype='fp8'"),
    ({"device": "tpu"}, "device="),
    ({"weights": "nowhere.pt"}, "weights='nowhere.pt': no such file"),
])
def test_errors_name_the_python_parameters(options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        vtempo.load("tsm-demo", **options)


def test_unknown_names_suggest_close_ones():
    with pytest.raises(UsageError, match="did you mean tsm-demo"):
        vtempo.load("tsm-dmeo")
    with pytest.raises(UsageError, match="did you mean tsm-r50"):
        vtempo.create_model("tsm-r05")
    with pytest.raises(UsageError, match="pass weights=FILE"):
        vtempo.load("tsm-r10w8")  # an architecture alone is not a trained model


def test_create_model_is_bare_and_trainable_and_reads_checkpoints(trained):
    model = vtempo.create_model("tsm-demo")
    assert model.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.entry.name == "tsm-demo" and model.num_classes == model.entry.num_classes
    loaded = vtempo.create_model("tsm-r10w8", weights=trained)  # classes and frames from the file
    assert loaded.num_classes == len(CLASSES)
    torch.testing.assert_close(loaded.fc.weight, read_checkpoint(trained).state["fc.weight"])


def test_a_built_module_is_wrapped_in_place():
    model = vtempo.create_model("tsm-demo")
    rec = vtempo.load(model, device="cpu")
    assert rec.model is model and not model.training and rec.name == "tsm-demo" and rec.checkpoint is None
    assert rec.weights_sha256 is None and len(rec.labels) == model.num_classes


def test_package_exports():
    for name in ("load", "Recognizer", "create_model", "list_models", "Prediction", "VideoResult", "__version__"):
        assert hasattr(vtempo, name), name
    assert "tsm-demo" in vtempo.list_models() and "tsm-r50" in vtempo.list_models()


@pytest.mark.slow
def test_evaluate_and_classify_score_videos_alike(tmp_path):
    """Both run the model through the one engine under the model's protocol: evaluate's per-class
    verdicts are classify's top-1 labels."""
    from vtempo.evaluation.evaluate import evaluate

    data = synth.generate(tmp_path / "set", classes="grow,shrink,rotate_cw", clips_per_class=2, frames=24, size=64,
                          seed=7)
    rec = vtempo.load("tsm-demo", device="cpu")
    evaluation = evaluate(data.root, rec, workers=0, batch_size=3)
    results = list(rec.classify_files([path for path, _ in data.videos], workers=0, batch_size=5))
    correct = [r.top[0].label == data.classes[label] for r, (_, label) in zip(results, data.videos)]
    assert evaluation.videos == 6 and evaluation.top1 == pytest.approx(100 * sum(correct) / 6)
    assert evaluation.provenance == rec.provenance() and evaluation.model == "tsm-demo"
