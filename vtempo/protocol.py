"""How a model is tested and what its inputs are normalised with: facts that the registry, the video
transforms, the data sets and the inference paths share."""
from __future__ import annotations

from dataclasses import dataclass

SAMPLINGS = ("uniform", "twice", "dense", "stride")
CROPS = {"centre": 1, "three": 3, "ten": 10}
AVERAGES = ("logits", "prob")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Protocol:
    """How a model is tested: which frames, which views, how view scores are combined."""

    sampling: str = "uniform"
    clips: int = 1
    crop: str = "centre"
    average: str = "logits"
    stride: int | None = None  # frame stride for `stride` sampling; dense uses 64 // frames

    @property
    def views(self) -> str:
        return f"{self.clips}x{CROPS[self.crop]}"
