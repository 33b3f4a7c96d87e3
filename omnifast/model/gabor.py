"""GaborNet (multiplicative filter network), used for the latent codes and for colour/density.

The modules hold the weights under the original's names; the computation goes through
:func:`omnifast.ops.gabor_net`, i.e. through the backend dispatch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from omnifast import ops
from omnifast.reference.gabor import GaborParams, gabor_filter


class GaborLayer(nn.Module):
    """g(x) = sin(W x + b) * exp(-0.5 * gamma * ||x - mu||^2), per hidden unit.

    Parameter names and creation order follow the original (``mu``, ``gamma``, ``linear``), so
    that a seeded construction consumes the random stream in the same order.
    """

    def __init__(self, in_features: int, out_features: int, weight_scale: float, alpha: float,
                 beta: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.mu = nn.Parameter(2 * torch.rand(out_features, in_features) - 1)
        self.gamma = nn.Parameter(
            torch.distributions.Gamma(alpha, beta).sample((out_features,))
        )
        with torch.no_grad():
            self.linear.weight.mul_(weight_scale * torch.sqrt(self.gamma[:, None]))
            self.linear.bias.uniform_(-math.pi, math.pi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d] -> [..., out]"""
        return gabor_filter(x, self.linear.weight, self.linear.bias, self.mu, self.gamma)


class GaborNet(nn.Module):
    """z_0 = g_0(x); z_k = g_k(x) * linear_k(z_{k-1}); out = output_linear(z_L)."""

    def __init__(self, in_size: int, hidden_size: int, out_size: int, n_layers: int,
                 input_scale: float = 256.0, weight_scale: float = 1.0, alpha: float = 6.0,
                 beta: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.ModuleList([nn.Linear(hidden_size, hidden_size)
                                     for _ in range(n_layers)])
        self.output_linear = nn.Linear(hidden_size, out_size)
        bound = math.sqrt(weight_scale / hidden_size)
        with torch.no_grad():
            for lin in self.linear:
                lin.weight.uniform_(-bound, bound)
        self.filters = nn.ModuleList([
            GaborLayer(in_size, hidden_size, input_scale / math.sqrt(n_layers + 1),
                       alpha / (n_layers + 1), beta)
            for _ in range(n_layers + 1)
        ])

    def params(self) -> GaborParams:
        """The weights in the layout of :class:`omnifast.reference.GaborParams`."""
        f = self.filters
        return GaborParams(
            filt_w=tuple(m.linear.weight for m in f), filt_b=tuple(m.linear.bias for m in f),
            mu=tuple(m.mu for m in f), gamma=tuple(m.gamma for m in f),
            lin_w=tuple(m.weight for m in self.linear), lin_b=tuple(m.bias for m in self.linear),
            out_w=self.output_linear.weight, out_b=self.output_linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_size] -> [..., out_size], through :func:`omnifast.ops.gabor_net`."""
        return ops.gabor_net(x, self.params())
