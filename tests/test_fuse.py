"""Folding eval-mode BatchNorm into the conv before it: the same logits, fewer passes over the maps."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from vtempo.models import FAMILIES, build
from vtempo.models.fuse import fold_batch_norms
from vtempo.runtime import prepare


def with_random_statistics(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = build(arch, num_classes=5, frames=4)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):  # BN at init is the identity: make it bite
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight, 1.0, 0.3)
            nn.init.normal_(module.bias, 0.0, 0.3)
    return model.eval()


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
