"""``RefineConfig``: every setting of the refinement stage, checked when it is made.

The defaults are the tuned ones (docs/design.md, "Refinement", says why each is what it is).
A config is frozen: derive another with :func:`dataclasses.replace` (validated again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Integral, Real

_WARPS = ("similarity", "full")


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`omnifast.refine.refine_tracks` and
    :func:`omnifast.refine.refine_fitted_tracks`. Invalid values or combinations raise
    ``ValueError`` at construction.

    Matching (one window, one candidate):
        radius: template radius r in pixels: a (2r+1)^2 patch of the query frame.
        search: integer search radius (px) around a candidate's centre.
        min_score: smallest zero-mean normalised cross-correlation (NCC) accepted.
        iterations: Gauss-Newton (Lucas-Kanade) steps after the integer search; 0: a
            parabola through the best integer offset's neighbours instead.
        robust: down-weight the pixels that do not match (another layer) in those steps.
        robust_floor: smallest residual scale of the robust weights (per pixel, in units of
            the normalised patch).
        subpixel_max_shift: the Gauss-Newton estimate is kept only within this many px (per
            axis) of the integer peak ...
        subpixel_max_score_drop: ... and where it lowers the score by at most this.
        warp: ``"similarity"``: the first pass warps templates by the rotation-and-scale
            part of the model's Jacobians; ``"full"``: by the Jacobians as given.

    The wide search (a third candidate, only where no other matched):
        fallback_search: its radius (px), template unwarped; 0: no wide search.
        fallback_min_score: its smallest accepted NCC (stricter: more look-alikes).

    Windows and their consensus:
        window_shift: distance (px) of 8 off-centre windows from the point (a 3x3 grid);
            0: the centred window only (faster, less precise next to layer boundaries).
        window_min_score: smallest score of a window that takes part in the consensus.
        consensus_inlier_px: windows further than this from the fitted similarity transform
            are left out of it ...
        consensus_rounds: ... which is refitted this many times.
        passes: matching passes (with off-centre windows; one without): every pass after
            the first warps the templates by the transforms the consensus fitted before.
        warp_min_windows: smallest number (2-9) of consensus windows of a frame whose
            transform the next pass uses (elsewhere: that of the nearest such frame).

    Time:
        temporal_median: length (odd; 1: off) of the running median of the corrections ...
        spike_px: ... from which a correction may lie this far (px) before it is replaced.

    What :func:`~omnifast.refine.refine_fitted_tracks` feeds in:
        boundary_weights: per-pixel template weights from the model
            (``Tracker.template_weights``); they apply to the centred window only, so
            ``window_shift`` must be 0.
        min_support: with weights, frames whose mean template weight is below this keep the
            model's position.
        flow_candidates: frame-to-frame optical flow (:func:`~omnifast.refine.frame_flows`)
            as a second candidate per frame.
        direct_flow_candidates: one optical flow from each query frame straight to every
            other frame (:func:`~omnifast.refine.candidates.direct_flow_positions`) as a
            third candidate per frame.

    Where nothing matches:
        flow_fallback: with flows, a frame where no candidate is accepted takes the position
            the frame-to-frame flow carries the point to from the frame before (where that
            lies in the frame), not the model's prediction.

    Memory:
        chunk_size: windows (queries x windows per query) processed together.
    """

    radius: int = 2
    search: int = 3
    min_score: float = 0.8
    iterations: int = 4
    robust: bool = True
    robust_floor: float = 0.02
    subpixel_max_shift: float = 1.0
    subpixel_max_score_drop: float = 0.02
    warp: str = "similarity"
    fallback_search: int = 6
    fallback_min_score: float = 0.9
    window_shift: int = 2
    window_min_score: float = 0.97
    consensus_inlier_px: float = 1.5
    consensus_rounds: int = 5
    passes: int = 4
    warp_min_windows: int = 4
    temporal_median: int = 3
    spike_px: float = 1.0
    boundary_weights: bool = False
    min_support: float = 0.8
    flow_candidates: bool = True
    direct_flow_candidates: bool = False
    flow_fallback: bool = True
    chunk_size: int = 2048

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, Integral)):
                raise ValueError(f"{f.name} must be an integer, got {v!r}")
            if f.type == "bool" and not isinstance(v, bool):
                raise ValueError(f"{f.name} must be True or False, got {v!r}")
            if f.type == "float" and (isinstance(v, bool) or not isinstance(v, Real)
                                      or not math.isfinite(v)):
                raise ValueError(f"{f.name} must be a finite number, got {v!r}")
        c = self
        _at_least(c, "radius", 0)
        _at_least(c, "search", 1)
        _at_least(c, "iterations", 0)
        _at_least(c, "fallback_search", 0)
        _at_least(c, "window_shift", 0)
        _at_least(c, "passes", 1)
        _at_least(c, "consensus_rounds", 1)
        _at_least(c, "chunk_size", 1)
        for name in ("min_score", "fallback_min_score", "window_min_score"):
            if not -1.0 <= getattr(c, name) <= 1.0:
                raise ValueError(f"{name} is a normalised cross-correlation: it must lie in "
                                 f"[-1, 1], got {getattr(c, name)}")
        for name in ("robust_floor", "consensus_inlier_px"):
            if not getattr(c, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(c, name)}")
        for name in ("subpixel_max_shift", "subpixel_max_score_drop", "spike_px"):
            _at_least(c, name, 0)
        if not 0.0 <= c.min_support <= 1.0:
            raise ValueError(f"min_support is a mean weight: it must lie in [0, 1], "
                             f"got {c.min_support}")
        if c.warp not in _WARPS:
            raise ValueError(f"warp must be 'similarity' or 'full', got {c.warp!r}")
        if not 2 <= c.warp_min_windows <= 9:
            raise ValueError(f"warp_min_windows must lie in 2..9, got {c.warp_min_windows}")
        if c.temporal_median < 1 or c.temporal_median % 2 == 0:
            raise ValueError(f"temporal_median must be odd and >= 1, got {c.temporal_median}")
        if c.boundary_weights and c.window_shift > 0:
            raise ValueError("boundary_weights apply to the centred window only: pass "
                             f"window_shift=0 with them (got window_shift={c.window_shift})")


def _at_least(c: RefineConfig, name: str, low: float) -> None:
    if getattr(c, name) < low:
        raise ValueError(f"{name} must be >= {low}, got {getattr(c, name)}")


__all__ = ["RefineConfig"]
