"""Agreement across windows, passes and frames (numpy): the similarity part of a Jacobian,
the least-squares similarity fit of a point's windows and where it puts the point, the
nearest-frame fill of those fits for the next pass, and the running-median spike filter.

Windows of one query: K offsets ``shifts`` [K, 2] (x, y) around the point, ``shifts[K // 2]``
the centred one (zero).
"""

from __future__ import annotations

import numpy as np

from omnifast.refine.config import RefineConfig


def similarity_part(jacobians) -> np.ndarray:
    """The nearest rotation-and-uniform-scale matrix to each 2x2 matrix (least squares).
    [..., 2, 2] -> [..., 2, 2] float32"""
    j = np.asarray(jacobians, np.float64)
    a = 0.5 * (j[..., 0, 0] + j[..., 1, 1])
    b = 0.5 * (j[..., 1, 0] - j[..., 0, 1])
    return np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2).astype(np.float32)


def window_consensus(pos: np.ndarray, good: np.ndarray, shifts: np.ndarray,
                     inlier_px: float = RefineConfig.consensus_inlier_px,
                     rounds: int = RefineConfig.consensus_rounds
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity transform x = c + [[a, -b], [b, a]] s from the window offsets
    ``shifts`` [K, 2] to their matched centres ``pos`` [M, K, T, 2] over the windows marked
    ``good`` [M, K, T], refitted ``rounds`` times without the windows more than ``inlier_px``
    from the fit (another layer). Returns (c [M, T, 2], number of windows used [M, T], the
    matrix [[a, -b], [b, a]] [M, T, 2, 2])."""
    k = shifts.shape[0]
    sx, sy = shifts[:, 0].astype(np.float64), shifts[:, 1].astype(np.float64)
    one, zero = np.ones(k), np.zeros(k)
    design = np.concatenate([np.stack([one, zero, sx, -sy], -1),
                             np.stack([zero, one, sy, sx], -1)], 0)  # [2K, 4]
    rhs = np.concatenate([pos[..., 0], pos[..., 1]], 1).transpose(0, 2, 1).astype(np.float64)
    use = good.copy()
    x = np.zeros(rhs.shape[:2] + (4,))
    for _ in range(rounds):
        wt = np.concatenate([use, use], 1).transpose(0, 2, 1).astype(np.float64)  # [M, T, 2K]
        ata = np.einsum("mtk,ki,kj->mtij", wt, design, design) + 1e-6 * np.eye(4)
        atb = np.einsum("mtk,ki,mtk->mti", wt, design, rhs)
        x = np.linalg.solve(ata, atb[..., None])[..., 0]
        r = (np.einsum("ki,mti->mtk", design, x) - rhs).reshape(rhs.shape[0], rhs.shape[1], 2, k)
        use = good & (np.sqrt((r * r).sum(2)).transpose(0, 2, 1) < inlier_px)
    lin = np.stack([np.stack([x[..., 2], -x[..., 3]], -1),
                    np.stack([x[..., 3], x[..., 2]], -1)], -2)
    return x[..., :2].astype(np.float32), use.sum(1), lin.astype(np.float32)


def place_points(pos: np.ndarray, score: np.ndarray, accepted: np.ndarray,
                 predicted_offsets: np.ndarray, shifts: np.ndarray,
                 config: RefineConfig
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Where a query's windows put its point in each frame.

    With several windows: where at least two match closely (accepted, score >=
    ``config.window_min_score``) the point is where their fitted similarity transform puts
    the centre; where one does, that window moved back by its predicted offset; else the
    centred window's position ``pos`` (its match where accepted, else where the sweep left it:
    the prediction or the flow's fallback).

    Args:
        pos, score, accepted: each window's match. [M, K, T, 2], [M, K, T] (NaN: not
            searched), [M, K, T] bool
        predicted_offsets: each window's predicted offset from the point. [M, K, T, 2]
        shifts: the windows' offsets in the query frame. [K, 2]

    Returns:
        (points [M, T, 2], score [M, T], the fitted matrices [M, T, 2, 2] and the number of
        windows in each fit [M, T]; these two None with one window)
    """
    centre = shifts.shape[0] // 2
    res = pos[:, centre]
    best_sc = score[:, centre]
    if shifts.shape[0] == 1:
        return res, best_sc, None, None
    good = accepted & (np.nan_to_num(score) >= config.window_min_score)
    fitted, count, lin = window_consensus(pos, good, shifts, config.consensus_inlier_px,
                                          config.consensus_rounds)
    top = np.where(good, score, -np.inf)
    k1 = top.argmax(1)  # [M, T]
    one = np.take_along_axis(pos - predicted_offsets, k1[:, None, :, None], 1)[:, 0]
    res = np.where((count >= 2)[..., None], fitted, np.where(good.any(1)[..., None], one, res))
    best_sc = np.where(good.any(1), top.max(1), best_sc)
    return res, best_sc, lin, count


def fill_nearest(x: np.ndarray, valid: np.ndarray, qt: np.ndarray) -> np.ndarray:
    """Each frame of a query without a ``valid`` [N, T] matrix takes that of the nearest
    frame with one (the earlier on a tie); the query frame ``qt`` [N] counts as valid with the
    identity. x: [N, T, 2, 2] -> [N, T, 2, 2] float32"""
    n, t_count = valid.shape
    v = valid.copy()
    x = np.array(x, np.float32)
    x[np.arange(n), qt] = np.eye(2, dtype=np.float32)
    v[np.arange(n), qt] = True
    tt = np.arange(t_count)
    dist = np.abs(tt[:, None] - tt[None, :]).astype(np.float64)  # [T (target), T (source)]
    src = np.where(v[:, None, :], dist[None], np.inf).argmin(-1)  # [N, T]
    return np.take_along_axis(x, src[..., None, None], 1)


def running_median(x: np.ndarray, k: int) -> np.ndarray:
    """Running median over ``k`` (odd) frames along axis 1, the ends padded with the end
    values. [N, T, ...] -> [N, T, ...]"""
    p = k // 2
    pad = np.pad(x, ((0, 0), (p, p)) + ((0, 0),) * (x.ndim - 2), mode="edge")
    return np.median(np.stack([pad[:, i:i + x.shape[1]] for i in range(k)]), 0).astype(x.dtype)


def suppress_spikes(refined: np.ndarray, tracks: np.ndarray, occluded: np.ndarray,
                    qt: np.ndarray, config: RefineConfig) -> np.ndarray:
    """Replace each correction (``refined - tracks`` [N, T, 2]) more than ``config.spike_px``
    from the running median of the corrections over ``config.temporal_median`` frames by that
    median, except in frames flagged ``occluded`` [N, T] and next to the query frame ``qt``
    [N] (whose position is the query's own, not a neighbour's)."""
    if config.temporal_median <= 1 or not len(refined):
        return refined
    corr = refined - tracks
    med = running_median(corr, config.temporal_median)
    next_to_query = np.abs(np.arange(refined.shape[1])[None] - qt[:, None]) <= 1
    spike = ((np.linalg.norm(corr - med, axis=-1) > config.spike_px) & ~occluded
             & ~next_to_query)
    return np.where(spike[..., None], tracks + med, refined)


__all__ = ["fill_nearest", "place_points", "running_median", "similarity_part",
           "suppress_spikes", "window_consensus"]
