"""`vtempo cam`: Grad-CAM maps of whole clips, normalised per clip, mapped back onto the original frames.

Tiny models (narrow ResNets, 64-pixel input, 4 frames) on a synthetic clip whose moving object's box is
known in every frame. The frames are landscape (96×128) so the centre crop and its mapping back matter.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.data import synth
from vtempo.errors import UsageError
from vtempo.fast import prepare
from vtempo.inference import cam
from vtempo.inference.recognizer import Recognizer, load
from vtempo.models import FAMILIES, build, split_name
from vtempo.video import clip_indices, uniform_indices
from vtempo.viz import cam_images
from vtempo.weights.checkpoint import save_checkpoint
from vtempo.weights.registry import ModelEntry, load_registry

HEIGHT, WIDTH, PAD = 96, 128, 16  # a 96² synthetic clip padded left and right to 96×128
FRAMES, CLASSES = 4, ("left", "right", "up", "down")
# resize short side 72 → 72×96, centre 64² crop at (top 4, left 16) → ×4/3 in the original frame
CROP = (21, 5, 107, 91)


def tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build(arch, num_classes=len(CLASSES), frames=FRAMES)
    model.entry = ModelEntry(name=arch, arch=arch, num_classes=len(CLASSES), frames=FRAMES, input_size=64, resize=(72,))
    return model


def classifier(arch: str, seed: int = 0) -> Recognizer:
    return load(tiny(arch, seed), device="cpu")


@pytest.fixture(scope="module")
def clip():
    rendered = synth.render_clip("move_right", seed=3, frames=12, size=HEIGHT)
    frames = np.pad(rendered.frames, ((0, 0), (0, 0), (PAD, PAD), (0, 0)), mode="edge")
    return frames, rendered.boxes + [PAD, 0, PAD, 0]


@pytest.fixture(scope="module")
def video(clip, tmp_path_factory):
    path = tmp_path_factory.mktemp("cam") / "move_right.avi"
    synth.write_video(path, clip[0])
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for arch in ("tsm-r14w16", "tcm-r14w16"):
        paths[arch] = save_checkpoint(tiny(arch), folder / f"{arch}.pt", arch=arch, frames=FRAMES, input_size=64,
                                      resize=[72], classes=list(CLASSES))
    return paths


def sampled(clip):
    indices = uniform_indices(len(clip[0]), FRAMES)
    return clip[0][indices], indices


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_gives_clip_normalised_maps_on_the_original_frames(family, clip):
    frames, indices = sampled(clip)
    result = cam.explain_frames(frames, indices, [classifier(f"{family}-r14w16")])
    (maps,) = result.models
    assert maps.layer == "backbone.layer4.0" and maps.crop == CROP
    assert maps.maps.shape == (FRAMES, HEIGHT, WIDTH) and maps.maps.dtype == np.float32
    assert np.isfinite(maps.maps).all() and maps.maps.min() >= 0 and maps.maps.max() == pytest.approx(1.0)
    x0, y0, x1, y1 = CROP
    outside = np.ones((HEIGHT, WIDTH), bool)
    outside[y0:y1, x0:x1] = False
    assert not maps.maps[:, outside].any()
    assert maps.top == maps.target and 0 < maps.top_score <= 1


@pytest.mark.slow
def test_targets_are_per_video_and_clips_are_not_mixed(clip):
    model = tiny("tsm-r14w16").eval()  # TSM shifts channels between the frames of a clip
    frames, _ = sampled(clip)
    first = cam.model_input(frames, load(tiny("tsm-r14w16"), device="cpu").preprocess)[0]
    second = torch.flip(first, dims=[1])
    together, _, _ = cam.clip_cams(model, torch.cat([first, second]), targets=[1, 2])
    alone = [cam.clip_cams(model, x, targets=[t])[0][0] for x, t in ((first, 1), (second, 2))]
    np.testing.assert_allclose(together[0], alone[0], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(together[1], alone[1], rtol=1e-4, atol=1e-7)
    assert not np.allclose(alone[0], cam.clip_cams(model, first, targets=[2])[0][0])  # the target matters
    with pytest.raises(ValueError, match="one target per clip"):
        cam.clip_cams(model, torch.cat([first, second]), targets=[1])


def test_clip_normalisation_keeps_frames_comparable_and_frame_normalisation_does_not(clip):
    model = classifier("tsm-r14w16", seed=1)
    frames, indices = sampled(clip)
    by_clip = cam.explain_frames(frames, indices, [model], norm="clip").models[0].maps
    by_frame = cam.explain_frames(frames, indices, [model], norm="frame").models[0].maps
    assert by_clip.max() == pytest.approx(1.0)
    frame_peaks = by_clip.reshape(FRAMES, -1).max(1)
    assert frame_peaks.min() < 0.99  # this clip's frames differ in strength, and it shows
    np.testing.assert_allclose(by_frame.reshape(FRAMES, -1).max(1), 1.0, rtol=1e-6)
    # where the raw map is ≥ 0 everywhere with a zero somewhere, clip maps are one common rescaling of it
    raw = np.stack([[[0, 1], [2, 4]], [[0, 0.5], [1, 2]]]).astype(np.float32)
    np.testing.assert_allclose(cam.normalise(raw, "clip"), raw / 4)
    np.testing.assert_allclose(cam.normalise(raw, "frame"), raw / raw.max(axis=(1, 2), keepdims=True))
    assert not cam.normalise(np.full((2, 3, 3), 5.0, np.float32), "clip").any()  # constant → 0, no NaN


@pytest.mark.slow
def test_every_method_runs():
    model = tiny("tsi-r14w16").eval()
    clips = torch.randn(1, FRAMES, 3, 64, 64)
    for method in cam.METHODS:
        maps, logits, layer = cam.clip_cams(model, clips, method=method)
        assert maps.shape == (1, FRAMES, 2, 2) and (maps >= 0).all() and logits.shape == (1, len(CLASSES))


def test_layer_paths_and_one_line_errors_listing_the_blocks():
    model = tiny("tcm-r26w16")
    assert cam.resolve_layer(model)[0] == "backbone.layer4.1"
    for path in ("backbone.layer3.1", "backbone/layer3/1", "layer3/1", "layer3.1/"):
        assert cam.resolve_layer(model, path)[0] == "backbone.layer3.1"
    assert "backbone.layer2.tcm" in cam.layer_candidates(model)  # TCM sits between layer2's blocks
    with pytest.raises(UsageError) as error:
        cam.resolve_layer(model, "layer4.7", "tcm-tiny")
    message = str(error.value)
    assert "\n" not in message and "layer4.7" in message
    assert all(block in message for block in ("backbone.layer1.0", "backbone.layer3.1", "backbone.layer4.1"))
    # torchvision's Bottleneck calls its one relu three times: hooking it is refused, not silently wrong
    with pytest.raises(UsageError, match="ran 3 times"):
        cam.clip_cams(model.eval(), torch.randn(1, FRAMES, 3, 64, 64), layer="layer4.1.relu")


def test_the_model_is_left_without_hooks_and_its_own_errors_reach_the_caller():
    model = tiny("tsm-r14w16").eval()
    clips = torch.randn(1, FRAMES, 3, 64, 64)
    cam.clip_cams(model, clips)
    with pytest.raises(UsageError, match="ran 3 times"):
        cam.clip_cams(model, clips, layer="layer4.0.relu")

    def out_of_range(*_):
        raise IndexError("an index inside the model")

    failing = model.backbone.layer1[0].register_forward_hook(out_of_range)
    with pytest.raises(IndexError, match="an index inside the model"):  # not swallowed on the way out
        cam.clip_cams(model, clips)
    failing.remove()
    assert not any(module._forward_hooks or module._backward_hooks for module in model.modules())


def test_target_by_name_or_index():
    assert cam.resolve_target(None, CLASSES, "m") is None
    assert cam.resolve_target("Up", CLASSES, "m") == cam.resolve_target(2, CLASSES, "m") == 2
    for bad in ("sideways", "7", "-1"):
        with pytest.raises(UsageError, match="m"):
            cam.resolve_target(bad, CLASSES, "m")


def test_cli_contact_sheet_and_maps(video, checkpoints, tmp_path):
    sheet, maps = tmp_path / "cam.png", tmp_path / "maps.npz"
    result = CliRunner().invoke(app, [
        "cam", str(video), "--model", "tsm-r14w16", "--model", "tcm-r14w16",
        "--weights", str(checkpoints["tsm-r14w16"]), "--weights", str(checkpoints["tcm-r14w16"]),
        "--target", "down", "--frames", str(FRAMES), "--device", "cpu", "--output", str(sheet), "--save-maps", str(maps),
    ])
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(sheet))
    rows, columns = 3, FRAMES  # raw frames, then one row per model
    assert image.shape == (rows * (cam_images.BAND_HEIGHT + HEIGHT), columns * WIDTH, 3)
    saved = np.load(maps)
    assert list(saved["models"]) == ["tsm-r14w16", "tcm-r14w16"]
    np.testing.assert_array_equal(saved["indices"], uniform_indices(12, FRAMES))
    for name in saved["models"]:
        assert saved[name].shape == (FRAMES, HEIGHT, WIDTH) and saved[name].max() == pytest.approx(1.0)
        assert tuple(saved[f"{name}.crop"]) == CROP and tuple(saved[f"{name}.grid"]) == (2, 2)
        assert int(saved[f"{name}.target"]) == CLASSES.index("down")


def test_videos_have_one_frame_per_sampled_frame(clip, tmp_path):
    frames, indices = sampled(clip)
    result = cam.explain_frames(frames, indices, [classifier("tsn-r14w16"), classifier("tsm-r14w16")])
    size = (cam_images.BAND_HEIGHT + HEIGHT, 3 * WIDTH)  # raw frame and two models side by side

    capture = cv2.VideoCapture(str(cam_images.write(result, tmp_path / "cam.mp4")))
    decoded = []
    while (frame := capture.read())[0]:
        decoded.append(frame[1])
    capture.release()
    assert len(decoded) == FRAMES and all(f.shape[:2] == size for f in decoded)

    with Image.open(cam_images.write(result, tmp_path / "cam.gif")) as gif:
        assert gif.n_frames == FRAMES and gif.size == (size[1], size[0])

    sheet = cv2.imread(str(cam_images.write(result, tmp_path / "cam.jpg")))  # the smaller contact sheet
    assert sheet.shape == (3 * (cam_images.BAND_HEIGHT + HEIGHT), FRAMES * WIDTH, 3)


def test_cli_usage_errors_are_one_line_with_exit_code_2(video, checkpoints, tmp_path):
    base = ["cam", str(video), "--model", "tsm-r14w16", "--weights", str(checkpoints["tsm-r14w16"]), "--device", "cpu"]
    cases = {
        ("--layer", "layer9.0", "--output", str(tmp_path / "a.png")): "backbone.layer4.0",
        ("--output", str(tmp_path / "a.webp")): ".mp4 or .gif",
        ("--save-maps", str(tmp_path / "m.txt")): ".npz",
        ("--method", "scorecam"): "gradcam++",
    }
    for extra, expected in cases.items():
        result = CliRunner().invoke(app, base + list(extra))
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())
    result = CliRunner().invoke(app, ["cam", str(video), "--model", "tsm-r14w16", "--output", str(tmp_path / "a.png")])
    assert result.exit_code == 2 and "--weights" in result.output


# --------------------------------------------------------------------------- bundled demo models


def peak_hits(result: cam.ModelCam, boxes: np.ndarray) -> list[bool]:
    """Per frame: does the map's peak lie in the object's box? A map of h×w cells cannot place its peak
    closer than a cell, so the box is widened by half a cell (a pointing game with that tolerance)."""
    x0, y0, x1, y1 = result.crop
    slack_x, slack_y = (x1 - x0) / result.grid[1] / 2, (y1 - y0) / result.grid[0] / 2
    hits = []
    for heat, (bx0, by0, bx1, by1) in zip(result.maps, boxes):
        y, x = np.unravel_index(heat.argmax(), heat.shape)
        hits.append(bx0 - slack_x <= x < bx1 + slack_x and by0 - slack_y <= y < by1 + slack_y)
    return hits


def bundled_temporal_demos() -> dict[str, str]:
    """family → registry name of the bundled demo model, for every family but TSN."""
    demos = {}
    for name, entry in sorted(load_registry().items()):
        family = split_name(entry.arch)[0]
        if entry.weights is not None and entry.weights.bundled and family != "tsn":
            demos.setdefault(family, name)
    return demos


def hit_rate(model: Recognizer, seed: int) -> float:
    """Share of sampled frames whose map peaks on the moving object, over one clip of each
    single-object class the demo models were trained on (seeds no training or test set uses)."""
    hits = []
    for name in synth.CLASSES[:8]:  # moving, rotating, growing and shrinking: one object each
        label = model.labels.index(name)
        rendered = synth.render_clip(name, seed=[seed, label])
        indices = clip_indices(model.protocol, len(rendered.frames), model.frames)[0]
        result = cam.explain_frames(rendered.frames[indices], indices, [model], target=label).models[0]
        hits += peak_hits(result, rendered.boxes[indices])
    return float(np.mean(hits))


def test_every_temporal_family_has_a_bundled_demo():
    assert set(bundled_temporal_demos()) == set(FAMILIES) - {"tsn"}


UNDERTRAINED_DEMOS = {
    "tam": "tam-demo (88.0% top-1) peaks in the box in 50.0% of frames (below 70%: these small weights miss small moving objects, see docs/demo-models.md)",
    "stc-light": "stc-light-demo (89.6% top-1) peaks in the box in 65.6% of frames (below 70%: these small weights miss small moving objects, see docs/demo-models.md)",
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"tsn"}))
def test_demo_model_looks_at_the_moving_object(family, request):
    if family in UNDERTRAINED_DEMOS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=UNDERTRAINED_DEMOS[family]))
    demos = bundled_temporal_demos()
    assert family in demos, f"bundled temporal demo models in checkpoints.yaml: {demos}"
    rate = hit_rate(load(demos[family], device="cpu"), seed=31337)
    assert rate >= 0.7, rate


@pytest.mark.slow
def test_untrained_control_misses_the_object():
    demos = bundled_temporal_demos()
    trained = hit_rate(load(demos["tsm"], device="cpu"), seed=31337)
    untrained = load(demos["tsm"], device="cpu")
    torch.manual_seed(0)
    fresh = build(untrained.arch, untrained.num_classes, untrained.frames)
    untrained.model.load_state_dict(prepare(fresh, torch.device("cpu")).state_dict())  # folded like the demo
    assert hit_rate(untrained, seed=31337) < trained - 0.2


def test_cam_without_a_model_explains_classifys_default_model(tmp_path):
    from vtempo.commands.classify import DEMO_MODEL

    video = sorted((Path(__file__).parents[1] / "examples" / "clips").glob("*.mp4"))[0]
    result = CliRunner().invoke(app, ["cam", str(video), "-o", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{DEMO_MODEL}: top ") and (tmp_path / "a.png").stat().st_size > 0
