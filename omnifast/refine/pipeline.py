"""The refinement stage: inputs checked, windows laid around each query, matching passes,
the spike filter; and the same stage fed by a fitted model.

:func:`refine_fitted_tracks` is the one path from a fitted model to refined tracks
(``Tracker.track_refined``, ``omnifast track --refine`` and ``omnifast eval`` all take it);
:func:`refine_tracks` is the stage on arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from omnifast.queries import validate_queries
from omnifast.refine.candidates import direct_flow_positions, frame_flows, sweep_windows
from omnifast.refine.config import RefineConfig
from omnifast.refine.consensus import fill_nearest, place_points, similarity_part, suppress_spikes
from omnifast.refine.frames import frames_tensor, gradients, inside, patch_offsets


def refine_tracks(video, query_points, tracks, occluded=None, *, jacobians=None, weights=None,
                  flows=None, direct=None, config: RefineConfig | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Correct predicted tracks by matching each query's template from its query frame.

    Every frame but the query frame is refined where it is not ``occluded``, its (carried)
    prediction lies in the frame and a match is confident; elsewhere the prediction stays.
    The query frame's position is the query itself. Occlusion is not changed.

    Args:
        video: the frames. [T, H, W, C] uint8 (or float in [0, 1])
        query_points: (t, y, x) pixels. [N, 3]
        tracks: predicted (x, y) positions in every frame. [N, T, 2]
        occluded: frames not refined. [N, T] bool or None (none)
        jacobians: d(track)/d(query x, y) per frame, ``[..., :, 0]`` for x and
            ``[..., :, 1]`` for y: the first pass's template warps (``config.warp``).
            [N, T, 2, 2] or None (no warp)
        weights: per target frame, the weight of each template pixel, row-major over the
            (2r+1)^2 patch (y, then x); needs ``config.window_shift == 0``. [N, T, (2r+1)^2]
            or None (all 1)
        flows: frame-to-frame optical flow ``(forward, backward)``, each [T-1, H, W, 2]
            ((dx, dy) from frame t to t+1, and from t+1 to t), as :func:`frame_flows`
            returns: a second candidate per frame. None: none.
        config: the settings (default: ``RefineConfig()``).

    Returns:
        ``(refined tracks [N, T, 2] float32, match score [N, T] float32)``; the score is NaN
        where a frame was not searched (the query frame, occluded or outside the frame).
    """
    config = RefineConfig() if config is None else config
    if not isinstance(config, RefineConfig):
        raise TypeError(f"config must be a RefineConfig, got {type(config).__name__}")
    frames = frames_tensor(video)
    t_count, _, h, w = frames.shape
    q, tr, occ, warps, wts, flow_t, direct = _check_inputs(
        t_count, h, w, query_points, tracks, occluded, jacobians, weights, flows, direct, config)
    n = q.shape[0]
    out = tr.copy()
    score = np.full((n, t_count), np.nan, np.float32)
    if n == 0:
        return out, score
    qt = q[:, 0].astype(np.int64)  # whole frame indices (validate_queries)
    inp = _Inputs(frames, gradients(frames), q, qt, tr, occ, wts, flow_t, direct)

    # the windows: centred on the point, and (window_shift > 0) the 8 around it
    shifts = (patch_offsets(1) * float(config.window_shift) if config.window_shift > 0
              else torch.zeros(1, 2))
    given = warps is not None
    if warps is None:
        warps = np.broadcast_to(np.eye(2, dtype=np.float32), (n, t_count, 2, 2))
    out, score, lin, count = _one_pass(inp, warps, given, shifts, config)
    for _ in range(1, config.passes if shifts.shape[0] > 1 else 1):
        # each frame takes the transform fitted there, or in the nearest frame where it could
        # be (the query frame: the identity)
        warps = fill_nearest(lin, count >= config.warp_min_windows, qt)
        out, score, lin, count = _one_pass(inp, warps, True, shifts, config)
    out = suppress_spikes(out, tr, occ, qt, config)
    out[np.arange(n), qt] = q[:, [2, 1]].astype(np.float32)
    return out, score


