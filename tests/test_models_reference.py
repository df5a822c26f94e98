"""TSN, TSM, TAM and TCM against the facts of their official code: sizes, cost, the input contract,
the temporal shift, and TCM's correlation against a naive loop (and CUDA against CPU when a GPU is here).

Sizes and MACs are counted on the meta device; everything that runs uses tiny narrow backbones.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from vtempo.bench.flops import count_macs
from vtempo.models import build
from vtempo.models.correlation import spatial_correlation
from vtempo.models.tcm import eca_kernel_size, soft_argmax_flow
from vtempo.models.tsm import TemporalShift, temporal_shift


def meta_model(arch: str, num_classes: int, frames: int = 8) -> nn.Module:
    with torch.device("meta"):
        return build(arch, num_classes=num_classes, frames=frames)


def tiny(arch: str, frames: int = 4, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return build(arch, num_classes=num_classes, frames=frames).eval()


# --- size and cost: the table of architectures.md (R-50, 8 frames unless stated, 224²) ----------------


@pytest.mark.parametrize(
    "arch, classes, frames, params, gmacs",
    [
        ("tsn-r50", 400, 8, 24_327_632, 32.70),
        ("tsn-r50", 174, 8, 23_864_558, 32.70),
        ("tsm-r50", 400, 8, 24_327_632, 32.70),
        ("tam-r50", 400, 8, 25_590_320, 32.76),
        ("tam-r50", 174, 8, 25_127_246, 32.76),
        ("tam-r50", 174, 16, 25_134_670, 65.51),
        ("tcm-r50", 174, 8, 23_935_721, 33.14 + 0.295),  # + the correlation's banded GEMM (see below)
    ],
)
def test_size_and_macs_match_official_code(arch, classes, frames, params, gmacs):
    model = meta_model(arch, classes, frames)
    assert sum(p.numel() for p in model.parameters()) == params
    macs = count_macs(model, frames=frames, size=224)
    # complete: counted, plus what modules report for work done elementwise (TAM's temporal conv, which
    # the official code runs as a grouped conv)
    assert macs.complete / 1e9 == pytest.approx(gmacs, abs=0.005)


def test_tcm_correlation_is_counted_as_the_gemm_it_runs():
    macs = count_macs(meta_model("tcm-r50", 174), frames=8, size=224)
    assert macs.analytic == {}
    with FlopCounterMode(display=False) as counter:
        spatial_correlation(torch.empty(14, 64, 28, 28, device="meta"), torch.empty(14, 64, 28, 28, device="meta"), 7)
    # 14 frame pairs × 28² positions × 64 channels × whole rows (28) of the 15 rows around each position:
    # 28/15 of the 15×15 window's own 14 × 64 × 225 × 28² MACs
    assert counter.get_total_flops() / 2 == 14 * 28 * 28 * 64 * 15 * 28


@pytest.mark.parametrize(
    "arch, shifted",
    [("tsm-r50", 16), ("tsm-r101", 2 + 2 + 12 + 2), ("tcm-r101", 33), ("tsm-r18", 8), ("tcm-r26w16", 8)],
)
def test_shift_placement_follows_official_code(arch, shifted):
    model = meta_model(arch, 10)
    assert sum(isinstance(m, TemporalShift) for m in model.modules()) == shifted


def test_tcm_sits_after_layer2_with_widths_scaled_for_narrow_nets():
    r50 = meta_model("tcm-r50", 174).backbone.layer2.tcm
    assert r50.dynamics.reduce[0].weight.shape == (64, 512, 1, 1)
    assert r50.attention.conv4[3].weight.shape == (512, 64, 1, 1)
    r18 = meta_model("tcm-r18", 174).backbone.layer2.tcm
    assert r18.dynamics.reduce[0].weight.shape == (64, 128, 1, 1)  # as the official code builds R-18
    narrow = meta_model("tcm-r26w16", 10).backbone.layer2.tcm
    assert narrow.dynamics.reduce[0].weight.shape == (16, 128, 1, 1)
    assert narrow.attention.conv1[9].weight.shape == (4, 6, 1, 1)
    assert narrow.attention.conv4[3].weight.shape == (128, 16, 1, 1)


@pytest.mark.parametrize("frames, k", [(2, 1), (4, 3), (8, 3), (16, 5), (32, 5)])
def test_tcm_eca_kernel_size(frames, k):
    assert eca_kernel_size(frames) == k
    # the official formula, int(log(T, 2)) made odd
    official = int(math.log(frames, 2))
    assert k == (official + 1 if official % 2 == 0 else official)


# --- the input contract --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["tsm-r10w8", "tsm-r14w16", "tam-r10w8", "tam-r14w16", "tcm-r10w8", "tcm-r14w16"])
def test_forward_shape_on_basic_and_bottleneck_blocks(arch):
    model = tiny(arch, frames=4)
    with torch.no_grad():
        assert model(torch.randn(2, 4, 3, 48, 48)).shape == (2, 5)


@pytest.mark.parametrize("arch, frames", [("tsm-r14w16", 3), ("tam-r10w8", 3), ("tcm-r10w8", 3), ("tsm-r14w16", 8)])
def test_clips_in_a_batch_never_mix(arch, frames):
    model = tiny(arch, frames=frames)
    clips = torch.randn(2, frames, 3, 40, 40)
    other = clips.clone()
    other[1] = torch.randn(frames, 3, 40, 40)
    with torch.no_grad():
        first, second = model(clips), model(other)
    torch.testing.assert_close(first[0], second[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first[1], second[1])


def test_tsm_takes_t_from_the_input_without_rebuilding():
    model = tiny("tsm-r14w16", frames=8)
    with torch.no_grad():
        for frames in (3, 8):
            clip = torch.randn(1, frames, 3, 32, 32)
            features = model.features(clip)
            assert features.shape[:2] == (1, frames)
            # frame 0 sees frame 1 through the shift
            changed = clip.clone()
            changed[0, 1] += 1
            assert not torch.allclose(model.features(changed)[0, 0], features[0, 0])
            changed = clip.clone()
            changed[0, -1] += 1
            if frames > 4:  # 4 shifted blocks carry information at most 4 frames: frame 0 never sees frame 7
                torch.testing.assert_close(model.features(changed)[0, 0], features[0, 0])


def test_tsn_frames_are_independent():
    model = tiny("tsn-r10w8")
    clip = torch.randn(1, 4, 3, 32, 32)
    changed = clip.clone()
    changed[0, 1] += 1
    with torch.no_grad():
        torch.testing.assert_close(model.features(changed)[0, 0], model.features(clip)[0, 0])


def test_t_shaped_models_refuse_another_clip_length():
    for arch in ("tam-r10w8", "tcm-r10w8"):
        model = tiny(arch, frames=4)
        with pytest.raises(ValueError, match="built for 4 frames"):
            model(torch.randn(1, 8, 3, 32, 32))


def test_temporal_shift_moves_an_eighth_each_way_with_zeros_at_the_ends():
    n, t, c = 2, 3, 16
    x = torch.arange(n * t * c, dtype=torch.float32).view(n * t, c, 1, 1) + 1
    out = temporal_shift(x, t).view(n, t, c)
    clip = x.view(n, t, c)
    fold = c // 8
    torch.testing.assert_close(out[:, :-1, :fold], clip[:, 1:, :fold])
    assert (out[:, -1, :fold] == 0).all()
    torch.testing.assert_close(out[:, 1:, fold : 2 * fold], clip[:, :-1, fold : 2 * fold])
    assert (out[:, 0, fold : 2 * fold] == 0).all()
    torch.testing.assert_close(out[:, :, 2 * fold :], clip[:, :, 2 * fold :])


# --- TCM's correlation ---------------------------------------------------------------------------------


def naive_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """The sampler's definition, one output element at a time."""
    b, c, h, w = f1.shape
    size = 2 * radius + 1
    out = torch.zeros(b, size, size, h, w, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            for y in range(h):
                for x in range(w):
                    y2, x2 = y + i - radius, x + j - radius
                    if 0 <= y2 < h and 0 <= x2 < w:
                        out[:, i, j, y, x] = (f1[:, :, y, x].double() * f2[:, :, y2, x2].double()).sum(1)
    return out


@pytest.mark.parametrize("shape, radius", [((2, 3, 5, 6), 2), ((1, 4, 4, 9), 7)])
def test_correlation_equals_naive_loop(shape, radius):
    torch.manual_seed(1)
    f1, f2 = torch.randn(shape), torch.randn(shape)
    expected = naive_correlation(f1, f2, radius)
    torch.testing.assert_close(spatial_correlation(f1, f2, radius).double(), expected, rtol=1e-5, atol=1e-5)


def test_several_queries_per_key_equal_one_query_at_a_time():
    torch.manual_seed(5)
    queries, keys = torch.randn(2, 3, 4, 6, 7), torch.randn(2, 4, 6, 7)
    together = spatial_correlation(queries, keys, 2)
    assert together.shape == (2, 3, 5, 5, 6, 7)
    flows = soft_argmax_flow(torch.relu(together))
    for q in range(3):
        alone = spatial_correlation(queries[:, q], keys, 2)
        torch.testing.assert_close(together[:, q], alone)
        torch.testing.assert_close(flows[:, q], soft_argmax_flow(torch.relu(alone)))


def test_correlation_is_differentiable():
    f1 = torch.randn(1, 2, 4, 4, requires_grad=True)
    f2 = torch.randn(1, 2, 4, 4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: spatial_correlation(a, b, 1), (f1.double(), f2.double()))


def test_soft_argmax_flow_finds_the_displacement_of_the_later_frame():
    torch.manual_seed(2)
    features = nn.functional.normalize(torch.randn(1, 64, 12, 12), dim=1)
    dy, dx = 2, -3
    later = torch.roll(features, shifts=(dy, dx), dims=(2, 3))  # content moves down 2, left 3
    correlation = torch.relu(spatial_correlation(features, later, 7))
    u, v, confidence = soft_argmax_flow(correlation)[0]
    inner = (slice(3, 9), slice(3, 9))  # away from the wrapped border
    torch.testing.assert_close(u[inner], torch.full((6, 6), dx / 7), atol=1e-3, rtol=0)
    torch.testing.assert_close(v[inner], torch.full((6, 6), dy / 7), atol=1e-3, rtol=0)
    torch.testing.assert_close(confidence[inner], torch.ones(6, 6), atol=1e-5, rtol=0)


def naive_soft_argmax_flow(correlation: torch.Tensor) -> torch.Tensor:
    """The official formula, displacement by displacement: a Gaussian (σ 5) around the hard argmax times
    the correlation, × 100, softmax over the window, expected offsets / radius; and the maximum."""
    b, p, _, h, w = correlation.shape
    radius = (p - 1) // 2
    flat = correlation.reshape(b, p * p, h, w)
    confidence, best = flat.max(1)
    best_y, best_x = (best // p).float(), (best % p).float()
    weighted = torch.empty_like(flat)
    for k in range(p * p):
        gaussian = torch.exp(-((k % p - best_x) ** 2 + (k // p - best_y) ** 2) / (2 * 5.0**2))
        weighted[:, k] = gaussian * flat[:, k] * 100.0
    weights = weighted.softmax(1)
    offsets = torch.arange(p * p)
    u = (weights * (offsets % p - radius).view(1, -1, 1, 1)).sum(1) / radius
    v = (weights * (offsets // p - radius).view(1, -1, 1, 1)).sum(1) / radius
    return torch.stack([u, v, confidence], 1)


def test_soft_argmax_flow_equals_the_formula_taken_displacement_by_displacement():
    torch.manual_seed(4)
    f1 = nn.functional.normalize(torch.randn(3, 16, 9, 11), dim=1)
    f2 = nn.functional.normalize(torch.randn(3, 16, 9, 11), dim=1)
    correlation = torch.relu(spatial_correlation(f1, f2, 7))
    expected = naive_soft_argmax_flow(correlation)
    torch.testing.assert_close(soft_argmax_flow(correlation), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(soft_argmax_flow(correlation.contiguous()), expected, rtol=1e-5, atol=1e-6)
    # one peak per position: the other logits lie 100 below it, under the subnormal floor
    peaked = (correlation == correlation.amax((1, 2), keepdim=True)).float()
    torch.testing.assert_close(soft_argmax_flow(peaked), naive_soft_argmax_flow(peaked), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_correlation_and_tcm_on_cuda_match_cpu():
    torch.manual_seed(3)
    f1, f2 = torch.randn(2, 8, 9, 11), torch.randn(2, 8, 9, 11)
    torch.testing.assert_close(
        spatial_correlation(f1.cuda(), f2.cuda(), 7).cpu(), spatial_correlation(f1, f2, 7), rtol=1e-4, atol=1e-4
    )
    model = tiny("tcm-r10w8")
    clip = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        expected = model(clip)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        got = model.cuda()(clip.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
