"""The frames as refinement reads them: float tensors and their gradients, bilinear samples
at sub-pixel positions (border pixels repeated), the in-frame test and a patch's pixel grid.

The one home of these helpers inside :mod:`omnifast.refine`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def patch_offsets(radius: int) -> torch.Tensor:
    """The (x, y) offsets of a (2r+1)^2 square of whole pixels, row-major (y, then x): the
    pixel order of templates, of template weights and of the integer search. [(2r+1)^2, 2]"""
    ar = torch.arange(-radius, radius + 1, dtype=torch.float32)
    oy, ox = torch.meshgrid(ar, ar, indexing="ij")
    return torch.stack([ox.reshape(-1), oy.reshape(-1)], -1)


def frames_tensor(video) -> torch.Tensor:
    """[T, H, W, C] uint8 or float (0-1 or 0-255) -> [T, C, H, W] float32 in [0, 1]."""
    v = torch.as_tensor(np.asarray(video))
    if v.dim() == 3:
        v = v[..., None]
    if v.dim() != 4:
        raise ValueError(f"video must be [T, H, W, C] (or [T, H, W]), got {list(v.shape)}")
    v = v.float()
    if np.asarray(video).dtype == np.uint8 or float(v.max()) > 1.0:
        v = v / 255.0
    return v.permute(0, 3, 1, 2).contiguous()


def gradients(frames: torch.Tensor) -> torch.Tensor:
    """Central-difference x and y derivatives of every frame. [T, C, H, W] -> [T, 2C, H, W]"""
    pad = F.pad(frames, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2])
    gy = 0.5 * (pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1])
    return torch.cat([gx, gy], 1)


def sample(frame: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of one frame [C, H, W] at (x, y) pixels [M, P, 2] -> [M, P, C];
    positions outside the frame read the nearest border pixel."""
    c, h, w = frame.shape
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=pts.dtype)
    g = pts * scale - 1.0
    out = F.grid_sample(frame[None], g[None], mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out[0].permute(1, 2, 0)


def inside(p, h: int, w: int):
    """Whether (x, y) points [..., 2] (numpy or torch) lie in an h x w frame: pixel centres
    0..w-1 and 0..h-1, ends included. [...] bool"""
    return (p[..., 0] >= 0) & (p[..., 0] <= w - 1) & (p[..., 1] >= 0) & (p[..., 1] <= h - 1)


__all__ = ["frames_tensor", "gradients", "inside", "patch_offsets", "sample"]
