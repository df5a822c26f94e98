"""Transforms: resize, the reference crops, normalisation, views, and mapping crops back to frames."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vtempo.video.transforms import (
    CropBox,
    Preprocess,
    apply_crop,
    crop_boxes,
    crop_boxes_in_frame,
    make_views,
    normalise,
    pad_to,
    resize_frames,
)
from vtempo.weights.registry import get_entry

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def gradient_frames(t: int, height: int, width: int) -> np.ndarray:
    """Smooth, position-revealing frames: red grows left→right, green top→bottom, blue with time."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((t, height, width, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = 255 * xx / (width - 1)
        frames[i, ..., 1] = 255 * yy / (height - 1)
        frames[i, ..., 2] = 30 * i
    return frames


def test_resize_short_side_and_exact():
    landscape = gradient_frames(2, 240, 320)
    assert resize_frames(landscape, (256,)).shape == (2, 256, 341, 3)
    assert resize_frames(np.swapaxes(landscape, 1, 2), (256,)).shape == (2, 341, 256, 3)
    assert resize_frames(landscape, (120, 200)).shape == (2, 120, 200, 3)
    assert resize_frames(landscape, (240,)) is landscape  # already right: no copy
    assert Preprocess().resized_size(1080, 1920) == (256, 455)


def tsm_oversample_offsets(width: int, height: int, crop: int) -> list[tuple[int, int]]:
    """TSM's GroupMultiScaleCrop.fill_fix_offset(more_fix_crop=False) as (left, top)."""
    w_step, h_step = (width - crop) // 4, (height - crop) // 4
    return [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]


def test_crop_positions_follow_the_reference():
    assert crop_boxes(256, 341, 224, "centre") == [CropBox(16, 58, 224, 224)]
    # three crops along the long side (MMAction2 ThreeCrop: left, right, middle), centred across
    three = crop_boxes(256, 455, 256, 3)
    assert [(b.top, b.left) for b in three] == [(0, 0), (0, 198), (0, 99)]
    portrait = crop_boxes(455, 256, 256, "three")
    assert [(b.top, b.left) for b in portrait] == [(0, 0), (198, 0), (99, 0)]
    ten = crop_boxes(256, 341, 224, "ten")
    expected = [(top, left) for left, top in tsm_oversample_offsets(341, 256, 224)]
    assert [(b.top, b.left) for b in ten[:5]] == expected
    assert [(b.top, b.left) for b in ten[5:]] == expected
    assert [b.flip for b in ten] == [False] * 5 + [True] * 5
    with pytest.raises(ValueError):
        crop_boxes(200, 300, 224, "centre")
    with pytest.raises(ValueError):
        crop_boxes(256, 300, 224, 5)


def test_normalise_both_pixel_scales():
    frames = np.full((2, 4, 4, 3), (200, 100, 50), np.uint8)
    out = normalise(frames, MEAN, STD)
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), MEAN, STD)]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected), atol=1e-5)
    mm_mean = [m * 255 for m in MEAN]
    mm_std = [s * 255 for s in STD]
    assert torch.allclose(normalise(frames, mm_mean, mm_std), out, atol=1e-5)


def test_normalise_matches_the_formula_pixel_for_pixel_and_leaves_its_input():
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), np.uint8)  # H ≠ W: a swap would show
    expected = (frames / 255.0 - np.array(MEAN)) / np.array(STD)  # float64, (T, H, W, 3)
    out = normalise(frames, MEAN, STD)
    assert out.shape == (2, 3, 5, 7) and out.is_contiguous()
    assert np.abs(out.movedim(1, -1).numpy() - expected).max() < 1e-5
    floats = torch.as_tensor(frames[:, :1, :1].copy(), dtype=torch.float32)  # (2, 1, 1, 3): contiguous once moved
    before = floats.clone()
    assert torch.allclose(normalise(floats, MEAN, STD), normalise(frames[:, :1, :1], MEAN, STD))
    assert torch.equal(floats, before)


def test_make_views_shapes_and_content():
    frames = gradient_frames(3, 240, 320)
    spec = Preprocess((256,), 224)
    for crops, count in (("centre", 1), (3, 3), ("ten", 10)):
        views = make_views(frames, spec, crops)
        assert views.shape == (count, 3, 3, 224, 224)
    ten = make_views(frames, spec, 10)
    assert torch.equal(ten[5:], ten[:5].flip(-1))  # the last five are the mirror images
    # the centre view is the centre of the resized frames, normalised
    resized = resize_frames(frames, (256,))
    centre = resized[:, 16:240, 58:282]
    assert torch.allclose(make_views(frames, spec, 1)[0], normalise(centre, MEAN, STD))
    # time is kept in order (blue encodes the frame index)
    blue = make_views(frames, spec, 1)[0, :, 2].mean((1, 2))
    assert blue[0] < blue[1] < blue[2]


def test_exact_resize_smaller_than_crop_is_padded():
    frames = gradient_frames(1, 100, 150)
    spec = Preprocess((60, 80), 64)
    views = make_views(frames, spec, 1)
    assert views.shape == (1, 1, 3, 64, 64)
    assert pad_to(np.zeros((1, 60, 80, 3), np.uint8), 64).shape == (1, 64, 80, 3)


@pytest.mark.parametrize("height, width, crops", [(240, 320, 1), (240, 320, 3), (360, 202, 3), (240, 320, 10)])
def test_crop_boxes_map_back_onto_the_original_frame(height, width, crops):
    frames = gradient_frames(1, height, width)
    spec = Preprocess((128,), 112)
    views = make_views(frames, spec, crops)
    for view, box in zip(views, crop_boxes_in_frame(height, width, spec, crops)):
        top, left = round(box.top), round(box.left)
        region = frames[0, top : top + round(box.height), left : left + round(box.width)]
        expected = cv2.resize(region, (112, 112), interpolation=cv2.INTER_LINEAR)[None]
        if box.flip:
            expected = expected[:, :, ::-1]
        difference = (view - normalise(np.ascontiguousarray(expected), MEAN, STD)).abs().mean()
        assert difference < 0.05, (box, float(difference))


def test_preprocess_from_registry_entries():
    tsn = Preprocess.from_entry(get_entry("tsn-r50-k400"))
    assert tsn == Preprocess((256,), 256, MEAN, STD)
    tcm = Preprocess.from_entry(get_entry("tcm-r50-sthv1"))
    assert tcm.resize == (240, 320) and tcm.input_size == 224
    assert Preprocess.from_entry(None) == Preprocess((256,), 224)
    small = Preprocess.from_entry(None, input_size=56)
    assert small.input_size == 56 and small.resize == (64,)


def test_apply_crop_flip():
    frames = gradient_frames(1, 10, 10)
    crop = apply_crop(frames, CropBox(2, 3, 4, 5, flip=True))
    assert np.array_equal(crop, frames[:, 2:6, 3:8][:, :, ::-1])
