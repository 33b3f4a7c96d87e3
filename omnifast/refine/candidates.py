"""Following windows through the frames: where each window is searched in each frame (the
candidate sources), and which match wins (one merge rule).

A window is a template from its query frame, followed frame by frame away from it in both
directions. In every frame where it is refined its candidates, in order, are:

1. the model's prediction, moved by the correction carried from the previous frame (reset
   wherever a frame is not refined), with the template warped, within ``config.search``;
2. with flows: the previous frame's position moved on by the frame-to-frame optical flow
   (where that lies in the frame), same template and search;
3. with direct positions: where another source (one optical flow from the query frame
   straight to this frame) puts the window (where that lies in the frame), same template and
   search;
4. the wide search, where no earlier candidate was accepted: the model's prediction, the
   template unwarped, within ``config.fallback_search`` at ``config.fallback_min_score``.

The merge rule: the first candidate sets each window's position, score and acceptance; a
later candidate replaces them where it is accepted and the current one is not or scores less.
Where none is accepted the window keeps the model's prediction, or, with flows and
``config.flow_fallback``, the flow chain's position (where that lies in the frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from omnifast.pixels import bilinear
from omnifast.refine.config import RefineConfig
from omnifast.refine.frames import inside, sample
from omnifast.refine.matching import match, normalise


@dataclass(frozen=True)
class Candidate:
    """One source's proposal for the B windows refined in a frame.

    centres: search centres. [B, 2] (x, y)
    pat_off: the template's pixel offsets around a centre. [B, P, 2]
    search, min_score: integer search radius (px) and the smallest accepted score.
    where: the windows it proposes for. [B] bool, or None: all
    fallback: only for the windows no earlier candidate was accepted for.
    """

    centres: torch.Tensor
    pat_off: torch.Tensor
    search: int
    min_score: float
    where: torch.Tensor | None = None
    fallback: bool = False


def match_candidates(frame: torch.Tensor, grad: torch.Tensor, tmpl_raw: torch.Tensor,
                     tm: torch.Tensor, sw: torch.Tensor | None,
                     candidates: list[Candidate], config: RefineConfig
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match every candidate (:func:`~omnifast.refine.matching.match`) and merge them by the
    rule of the module docstring. ``tmpl_raw``, ``tm``, ``sw``: the B windows' templates
    [B, P*C], normalised [B, P*C] and weights' square roots (or None). The first candidate
    must propose for all windows. Returns (position [B, 2], score [B], accepted [B] bool)."""
    first, *rest = candidates
    if first.where is not None or first.fallback:
        raise ValueError("the first candidate must propose for every window")
    pos, score, ok = match(frame, grad, tmpl_raw, tm, sw, first.centres, first.pat_off,
                           first.search, first.min_score, config)
    for c in rest:
        mask = torch.ones_like(ok) if c.where is None else c.where
        if c.fallback:
            mask = mask & ~ok
        rows = torch.nonzero(mask).reshape(-1)
        if rows.numel() == 0:
            continue
        p, s, a = match(frame, grad, tmpl_raw[rows], tm[rows], None if sw is None else sw[rows],
                        c.centres[rows], c.pat_off[rows], c.search, c.min_score, config)
        take = a & (~ok[rows] | (s > score[rows]))
        pos[rows] = torch.where(take[:, None], p, pos[rows])
        score[rows] = torch.where(take, s, score[rows])
        ok[rows] = ok[rows] | take
    return pos, score, ok