def refine_fitted_tracks(model, video, query_points, tracks, *, flows=None,
                         config: RefineConfig | None = None, chunk_size: int | None = None
                         ) -> np.ndarray:
    """:func:`refine_tracks` fed by a fitted model: the first pass warps by the model's local
    Jacobians, every frame is refined (also those the model calls occluded: a short fit calls
    some visible frames occluded), with ``config.boundary_weights`` the model's template
    weights restrict the match, with ``config.flow_candidates`` the video's frame-to-frame
    flow gives a second candidate, with ``config.direct_flow_candidates`` one flow from each
    query frame straight to every frame a third (``(query frames) x (T-1)`` more flows).

    Args:
        model: a fitted tracker: ``local_jacobians(query_points)`` ([N, T, 2, 2]) and, with
            boundary weights, ``template_weights(query_points, tracks, jacobians, radius=)``,
            as :class:`omnifast.track.Tracker` has.
        video: the fitted clip. [T, H, W, C]
        query_points: (t, y, x). [N, 3]
        tracks: the model's tracks of the queries. [N, T, 2]
        flows: the video's flows (as :func:`frame_flows` returns) when already computed;
            None: computed here when ``config.flow_candidates``.
        config: the settings (default: ``RefineConfig()``).
        chunk_size: passed on to the model's methods (None: their default).

    Returns:
        the refined tracks. [N, T, 2] float32
    """
    config = RefineConfig() if config is None else config
    if flows is not None and not config.flow_candidates:
        raise ValueError("flows were given but config.flow_candidates is False")
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    n = len(query_points)
    jac = model.local_jacobians(query_points, **kw)
    weights = None
    if config.boundary_weights and n:
        weights = model.template_weights(query_points, tracks, jac, radius=config.radius, **kw)
    if flows is None and config.flow_candidates and n:
        flows = frame_flows(video)
    direct = None
    if config.direct_flow_candidates and n:
        q = validate_queries(query_points, len(video))
        direct = direct_flow_positions(video, q[:, [2, 1]], q[:, 0].astype(np.int64))
    refined, _ = refine_tracks(video, query_points, tracks, None, jacobians=jac,
                               weights=weights, flows=flows, direct=direct, config=config)
    return refined


@dataclass(frozen=True)
class _Inputs:
    """The checked inputs of one refinement."""

    frames: torch.Tensor  # [T, C, H, W] float32 in [0, 1]
    grads: torch.Tensor  # [T, 2C, H, W] their x and y derivatives
    q: np.ndarray  # [N, 3] (t, y, x) float64
    qt: np.ndarray  # [N] the query frames, int64
    tracks: np.ndarray  # [N, T, 2] float32 predictions
    occluded: np.ndarray  # [N, T] bool: frames not refined
    weights: np.ndarray | None  # [N, T, P] float32 template weights
    flows: tuple[torch.Tensor, torch.Tensor] | None  # each [T-1, 2, H, W]
    direct: np.ndarray | None  # [N, T, 2] float32 the queries' direct candidates


