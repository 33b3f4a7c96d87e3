"""Matching one template against one frame: zero-mean normalised cross-correlation (NCC)
over the colour channels at every integer offset of a search window, then sub-pixel
refinement (Gauss-Newton / Lucas-Kanade steps on the translation, or a parabola fit).

Shapes: M templates of P pixels and C channels; a template's pixels sit at ``pat_off``
[M, P, 2] (x, y) around its position (a warped patch grid); ``tmpl_raw`` [M, P*C] are its
samples, ``sw`` [M, P*C] (or None) the square roots of its pixel weights.
"""

from __future__ import annotations

import torch

from omnifast.refine.config import RefineConfig
from omnifast.refine.frames import patch_offsets, sample

#: Tukey's biweight constant (95 % efficiency under Gaussian noise) and the factor that
#: turns a median absolute deviation into a standard deviation
_TUKEY_C = 4.685
_MAD_TO_STD = 1.4826


def normalise(x: torch.Tensor, sw: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-mean, unit-norm vectors along the last dimension; with ``sw`` (square roots of
    non-negative weights, broadcastable to ``x``) the weighted mean is removed and the result
    scaled by ``sw``, so that the dot product of two such vectors is their weighted NCC."""
    if sw is None:
        x = x - x.mean(-1, keepdim=True)
    else:
        w = sw * sw
        x = (x - (w * x).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp(min=1e-12)) * sw
    return x / (x.norm(dim=-1, keepdim=True) + 1e-6)


def parabola(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Offset in [-0.5, 0.5] of the peak of the parabola through (-1, a), (0, b), (1, c)."""
    d = a - 2.0 * b + c
    off = torch.where(d < 0, 0.5 * (a - c) / torch.where(d < 0, d, -torch.ones_like(d)),
                      torch.zeros_like(d))
    return off.clamp(-0.5, 0.5)


def lucas_kanade(frame: torch.Tensor, grad: torch.Tensor, tmpl_raw: torch.Tensor,
                 p: torch.Tensor, pat_off: torch.Tensor, iterations: int,
                 sw: torch.Tensor | None = None, robust: bool = False,
                 robust_floor: float = RefineConfig.robust_floor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton steps on the translation ``p`` [M, 2] of each patch (the warp's linear
    part fixed) minimising the weighted distance between the normalised patch I(p + off) and
    the normalised template. With ``robust``, pixels whose residual is far above the patch's
    median (another layer inside the patch) are down-weighted after each step (Tukey's
    biweight, residual scale at least ``robust_floor``). ``grad``: the frame's x and y
    derivatives [2C, H, W]. Returns (p [M, 2], final weighted NCC [M])."""
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
        v = sample(frame, pts).reshape(m, -1)  # [M, P*C]
        g = sample(grad, pts)  # [M, P, 2C]
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
            scale = (_MAD_TO_STD * e.median(-1, keepdim=True).values).clamp(min=robust_floor)
            u = e / (_TUKEY_C * scale)
            rob = ((1.0 - u * u).clamp(min=0.0) ** 2).sqrt().repeat_interleave(c, dim=1)
    s = base * rob
    v = normalise(sample(frame, p[:, None] + pat_off).reshape(m, -1), s)
    return p, (v * normalise(tmpl_raw, s)).sum(-1)


def match(frame: torch.Tensor, grad: torch.Tensor, tmpl_raw: torch.Tensor, tm: torch.Tensor,
          sw: torch.Tensor | None, centres: torch.Tensor, pat_off: torch.Tensor, search: int,
          min_score: float, config: RefineConfig
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer search of each template within ``search`` px of its centre [M, 2], then
    sub-pixel steps (``config.iterations``, ``robust``, ...). ``tm``: the normalised
    templates [M, P*C] (:func:`normalise` with ``sw``). Returns (position [M, 2], score [M],
    accepted [M] bool: a peak inside the search window scoring at least ``min_score``)."""
    m = centres.shape[0]
    shifts = patch_offsets(search)  # [S, 2]
    side = 2 * search + 1
    cand = centres[:, None, None] + shifts[None, :, None] + pat_off[:, None]
    pat = sample(frame, cand.reshape(m, -1, 2))
    pat = normalise(pat.reshape(m, shifts.shape[0], -1), None if sw is None else sw[:, None])
    ncc = (pat * tm[:, None]).sum(-1)  # [M, S]
    best_score, best = ncc.max(1)
    g = ncc.reshape(-1, side, side)
    by, bx = best // side, best % side
    interior = (bx > 0) & (bx < side - 1) & (by > 0) & (by < side - 1)
    p0 = centres + shifts[best]
    if config.iterations > 0:
        newp, lk_score = lucas_kanade(frame, grad, tmpl_raw, p0, pat_off, config.iterations,
                                      sw, config.robust, config.robust_floor)
        # keep the Gauss-Newton estimate where it stayed near the integer peak and did not
        # lower the match
        good = (((newp - p0).abs().amax(-1) <= config.subpixel_max_shift)
                & (lk_score >= best_score - config.subpixel_max_score_drop))
        newp = torch.where(good[:, None], newp, p0)
        best_score = torch.where(good, lk_score, best_score)
    else:
        r_ = torch.arange(m)
        xm, xp = (bx - 1).clamp(min=0), (bx + 1).clamp(max=side - 1)
        ym, yp = (by - 1).clamp(min=0), (by + 1).clamp(max=side - 1)
        dx = parabola(g[r_, by, xm], g[r_, by, bx], g[r_, by, xp])
        dy = parabola(g[r_, ym, bx], g[r_, by, bx], g[r_, yp, bx])
        newp = p0 + torch.stack([dx, dy], -1)
    return newp, best_score, interior & (best_score >= min_score)


__all__ = ["lucas_kanade", "match", "normalise", "parabola"]
