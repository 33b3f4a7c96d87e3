"""Reference transmittance-weighted compositing (OmniMotion's ray rendering, spec 3.7)."""

from __future__ import annotations

import torch

#: OmniMotion's transmittance factor is ``1 - alpha + TRANSMITTANCE_EPS``.
TRANSMITTANCE_EPS = 1e-10


def composite_ref(sigma: torch.Tensor, values: torch.Tensor,
                  num_masked_near: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite per-sample values along rays.

    alpha_k = 1 - exp(-sigma_k); T_0 = 1, T_k = prod_{j<k} (1 - alpha_j + 1e-10);
    w_k = alpha_k * T_k; out = sum_k w_k * values_k. No normalisation, no background.

    Args:
        sigma: densities, non-negative. [..., K]
        values: per-sample values of any number of channels. [..., K, C]
        num_masked_near: alpha of the first ``num_masked_near`` samples is set to 0 (the
            original's ``mask_near`` trick, spec 3.2).

    Returns:
        ``(out [..., C], weights [..., K])``.
    """
    if values.shape[:-1] != sigma.shape:
        raise ValueError(f"values must be [..., K, C] matching sigma [..., K]; got sigma "
                         f"{tuple(sigma.shape)} and values {tuple(values.shape)}")
    alpha = 1.0 - torch.exp(-sigma)
    if num_masked_near > 0:
        keep = torch.ones(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device)
        keep[:num_masked_near] = 0
        alpha = alpha * keep
    trans = torch.cumprod(1.0 - alpha + TRANSMITTANCE_EPS, dim=-1)
    trans = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
    weights = alpha * trans
    out = (weights.unsqueeze(-1) * values).sum(dim=-2)
    return out, weights
