"""Optical-flow tracking baselines, scored on the same queries as omnifast.

Both use OpenCV's DIS optical flow on grey frames and the classic forward-backward consistency
test (Sundaram et al., 2010) for occlusion: a correspondence with forward flow f and backward
flow b (sampled at the forward target) is inconsistent, hence occluded, when

    |f + b|^2 > 0.01 (|f|^2 + |b|^2) + 0.5.

* :func:`chained_flow_baseline` integrates frame-to-frame flows from the query frame forwards
  (and backwards in time for queries after frame 0). Errors accumulate (drift) and a point that
  gets covered follows the occluder; that is the behaviour OmniMotion's global representation is
  meant to avoid.
* :func:`direct_flow_baseline` computes the flow from the query frame straight to every other
  frame: no drift, but large displacements and appearance changes defeat it.

:func:`still_baseline` is no tracker: every point stays where it was queried. It is the floor
that shows what a score gives for not moving (on the mask check, a still point keeps the
background's side wherever the camera holds still).

Positions that leave the frame (:func:`omnifast.pixels.in_frame`, the rule omnifast and the
ground truth use too) are marked occluded.
"""

from __future__ import annotations

import cv2
import numpy as np

from omnifast.data.flow import DIS_PRESETS, grey_frames
from omnifast.pixels import bilinear, in_frame
from omnifast.queries import validate_queries


