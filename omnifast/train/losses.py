"""The training losses and their weight schedules (spec sections 4.1-4.3).

One call of :func:`compute_losses` runs the forward pass of a training step on a
:class:`~omnifast.train.sampler.Batch` and returns the weighted total and every term.

Deliberate differences from the original:

* the scene-flow smoothness term reuses the main pass's canonical points of the same samples
  instead of mapping them to canonical space again (spec 6.5; identical values and gradients);
* the canonical-sphere term has weight 0 in the original and is not computed;
* a trimmed L1 term whose entries are all equal (every entry is "the maximum") returns 0 instead
  of NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from omnifast.config import ModelConfig, TrainConfig
from omnifast.model.geometry import project, sample_depths, unproject
from omnifast.model.omnimotion import OmniMotion
from omnifast.train.sampler import Batch

#: the original keeps the samples of the first 20% of each ray transparent under mask_near
MASK_NEAR_FRACTION = 0.2


@dataclass(frozen=True)
class LossWeights:
    flow: float
    flow_grad: float
    rgb: float
    dist: float
    depth_range: float
    scene_flow: float


def loss_weights(step: int, cfg: TrainConfig) -> LossWeights:
    """Weights of the loss terms at iteration ``step`` (counting from 1), spec 4.3.

    ``w = min(step / ramp, max)`` for the photometric and flow-gradient terms, distortion off up
    to ``dist_start`` and ramping after it; flow, depth-range and scene-flow weights constant.
    """
    s = float(step)
    dist = 0.0 if s <= cfg.dist_start else min((s - cfg.dist_start) / cfg.dist_ramp_steps,
                                               cfg.dist_weight_max)
    return LossWeights(
        flow=1.0,
        flow_grad=min(max(s / cfg.flow_grad_ramp_steps, 0.0), cfg.flow_grad_weight_max),
        rgb=min(max(s / cfg.rgb_ramp_steps, 0.0), cfg.rgb_weight_max),
        dist=dist,
        depth_range=cfg.depth_range_weight,
        scene_flow=cfg.scene_flow_weight,
    )


def learning_rate_factor(step: int, cfg: TrainConfig) -> float:
    """StepLR stepped once per iteration: iteration ``step`` (from 1) uses factor^((s-1)//D)."""
    return cfg.lr_decay_factor ** ((max(step, 1) - 1) // cfg.lr_decay_steps)


def _below_max(e: torch.Tensor) -> torch.Tensor:
    """Keep-mask of the entries strictly below the maximum (the original's quantile-1 trim)."""
    if e.numel() == 0:
        return torch.zeros_like(e, dtype=torch.bool)
    return e < e.detach().max()


def _safe_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.new_zeros(())


def flow_loss(pred: torch.Tensor, gt: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Trimmed weighted L1: mean over kept points of w * mean_xy |pred - gt|. [M, 2], [M]"""
    e = (pred - gt).abs().mean(-1)
    keep = _below_max(e)
    return _safe_mean((e * w)[keep])


def consecutive_diff_loss(pred: torch.Tensor, gt: torch.Tensor,
                          w: torch.Tensor | None = None) -> torch.Tensor:
    """The original's "gradient" loss: consecutive entries' differences, trimmed. [M, C]

    e_n = mean_c |(pred[n+1] - pred[n]) - (gt[n+1] - gt[n])|; with weights, the result is
    sum(w_n w_{n+1} e_n) / sum(w_n w_{n+1}) over kept entries, else the mean of kept e_n.
    """
    if pred.shape[0] < 2:
        return pred.new_zeros(())
    e = ((pred[1:] - pred[:-1]) - (gt[1:] - gt[:-1])).abs().mean(-1)
    keep = _below_max(e)
    if w is None:
        return _safe_mean(e[keep])
    ww = (w[1:] * w[:-1])[keep]
    return (e[keep] * ww).sum() / ww.sum().clamp_min(1e-12)


def depth_range_loss(z: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """(sum over z < min of (z - min)^2 + sum over z > max of (z - max)^2) / count."""
    below = torch.clamp(min_depth - z, min=0)
    above = torch.clamp(z - max_depth, min=0)
    return (below.square().sum() + above.square().sum()) / max(z.numel(), 1)


def distortion_loss(weights: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360 distortion on rays, last interval of width 0. [..., K], [..., K] -> []"""
    d = torch.cat([depths, depths[..., -1:]], dim=-1)
    mid = 0.5 * (d[..., 1:] + d[..., :-1])
    width = d[..., 1:] - d[..., :-1]
    pair = (weights[..., :, None] * weights[..., None, :]
            * (mid[..., :, None] - mid[..., None, :]).abs()).sum((-1, -2))
    self_term = (weights.square() * width).sum(-1) / 3.0
    return (pair + self_term).mean()


def scene_flow_loss(model: OmniMotion, x_local: torch.Tensor, x_canon: torch.Tensor,
                    ids: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Second temporal difference of sample positions (spec 4.2, L_sf).

    Args:
        x_local: samples in their frame. [P, n, K, 3]
        x_canon: the same samples in canonical space (from the main pass). [P, n, K, 3]
        ids: frame of each pair. [P]
    """
    keep = (ids >= 1) & (ids <= num_frames - 2)
    if not bool(keep.any()):
        return x_local.new_zeros(())
    xl, xc, fid = x_local[keep], x_canon[keep], ids[keep]
    both = torch.cat([xc, xc], dim=0)
    prev_next = model.from_canonical(both, torch.cat([fid - 1, fid + 1]))
    x_prev, x_next = prev_next[: xc.shape[0]], prev_next[xc.shape[0]:]
    e = ((xl - x_prev) - (x_next - xl)).abs().mean(-1).reshape(-1)
    return _safe_mean(e[_below_max(e)])


def compute_losses(model: OmniMotion, batch: Batch, step: int, train_cfg: TrainConfig,
                   height: int, width: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
    """Forward pass and losses of one training step (spec 4.1-4.3).

    Args:
        model: the networks.
        batch: P pairs x n points.
        step: iteration number, from 1 (drives the weight schedules).
        generator: random stream of the stratified depth samples.

    Returns:
        ``(total loss, {term name: detached value})``.
    """
    mcfg: ModelConfig = model.config
    dtype = model.param_dtype
    p, n = batch.pts1.shape[:2]
    k = mcfg.num_samples
    depths = sample_depths((p, n), k, mcfg.min_depth, mcfg.max_depth, stratified=True,
                           generator=generator, device=batch.pts1.device, dtype=dtype)
    x = unproject(batch.pts1, depths, height, width)  # [P, n, K, 3]
    xc = model.to_canonical(x, batch.ids1)
    y = model.from_canonical(xc, batch.ids2)
    masked_near = (int(MASK_NEAR_FRACTION * k)
                   if train_cfg.mask_near and step < train_cfg.mask_near_steps else 0)
    rgb, _, w = model.render(xc, num_masked_near=masked_near)  # [P, n, 3], [P, n, K]

    z = y[..., 2]
    in_range = ((z >= mcfg.min_depth) & (z <= mcfg.max_depth)).to(w.dtype)
    w_masked = w * in_range
    y_hat = (w_masked.unsqueeze(-1) * y).sum(-2)  # [P, n, 3]
    px2, _ = project(y_hat, height, width)

    pad = 0.0  # max_padding
    flow_mask = ((px2[..., 0] >= -pad) & (px2[..., 0] <= width - 1 + pad)
                 & (px2[..., 1] >= -pad) & (px2[..., 1] <= height - 1 + pad))
    rgb_mask = ((batch.pts1[..., 0] >= 0) & (batch.pts1[..., 0] <= width - 1)
                & (batch.pts1[..., 1] >= 0) & (batch.pts1[..., 1] <= height - 1))

    lw = loss_weights(step, train_cfg)
    l_flow = flow_loss(px2[flow_mask], batch.pts2[flow_mask], batch.weights[flow_mask])
    l_fg = consecutive_diff_loss(px2[flow_mask], batch.pts2[flow_mask],
                                 batch.weights[flow_mask])
    l_rgb = _safe_mean((rgb[rgb_mask] - batch.gt_rgb1[rgb_mask]).square())
    l_rgbg = consecutive_diff_loss(rgb[rgb_mask], batch.gt_rgb1[rgb_mask])
    l_dr = depth_range_loss(z, mcfg.min_depth, mcfg.max_depth)
    l_dist = (distortion_loss(w_masked, depths) if lw.dist > 0 else x.new_zeros(()))
    n_sf = int(n * train_cfg.scene_flow_fraction)
    l_sf = (scene_flow_loss(model, x[:, :n_sf], xc[:, :n_sf], batch.ids1, model.num_frames)
            if n_sf > 0 and lw.scene_flow > 0 else x.new_zeros(()))

    total = (lw.flow * l_flow + lw.rgb * (l_rgb + l_rgbg) + lw.depth_range * l_dr
             + lw.dist * l_dist + lw.scene_flow * l_sf + lw.flow_grad * l_fg)
    terms = {"flow": l_flow, "flow_grad": l_fg, "rgb": l_rgb, "rgb_grad": l_rgbg,
             "depth_range": l_dr, "distortion": l_dist, "scene_flow": l_sf}
    return total, {name: v.detach() for name, v in terms.items()}


def psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-12))
