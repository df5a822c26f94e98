"""Online TSM: the uni-directional shift run frame by frame gives, for every frame, the same logits as
the same weights run offline over the clip; no frame depends on a later one; training with --shift."""
from __future__ import annotations

import pytest
import torch

from vtempo import create_model
from vtempo.errors import UsageError
from vtempo.fast import prepare
from vtempo.models import build
from vtempo.models.tsm import OnlineShift, OnlineTSM, TemporalShift, online_arch


def _random_model(arch: str = "tsm-online-r14w16", classes: int = 7) -> torch.nn.Module:
    """Random weights and BatchNorm statistics far from the identity, so any mixing of frames shows."""
    torch.manual_seed(0)
    model = build(arch, num_classes=classes, frames=4)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    torch.nn.init.normal_(model.fc.weight, 0, 0.05)
    return model.eval()


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _offline_per_frame(model, clip: torch.Tensor) -> torch.Tensor:
    return model.fc(model.features(clip))


@pytest.mark.parametrize("prepared", [False, True], ids=["paper-form", "prepared"])
def test_online_steps_equal_the_offline_clip_frame_by_frame(prepared):
    model = _random_model()
    if prepared:
        model = prepare(model, torch.device("cpu"))  # BN folded, channels-last: what inference runs
    clip = torch.randn(2, 9, 3, 64, 64)  # two streams, nine frames
    with torch.inference_mode():
        offline = _offline_per_frame(model, clip)
        runner = OnlineTSM(model)
        online = torch.stack([runner.step(clip[:, t]) for t in range(clip.shape[1])], 1)
    assert online.shape == offline.shape == (2, 9, 7)
    assert _relative_error(online, offline) <= 1e-5
    # the check has teeth: the frames do mix (a TSN-like per-frame model would differ)
    with torch.inference_mode():
        alone = torch.stack([_offline_per_frame(model, clip[:, t : t + 1])[:, 0] for t in range(9)], 1)
    assert _relative_error(alone, offline) > 1e-3


def test_a_frame_never_depends_on_later_frames():
    model = _random_model()
    clip = torch.randn(1, 6, 3, 64, 64)
    changed = clip.clone()
    changed[:, 4:] = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        before, after = _offline_per_frame(model, clip), _offline_per_frame(model, changed)
    assert torch.equal(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_reset_starts_a_new_stream_and_runners_keep_their_own_past():
    model = _random_model()
    frames = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        first, second = OnlineTSM(model), OnlineTSM(model)
        a = [first.step(f) for f in frames]
        second.step(torch.randn(3, 64, 64))  # another stream on the same model in between
        second.reset()
        b = [second.step(f) for f in frames]
        first.reset()
        c = first.step(frames[0])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(c, a[0]) and a[0].shape == (7,)


def test_online_shift_is_built_by_name_or_option_and_named_in_the_arch():
    by_option = create_model("tsm-r18", shift="online", num_classes=5)
    by_name = build("tsm-online-r18", num_classes=5)
    for model in (by_option, by_name):
        assert model.arch == "tsm-online-r18"
        shifts = [m for m in model.modules() if isinstance(m, TemporalShift)]
        assert shifts and all(isinstance(m, OnlineShift) for m in shifts)
    assert by_option.state_dict().keys() == build("tsm-r18", num_classes=5).state_dict().keys()
    assert online_arch("tsm-r50") == "tsm-online-r50"
    with pytest.raises(ValueError, match="shift must be one of"):
        build("tsm-r18", shift="sideways")
    with pytest.raises(ValueError, match="only TSM"):
        online_arch("tam-r50")
    with pytest.raises(ValueError, match="no uni-directional shift"):
        OnlineTSM(build("tsm-r18", num_classes=5))
    runner = OnlineTSM(by_name.eval())
    with torch.no_grad():
        runner.step(torch.randn(2, 3, 64, 64))
        with pytest.raises(ValueError, match="reset"):
            runner.step(torch.randn(3, 3, 64, 64))


@pytest.mark.slow
def test_train_with_shift_online_writes_an_online_checkpoint(tmp_path):
    from vtempo.data import synth
    from vtempo.training.train import TrainConfig, train

    synth.generate(tmp_path / "set", classes="grow,shrink", clips_per_class=4, frames=10, size=32, seed=0)
    common = dict(data=str(tmp_path / "set"), frames=2, size=32, resize=32, stride=3, batch_size=4, workers=0,
                  progress=False, threads=1, epochs=1, val_split=0.25)
    train(TrainConfig(model="tsm-r10w8", out=str(tmp_path / "run"), shift="online", **common))
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert saved["arch"] == "tsm-online-r10w8"
    with pytest.raises(UsageError, match="only TSM"):
        train(TrainConfig(model="tsn-r10w8", out=str(tmp_path / "tsn"), shift="online", **common))
