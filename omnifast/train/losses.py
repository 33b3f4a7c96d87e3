"""The training losses and their weight schedules (spec sections 4.1-4.3).

One call of :func:`compute_losses` runs the forward pass of a training step on a
:class:`~omnifast.train.sampler.Batch` and returns the weighted total and every term.

Deliberate differences from the original:

* the scene-flow smoothness term reuses the main pass's canonical points of the same samples
  instead of mapping them to canonical space again (spec 6.5; identical values and gradients);
* the canonical-sphere term has weight 0 in the original and is not computed;
* a trimmed L1 term whose entries are all equal (every entry is "the maximum") returns 0 instead
  of NaN;
* every term is a masked reduction over fixed shapes (no boolean indexing, no host reads), so
  the scene-flow term maps the samples of every pair and masks out the pairs without both
  neighbouring frames. The values are the same up to the order of the sums;
* the distortion term's double sum over sample pairs is computed in O(K) per ray from
  running sums (the same value up to rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from omnifast.config import ModelConfig, TrainConfig
from omnifast.model.geometry import project, sample_depths, unproject
from omnifast.model.omnimotion import OmniMotion
from omnifast.pixels import in_frame
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


def loss_weight_tensor(step: torch.Tensor, cfg: TrainConfig,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`loss_weights` computed on ``step``'s device, for a captured or compiled step.

    Args:
        step: iteration number, from 1. [] integer tensor

    Returns:
        ``(flow, flow_grad, rgb, dist, depth_range, scene_flow)``, evaluated in float64 and
        rounded once to ``dtype``, so each entry equals ``dtype(loss_weights(step, cfg).name)``.
        [6]
    """
    s = step.to(torch.float64)
    dist = torch.where(s <= cfg.dist_start, 0.0,
                       ((s - cfg.dist_start) / cfg.dist_ramp_steps).clamp(max=cfg.dist_weight_max))
    flow_grad = (s / cfg.flow_grad_ramp_steps).clamp(0.0, cfg.flow_grad_weight_max)
    rgb = (s / cfg.rgb_ramp_steps).clamp(0.0, cfg.rgb_weight_max)
    one = torch.ones_like(s)
    return torch.stack([one, flow_grad, rgb, dist, one * cfg.depth_range_weight,
                        one * cfg.scene_flow_weight]).to(dtype)


def distortion_on(step: int, cfg: TrainConfig) -> bool:
    """Whether the distortion term has a nonzero weight at iteration ``step``."""
    return loss_weights(step, cfg).dist > 0


def masked_near_samples(step: int, cfg: TrainConfig, num_samples: int) -> int:
    """How many near samples of each ray are kept transparent at iteration ``step`` (spec 3.2)."""
    if cfg.mask_near and step < cfg.mask_near_steps:
        return int(MASK_NEAR_FRACTION * num_samples)
    return 0


# Every loss below is a masked, weighted reduction over a tensor of fixed shape: no boolean
# indexing, no data-dependent shapes and no host reads, so a training step runs without a
# device-to-host sync and can be captured or compiled as one graph. The values are those of
# the original's "index the masked entries, then reduce" (up to the order of the summation).


