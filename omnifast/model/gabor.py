"""GaborNet (multiplicative filter network), used for the latent codes and for colour/density."""

from __future__ import annotations

import math

import torch
from torch import nn

from omnifast.reference.linear import linear


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
        # ||x - mu||^2 expanded as ||x||^2 + ||mu||^2 - 2 x.mu, as the original computes it
        d2 = (x * x).sum(-1, keepdim=True) + (self.mu * self.mu).sum(-1) - 2 * x @ self.mu.t()
        return torch.sin(self.linear(x)) * torch.exp(-0.5 * d2 * self.gamma)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_size] -> [..., out_size]"""
        z = self.filters[0](x)
        for filt, lin in zip(self.filters[1:], self.linear):
            z = filt(x) * linear(z, lin.weight, lin.bias)
        return linear(z, self.output_linear.weight, self.output_linear.bias)
