"""The OmniMotion model: latent codes, the invertible mapping and the canonical colour/density."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from omnifast import ops
from omnifast.config import ModelConfig, get_preset
from omnifast.model.gabor import GaborNet
from omnifast.model.geometry import contract
from omnifast.model.nvp import InvertibleMap

#: the original seeds construction with this value (torch.manual_seed(1234) at import time)
DEFAULT_SEED = 1234
#: softplus(out - density_bias) gives the density; the original's bias (ModelConfig.density_bias)
DENSITY_BIAS = 1.0


class OmniMotion(nn.Module):
    """OmniMotion's three networks, with the original's state-dict names.

    * ``feature_mlp``: GaborNet 1 -> code_dim on t_i = (i + 1) / num_frames, one code per frame;
    * ``deform_mlp``: :class:`~omnifast.model.nvp.InvertibleMap`, local <-> canonical;
    * ``color_mlp``: GaborNet 3 -> 4 on contracted canonical points, giving colour and density.

    Args:
        config: network sizes.
        num_frames: N, which sets the time-code scale.
        seed: construction seed (``None`` uses the global random stream as it is). The global
            random state is left untouched either way.
        coords: the coordinate each coupling layer transforms; drawn from the seed if ``None``.
    """

    def __init__(self, config: ModelConfig, num_frames: int, seed: int | None = DEFAULT_SEED,
                 coords: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.config = config
        self.num_frames = int(num_frames)
        ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with ctx:
            if seed is not None:
                torch.manual_seed(seed)
            self.feature_mlp = GaborNet(1, config.code_hidden, config.code_dim,
                                        n_layers=config.code_layers,
                                        input_scale=config.gabor_input_scale,
                                        alpha=config.code_alpha)
            self.deform_mlp = InvertibleMap(config, coords)
            self.color_mlp = GaborNet(3, config.color_hidden, 4, n_layers=config.color_layers,
                                      input_scale=config.gabor_input_scale,
                                      alpha=config.color_alpha)

    @classmethod
    def from_preset(cls, name: str, num_frames: int, seed: int | None = DEFAULT_SEED
                    ) -> OmniMotion:
        """Build a model from a named preset (``"omnimotion"`` or ``"cpu"``)."""
        return cls(get_preset(name).model, num_frames, seed=seed)

    # ----------------------------------------------------------------------------- codes
    def time_codes(self, frame_ids: torch.Tensor) -> torch.Tensor:
        """t_i = (i + 1) / N. [F] -> [F]"""
        return (frame_ids.to(self.param_dtype) + 1.0) / self.num_frames

    def frame_codes(self, frame_ids: torch.Tensor) -> torch.Tensor:
        """Latent codes psi_i. frame_ids [F] -> [F, code_dim]"""
        return self.feature_mlp(self.time_codes(frame_ids)[:, None])

    @property
    def param_dtype(self) -> torch.dtype:
        return self.output_param().dtype

    def output_param(self) -> torch.Tensor:
        return self.color_mlp.output_linear.weight

    # ----------------------------------------------------------------------------- mapping
    def map_points(self, x: torch.Tensor, frame_idx: torch.Tensor, frame_ids: torch.Tensor,
                   inverse: bool = False) -> torch.Tensor:
        """Map points of several frames at once.

        Args:
            x: points. [M, 3]
            frame_idx: index into ``frame_ids`` of each point. [M] int64
            frame_ids: the frames involved. [F] int64
            inverse: canonical -> local.

        Returns:
            [M, 3]
        """
        psi = self.frame_codes(frame_ids)
        return self.deform_mlp(x, frame_idx, psi, self.time_codes(frame_ids), inverse=inverse)

    def _map_per_frame(self, x: torch.Tensor, frame_ids: torch.Tensor, inverse: bool
                       ) -> torch.Tensor:
        frame_ids = torch.as_tensor(frame_ids, device=x.device).long().reshape(-1)
        if x.shape[-1] != 3 or x.dim() < 2 or x.shape[0] != frame_ids.shape[0]:
            raise ValueError(f"points must be [F, ..., 3] with F = len(frame_ids) = "
                             f"{frame_ids.shape[0]}, got {tuple(x.shape)}")
        per_frame = x[0].numel() // 3 if x.shape[0] else 0
        flat = x.reshape(-1, 3)
        nf = frame_ids.shape[0]
        idx = torch.arange(nf, device=x.device)[:, None].expand(nf, per_frame).reshape(-1)
        return self.map_points(flat, idx, frame_ids, inverse=inverse).reshape(x.shape)

    def to_canonical(self, x: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        """T_i: local points of frame ``frame_ids[f]`` -> canonical. x [F, P, K, 3] -> same."""
        return self._map_per_frame(x, frame_ids, inverse=False)

    def from_canonical(self, u: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        """T_i^-1: canonical points -> local points of frame ``frame_ids[f]``. [F, P, K, 3]"""
        return self._map_per_frame(u, frame_ids, inverse=True)

    # ----------------------------------------------------------------------------- colour
    def color_density(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour and density at canonical points (contracted first, as the original does).

        Args:
            u: canonical points. [..., 3]

        Returns:
            ``(rgb [..., 3] in (0, 1), sigma [...] >= 0)``.
        """
        out = self.color_mlp(contract(u))
        return torch.sigmoid(out[..., :3]), F.softplus(out[..., 3] - self.config.density_bias)

    def render(self, u: torch.Tensor, values: torch.Tensor | None = None,
               num_masked_near: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Composite colour (and optional extra values) along rays of canonical points.

        Args:
            u: canonical samples of each ray. [..., K, 3]
            values: extra per-sample values to composite with the colour. [..., K, C] or None

        Returns:
            ``(rgb [..., 3], extra [..., C] (empty if ``values`` is None), weights [..., K])``.
        """
        rgb, sigma = self.color_density(u)
        vals = rgb if values is None else torch.cat([rgb, values], dim=-1)
        out, weights = ops.composite(sigma, vals, num_masked_near=num_masked_near)
        return out[..., :3], out[..., 3:], weights

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}"
