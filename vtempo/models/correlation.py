"""Local spatial correlation in pure PyTorch (CPU and CUDA, any float dtype).

`spatial_correlation(f1, f2, radius)` equals the `spatial_correlation_sampler` CUDA/C++ extension with
kernel_size=1, patch_size=2·radius+1, stride=1, padding=0, dilation_patch=1:

    out[b, dy + R, dx + R, h, w] = Σ_c f1[b, c, h, w] · f2[b, c, h + dy, w + dx]

with f2 read as zero outside the map. It runs as one batched matrix product: each row of f1 against
the 2R+1 rows of f2 around it (all W columns of each, read in place through a strided view of f2's
rows), then each position's 2R+1 columns are gathered and the places outside the map zeroed. That
computes W/(2R+1) times the MACs the window needs (28/15 for R-50's 28×28 layer2 map), as one GEMM
instead of (2R+1)² elementwise passes over the features, which made it much faster than a loop over
the displacements, forward and backward (docs/performance.md). Memory is one (H, W, (2R+1)·W) product per pair.

It runs in at least fp32, also under autocast: TCM's soft-argmax multiplies correlations by a
temperature of 100, so bf16's three significant digits would move the flow estimate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vtempo.runtime import full_precision


def spatial_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, C, H, W) × (B, C, H, W) → (B, 2R+1, 2R+1, H, W); dim 1 is the vertical displacement.

    f1 may also hold Q query maps per key map, (B, Q, C, H, W) → (B, Q, 2R+1, 2R+1, H, W): each key
    row's band is then read once for the Q query rows, in one taller matrix product.
    """
    queries = f1.dim() == 5
    if f1.shape[-3:] != f2.shape[-3:] or f1.shape[0] != f2.shape[0] or f2.dim() != 4 or f1.dim() not in (4, 5):
        raise ValueError(f"expected (B, C, H, W) or (B, Q, C, H, W) queries for (B, C, H, W) keys, got "
                         f"{tuple(f1.shape)} and {tuple(f2.shape)}")
    f1 = f1 if queries else f1[:, None]
    b, q, c, h, w = f1.shape
    size = 2 * radius + 1
    dtype = torch.promote_types(f1.dtype, torch.float32)
    with full_precision(f1.device):
        rows = f1.to(dtype).permute(0, 3, 1, 4, 2).reshape(b * h, q * w, c)  # [b·y, (query, x), c]
        # every map's rows of f2 in one stack, channels last, with R zero rows before and after it; row
        # h's band is rows h-R..h+R of the stack (rows of a neighbouring map are zeroed below)
        stack = F.pad(f2.to(dtype).permute(0, 2, 3, 1).reshape(b * h, w, c), (0, 0, 0, 0, radius, radius))
        bands = stack.as_strided((b * h, size * w, c), (w * c, c, 1))
        products = torch.bmm(rows, bands.transpose(1, 2)).view(b, h, q, w, size, w)  # [b, y, query, x, dy, x2]
        offsets = torch.arange(-radius, radius + 1, device=f1.device)
        key_rows = torch.arange(h, device=f1.device)[:, None] + offsets  # (H, 2R+1)
        key_cols = torch.arange(w, device=f1.device)[:, None] + offsets  # (W, 2R+1)
        out = products.gather(5, key_cols.clamp(0, w - 1).view(1, 1, 1, w, 1, size).expand(b, h, q, w, size, size))
        inside = ((key_rows >= 0) & (key_rows < h))[:, None, None, :, None] & ((key_cols >= 0) & (key_cols < w))[None, None, :, None, :]
        out = out.mul_(inside)  # (B, H, Q, W, dy, dx)
    out = out.permute(0, 2, 4, 5, 1, 3)
    return out if queries else out[:, 0]


def banded_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """`spatial_correlation` without `as_strided`, which ONNX cannot express (TCM's export form): (B, C, H, W) × (B, C, H, W)
    → (B, 2R+1, 2R+1, H, W), out[b, dy+R, dx+R, h, w] = Σ_c f1[b, c, h, w]·f2[b, c, h+dy, w+dx], zero
    outside the map.

    Row h of f1 is multiplied with rows h-R..h+R of f2 (all W columns of each) in one batched matrix
    product; each position then picks its 2R+1 columns, and the places outside the map are zeroed.
    """
    b, c, h, w = f1.shape
    size = 2 * radius + 1
    rows = f1.permute(0, 2, 3, 1).reshape(-1, w, c)  # (B·H, W, C)
    padded = F.pad(f2.permute(0, 2, 3, 1), (0, 0, 0, 0, radius, radius))  # (B, H+2R, W, C), zero rows
    bands = torch.stack([padded[:, dy : dy + h] for dy in range(size)], 2)  # (B, H, 2R+1, W, C)
    products = torch.bmm(rows, bands.reshape(-1, size * w, c).transpose(1, 2)).view(b, h, w, size, w)
    offsets = torch.arange(-radius, radius + 1, device=f1.device)
    key_rows = torch.arange(h, device=f1.device)[:, None] + offsets  # (H, 2R+1)
    key_cols = torch.arange(w, device=f1.device)[:, None] + offsets  # (W, 2R+1)
    out = products.gather(4, key_cols.clamp(0, w - 1).view(1, 1, w, 1, size).expand(b, h, w, size, size))
    inside = ((key_rows >= 0) & (key_rows < h))[:, None, :, None] & ((key_cols >= 0) & (key_cols < w))[None, :, None, :]
    return (out * inside.to(out.dtype)).permute(0, 3, 4, 1, 2)
