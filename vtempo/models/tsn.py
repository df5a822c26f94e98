"""TSN: Temporal Segment Networks (Wang et al., ECCV 2016).

A 2D ResNet scores every sampled frame on its own; the clip's logits are the mean over frames. It has
no temporal module, so it cannot tell an action from its reverse: the baseline for every other model.
"""
from __future__ import annotations

from vtempo.models.backbone import resnet
from vtempo.models.base import VideoRecognizer
from vtempo.models.families import register


@register("tsn")
def build_tsn(backbone: str, num_classes: int, frames: int, dropout: float = 0.5) -> VideoRecognizer:
    del frames  # TSN works on any number of frames
    return VideoRecognizer(resnet(backbone), num_classes, dropout)