def _trimmed_keep(e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep-mask of the masked entries strictly below the masked maximum (the original's
    quantile-1 trim): the largest entry and every entry tied with it are dropped. No entry is
    kept when none is masked."""
    if e.numel() == 0:
        return mask
    top = torch.where(mask, e.detach(), float("-inf")).amax()
    return mask & (e.detach() < top)


def _masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the kept entries; 0 when none is kept. Same shapes."""
    count = keep.sum().clamp(min=1).to(x.dtype)
    return torch.where(keep, x, 0.0).sum() / count


def _all(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape, dtype=torch.bool, device=x.device)


def flow_loss(pred: torch.Tensor, gt: torch.Tensor, w: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Trimmed weighted L1: mean over kept points of w * mean_xy |pred - gt|.

    Args:
        pred, gt: pixels. [M, 2]
        w: point weights. [M]
        mask: the points that take part (default all). [M] bool

    Returns:
        the mean of ``w e`` over the masked points whose ``e`` is below the masked maximum
        (0 when there are none). []
    """
    e = (pred - gt).abs().mean(-1)
    keep = _trimmed_keep(e, _all(e) if mask is None else mask)
    return _masked_mean(e * w, keep)


def _compact_order(mask: torch.Tensor) -> torch.Tensor:
    """Permutation that moves the masked entries to the front, in their order. [M] -> [M]"""
    return torch.argsort((~mask).to(torch.uint8), stable=True)


def consecutive_diff_loss(pred: torch.Tensor, gt: torch.Tensor, w: torch.Tensor | None = None,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """The original's "gradient" loss: consecutive masked entries' differences, trimmed.

    The masked entries are taken in order (as the original's boolean indexing lists them) and
    e_n = mean_c |(pred[n+1] - pred[n]) - (gt[n+1] - gt[n])| over consecutive ones. With
    weights, the result is sum(w_n w_{n+1} e_n) / sum(w_n w_{n+1}) over kept entries, else the
    mean of kept e_n; 0 with fewer than two masked entries.

    Args:
        pred, gt: values. [M, C]
        w: entry weights or None. [M]
        mask: the entries that take part (default all). [M] bool

    Returns:
        []
    """
    if pred.shape[0] < 2:
        return pred.new_zeros(())
    if mask is None:
        pair = torch.ones(pred.shape[0] - 1, dtype=torch.bool, device=pred.device)
    else:  # gather the masked entries to the front: pairs n, n+1 < count are consecutive
        order = _compact_order(mask)
        pred, gt = pred[order], gt[order]
        w = None if w is None else w[order]
        pos = torch.arange(1, pred.shape[0], device=pred.device)
        pair = pos < mask.sum()
    e = ((pred[1:] - pred[:-1]) - (gt[1:] - gt[:-1])).abs().mean(-1)
    keep = _trimmed_keep(e, pair)
    if w is None:
        return _masked_mean(e, keep)
    ww = torch.where(keep, w[1:] * w[:-1], 0.0)
    return (torch.where(keep, e, 0.0) * ww).sum() / ww.sum().clamp_min(1e-12)


def depth_range_loss(z: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """(sum over z < min of (z - min)^2 + sum over z > max of (z - max)^2) / count."""
    below = torch.clamp(min_depth - z, min=0)
    above = torch.clamp(z - max_depth, min=0)
    return (below.square().sum() + above.square().sum()) / max(z.numel(), 1)


def distortion_loss(weights: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360 distortion on rays, last interval of width 0. [..., K], [..., K] -> []

    Per ray ``sum_kl w_k w_l |m_k - m_l| + 1/3 sum_k w_k^2 (d_{k+1} - d_k)`` with interval
    midpoints m, averaged over rays. The depths must increase along each ray (as
    :func:`~omnifast.model.geometry.sample_depths` draws them): the midpoints are then sorted
    and the double sum is ``2 sum_k w_k (m_k W_k - S_k)`` with W_k, S_k the sums of w_l and
    w_l m_l over l < k, O(K) per ray instead of O(K^2) (same value up to rounding).
    """
    d = torch.cat([depths, depths[..., -1:]], dim=-1)
    mid = 0.5 * (d[..., 1:] + d[..., :-1])
    width = d[..., 1:] - d[..., :-1]
    wm = weights * mid
    before_w = torch.cumsum(weights, dim=-1) - weights
    before_wm = torch.cumsum(wm, dim=-1) - wm
    pair = 2.0 * (weights * (mid * before_w - before_wm)).sum(-1)
    self_term = (weights.square() * width).sum(-1) / 3.0
    return (pair + self_term).mean()


def scene_flow_loss(model: OmniMotion, x_local: torch.Tensor, x_canon: torch.Tensor,
                    ids: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Second temporal difference of sample positions (spec 4.2, L_sf).

    Only pairs whose frame has both neighbours (1 <= id <= N - 2) count; the others are mapped
    too (to a clamped frame, so every shape is fixed) and masked out. 0 when no pair counts.

    Args:
        x_local: samples in their frame. [P, n, K, 3]
        x_canon: the same samples in canonical space (from the main pass). [P, n, K, 3]
        ids: frame of each pair. [P]
    """
    if x_local.numel() == 0:
        return x_local.new_zeros(())
    keep = (ids >= 1) & (ids <= num_frames - 2)
    last = max(num_frames - 1, 0)
    both = torch.cat([x_canon, x_canon], dim=0)
    prev_next = model.from_canonical(both, torch.cat([(ids - 1).clamp(0, last),
                                                      (ids + 1).clamp(0, last)]))
    x_prev, x_next = prev_next[: x_canon.shape[0]], prev_next[x_canon.shape[0]:]
    e = ((x_local - x_prev) - (x_next - x_local)).abs().mean(-1)  # [P, n, K]
    mask = keep[:, None, None].expand(e.shape).reshape(-1)
    e = e.reshape(-1)
    return _masked_mean(e, _trimmed_keep(e, mask))


#: names of the loss terms, in the order of :func:`step_losses`' term vector
TERM_NAMES = ("flow", "flow_grad", "rgb", "rgb_grad", "depth_range", "distortion", "scene_flow")


def draw_depth_noise(model: OmniMotion, shape: tuple[int, int],
                     generator: torch.Generator | None, device) -> torch.Tensor:
    """The uniform draws of a step's stratified depths. [P, n, K]"""
    return torch.rand((*shape, model.config.num_samples), generator=generator, device=device,
                      dtype=model.param_dtype)


def step_losses(model: OmniMotion, batch: Batch, noise: torch.Tensor,
                weights: torch.Tensor | LossWeights, train_cfg: TrainConfig, height: int,
                width: int, num_masked_near: int = 0, with_distortion: bool = True
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward pass and losses of one training step, with fixed shapes and no host reads.

    Args:
        model: the networks.
        batch: P pairs x n points.
        noise: uniform draws of the stratified depths. [P, n, K]
        weights: the loss weights, a :class:`LossWeights` or the tensor of
            :func:`loss_weight_tensor`. [6]
        num_masked_near: near samples kept transparent (:func:`masked_near_samples`).
        with_distortion: compute the distortion term (False while its weight is 0 skips it;
            the term then reads 0).

    Returns:
        ``(total loss, {term name: detached value})``.
    """
    mcfg: ModelConfig = model.config
    dtype = model.param_dtype
    p, n = batch.pts1.shape[:2]
    k = mcfg.num_samples
    depths = sample_depths((p, n), k, mcfg.min_depth, mcfg.max_depth, stratified=True,
                           device=batch.pts1.device, dtype=dtype, noise=noise)
    x = unproject(batch.pts1, depths, height, width)  # [P, n, K, 3]
    xc = model.to_canonical(x, batch.ids1)
    y = model.from_canonical(xc, batch.ids2)
    rgb, _, w = model.render(xc, num_masked_near=num_masked_near)  # [P, n, 3], [P, n, K]

    z = y[..., 2]
    in_range = ((z >= mcfg.min_depth) & (z <= mcfg.max_depth)).to(w.dtype)
    w_masked = w * in_range
    y_hat = (w_masked.unsqueeze(-1) * y).sum(-2)  # [P, n, 3]
    px2, _ = project(y_hat, height, width)

    pad = 0.0  # max_padding: the pixel-centre rectangle, as the original
    flow_mask = in_frame(px2[..., 0], px2[..., 1], height, width, margin=pad).reshape(-1)
    rgb_mask = in_frame(batch.pts1[..., 0], batch.pts1[..., 1], height, width,
                        margin=0).reshape(-1)

    if isinstance(weights, LossWeights):
        lw = (weights.flow, weights.flow_grad, weights.rgb, weights.dist, weights.depth_range,
              weights.scene_flow)
    else:
        lw = weights.unbind(0)
    pred, gt = px2.reshape(-1, 2), batch.pts2.reshape(-1, 2)
    pw = batch.weights.reshape(-1)
    l_flow = flow_loss(pred, gt, pw, flow_mask)
    l_fg = consecutive_diff_loss(pred, gt, pw, flow_mask)
    rgb_f, gt_rgb = rgb.reshape(-1, 3), batch.gt_rgb1.reshape(-1, 3)
    l_rgb = _masked_mean((rgb_f - gt_rgb).square(), rgb_mask[:, None].expand(rgb_f.shape))
    l_rgbg = consecutive_diff_loss(rgb_f, gt_rgb, mask=rgb_mask)
    l_dr = depth_range_loss(z, mcfg.min_depth, mcfg.max_depth)
    l_dist = distortion_loss(w_masked, depths) if with_distortion else x.new_zeros(())
    n_sf = int(n * train_cfg.scene_flow_fraction)
    l_sf = (scene_flow_loss(model, x[:, :n_sf], xc[:, :n_sf], batch.ids1, model.num_frames)
            if n_sf > 0 and train_cfg.scene_flow_weight > 0 else x.new_zeros(()))

    total = (lw[0] * l_flow + lw[2] * (l_rgb + l_rgbg) + lw[4] * l_dr
             + lw[3] * l_dist + lw[5] * l_sf + lw[1] * l_fg)
    terms = {"flow": l_flow, "flow_grad": l_fg, "rgb": l_rgb, "rgb_grad": l_rgbg,
             "depth_range": l_dr, "distortion": l_dist, "scene_flow": l_sf}
    return total, {name: v.detach() for name, v in terms.items()}


def compute_losses(model: OmniMotion, batch: Batch, step: int, train_cfg: TrainConfig,
                   height: int, width: int, generator: torch.Generator | None = None, *,
                   noise: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward pass and losses of training iteration ``step`` (spec 4.1-4.3).

    Args:
        model: the networks.
        batch: P pairs x n points.
        step: iteration number, from 1 (drives the weight schedules and mask_near).
        generator: random stream of the stratified depth samples (used when ``noise`` is None).
        noise: the depths' uniform draws, [P, n, K] (drawn from ``generator`` when None).
        weights: the loss weights as a tensor (:func:`loss_weight_tensor`), or None to take
            them from ``step``.

    Returns:
        ``(total loss, {term name: detached value})``.
    """
    if noise is None:
        noise = draw_depth_noise(model, tuple(batch.pts1.shape[:2]), generator,
                                 batch.pts1.device)
    lw = loss_weights(step, train_cfg) if weights is None else weights
    return step_losses(model, batch, noise, lw, train_cfg, height, width,
                       masked_near_samples(step, train_cfg, model.config.num_samples),
                       distortion_on(step, train_cfg))


def psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-12))
