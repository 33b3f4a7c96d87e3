"""Appearance refinement of fitted tracks: sub-pixel corrections by local template matching.

This stage is omnifast's own addition; OmniMotion (spec 3.8) stops at the fitted model's
correspondences. A short fit of the small ``cpu`` preset tracks every layer but leaves the
foreground 1-4 px off for long stretches (benchmarks/RESULTS.md, quality); the video itself
says where the point is to a fraction of a pixel. So, for each query and each target frame:

* the template is a (2r+1)^2 patch of the *query* frame around the query point, warped into
  the target frame by the fitted model's local Jacobian (the prediction's derivative with
  respect to the query position) so that rotation and scale changes of the layer are followed;
* the warp uses only the rotation-and-scale part of the Jacobian (a short fit's Jacobians
  are noisy);
* it is compared (zero-mean normalised cross-correlation over the colour channels) with the
  target frame at every integer offset within ``search`` pixels of the prediction, and the
  best offset is refined to sub-pixel precision by Gauss-Newton (Lucas-Kanade) steps on the
  translation, robust to pixels that do not match (another layer in the patch);
* where that finds no confident match, a second, wider search (``fallback_search``) with
  the template unwarped and a stricter threshold: where the model is a few pixels off, its
  Jacobian is usually wrong too;
* next to a layer boundary the patch around the point straddles two layers and matches
  poorly: so 8 more windows, centred ``window_shift`` px away around the point (a 3x3 grid),
  are matched the same way, and where at least two windows match closely (score >=
  ``window_min_score``) the point is placed by the similarity transform fitted by least
  squares to their matched centres (windows more than 1.5 px off the fit, on another layer,
  left out); where only one does, by that window moved back by the model's Jacobian; else
  the centred window alone decides. The transform comes from the matches, not from the
  model, whose Jacobian is too noisy to carry a window's offset back to the point;
* optional per-pixel template weights (:meth:`omnifast.track.Tracker.template_weights`: the
  model's say on which pixels move with the query, for the centred window only) restrict the
  match to the query's layer,
  and frames where too little of the template is left (``min_support``) keep the model's
  position: next to a layer boundary a patch match is less precise than a good model;
* the correction is kept only where the match is confident (score >= ``min_score``, peak inside
  the window) and the frame is not flagged ``occluded`` (``Tracker.track_refined`` flags
  none: a short fit calls some visible frames occluded); it is carried to the next frame
  (further from the query frame) as the centre of the next search, and reset to zero wherever
  a frame is not refined (occluded, outside the frame, no confident match);
* the Jacobian of a short fit is far off where its track is (on the synthetic ``hard`` clip
  the refined tracks score dAvg 0.84 with it, 0.91 with the true one): so the matching is
  repeated (``passes``), each pass warping the templates by the similarity transforms that
  the windows' consensus fitted in the pass before (in frames with too few windows: that of
  the nearest frame that had enough);
* with the frame-to-frame optical flow (``flows``) each window is also matched around where
  the flow moves its previous frame's position, and the better of the two matches is taken:
  where the fit has lost the point, the flow often still follows it;
* a correction more than 1 px from the running median of the corrections over 3 frames
  (``temporal_median``) is replaced by that median: a frame matched on its own can jump to a
  wrong match for a frame.

The template always comes from the query frame, so errors do not accumulate the way they do
when flow is chained frame to frame; the fitted model still decides where to look, across
occlusions, and whether the point is visible (occlusion flags are not changed).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: default template radius r (a 5x5 patch) and search radius (7x7 integer offsets)
DEFAULT_RADIUS = 2
DEFAULT_SEARCH = 3
#: default search radius of the second, unwarped match where the first finds nothing
DEFAULT_FALLBACK_SEARCH = 6
#: default minimum normalised cross-correlation of a match of the second search
DEFAULT_FALLBACK_MIN_SCORE = 0.9
#: default distance (px) of the 8 off-centre windows from the point (0: centred window only)
DEFAULT_WINDOW_SHIFT = 2
#: default smallest score of a window that takes part in the consensus of the windows
DEFAULT_WINDOW_MIN_SCORE = 0.97
#: default length (frames) of the running median of the corrections, and how far (px) a
#: correction may lie from it before it is replaced by it
DEFAULT_TEMPORAL_MEDIAN = 3
SPIKE_PX = 1.0
#: default number of matching passes: each after the first warps the templates by the
#: similarity transforms the windows' consensus estimated in the one before
DEFAULT_PASSES = 4
#: default smallest number of consensus windows of a frame whose transform is used
DEFAULT_WARP_MIN_WINDOWS = 4
#: windows further than this (px) from the consensus transform are left out of it
CONSENSUS_INLIER_PX = 1.5
#: default minimum normalised cross-correlation of an accepted match
DEFAULT_MIN_SCORE = 0.8
#: smallest residual scale of the robust steps (per pixel, in units of the normalised patch)
ROBUST_FLOOR = 0.02
#: default smallest mean template weight of a refined frame (when weights are given)
DEFAULT_MIN_SUPPORT = 0.8


def patch_offsets(radius: int) -> torch.Tensor:
    """The (x, y) offsets of a (2r+1)^2 square of whole pixels, row-major (y, then x): the
    pixel order of templates, of ``weights`` and of the integer search. [(2r+1)^2, 2]"""
    ar = torch.arange(-radius, radius + 1, dtype=torch.float32)
    oy, ox = torch.meshgrid(ar, ar, indexing="ij")
    return torch.stack([ox.reshape(-1), oy.reshape(-1)], -1)


def _frames_tensor(video) -> torch.Tensor:
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


def _sample(frame: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of one frame [C, H, W] at (x, y) pixels [M, P, 2] -> [M, P, C]."""
    c, h, w = frame.shape
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=pts.dtype)
    g = pts * scale - 1.0
    out = F.grid_sample(frame[None], g[None], mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out[0].permute(1, 2, 0)


def _inside(p, h: int, w: int):
    """Whether (x, y) points [..., 2] (numpy or torch) lie in an h x w frame. [...] bool"""
    return (p[..., 0] >= 0) & (p[..., 0] <= w - 1) & (p[..., 1] >= 0) & (p[..., 1] <= h - 1)


def _normalise(x: torch.Tensor, sw: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-mean, unit-norm vectors along the last dimension; with ``sw`` (square roots of
    non-negative weights, broadcastable to ``x``) the weighted mean is removed and the result
    scaled by ``sw``, so that the dot product of two such vectors is their weighted NCC."""
    if sw is None:
        x = x - x.mean(-1, keepdim=True)
    else:
        w = sw * sw
        x = (x - (w * x).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp(min=1e-12)) * sw
    return x / (x.norm(dim=-1, keepdim=True) + 1e-6)


def _parabola(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Offset in [-0.5, 0.5] of the peak of the parabola through (-1, a), (0, b), (1, c)."""
    d = a - 2.0 * b + c
    off = torch.where(d < 0, 0.5 * (a - c) / torch.where(d < 0, d, -torch.ones_like(d)),
                      torch.zeros_like(d))
    return off.clamp(-0.5, 0.5)


def _gradients(frames: torch.Tensor) -> torch.Tensor:
    """Central-difference x and y derivatives of every frame. [T, C, H, W] -> [T, 2C, H, W]"""
    pad = F.pad(frames, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2])
    gy = 0.5 * (pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1])
    return torch.cat([gx, gy], 1)