def sweep_windows(frames: torch.Tensor, grads: torch.Tensor, q_xy: np.ndarray,
                  qt: np.ndarray, tracks: np.ndarray, occ: np.ndarray,
                  warps: np.ndarray | None, weights: np.ndarray | None, offsets: torch.Tensor,
                  config: RefineConfig,
                  flows: tuple[torch.Tensor, torch.Tensor] | None = None,
                  direct: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine M windows in every frame but their own, in both directions from it.

    Args:
        frames, grads: the video [T, C, H, W] and its x, y derivatives [T, 2C, H, W].
        q_xy, qt: the templates' centres (x, y) [M, 2] and frames [M].
        tracks: the windows' predicted centres. [M, T, 2]
        occ: frames not refined. [M, T] bool
        warps: each frame's template warp (None: none). [M, T, 2, 2]
        weights: template pixel weights (None: all 1). [M, T, P]
        offsets: the template's pixel grid. [P, 2]
        flows: (forward [T-1, 2, H, W]: frame t to t+1, backward: t+1 to t) or None.
        direct: the windows' direct candidates in every frame. [M, T, 2] or None

    Returns:
        (positions [M, T, 2], score [M, T] (NaN where not searched), accepted [M, T] bool)
    """
    t_count, n_ch, h, w = frames.shape
    m = q_xy.shape[0]
    out = tracks.astype(np.float32, copy=True)
    score = np.full((m, t_count), np.nan, np.float32)
    accepted = np.zeros((m, t_count), bool)
    if m == 0:
        return out, score, accepted
    qc = torch.from_numpy(np.ascontiguousarray(q_xy, np.float32))
    tmpl = torch.empty(m, offsets.shape[0], n_ch)
    for f in np.unique(qt):
        sel = torch.from_numpy(qt == f)
        tmpl[sel] = sample(frames[int(f)], qc[sel][:, None] + offsets[None])
    tmpl_raw = tmpl.reshape(m, -1)
    tmpl = normalise(tmpl_raw)
    trc = torch.from_numpy(np.ascontiguousarray(tracks, np.float32))
    jt = None if warps is None else torch.from_numpy(np.ascontiguousarray(warps, np.float32))
    dxy = None if direct is None else torch.from_numpy(np.ascontiguousarray(direct, np.float32))

    for direction in (1, -1):
        # the model's candidate: the prediction plus the correction carried from the frame
        # before; the flow's: the previous position moved on by the flow (the chain)
        corr = torch.zeros(m, 2)
        chain = qc.clone()
        order = range(t_count) if direction > 0 else range(t_count - 1, -1, -1)
        for t in order:
            active = torch.from_numpy((qt < t) if direction > 0 else (qt > t))
            if not bool(active.any()):
                continue
            p = trc[:, t] + corr
            todo = active & inside(p, h, w) & ~torch.from_numpy(occ[:, t])
            if weights is not None and config.min_support > 0:
                todo &= torch.from_numpy(weights[:, t].mean(-1) >= config.min_support)
            corr = torch.where(active[:, None], torch.zeros_like(corr), corr)
            if flows is not None:
                field = flows[0][t - 1] if direction > 0 else flows[1][t]
                moved = chain + sample(field, chain[:, None])[:, 0]
                chain = torch.where(active[:, None], moved, chain)
            idx = torch.nonzero(todo).reshape(-1)
            if idx.numel() == 0:
                continue
            pi = p[idx]
            unwarped = offsets[None].expand(idx.numel(), -1, -1)
            pat_off = unwarped if jt is None else torch.einsum("nab,pb->npa", jt[idx, t],
                                                               offsets)
            if weights is None:
                sw, tm = None, tmpl[idx]
            else:
                wt = torch.from_numpy(np.ascontiguousarray(weights[idx.numpy(), t]))
                sw = wt.sqrt().repeat_interleave(n_ch, dim=1)  # [B, P*C]
                tm = normalise(tmpl_raw[idx], sw)
            cands = [Candidate(pi, pat_off, config.search, config.min_score)]
            if flows is not None:
                fc = chain[idx]
                cands.append(Candidate(fc, pat_off, config.search, config.min_score,
                                       where=inside(fc, h, w)))
            if dxy is not None:
                dc = dxy[idx, t]
                cands.append(Candidate(dc, pat_off, config.search, config.min_score,
                                       where=inside(dc, h, w)))
            if config.fallback_search > 0:
                cands.append(Candidate(pi, unwarped, config.fallback_search,
                                       config.fallback_min_score, fallback=True))
            newp, best_score, ok = match_candidates(frames[t], grads[t], tmpl_raw[idx], tm, sw,
                                                    cands, config)
            unmatched = trc[idx, t]
            if flows is not None and config.flow_fallback:
                unmatched = torch.where(inside(chain[idx], h, w)[:, None], chain[idx], unmatched)
            refined = torch.where(ok[:, None], newp, unmatched)
            ix = idx.numpy()
            out[ix, t] = refined.numpy()
            score[ix, t] = best_score.numpy()
            accepted[ix, t] = ok.numpy()
            corr[idx] = torch.where(ok[:, None], newp - trc[idx, t], torch.zeros(1, 2))
            if flows is not None:
                chain[idx] = torch.where(ok[:, None], newp, chain[idx])
    return out, score, accepted


def frame_flows(video, preset: str = "medium") -> tuple[np.ndarray, np.ndarray]:
    """DIS optical flow between consecutive frames, both ways, at full resolution: the
    ``flows`` of :func:`~omnifast.refine.refine_tracks` (16 bytes per pixel and frame).
    Returns (forward [T-1, H, W, 2]: frame t to t+1, backward [T-1, H, W, 2]: frame t+1 to
    t), float32 (dx, dy)."""
    from omnifast.data.flow import grey_frames, pair_flow  # noqa: PLC0415

    grey = grey_frames(video)
    t, h, w = grey.shape
    fwd = np.zeros((max(t - 1, 0), h, w, 2), np.float32)
    bwd = np.zeros_like(fwd)
    for i in range(t - 1):
        fwd[i] = pair_flow(grey[i], grey[i + 1], preset)
        bwd[i] = pair_flow(grey[i + 1], grey[i], preset)
    return fwd, bwd


def direct_flow_positions(video, centres: np.ndarray, frames_of: np.ndarray,
                          preset: str = "medium") -> np.ndarray:
    """Where one DIS optical flow from each point's frame straight to every frame puts it:
    the ``direct`` candidates of :func:`sweep_windows`. Costs (distinct frames in
    ``frames_of``) x (T-1) flows at the video's resolution, one field in memory at a time.

    Args:
        video: the frames. [T, H, W, C] (as :func:`omnifast.data.flow.grey_frames` takes)
        centres: (x, y) pixels. [M, 2]
        frames_of: each point's frame. [M] int

    Returns:
        positions [M, T, 2] float32; the point itself in its own frame.
    """
    from omnifast.data.flow import grey_frames, pair_flow  # noqa: PLC0415

    grey = grey_frames(video)
    t_count = grey.shape[0]
    xy = np.asarray(centres, np.float32).reshape(-1, 2)
    out = np.repeat(xy[:, None], t_count, 1)
    for s in np.unique(frames_of):
        sel = np.flatnonzero(frames_of == s)
        p = xy[sel]
        for t in range(t_count):
            if t != s:
                field = pair_flow(grey[int(s)], grey[t], preset)
                out[sel, t] = p + bilinear(field, p[:, 0], p[:, 1], border="clamp")
    return out


__all__ = ["Candidate", "direct_flow_positions", "frame_flows", "match_candidates",
           "sweep_windows"]
