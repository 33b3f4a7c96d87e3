"""The frames as refinement reads them: float tensors and their gradients, samples at
sub-pixel positions and the in-frame test in refinement's layout (through :mod:`omnifast.pixels`,
the one sampler and in-frame rule), and a patch's pixel grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from omnifast.pixels import bilinear, in_frame


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
    positions outside the frame read the nearest border pixel (:func:`omnifast.pixels.bilinear`,
    ``border="clamp"``)."""
    return bilinear(frame.permute(1, 2, 0), pts[..., 0], pts[..., 1], border="clamp")


def inside(p, h: int, w: int):
    """Whether (x, y) points [..., 2] (numpy or torch) lie on the pixel-centre rectangle of an
    h x w frame, where a patch lookup reads real pixels (:func:`omnifast.pixels.in_frame`,
    ``margin=0``). [...] bool"""
    return in_frame(p[..., 0], p[..., 1], h, w, margin=0)


__all__ = ["frames_tensor", "gradients", "inside", "patch_offsets", "sample"]
