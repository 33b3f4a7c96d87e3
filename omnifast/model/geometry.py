"""Pixel <-> normalized coordinates, orthographic (un)projection, ray samples, contraction."""

from __future__ import annotations

import torch


def normalize_pixels(px: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixels (x, y) -> align-corners normalized coordinates in [-1, 1]. [..., 2] -> [..., 2]"""
    # per-coordinate scalars, not a [2] tensor: building one would upload host data every call
    sx, sy = 2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)
    return torch.stack((px[..., 0] * sx, px[..., 1] * sy), dim=-1) - 1.0


def denormalize_pixels(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalized (x_n, y_n) -> pixels (x, y). [..., 2] -> [..., 2]"""
    sx, sy = (width - 1) / 2.0, (height - 1) / 2.0
    xy = xy + 1.0
    return torch.stack((xy[..., 0] * sx, xy[..., 1] * sy), dim=-1)


def unproject(px: torch.Tensor, depths: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Orthographic unprojection of pixels at given depths.

    Args:
        px: pixels (x, y). [..., 2]
        depths: sample depths, either shared [K] or per ray [..., K].

    Returns:
        local points (x_n, y_n, depth). [..., K, 3]
    """
    xy = normalize_pixels(px, height, width)
    if depths.dim() == 1:
        depths = depths.expand(*xy.shape[:-1], depths.shape[0])
    xy = xy.unsqueeze(-2).expand(*depths.shape, 2)
    return torch.cat([xy, depths.unsqueeze(-1)], dim=-1)


def project(points: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthographic projection. points [..., 3] -> (pixels (x, y) [..., 2], depth [...])"""
    return denormalize_pixels(points[..., :2], height, width), points[..., 2]


def sample_depths(shape: tuple[int, ...], num_samples: int, min_depth: float, max_depth: float,
                  stratified: bool = False, generator: torch.Generator | None = None,
                  device=None, dtype=torch.float32,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """Depths along rays (spec 3.2).

    Deterministic: ``linspace(min, max, K)``. Stratified: uniform within the strata bounded by
    the midpoints of the deterministic samples (first and last strata half as wide).

    Args:
        shape: ray batch shape (e.g. ``(pairs, points)``).
        noise: the stratified draws, uniform in [0, 1) (drawn from ``generator`` when None).
            [*shape, K]

    Returns:
        [*shape, K]
    """
    d = torch.linspace(min_depth, max_depth, num_samples, device=device, dtype=dtype)
    d = d.expand(*shape, num_samples)
    if not stratified or num_samples == 1:
        return d.contiguous()
    mid = 0.5 * (d[..., 1:] + d[..., :-1])
    lower = torch.cat([d[..., :1], mid], dim=-1)
    upper = torch.cat([mid, d[..., -1:]], dim=-1)
    u = (torch.rand(lower.shape, generator=generator, device=device, dtype=dtype)
         if noise is None else noise)
    return lower + u * (upper - lower)


def contract(x: torch.Tensor) -> torch.Tensor:
    """x if ||x|| <= 1 else (2 - 1/||x||) x / ||x||: maps R^3 into the ball of radius 2."""
    norm = torch.linalg.norm(x, dim=-1, keepdim=True)
    safe = torch.clamp(norm, min=1e-12)
    return torch.where(norm <= 1.0, x, (2.0 - 1.0 / safe) * x / safe)
