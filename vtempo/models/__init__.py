"""Architecture registry: `build("tsm-r50", num_classes=174, frames=8)`.

An architecture name is `<family>-<backbone>`: the family is one module of this package (one paper),
the backbone one of `backbone.resnet`'s names (r18, r50, r101, or narrow variants such as r26w16).
"""
from __future__ import annotations

from vtempo.models import stc, tam, tcm, tefe, tsi, tsm, tsn  # noqa: F401  (each registers its family)
from vtempo.models.base import TemporalModule, VideoRecognizer
from vtempo.models.families import (
           FAMILIES,
           PUBLISHED_BACKBONES,
           architecture_names,
           build,
           register,
           split_name,
)

__all__ = ["FAMILIES", "PUBLISHED_BACKBONES", "TemporalModule", "VideoRecognizer", "architecture_names", "build",
           "register", "split_name"]
