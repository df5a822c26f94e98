"""Inference-only fast paths, swapped into a model by `prepare`. Each computes what the model's own
(paper-form) modules compute, up to rounding; none can be trained."""
from __future__ import annotations

import torch

from vtempo.fast.casts import cache_autocast_casts
from vtempo.fast.fold import fold_batch_norms
from vtempo.runtime import CHANNELS_LAST


def prepare(model: torch.nn.Module, device: torch.device, channels_last: bool | None = None) -> torch.nn.Module:
    """Ready a model for inference, in place: eval mode on the device, every BatchNorm that follows a
    conv folded into it (`models.fuse`; the model can no longer be trained), weights in fp32 (reduced
    precision comes from autocast, with each weight's cast made once: `cache_autocast_casts`).

    channels_last=None takes the default (`CHANNELS_LAST`). Inputs need no conversion: the first
    convolution's channels-last weights make every later activation channels-last.
    """

    channels_last = CHANNELS_LAST if channels_last is None else channels_last
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).eval()
    fold_batch_norms(model)
    # Only 4-D tensors (Conv2d weights) take this layout; `model.to(memory_format=)` would fail on the
    # 5-D weights of a Conv3d.
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=layout)
    cache_autocast_casts(model)
    return model
