"""What `vtempo.fast.prepare` does to a model for inference, each without changing its logits: eval-mode
BatchNorm folded into the conv before it, and autocast's weight casts made once. (TSM's shift without
its copy: tests/test_fast.py.)"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from vtempo.fast import prepare
from vtempo.fast.fold import fold_batch_norms
from vtempo.models import FAMILIES
from vtempo.runtime import autocast

from test_fast import with_random_statistics


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("backbone", ["r14w16", "r10w8"])  # bottleneck and basic blocks
def test_folding_keeps_the_logits(family, backbone):
    model = with_random_statistics(f"{family}-{backbone}")
    clip = torch.randn(2, 4, 3, 64, 64)
    folded = copy.deepcopy(model)
    count = fold_batch_norms(folded)
    with torch.no_grad():
        expected, got = model(clip), folded(clip)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert count > 0 and batch_norms(folded) == batch_norms(model) - count
    # STC's BN follows a concatenation of two branches, not one conv: that one stays
    assert batch_norms(folded) == (4 if family.startswith("stc") else 0)


def test_prepare_folds_and_a_training_model_is_refused():
    model = with_random_statistics("tsm-r14w16")
    assert batch_norms(prepare(copy.deepcopy(model), torch.device("cpu"))) == 0
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(model.train())


def twin_without_cast_cache(model: nn.Module) -> nn.Module:
    """The model prepared like `prepare` does but for the cast cache: its convs cast on every call. Same
    folded weights in the same memory layout, and the same choices of the other fast paths: oneDNN picks
    its kernel (and so its order of summation) by the weight's layout, so a contiguous twin would differ
    from a channels-last model in the last bf16 bit on some CPUs, whatever the casts."""
    return prepare(copy.deepcopy(model), torch.device("cpu"), skip=("casts",))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_casts_made_once_give_the_logits_of_autocast(family):
    model = with_random_statistics(f"{family}-r14w16")
    prepared = prepare(copy.deepcopy(model), torch.device("cpu"))
    twin = twin_without_cast_cache(model)
    clip = torch.randn(2, 4, 3, 64, 64)
    with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
        expected = twin(clip)
        first, second = prepared(clip), prepared(clip)
    assert torch.equal(first, expected) and torch.equal(second, expected)  # bit for bit


def test_cast_cache_follows_new_weights_and_stays_out_of_autograd():
    device = torch.device("cpu")
    prepared = prepare(with_random_statistics("tsm-r14w16"), device, skip=("pack",))
    conv = prepared.backbone.conv1
    clip = torch.randn(1, 4, 3, 64, 64)
    with torch.inference_mode(), autocast(device, "bf16"):
        before = prepared(clip)
    (_, cast, _), = conv.forward.casts.values()
    assert cast.dtype == torch.bfloat16 and torch.equal(cast, conv.weight.to(torch.bfloat16))

    torch.manual_seed(1)
    other = prepare(with_random_statistics("tsm-r14w16"), device, skip=("pack",))
    for parameter in other.parameters():
        parameter.data.normal_(0, 0.05)
    prepared.load_state_dict(other.state_dict())  # in place: the cached casts are stale now
    with torch.inference_mode(), autocast(device, "bf16"):
        after, expected = prepared(clip), other(clip)
    assert not torch.equal(after, before) and torch.equal(after, expected)

    with autocast(device, "bf16"):  # autograd on: the parameters themselves, cast by autocast
        prepared(clip).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32


def test_a_model_made_under_inference_mode_runs_in_bf16_without_the_cache():
    device = torch.device("cpu")
    with torch.inference_mode():  # its parameters are inference tensors, which keep no version
        prepared = prepare(with_random_statistics("tcm-r14w16"), device)
        with autocast(device, "bf16"):
            logits = prepared(torch.randn(1, 4, 3, 64, 64))
        fp32 = prepared(torch.randn(1, 4, 3, 64, 64))  # and in fp32 without packed weights
    conv = prepared.backbone.conv1.forward
    assert logits.dtype == torch.bfloat16 and not getattr(conv, "previous", conv).casts
    assert fp32.dtype == torch.float32 and not getattr(conv, "packs", {})
