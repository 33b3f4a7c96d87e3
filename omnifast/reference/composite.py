"""Reference transmittance-weighted compositing (OmniMotion's ray rendering, spec 3.7)."""

from __future__ import annotations

import torch

#: OmniMotion's transmittance factor is ``1 - alpha + TRANSMITTANCE_EPS``.
TRANSMITTANCE_EPS = 1e-10


def composite_ref(sigma: torch.Tensor, values: torch.Tensor,
                  num_masked_near: int = 0, *, value_mask: torch.Tensor | None = None,
                  value_mask_from: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite per-sample values along rays.

    alpha_k = 1 - exp(-sigma_k); T_0 = 1, T_k = prod_{j<k} (1 - alpha_j + 1e-10);
    w_k = alpha_k * T_k; out = sum_k w_k * values_k. No normalisation, no background.

    Args:
        sigma: densities, non-negative. [..., K]
        values: per-sample values of any number of channels. [..., K, C]
        num_masked_near: alpha of the first ``num_masked_near`` samples is set to 0 (the
            original's ``mask_near`` trick, spec 3.2).
        value_mask: optional per-sample mask (spec 3.8's depth-range mask), multiplied into the
            weights of the value sums of channels ``value_mask_from:`` only; the returned
            weights stay unmasked. [..., K]
        value_mask_from: first channel the mask applies to.

    Returns:
        ``(out [..., C], weights [..., K])``.
    """
    if values.shape[:-1] != sigma.shape:
        raise ValueError(f"values must be [..., K, C] matching sigma [..., K]; got sigma "
                         f"{tuple(sigma.shape)} and values {tuple(values.shape)}")
    alpha = 1.0 - torch.exp(-sigma)
    if num_masked_near > 0:
        keep = torch.arange(sigma.shape[-1], device=sigma.device) >= num_masked_near
        alpha = alpha * keep.to(sigma.dtype)
    trans = torch.cumprod(1.0 - alpha + TRANSMITTANCE_EPS, dim=-1)
    trans = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
    weights = alpha * trans
    if value_mask is None:
        out = (weights.unsqueeze(-1) * values).sum(dim=-2)
    else:
        channel_masked = torch.arange(values.shape[-1], device=values.device) >= value_mask_from
        mask = torch.where(channel_masked, value_mask.to(values.dtype).unsqueeze(-1), 1.0)
        out = (weights.unsqueeze(-1) * mask * values).sum(dim=-2)
    return out, weights


def composite_argmax_ref(sigma: torch.Tensor) -> torch.Tensor:
    """Index of the largest compositing weight of each ray (``use_max_loc``, spec 3.8).

    Args:
        sigma: densities. [..., K]

    Returns:
        ``argmax_k w_k`` (the first one on ties, as :func:`torch.argmax`). [...] int64
    """
    _, weights = composite_ref(sigma, sigma.new_zeros(sigma.shape + (0,)))
    return torch.argmax(weights, dim=-1)


def occlusion_score_ref(sigma: torch.Tensor, depths: torch.Tensor,
                        depth_limit: torch.Tensor) -> torch.Tensor:
    """Light absorbed in front of a point (spec 3.9): sum of the weights of nearer samples.

    Args:
        sigma: densities of the ray cast at the point's pixel. [..., K]
        depths: sample depths of that ray. [..., K]
        depth_limit: samples with depth >= this are left out; the caller passes z - eps. [...]

    Returns:
        ``sum_k w_k [depths_k < depth_limit]``. [...]
    """
    _, weights = composite_ref(sigma, sigma.new_zeros(sigma.shape + (0,)))
    in_front = depths < depth_limit.unsqueeze(-1)
    return (weights * in_front.to(weights.dtype)).sum(dim=-1)
