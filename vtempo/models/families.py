"""The architecture families and how a name becomes a model: `build("tsm-r50", num_classes=174, frames=8)`.

Each family module registers its builder with `@register("name")`; `vtempo.models` imports them all.
"""
from __future__ import annotations

from typing import Callable

from vtempo.models.backbone import BACKBONE_NAME, DEPTHS, resnet
from vtempo.models.base import VideoRecognizer

Builder = Callable[..., VideoRecognizer]
FAMILIES: dict[str, Builder] = {}
PUBLISHED_BACKBONES = ("r18", "r50", "r101")


def register(family: str) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        FAMILIES[family] = builder
        return builder

    return add


def split_name(arch: str) -> tuple[str, str]:
    family, _, backbone = arch.rpartition("-")
    if family not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unknown architecture {arch!r}: the family must be one of {known} (e.g. tsm-r50)")
    match = BACKBONE_NAME.match(backbone)
    if not match or int(match.group(1)) not in DEPTHS:
        resnet(backbone)  # raises the error naming the valid backbones (building one per check is slow)
    return family, backbone


def build(arch: str, num_classes: int = 400, frames: int = 8, **options) -> VideoRecognizer:
    family, backbone = split_name(arch)
    model = FAMILIES[family](backbone, num_classes=num_classes, frames=frames, **options)
    model.arch = getattr(model, "arch", arch)  # a builder may name a variant (tsm-r50, shift="online")
    return model


def architecture_names() -> list[str]:
    return [f"{family}-{backbone}" for family in FAMILIES for backbone in PUBLISHED_BACKBONES]
