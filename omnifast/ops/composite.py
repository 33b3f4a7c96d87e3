"""``composite``: transmittance-weighted compositing along rays, dispatched to a backend."""

from __future__ import annotations

import torch

from omnifast.dispatch import register, resolve
from omnifast.reference.composite import composite_ref

register("composite", "torch")(composite_ref)


def composite(sigma: torch.Tensor, values: torch.Tensor,
              num_masked_near: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite per-sample values along rays with OmniMotion's transmittance.

    alpha = 1 - exp(-sigma), T = exclusive cumprod(1 - alpha + 1e-10), weights = alpha * T,
    out = sum_k weights_k * values_k.

    Args:
        sigma: densities. [..., K]
        values: values to composite, any number of channels. [..., K, C]
        num_masked_near: alpha of the first this-many samples is forced to 0 (spec 3.2).

    Returns:
        ``(out [..., C], weights [..., K])``.
    """
    if not isinstance(sigma, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError("composite expects tensors for sigma and values")
    if values.dim() != sigma.dim() + 1 or values.shape[:-1] != sigma.shape:
        raise ValueError(
            "composite: values must be [..., K, C] with sigma [..., K]; got sigma "
            f"{tuple(sigma.shape)} and values {tuple(values.shape)}"
        )
    if sigma.device != values.device:
        raise ValueError(f"composite: sigma is on {sigma.device}, values on {values.device}")
    _, fn = resolve("composite", sigma.device, sigma.dtype)
    return fn(sigma, values, num_masked_near)
