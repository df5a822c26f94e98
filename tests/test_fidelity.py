"""vtempo's TSN, TSM, TAM and TCM give the official implementations' logits for the same weights.

tests/data/reference_logits/<arch>.pt holds logits that the public reference code computed outside
this repository (mit-han-lab/temporal-shift-module for TSN and TSM, liu-zhy/temporal-adaptive-module
for TAM, zphyix/TCM with the spatial_correlation_sampler C++ extension for TCM; commits in each file).
The weights are not stored: `fidelity_weights` regenerates them from a seed, here and in the reference
run (outside the repository, on CPU, with the official code unchanged but for device and stub
shims), which copied them into the reference model through the official key names. Checksums of the
weights and of the input separate a change of torch's random generator from a change of the model.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vtempo.fast import prepare
from vtempo.models import build

DATA = Path(__file__).parent / "data" / "reference_logits"
CASES = sorted(p.stem for p in DATA.glob("*.pt"))
RELATIVE_TOLERANCE = 1e-4


def fidelity_weights(model: nn.Module, seed: int) -> None:
    """Fill every float tensor of the model's state dict, in state-dict order, from one seeded generator.

    Convs/linears: normal with std sqrt(1 / fan_in) (logits stay O(1-10)); BN scale and running
    variance: uniform [0.5, 1.5); BN shift, running mean, biases: normal with std 0.1. Non-trivial
    batch-norm statistics make any misplaced BN tensor visible in the logits.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if tensor.dim() >= 2:
                fan_in = tensor[0].numel()
                values = torch.randn(tensor.shape, generator=generator) * math.sqrt(1 / fan_in)
            elif key.endswith("running_var") or (key.endswith("weight") and tensor.dim() == 1):
                values = torch.rand(tensor.shape, generator=generator) + 0.5
            else:
                values = torch.randn(tensor.shape, generator=generator) * 0.1
            tensor.copy_(values)


def fidelity_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def weights_checksum(model: nn.Module) -> float:
    return float(sum(t.double().abs().sum() for t in model.state_dict().values() if t.is_floating_point()))


def test_reference_data_covers_every_official_model():
    assert CASES == ["tam-r50", "tcm-r50", "tsm-r50", "tsn-r50"]


@pytest.mark.slow  # ResNet-50 models, twice each
@pytest.mark.parametrize("case", CASES)
def test_logits_equal_reference_implementation(case):
    reference = torch.load(DATA / f"{case}.pt", weights_only=True)
    model = build(reference["arch"], num_classes=reference["num_classes"], frames=reference["frames"]).eval()
    fidelity_weights(model, reference["weights_seed"])
    assert weights_checksum(model) == pytest.approx(reference["weights_checksum"], rel=1e-9), "torch's RNG changed"
    clip = fidelity_input(tuple(reference["input_shape"]), reference["input_seed"])
    input_checksum = float(clip.double().abs().sum())
    assert input_checksum == pytest.approx(reference["input_checksum"], rel=1e-9), "torch's RNG changed"
    motion = {}
    if "motion" in reference:  # TCM: the correlation-based motion maps, the output of the official MTDM
        model.backbone.layer2.tcm.dynamics.register_forward_hook(lambda module, args, out: motion.update(out=out))
    with torch.no_grad():
        logits = model(clip)
    expected = reference["logits"]
    assert logits.shape == expected.shape
    error = (logits - expected).abs().max() / expected.abs().max()
    assert error <= RELATIVE_TOLERANCE, f"{case}: relative error {error:.2e} against {reference['reference']}"
    # Random networks give every clip similar logits; the error must also be small against what the
    # input changes, or a bug confined to the temporal modules could hide under the tolerance.
    assert (logits - expected).abs().max() <= 1e-3 * (expected[0] - expected[1]).abs().max()
    assert (logits.argmax(1) == expected.argmax(1)).all()
    if "motion" in reference:
        motion_error = (motion["out"] - reference["motion"]).abs().max() / reference["motion"].abs().max()
        assert motion_error <= RELATIVE_TOLERANCE, f"TCM motion maps: relative error {motion_error:.2e}"
    # the inference path of every command (BN folded into the convs, channels-last) as well
    with torch.no_grad():
        prepared = prepare(model, torch.device("cpu"))(clip)
    error = (prepared - expected).abs().max() / expected.abs().max()
    assert error <= RELATIVE_TOLERANCE, f"{case}, prepared for inference: relative error {error:.2e}"
