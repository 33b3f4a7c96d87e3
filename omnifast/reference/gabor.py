"""Reference GaborNet (multiplicative filter network), the colour/density and latent-code MLP.

Written the way the original computes it (``||x - mu||^2`` expanded, filters through
``nn.Linear``'s product in fp32, the hidden and output linears at the active matmul precision),
so that it is both the oracle for the fused kernels and the baseline they are measured against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from omnifast.reference.linear import linear


class GaborParams(NamedTuple):
    """Weights of a GaborNet with NL hidden linears (NL + 1 filters), D inputs, H hidden units and
    O outputs.

    Attributes:
        filt_w: tuple of NL + 1 [H, D]; filt_b: tuple of [H] (each filter's sine argument)
        mu: tuple of NL + 1 [H, D]; gamma: tuple of [H] (each filter's Gaussian envelope)
        lin_w: tuple of NL [H, H]; lin_b: tuple of [H]
        out_w: [O, H]; out_b: [O]
    """

    filt_w: tuple[torch.Tensor, ...]
    filt_b: tuple[torch.Tensor, ...]
    mu: tuple[torch.Tensor, ...]
    gamma: tuple[torch.Tensor, ...]
    lin_w: tuple[torch.Tensor, ...]
    lin_b: tuple[torch.Tensor, ...]
    out_w: torch.Tensor
    out_b: torch.Tensor


def gabor_filter(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, mu: torch.Tensor,
                 gamma: torch.Tensor) -> torch.Tensor:
    """g(x) = sin(W x + b) * exp(-0.5 * gamma * ||x - mu||^2) per unit. x [..., D] -> [..., H]"""
    # ||x - mu||^2 expanded as ||x||^2 + ||mu||^2 - 2 x.mu, as the original computes it
    d2 = (x * x).sum(-1, keepdim=True) + (mu * mu).sum(-1) - 2 * x @ mu.t()
    return torch.sin(F.linear(x, w, b)) * torch.exp(-0.5 * d2 * gamma)


def gabor_net_ref(x: torch.Tensor, params: GaborParams) -> torch.Tensor:
    """z_0 = g_0(x); z_k = g_k(x) * linear_k(z_{k-1}); out = output_linear(z_NL).

    Args:
        x: inputs. [..., D]
        params: the network's weights.

    Returns:
        [..., O]
    """
    p = params
    z = gabor_filter(x, p.filt_w[0], p.filt_b[0], p.mu[0], p.gamma[0])
    for k in range(len(p.lin_w)):
        g = gabor_filter(x, p.filt_w[k + 1], p.filt_b[k + 1], p.mu[k + 1], p.gamma[k + 1])
        z = g * linear(z, p.lin_w[k], p.lin_b[k])
    return linear(z, p.out_w, p.out_b)