def _rgb(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be [T, H, W, 3] RGB, got {video.shape}")
    return video


def _grey(video: np.ndarray) -> np.ndarray:
    return grey_frames(_rgb(video))


class _Flow:
    """A DIS flow estimator with a fixed configuration."""

    def __init__(self, preset: str = "medium", finest_scale: int | None = 0) -> None:
        if preset not in DIS_PRESETS:
            raise ValueError(f"preset must be one of {list(DIS_PRESETS)}, got {preset!r}")
        self.dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        if finest_scale is not None:
            self.dis.setFinestScale(finest_scale)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flow from grey frame a to grey frame b: (dx, dy) per pixel of a. [H, W, 2] float32"""
        return self.dis.calc(a, b, None)


def _flow_at(flow: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """A [H, W, 2] flow field at (x, y) points [M, 2] (bilinear, clamped to the frame). [M, 2]"""
    return bilinear(flow, pts[:, 0], pts[:, 1], border="clamp")


def _inconsistent(f: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Forward-backward test per correspondence: True where occluded. f, b: [M, 2] -> [M]"""
    err = ((f + b) ** 2).sum(-1)
    return err > 0.01 * ((f ** 2).sum(-1) + (b ** 2).sum(-1)) + 0.5


def chained_flow_baseline(video: np.ndarray, query_points: np.ndarray, *,
                          preset: str = "medium") -> tuple[np.ndarray, np.ndarray]:
    """Track queries by chaining frame-to-frame DIS flows, with forward-backward occlusion.

    From each query frame the position is advanced one frame at a time (forwards to the end,
    and backwards to frame 0 for later query frames), sampling the flow bilinearly at the
    current position. Each hop's forward-backward test decides the occlusion flag of the frame
    it lands in; the chain continues through occlusions.

    Args:
        video: RGB frames. [T, H, W, 3] uint8
        query_points: (t, y, x). [N, 3]
        preset: DIS preset ("ultrafast", "fast", "medium").

    Returns:
        (tracks [N, T, 2] float64 (x, y), occluded [N, T] bool)
    """
    grey = _grey(video)
    t_count, h, w = grey.shape
    qp = validate_queries(query_points, t_count)
    tq = qp[:, 0].astype(np.int64)
    n = qp.shape[0]
    tracks = np.zeros((n, t_count, 2))
    occluded = np.zeros((n, t_count), dtype=bool)
    if n == 0:
        return tracks, occluded
    flow = _Flow(preset)
    fwd = [flow(grey[t], grey[t + 1]) for t in range(t_count - 1)]
    bwd = [flow(grey[t + 1], grey[t]) for t in range(t_count - 1)]
    tracks[np.arange(n), tq] = qp[:, [2, 1]]
    for t in range(t_count - 1):  # forwards: queries with tq <= t advance to t + 1
        sel = np.flatnonzero(tq <= t)
        if sel.size:
            p = tracks[sel, t]
            f = _flow_at(fwd[t], p)
            q = p + f
            tracks[sel, t + 1] = q
            occluded[sel, t + 1] = _inconsistent(f, _flow_at(bwd[t], q))
    for t in range(t_count - 1, 0, -1):  # backwards: queries with tq >= t go back to t - 1
        sel = np.flatnonzero(tq >= t)
        if sel.size:
            p = tracks[sel, t]
            b = _flow_at(bwd[t - 1], p)
            q = p + b
            tracks[sel, t - 1] = q
            occluded[sel, t - 1] = _inconsistent(b, _flow_at(fwd[t - 1], q))
    occluded |= ~in_frame(tracks[..., 0], tracks[..., 1], h, w)
    occluded[np.arange(n), tq] = False
    return tracks, occluded


def direct_flow_baseline(video: np.ndarray, query_points: np.ndarray, *,
                         preset: str = "medium") -> tuple[np.ndarray, np.ndarray]:
    """Track queries with one DIS flow from the query frame directly to every other frame.

    Occlusion per frame from the forward-backward test of that pair (flow back from the target
    frame to the query frame).

    Args:
        video: RGB frames. [T, H, W, 3] uint8
        query_points: (t, y, x). [N, 3]
        preset: DIS preset ("ultrafast", "fast", "medium").

    Returns:
        (tracks [N, T, 2] float64 (x, y), occluded [N, T] bool)
    """
    grey = _grey(video)
    t_count, h, w = grey.shape
    qp = validate_queries(query_points, t_count)
    tq = qp[:, 0].astype(np.int64)
    n = qp.shape[0]
    tracks = np.zeros((n, t_count, 2))
    occluded = np.zeros((n, t_count), dtype=bool)
    flow = _Flow(preset)
    for s in np.unique(tq):
        sel = np.flatnonzero(tq == s)
        p = qp[sel][:, [2, 1]]
        tracks[sel, s] = p
        for t in range(t_count):
            if t == s:
                continue
            f = _flow_at(flow(grey[s], grey[t]), p)
            q = p + f
            tracks[sel, t] = q
            occluded[sel, t] = _inconsistent(f, _flow_at(flow(grey[t], grey[s]), q))
    occluded |= ~in_frame(tracks[..., 0], tracks[..., 1], h, w)
    occluded[np.arange(n), tq] = False
    return tracks, occluded


def still_baseline(video: np.ndarray, query_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every query stays at its query position in every frame, always visible.

    Args:
        video: RGB frames (only their number is used). [T, H, W, 3]
        query_points: (t, y, x). [N, 3]

    Returns:
        (tracks [N, T, 2] float64 (x, y), occluded [N, T] bool, all False)
    """
    t_count = _rgb(video).shape[0]
    qp = validate_queries(query_points, t_count)
    tracks = np.repeat(qp[:, None, [2, 1]], t_count, axis=1)
    return tracks, np.zeros(tracks.shape[:2], dtype=bool)


BASELINES = {
    "chained_flow": chained_flow_baseline,
    "direct_flow": direct_flow_baseline,
    "still": still_baseline,
}
#: the baselines scored unless others are asked for
FLOW_BASELINES = ("chained_flow", "direct_flow")


def check_baselines(names) -> None:
    """Raise ``ValueError`` naming the choices if any of ``names`` is not a baseline."""
    for name in names:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")

__all__ = ["BASELINES", "FLOW_BASELINES", "chained_flow_baseline", "check_baselines",
           "direct_flow_baseline", "still_baseline"]