def _one_pass(inp: _Inputs, warps: np.ndarray, warp_given: bool, shifts: torch.Tensor,
              config: RefineConfig):
    """One matching pass of every query's windows, window k of query i a template centred
    on q_i + s_k (``shifts`` [K, 2]) predicted at track_i + warp s_k (``warps`` [N, T, 2, 2];
    the templates are warped by them only with ``warp_given``). Returns (points [N, T, 2],
    score [N, T], the windows' fitted matrices [N, T, 2, 2] (the identity with one window)
    and the number of windows in each fit [N, T])."""
    q, qt, tr, occ, weights = inp.q, inp.qt, inp.tracks, inp.occluded, inp.weights
    n, t_count = tr.shape[:2]
    h, w = inp.frames.shape[-2:]
    sh = shifts.numpy()
    num_win = sh.shape[0]
    centre = num_win // 2
    offsets = patch_offsets(config.radius)
    per_chunk = max(1, config.chunk_size // num_win)
    out = tr.copy()
    score = np.full((n, t_count), np.nan, np.float32)
    lin_all = np.broadcast_to(np.eye(2, dtype=np.float32), (n, t_count, 2, 2)).copy()
    count_all = np.zeros((n, t_count), np.int64)
    for c0 in range(0, n, per_chunk):
        sl = slice(c0, min(c0 + per_chunk, n))
        m = sl.stop - sl.start
        qx = np.repeat(q[sl][:, None, [2, 1]], num_win, 1) + sh[None]  # [m, K, 2]
        js = np.einsum("ntab,kb->nkta", warps[sl], sh).astype(np.float32)  # [m, K, T, 2]
        pred = tr[sl][:, None] + js
        keep = inside(qx, h, w)  # windows whose template lies in the query frame
        keep[:, centre] = True
        ii, kk = np.nonzero(keep)
        pos, sc, acc = sweep_windows(
            inp.frames, inp.grads, qx[ii, kk], qt[sl][ii], pred[ii, kk], occ[sl][ii],
            warps[sl][ii] if warp_given else None,
            None if weights is None else weights[sl][ii], offsets, config, inp.flows,
            None if inp.direct is None else (inp.direct[sl][:, None] + js)[ii, kk])
        pos_all = np.zeros((m, num_win, t_count, 2), np.float32)
        pos_all[ii, kk] = pos
        sc_all = np.full((m, num_win, t_count), np.nan, np.float32)
        sc_all[ii, kk] = sc
        acc_all = np.zeros((m, num_win, t_count), bool)
        acc_all[ii, kk] = acc
        out[sl], score[sl], lin, count = place_points(pos_all, sc_all, acc_all, js, sh,
                                                      config)
        if lin is not None:
            lin_all[sl], count_all[sl] = lin, count
    return out, score, lin_all, count_all


def _check_inputs(t_count, h, w, query_points, tracks, occluded, jacobians, weights, flows,
                  direct, config):
    """The inputs as arrays of the documented shapes (ValueError where they are not):
    (q [N, 3] float64, tracks float32, occluded bool, warps (the first pass's, or None),
    weights float32 or None, flows as two [T-1, 2, H, W] tensors or None, direct float32 or
    None)."""
    q = validate_queries(query_points, t_count)
    tr = np.asarray(tracks, np.float32)
    n = q.shape[0]
    if tr.shape != (n, t_count, 2):
        raise ValueError(f"tracks must be [N, T, 2] = [{n}, {t_count}, 2], got {list(tr.shape)}")
    occ = np.zeros((n, t_count), bool) if occluded is None else np.asarray(occluded, bool)
    if occ.shape != (n, t_count):
        raise ValueError(f"occluded must be [N, T] = [{n}, {t_count}], got {list(occ.shape)}")
    warps = None
    if jacobians is not None:
        warps = np.asarray(jacobians, np.float32)
        if warps.shape != (n, t_count, 2, 2):
            raise ValueError(f"jacobians must be [N, T, 2, 2], got {list(warps.shape)}")
        if not np.isfinite(warps).all():
            raise ValueError("jacobians must be finite")
        if config.warp == "similarity":
            warps = similarity_part(warps)
    wts = None
    if weights is not None:
        num_pix = (2 * config.radius + 1) ** 2
        wts = np.asarray(weights, np.float32)
        if wts.shape != (n, t_count, num_pix):
            raise ValueError(f"weights must be [N, T, (2r+1)^2] = [{n}, {t_count}, {num_pix}], "
                             f"got {list(wts.shape)}")
        if not np.isfinite(wts).all() or (wts < 0).any():
            raise ValueError("weights must be finite and >= 0")
        if config.window_shift > 0:
            raise ValueError("weights apply to the centred window only: use a config with "
                             "window_shift=0 with weights")
    flow_t = None
    if flows is not None:
        if len(flows) != 2:
            raise ValueError("flows must be a pair (forward, backward), as frame_flows returns")
        flow_t = []
        for name, f in zip(("forward", "backward"), flows):
            a = np.asarray(f, np.float32)
            if a.shape != (max(t_count - 1, 0), h, w, 2):
                raise ValueError(f"{name} flows must be [T-1, H, W, 2] = "
                                 f"[{t_count - 1}, {h}, {w}, 2], got {list(a.shape)}")
            if not np.isfinite(a).all():
                raise ValueError(f"{name} flows must be finite")
            flow_t.append(torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2))
        flow_t = tuple(flow_t)
    if direct is not None:
        direct = np.asarray(direct, np.float32)
        if direct.shape != (n, t_count, 2):
            raise ValueError(f"direct must be [N, T, 2] = [{n}, {t_count}, 2], "
                             f"got {list(direct.shape)}")
        if not np.isfinite(direct).all():
            raise ValueError("direct positions must be finite")
    return q, tr, occ, warps, wts, flow_t, direct


__all__ = ["refine_fitted_tracks", "refine_tracks"]
