"""The contract every vtempo architecture follows.

`VideoRecognizer(x)` takes float frames (N, T, 3, H, W) and returns logits (N, num_classes): the
backbone runs on the N·T frames, a linear head scores each frame, and the scores are averaged over T,
as the TSN-family reference heads do. Temporal modules inside the backbone learn T from the input on
every call (`TemporalModule.frames`), never from a value stored at construction, so a clip of any
length is never silently mixed with its neighbours in the batch.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from vtempo.models.backbone import feature_dim


class TemporalModule(nn.Module):
    """A module that mixes the T frames of each clip in an (N·T, ...) batch.

    `frames` is written by `VideoRecognizer.forward` before each call; read it, never store your own.
    Modules with T-shaped parameters set `fixed_frames` so a wrong clip length fails loudly.
    """

    frames: int = 1
    fixed_frames: int | None = None
    # How the published checkpoints name this module's weights: per layout (`vtempo`, `official`,
    # `mmaction2`), (pattern, replacement) pairs that bring a key to vtempo's name for it
    # (`vtempo.weights.checkpoint` applies them after the backbone's renames of that layout).
    checkpoint_rules: ClassVar[dict[str, tuple[tuple[str, str], ...]]] = {}
    # (method, replacement): a method the exporters cannot trace as written and the method of equal
    # result that `vtempo.export.forms` puts in its place for an export; None: exported as it is.
    export_swap: ClassVar[tuple[str, str] | None] = None
    # True: int8 (`vtempo.fast.quantize`) leaves this module's convs in fp32.
    int8_keeps_fp32: ClassVar[bool] = False
    # The inference stand-ins written for this module, by their names in `vtempo.fast.STAND_INS`:
    # `vtempo.fast.prepare` offers each module of this class (not of its subclasses) to them.
    fast_swaps: ClassVar[tuple[str, ...]] = ()

    def output_conv(self) -> nn.Conv2d | None:
        """The Conv2d whose output this module returns unchanged, if there is one (a module that wraps a
        conv and changes only its input). Inference fast paths use it: BN folding folds the BN that
        follows this module into that conv."""
        return None

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(N·T, ...) → (N, T, ...)."""
        return x.view(-1, self.frames, *x.shape[1:])


def module_classes() -> list[type[TemporalModule]]:
    """Every TemporalModule class (`vtempo.models` imports every family), parents before children."""
    classes, pending = [], [TemporalModule]
    while pending:
        cls = pending.pop(0)
        classes.append(cls)
        pending.extend(cls.__subclasses__())
    return classes


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the last two (H, W) dimensions. A sum divided by H·W: on CPU a bf16 `mean` first makes
    an fp32 copy of the whole tensor, which the sum does not."""
    return x.sum((-2, -1)) / (x.shape[-2] * x.shape[-1])


class VideoRecognizer(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim(backbone), num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.001)
        nn.init.zeros_(self.fc.bias)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def set_frames(self, frames: int) -> None:
        # Looked up on every call: inference fast paths (`vtempo.fast`) swap temporal modules in and out.
        for module in self.modules():
            if not isinstance(module, TemporalModule):
                continue
            if module.fixed_frames is not None and module.fixed_frames != frames:
                raise ValueError(
                    f"{type(module).__name__} was built for {module.fixed_frames} frames and got {frames}; "
                    f"create the model with frames={frames} or sample {module.fixed_frames} frames"
                )
            module.frames = frames

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame pooled features (N, T, C)."""
        n, t = x.shape[:2]
        self.set_frames(t)
        return self.backbone(x.flatten(0, 1)).view(n, t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"expected frames of shape (N, T, 3, H, W), got {tuple(x.shape)}")
        return self.fc(self.dropout(self.features(x))).mean(1)
