"""Helpers shared by the motion builders: the pixel grid and mask statistics.

Bilinear lookups and the in-frame test live in :mod:`omnifast.pixels`; the motion builders
sample with ``border="zeros"`` (the original's convention, spec 1.2).
"""

from __future__ import annotations

import numpy as np


def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel coordinates as float32: ``xs[y, x] = x`` and ``ys[y, x] = y``, each [H, W]."""
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                         indexing="ij")
    return xs, ys


def mask_stats(cycle: np.ndarray, occluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """flow_stats and count maps from the masks (spec 1.5 step 5).

    Args:
        cycle, occluded: ``[T, T, H, W]`` bool masks (may be memory-mapped).

    Returns:
        flow_stats ``[T, T]`` int64 (valid pixels per ordered pair) and count_maps
        ``[T, H, W]`` int32 (per pixel of frame i, the number of frames j it has a valid
        correspondence in).
    """
    t = cycle.shape[0]
    h, w = cycle.shape[2:]
    stats = np.zeros((t, t), np.int64)
    counts = np.zeros((t, h, w), np.int32)
    for i in range(t):
        valid = np.asarray(cycle[i]) | np.asarray(occluded[i])  # [T, H, W], one row at a time
        stats[i] = valid.reshape(t, -1).sum(1)
        counts[i] = valid.sum(0, dtype=np.int32)
    return stats, counts
