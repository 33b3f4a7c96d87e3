"""The invertible mapping ("deform_mlp"): per-frame bijections between local and canonical space.

Module and parameter names mirror the original's state dict (spec 3.10), so that original
checkpoints load with ``load_state_dict``. The computation itself goes through
:func:`omnifast.ops.coupling_stack` and :func:`omnifast.ops.affine`, i.e. through the backend
dispatch.
"""

from __future__ import annotations

import torch
from torch import nn

from omnifast import ops
from omnifast.config import ModelConfig
from omnifast.reference.bijection import LEAKY_SLOPE, CouplingParams


class _MLP(nn.Module):
    """Linears with LeakyReLU between them, held in ``self.mlp`` as in the original."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        self.mlp = nn.Sequential(*layers)

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.mlp if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class _Projection(nn.Module):
    """LeakyReLU(Linear(E -> P)) applied to the positional encoding (``proj.0``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # The original's parent class builds and discards these two layers; building them keeps
        # a seeded construction on the same random stream.
        nn.Linear(2, 512)
        nn.Linear(512, 256)
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LeakyReLU(LEAKY_SLOPE))


class CouplingLayer(nn.Module):
    """One single-coordinate affine coupling layer; ``mask`` has 0 at the coordinate it changes."""

    def __init__(self, coord: int, code_dim: int, proj_dim: int, hidden: tuple[int, ...],
                 pe_freq: int) -> None:
        super().__init__()
        mask = torch.ones(1, 1, 1, 3)
        mask[..., coord] = 0
        self.register_buffer("mask", mask)
        self.coord = coord
        self.map_st = nn.Sequential(_MLP([code_dim + proj_dim, *hidden, 2]))
        self.projection = _Projection(2 + 4 * pe_freq, proj_dim)

    def set_coord(self, coord: int) -> None:
        with torch.no_grad():
            self.mask.fill_(1.0)
            self.mask[..., coord] = 0.0
        self.coord = coord

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "mask"
        if key in state_dict:
            zeros = (state_dict[key].reshape(-1) == 0).nonzero().flatten().tolist()
            if len(zeros) != 1:
                raise ValueError(f"{key} must have exactly one zero, got {state_dict[key]}")
            self.coord = zeros[0]


class AffineMLP(nn.Module):
    """The affine pre-layer's MLP: ``hidden.k.0`` (Linear, ReLU) pairs and a bare last Linear."""

    def __init__(self, in_dim: int, hidden: int, n_layers: int, out_dim: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_layers - 1):
            layers.append(nn.Sequential(nn.Linear(in_dim if i == 0 else hidden, hidden),
                                        nn.ReLU()))
        layers.append(nn.Linear(hidden, out_dim))
        self.hidden = nn.ModuleList(layers)

    def linears(self) -> list[nn.Linear]:
        return [m[0] if isinstance(m, nn.Sequential) else m for m in self.hidden]


class InvertibleMap(nn.Module):
    """Affine pre-layer (optional) followed by ``num_coupling`` affine coupling layers.

    The layers transform the coordinates ``coords`` in order (the original draws two random
    permutations of (0, 1, 2) at construction; with its seed they are y, x, z, y, x, z).
    """

    def __init__(self, cfg: ModelConfig, coords: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if coords is None:
            coords = tuple(torch.cat([torch.randperm(3) for _ in range(2)]).tolist())
            coords = (coords * cfg.num_coupling)[: cfg.num_coupling]
        if len(coords) != cfg.num_coupling or any(c not in (0, 1, 2) for c in coords):
            raise ValueError(f"coords must be {cfg.num_coupling} values in (0, 1, 2), got {coords}")
        self.pe_freq = cfg.pe_freq
        self.layers1 = nn.ModuleList([
            CouplingLayer(c, cfg.code_dim, cfg.proj_dim, cfg.coupling_hidden, cfg.pe_freq)
            for c in coords
        ])
        self.code_projectors = nn.ModuleList([
            _MLP([cfg.code_dim, cfg.code_dim, cfg.code_dim]) for _ in range(cfg.num_coupling)
        ])
        self.affine_mlp = (AffineMLP(2 * cfg.pe_freq + 2, cfg.affine_hidden, cfg.affine_layers)
                           if cfg.use_affine else None)

    @property
    def coords(self) -> tuple[int, ...]:
        return tuple(layer.coord for layer in self.layers1)

    def set_coords(self, coords: tuple[int, ...]) -> None:
        if len(coords) != len(self.layers1):
            raise ValueError(f"expected {len(self.layers1)} coordinates, got {coords}")
        for layer, c in zip(self.layers1, coords):
            layer.set_coord(int(c))

    def coupling_params(self) -> CouplingParams:
        """The coupling layers' weights stacked along a layer dimension (differentiable)."""
        per_layer = [layer.map_st[0].linears() for layer in self.layers1]
        proj = [layer.projection.proj[0] for layer in self.layers1]
        n_hidden = len(per_layer[0]) - 2
        return CouplingParams(
            proj_w=torch.stack([p.weight for p in proj]),
            proj_b=torch.stack([p.bias for p in proj]),
            w_in=torch.stack([ls[0].weight for ls in per_layer]),
            b_in=torch.stack([ls[0].bias for ls in per_layer]),
            w_hidden=tuple(torch.stack([ls[1 + k].weight for ls in per_layer])
                           for k in range(n_hidden)),
            b_hidden=tuple(torch.stack([ls[1 + k].bias for ls in per_layer])
                           for k in range(n_hidden)),
            w_out=torch.stack([ls[-1].weight for ls in per_layer]),
            b_out=torch.stack([ls[-1].bias for ls in per_layer]),
        )

    def layer_codes(self, psi: torch.Tensor) -> torch.Tensor:
        """Per-layer projected codes c_l = P_l(psi). psi [F, C] -> [F, L, C]"""
        return torch.stack([proj(psi) for proj in self.code_projectors], dim=1)

    def forward(self, x: torch.Tensor, frame_idx: torch.Tensor, psi: torch.Tensor,
                t: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Map points between local and canonical space.

        Args:
            x: points. [M, 3]
            frame_idx: row of ``psi`` / ``t`` of each point. [M] int64
            psi: latent codes of the frames involved. [F, C]
            t: time codes of the same frames. [F]
            inverse: canonical -> local instead of local -> canonical.

        Returns:
            [M, 3]
        """
        codes = self.layer_codes(psi)
        params = self.coupling_params()
        if self.affine_mlp is not None and not inverse:
            x = self._affine(x, t[frame_idx], inverse=False)
        x = ops.coupling_stack(x, frame_idx, codes, params, self.coords, self.pe_freq,
                               inverse=inverse)
        if self.affine_mlp is not None and inverse:
            x = self._affine(x, t[frame_idx], inverse=True)
        return x

    def _affine(self, x: torch.Tensor, t: torch.Tensor, inverse: bool) -> torch.Tensor:
        lins = self.affine_mlp.linears()
        return ops.affine(x, t, [m.weight for m in lins], [m.bias for m in lins], self.pe_freq,
                          inverse=inverse)
