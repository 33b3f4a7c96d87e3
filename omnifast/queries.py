"""Query points: the one validation every tracker, baseline and ground truth applies.

A query is ``(t, y, x)``: a frame index and a pixel position in that frame (TAP-Vid's order).
The time must be a whole frame index: a fractional time is rejected, not rounded, because no
tracker here can start a track between two frames and silently moving the query to another
frame would score it against the wrong ground truth. A time within ``TIME_TOLERANCE`` of a
whole number (float32 storage, arithmetic) counts as that whole number.

Positions are not checked against the frame: a query just outside it is legal (the in-frame
rule, :func:`omnifast.pixels.in_frame`, decides visibility, not validity).

This module imports only numpy.
"""

from __future__ import annotations

import numpy as np

#: how far a query time may be from a whole frame index and still count as that frame
TIME_TOLERANCE: float = 1e-3


def validate_queries(query_points, num_frames: int) -> np.ndarray:
    """Check queries ``(t, y, x)`` against a video of ``num_frames`` frames.

    Args:
        query_points: ``[N, 3]`` numbers as (t, y, x) pixels (numpy, torch or nested lists).
        num_frames: T, the number of frames of the video.

    Returns:
        The queries as float64 ``[N, 3]``, the time column snapped to whole frame indices
        (so ``q[:, 0].astype(np.int64)`` is exact).

    Raises:
        ValueError: not numbers, not ``[N, 3]``, NaN or Inf, a fractional time, or a time
            outside ``0 .. num_frames - 1``.
    """
    if hasattr(query_points, "detach"):  # a torch tensor, on any device
        query_points = query_points.detach().cpu().numpy()
    q = np.asarray(query_points)
    if q.dtype == object or not np.issubdtype(q.dtype, np.number):
        raise ValueError(f"query points must be numbers, got dtype {q.dtype}")
    q = q.astype(np.float64)
    if q.ndim != 2 or q.shape[1] != 3:
        raise ValueError(f"query points must have shape [N, 3] as (t, y, x), got "
                         f"{list(q.shape)}")
    if not np.isfinite(q).all():
        raise ValueError("query points contain NaN or Inf")
    t = q[:, 0]
    whole = np.round(t)
    if len(t) and (np.abs(t - whole) > TIME_TOLERANCE).any():
        bad = t[np.abs(t - whole) > TIME_TOLERANCE][0]
        raise ValueError(f"query times must be whole frame indices, got {bad:g}")
    if len(t) and (whole.min() < 0 or whole.max() > num_frames - 1):
        bad = whole[(whole < 0) | (whole > num_frames - 1)][0]
        raise ValueError(f"query time {bad:g} is outside the video (frames 0..."
                         f"{num_frames - 1})")
    q[:, 0] = whole
    return q


__all__ = ["TIME_TOLERANCE", "validate_queries"]