def _lucas_kanade(frame: torch.Tensor, grad: torch.Tensor, tmpl_raw: torch.Tensor,
                  p: torch.Tensor, pat_off: torch.Tensor, iterations: int,
                  sw: torch.Tensor | None = None, robust: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton steps on the translation p of each patch (the warp's linear part fixed)
    minimising the weighted distance between the normalised patch I(p + off) and the
    normalised template (``tmpl_raw``: the template's samples [M, P*C]; ``sw``: square roots
    of the pixel weights, [M, P*C] or None). With ``robust``, pixels whose residual is far
    above the patch's median (another layer inside the patch) are down-weighted after each
    step (Tukey's biweight). Returns (p, final weighted NCC).

    The integer search leaves the estimate biased towards whole pixels (the bilinear samples
    at fractional positions are smoothed); these steps remove most of that bias.
    """
    m, c = p.shape[0], frame.shape[0]
    base = torch.ones_like(tmpl_raw) if sw is None else sw
    rob = torch.ones_like(tmpl_raw)
    for _ in range(iterations):
        s = base * rob
        w = s * s
        wsum = w.sum(-1, keepdim=True).clamp(min=1e-12)

        def centre(x, w=w, wsum=wsum):
            return x - (w * x).sum(-1, keepdim=True) / wsum
        tc = centre(tmpl_raw)
        tc = tc / ((tc * s).norm(dim=-1, keepdim=True) + 1e-6)
        pts = p[:, None] + pat_off
        v = _sample(frame, pts).reshape(m, -1)  # [M, P*C]
        g = _sample(grad, pts)  # [M, P, 2C]
        gx = g[..., :c].reshape(m, -1)
        gy = g[..., c:].reshape(m, -1)
        vc = centre(v)
        sd = (vc * s).norm(dim=-1, keepdim=True) + 1e-6
        res = vc / sd - tc  # per sample, before weighting
        r = res * s
        jx = centre(gx) * s / sd
        jy = centre(gy) * s / sd
        a11, a12, a22 = (jx * jx).sum(-1), (jx * jy).sum(-1), (jy * jy).sum(-1)
        b1, b2 = (jx * r).sum(-1), (jy * r).sum(-1)
        det = a11 * a22 - a12 * a12
        ok = det > 1e-9
        det = torch.where(ok, det, torch.ones_like(det))
        dx = torch.where(ok, -(a22 * b1 - a12 * b2) / det, torch.zeros_like(det))
        dy = torch.where(ok, -(a11 * b2 - a12 * b1) / det, torch.zeros_like(det))
        p = p + torch.stack([dx, dy], -1).clamp(-0.5, 0.5)
        if robust:
            e = res.reshape(m, -1, c).norm(dim=-1)  # [M, P]
            scale = (1.4826 * e.median(-1, keepdim=True).values).clamp(min=ROBUST_FLOOR)
            u = e / (4.685 * scale)
            rob = ((1.0 - u * u).clamp(min=0.0) ** 2).sqrt().repeat_interleave(c, dim=1)
    s = base * rob
    v = _normalise(_sample(frame, p[:, None] + pat_off).reshape(m, -1), s)
    return p, (v * _normalise(tmpl_raw, s)).sum(-1)


def _match(frame: torch.Tensor, grad: torch.Tensor, tmpl_raw: torch.Tensor, tm: torch.Tensor,
           sw: torch.Tensor | None, centres: torch.Tensor, pat_off: torch.Tensor, search: int,
           iterations: int, robust: bool, min_score: float
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer search of the template within ``search`` px of each centre, then sub-pixel
    steps. Returns (position [M, 2], score [M], accepted [M] bool: a peak inside the window
    scoring at least ``min_score``)."""
    m = centres.shape[0]
    shifts = patch_offsets(search)  # [S, 2]
    side = 2 * search + 1
    cand = centres[:, None, None] + shifts[None, :, None] + pat_off[:, None]
    pat = _sample(frame, cand.reshape(m, -1, 2))
    pat = _normalise(pat.reshape(m, shifts.shape[0], -1), None if sw is None else sw[:, None])
    ncc = (pat * tm[:, None]).sum(-1)  # [M, S]
    best_score, best = ncc.max(1)
    g = ncc.reshape(-1, side, side)
    by, bx = best // side, best % side
    interior = (bx > 0) & (bx < side - 1) & (by > 0) & (by < side - 1)
    p0 = centres + shifts[best]
    if iterations > 0:
        newp, lk_score = _lucas_kanade(frame, grad, tmpl_raw, p0, pat_off, iterations, sw,
                                       robust)
        # keep the Gauss-Newton estimate where it stayed near the integer peak and did not
        # lower the match
        good = ((newp - p0).abs().amax(-1) <= 1.0) & (lk_score >= best_score - 0.02)
        newp = torch.where(good[:, None], newp, p0)
        best_score = torch.where(good, lk_score, best_score)
    else:
        r_ = torch.arange(m)
        xm, xp = (bx - 1).clamp(min=0), (bx + 1).clamp(max=side - 1)
        ym, yp = (by - 1).clamp(min=0), (by + 1).clamp(max=side - 1)
        dx = _parabola(g[r_, by, xm], g[r_, by, bx], g[r_, by, xp])
        dy = _parabola(g[r_, ym, bx], g[r_, by, bx], g[r_, yp, bx])
        newp = p0 + torch.stack([dx, dy], -1)
    return newp, best_score, interior & (best_score >= min_score)


def similarity_part(jacobians) -> np.ndarray:
    """The nearest rotation-and-uniform-scale matrix to each 2x2 matrix (least squares).

    A short fit's local Jacobians are noisy (shear, even folds on fast layers); the layers of
    a video mostly rotate and scale, and a template warped by this part matches better
    (benchmarks/RESULTS.md, quality). [..., 2, 2] -> [..., 2, 2] float32
    """
    j = np.asarray(jacobians, np.float64)
    a = 0.5 * (j[..., 0, 0] + j[..., 1, 1])
    b = 0.5 * (j[..., 1, 0] - j[..., 0, 1])
    return np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2).astype(np.float32)


def _refine_windows(frames: torch.Tensor, grads: torch.Tensor, q_xy: np.ndarray,
                    qt: np.ndarray, tracks: np.ndarray, occ: np.ndarray,
                    jac: np.ndarray | None, weights: np.ndarray | None, offsets: torch.Tensor,
                    *, search: int, min_score: float, iterations: int,
                    min_support: float, robust: bool, fallback_search: int,
                    fallback_min_score: float,
                    flows: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine M windows (templates centred on ``q_xy`` [M, 2] (x, y) in frames ``qt``,
    predicted at ``tracks`` [M, T, 2]) in every frame but their own, in both directions from
    it. With ``flows`` (forward [T-1, 2, H, W]: frame t to t+1, backward: t+1 to t) a second
    candidate per frame, the previous frame's position moved by the flow, is matched too and
    taken where it matches and the model's does not, or scores higher.
    Returns (positions [M, T, 2], score [M, T], NaN where not searched; accepted [M, T])."""
    t_count, _, h, w = frames.shape
    m = q_xy.shape[0]
    out = tracks.astype(np.float32, copy=True)
    score = np.full((m, t_count), np.nan, np.float32)
    accepted = np.zeros((m, t_count), bool)
    if m == 0:
        return out, score, accepted
    qc = torch.from_numpy(np.ascontiguousarray(q_xy, np.float32))
    tmpl = torch.empty(m, offsets.shape[0], frames.shape[1])
    for f in np.unique(qt):
        sel = torch.from_numpy(qt == f)
        tmpl[sel] = _sample(frames[int(f)], qc[sel][:, None] + offsets[None])
    tmpl_raw = tmpl.reshape(m, -1)
    tmpl = _normalise(tmpl_raw)
    n_ch = frames.shape[1]
    trc = torch.from_numpy(np.ascontiguousarray(tracks, np.float32))
    jt = None if jac is None else torch.from_numpy(np.ascontiguousarray(jac, np.float32))

    for direction in (1, -1):
        corr = torch.zeros(m, 2)
        # the flow candidates' chain: the last position, moved on by the flow each frame
        chain = qc.clone()
        order = range(t_count) if direction > 0 else range(t_count - 1, -1, -1)
        for t in order:
            active = torch.from_numpy((qt < t) if direction > 0 else (qt > t))
            if not bool(active.any()):
                continue
            p = trc[:, t] + corr
            todo = active & _inside(p, h, w) & ~torch.from_numpy(occ[:, t])
            if weights is not None and min_support > 0:
                todo &= torch.from_numpy(weights[:, t].mean(-1) >= min_support)
            corr = torch.where(active[:, None], torch.zeros_like(corr), corr)
            if flows is not None:
                field = flows[0][t - 1] if direction > 0 else flows[1][t]
                moved = chain + _sample(field, chain[:, None])[:, 0]
                chain = torch.where(active[:, None], moved, chain)
            idx = torch.nonzero(todo).reshape(-1)
            if idx.numel() == 0:
                continue
            pi = p[idx]
            if jt is None:
                pat_off = offsets[None].expand(idx.numel(), -1, -1)
            else:
                pat_off = torch.einsum("nab,pb->npa", jt[idx, t], offsets)
            if weights is None:
                sw, tm = None, tmpl[idx]
            else:
                wt = torch.from_numpy(np.ascontiguousarray(weights[idx.numpy(), t]))
                sw = wt.sqrt().repeat_interleave(n_ch, dim=1)  # [M', P*C]
                tm = _normalise(tmpl_raw[idx], sw)
            newp, best_score, ok = _match(frames[t], grads[t], tmpl_raw[idx], tm, sw, pi,
                                          pat_off, search, iterations, robust, min_score)
            if flows is not None:
                # the flow's candidate: where the fit has lost the point, the previous
                # frame's (matched) position moved by the frame-to-frame flow
                fc = chain[idx]
                fi = torch.nonzero(_inside(fc, h, w)).reshape(-1)
                if fi.numel():
                    pf, sf, okf = _match(frames[t], grads[t], tmpl_raw[idx[fi]], tm[fi],
                                         None if sw is None else sw[fi], fc[fi],
                                         pat_off[fi], search, iterations, robust, min_score)
                    take = okf & (~ok[fi] | (sf > best_score[fi]))
                    newp[fi] = torch.where(take[:, None], pf, newp[fi])
                    best_score[fi] = torch.where(take, sf, best_score[fi])
                    ok[fi] = ok[fi] | take
            redo = ~ok
            if fallback_search > 0 and bool(redo.any()):
                # where the warped template found nothing: a wider search with the
                # template unwarped (where the model is far off, its Jacobian is too)
                f = torch.nonzero(redo).reshape(-1)
                p2, s2, ok2 = _match(frames[t], grads[t], tmpl_raw[idx[f]], tm[f],
                                     None if sw is None else sw[f], pi[f],
                                     offsets[None].expand(f.numel(), -1, -1),
                                     fallback_search, iterations, robust,
                                     fallback_min_score)
                newp[f] = torch.where(ok2[:, None], p2, newp[f])
                best_score[f] = torch.where(ok2, s2, best_score[f])
                ok[f] = ok2
            refined = torch.where(ok[:, None], newp, trc[idx, t])
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
    ``flows`` of :func:`refine_tracks` (16 bytes per pixel and frame: about 1 GB for 200
    frames of 640x480). Returns (forward [T-1, H, W, 2]: frame t to t+1, backward
    [T-1, H, W, 2]: frame t+1 to t), float32 (dx, dy)."""
    from omnifast.data.flow import grey_frames, pair_flow  # noqa: PLC0415

    grey = grey_frames(video)
    t, h, w = grey.shape
    fwd = np.zeros((max(t - 1, 0), h, w, 2), np.float32)
    bwd = np.zeros_like(fwd)
    for i in range(t - 1):
        fwd[i] = pair_flow(grey[i], grey[i + 1], preset)
        bwd[i] = pair_flow(grey[i + 1], grey[i], preset)
    return fwd, bwd


def _fill_nearest(x: np.ndarray, valid: np.ndarray, qt: np.ndarray) -> np.ndarray:
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


def _running_median(x: np.ndarray, k: int) -> np.ndarray:
    """Running median over ``k`` (odd) frames along axis 1, the ends padded with the end
    values. [N, T, ...] -> [N, T, ...]"""
    p = k // 2
    pad = np.pad(x, ((0, 0), (p, p)) + ((0, 0),) * (x.ndim - 2), mode="edge")
    return np.median(np.stack([pad[:, i:i + x.shape[1]] for i in range(k)]), 0).astype(x.dtype)


def _window_consensus(pos: np.ndarray, good: np.ndarray, shifts: np.ndarray,
                      inlier_px: float = CONSENSUS_INLIER_PX, rounds: int = 5
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


def refine_tracks(video, query_points, tracks, occluded=None, jacobians=None,
                  weights=None, *, radius: int = DEFAULT_RADIUS, search: int = DEFAULT_SEARCH,
                  min_score: float = DEFAULT_MIN_SCORE, iterations: int = 4,
                  min_support: float = DEFAULT_MIN_SUPPORT,
                  robust: bool = True, warp: str = "similarity",
                  fallback_search: int = DEFAULT_FALLBACK_SEARCH,
                  fallback_min_score: float = DEFAULT_FALLBACK_MIN_SCORE,
                  window_shift: int = DEFAULT_WINDOW_SHIFT,
                  window_min_score: float = DEFAULT_WINDOW_MIN_SCORE,
                  temporal_median: int = DEFAULT_TEMPORAL_MEDIAN,
                  passes: int = DEFAULT_PASSES, warp_min_windows: int = DEFAULT_WARP_MIN_WINDOWS,
                  flows=None,
                  chunk_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Refine predicted tracks against the video (see the module docstring).

    Args:
        video: the frames. [T, H, W, C] uint8 (or float in [0, 1])
        query_points: (t, y, x) pixels. [N, 3]
        tracks: predicted (x, y) positions in every frame. [N, T, 2]
        occluded: predicted occlusion (occluded frames are not refined). [N, T] bool or None
        jacobians: d(track)/d(query x, y) per frame, ``[..., :, 0]`` for x and ``[..., :, 1]``
            for y. [N, T, 2, 2] or None (no warp: translation only)
        weights: per target frame, the weight of each template pixel (row-major over the
            (2r+1)^2 patch, y then x), e.g. :meth:`omnifast.track.Tracker.template_weights`:
            low for pixels that the model says move differently from the query (another
            layer near a boundary). [N, T, (2r+1)^2] or None (all 1)
        radius: template radius r in pixels (patch of (2r+1)^2).
        search: search radius in whole pixels around the (carried) prediction.
        min_score: smallest normalised cross-correlation accepted.
        iterations: Gauss-Newton (Lucas-Kanade) steps after the integer search (0: a
            parabola through the best integer offset's neighbours instead).
        min_support: with ``weights``, frames where the mean template weight is below this
            are not refined (the point is next to a boundary of its layer: there the
            model's own position is more accurate than a match).
        robust: down-weight the pixels of a patch that do not match (another layer) in
            the Gauss-Newton steps.
        warp: ``"similarity"`` warps the template by the rotation-and-scale part of each
            Jacobian (:func:`similarity_part`), ``"full"`` by the Jacobian as given.
        fallback_search: where the warped template finds no confident match, search again
            this far (whole pixels) with the template unwarped; 0: no second search.
        fallback_min_score: smallest score accepted from the second search (a wider search
            finds more look-alikes: stricter than ``min_score``).
        window_shift: distance in whole pixels of the 8 off-centre windows from the point
            (see the module docstring); 0: the centred window only (about 6 times faster,
            less precise next to layer boundaries). Must be 0 with ``weights``.
        window_min_score: smallest score of a window taking part in the windows' consensus.
        temporal_median: a correction (refined minus predicted position) more than 1 px from
            the running median of the corrections over this many frames (odd; 1: no filter)
            is replaced by that median: a frame matched on its own can jump to a wrong match.
        passes: matching passes (with ``window_shift`` > 0). The model's Jacobians are the
            first pass's warps; every later pass warps the templates by the similarity
            transform that the windows' consensus fitted in the pass before, in each frame
            where at least ``warp_min_windows`` windows took part, elsewhere by that of the
            nearest such frame (the query frame: no warp). A short fit's Jacobians are far
            off where its tracks are; each pass costs as much as the first.
        warp_min_windows: smallest number of consensus windows (2-9) of a frame whose
            fitted transform is used by the next pass.
        flows: frame-to-frame optical flow ``(forward, backward)``, each [T-1, H, W, 2]
            ((dx, dy) from frame t to t+1, and from t+1 to t), e.g. :func:`frame_flows`;
            with them every window is also matched around its previous frame's position
            moved by the flow, and that match is taken where it scores higher (or the
            model's candidate matches nothing). None: the model's candidates only.
        chunk_size: windows processed together (bounds memory).

    Returns:
        ``(refined tracks [N, T, 2] float32, match score [N, T] float32)``; the score is NaN
        where a frame was not searched (the query frame, occluded or outside the frame).
    """
    frames = _frames_tensor(video)
    grads = _gradients(frames)
    t_count, _, h, w = frames.shape
    q = np.asarray(query_points, np.float64)
    tr = np.asarray(tracks, np.float32)
    if q.ndim != 2 or q.shape[1] != 3:
        raise ValueError(f"query_points must be [N, 3] (t, y, x), got {list(q.shape)}")
    n = q.shape[0]
    if tr.shape != (n, t_count, 2):
        raise ValueError(f"tracks must be [N, T, 2] = [{n}, {t_count}, 2], got {list(tr.shape)}")
    occ = (np.zeros((n, t_count), bool) if occluded is None
           else np.asarray(occluded, bool))
    if occ.shape != (n, t_count):
        raise ValueError(f"occluded must be [N, T] = [{n}, {t_count}], got {list(occ.shape)}")
    if warp not in ("similarity", "full"):
        raise ValueError(f"warp must be 'similarity' or 'full', got {warp!r}")
    if jacobians is not None:
        jac_all = np.asarray(jacobians, np.float32)
        if jac_all.shape != (n, t_count, 2, 2):
            raise ValueError(f"jacobians must be [N, T, 2, 2], got {list(jac_all.shape)}")
        if not np.isfinite(jac_all).all():
            raise ValueError("jacobians must be finite")
        if warp == "similarity":
            jac_all = similarity_part(jac_all)
    if radius < 0 or search < 1:
        raise ValueError("radius must be >= 0 and search >= 1")
    num_pix = (2 * radius + 1) ** 2
    if weights is not None:
        w_all = np.asarray(weights, np.float32)
        if w_all.shape != (n, t_count, num_pix):
            raise ValueError(f"weights must be [N, T, (2r+1)^2] = [{n}, {t_count}, {num_pix}], "
                             f"got {list(w_all.shape)}")
        if not np.isfinite(w_all).all() or (w_all < 0).any():
            raise ValueError("weights must be finite and >= 0")
    if window_shift < 0:
        raise ValueError("window_shift must be >= 0")
    if weights is not None and window_shift > 0:
        raise ValueError("weights apply to the centred window only: pass window_shift=0 "
                         "with weights")
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if not 2 <= warp_min_windows <= 9:
        raise ValueError(f"warp_min_windows must lie in 2..9, got {warp_min_windows}")
    if temporal_median < 1 or temporal_median % 2 == 0:
        raise ValueError(f"temporal_median must be odd and >= 1, got {temporal_median}")
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
    out = tr.copy()
    score = np.full((n, t_count), np.nan, np.float32)
    if n == 0:
        return out, score
    qt = np.rint(q[:, 0]).astype(np.int64)
    if qt.min() < 0 or qt.max() >= t_count:
        raise ValueError(f"query times must lie in 0..{t_count - 1}")

    offsets = patch_offsets(radius)  # [P, 2]
    # the windows: centred on the point, and (window_shift > 0) the 8 around it
    shifts = (patch_offsets(1) * float(window_shift)) if window_shift > 0 else torch.zeros(1, 2)
    centre = int(shifts.shape[0] // 2)
    num_win = shifts.shape[0]
    if jacobians is None:
        warps = np.broadcast_to(np.eye(2, dtype=np.float32), (n, t_count, 2, 2))
    else:
        warps = jac_all
    per_chunk = max(1, chunk_size // num_win)
    sh = shifts.numpy()

    def one_pass(warps_now, warp_given):
        out = tr.copy()
        score = np.full((n, t_count), np.nan, np.float32)
        lin_all = np.broadcast_to(np.eye(2, dtype=np.float32), (n, t_count, 2, 2)).copy()
        count_all = np.zeros((n, t_count), np.int64)
        for c0 in range(0, n, per_chunk):
            sl = slice(c0, min(c0 + per_chunk, n))
            m = sl.stop - sl.start
            # window k of query i: template centred on q_i + s_k, predicted at track_i + J s_k
            qx = np.repeat(q[sl][:, None, [2, 1]], num_win, 1) + sh[None]  # [m, K, 2]
            js = np.einsum("ntab,kb->nkta", warps_now[sl], sh).astype(np.float32)  # [m,K,T,2]
            pred = tr[sl][:, None] + js
            keep = _inside(qx, h, w)
            keep[:, centre] = True
            ii, kk = np.nonzero(keep)
            pos, sc, acc = _refine_windows(
                frames, grads, qx[ii, kk], qt[sl][ii], pred[ii, kk], occ[sl][ii],
                warps_now[sl][ii] if warp_given else None,
                None if weights is None else w_all[sl][ii], offsets, search=search,
                min_score=min_score, iterations=iterations, min_support=min_support,
                robust=robust, fallback_search=fallback_search,
                fallback_min_score=fallback_min_score, flows=flow_t)
            pos_all = np.zeros((m, num_win, t_count, 2), np.float32)
            pos_all[ii, kk] = pos
            sc_all = np.full((m, num_win, t_count), np.nan, np.float32)
            sc_all[ii, kk] = sc
            acc_all = np.zeros((m, num_win, t_count), bool)
            acc_all[ii, kk] = acc
            # the centred window alone, where it was accepted
            res = np.where(acc_all[:, centre, :, None], pos_all[:, centre], tr[sl])
            best_sc = sc_all[:, centre]
            if num_win > 1:
                # where at least two windows match closely, the point is where the similarity
                # transform that fits their matched centres puts it
                good = acc_all & (np.nan_to_num(sc_all) >= window_min_score)
                fitted, count, lin = _window_consensus(pos_all, good, sh)
                top = np.where(good, sc_all, -np.inf)
                k1 = top.argmax(1)  # [m, T]
                one = np.take_along_axis(pos_all - js, k1[:, None, :, None], 1)[:, 0]
                res = np.where((count >= 2)[..., None], fitted,
                               np.where(good.any(1)[..., None], one, res))
                best_sc = np.where(good.any(1), top.max(1), best_sc)
                lin_all[sl], count_all[sl] = lin, count
            out[sl] = res
            score[sl] = best_sc
        return out, score, lin_all, count_all

    out, score, lin, count = one_pass(warps, jacobians is not None)
    for _ in range(1, passes if num_win > 1 else 1):
        # each frame takes the transform estimated there, or in the nearest frame where it
        # could be (the query frame: the identity)
        warps = _fill_nearest(lin, count >= warp_min_windows, qt)
        out, score, lin, count = one_pass(warps, True)
    if temporal_median > 1 and n:
        # a correction far from its neighbours' (one frame matched wrongly) is replaced by
        # their running median; frames flagged occluded keep their positions
        corr = out - tr
        med = _running_median(corr, temporal_median)
        # (the query frame is not a neighbour: its position is the query's own)
        next_to_query = np.abs(np.arange(t_count)[None] - qt[:, None]) <= 1
        spike = (np.linalg.norm(corr - med, axis=-1) > SPIKE_PX) & ~occ & ~next_to_query
        out = np.where(spike[..., None], tr + med, out)
    out[np.arange(n), qt] = q[:, [2, 1]].astype(np.float32)
    return out, score


__all__ = ["DEFAULT_FALLBACK_MIN_SCORE", "DEFAULT_FALLBACK_SEARCH", "DEFAULT_MIN_SCORE",
           "DEFAULT_MIN_SUPPORT", "DEFAULT_PASSES", "DEFAULT_RADIUS", "DEFAULT_SEARCH",
           "DEFAULT_TEMPORAL_MEDIAN", "DEFAULT_WARP_MIN_WINDOWS", "DEFAULT_WINDOW_MIN_SCORE",
           "DEFAULT_WINDOW_SHIFT", "frame_flows", "patch_offsets", "refine_tracks",
           "similarity_part"]
