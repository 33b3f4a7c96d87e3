"""Deterministic rays through a fitted :class:`~omnifast.model.OmniMotion`: the primitives that
tracking, dense correspondence and the trainer's error cache are built from.

The correspondence rule is the original's ``use_max_loc`` (spec 3.8-3.9, 5.1): a query ray is
mapped to the canonical volume once and its sample of largest compositing weight is kept (its
*anchor*); for each target frame only that one canonical point is mapped back (one T_j^-1 per
query and frame instead of K, spec 6.5). Occlusion is decided by a deterministic ray at the
predicted pixel of the target frame: the point is occluded when the light absorbed in front of
it (samples with depth < z_j - eps, eps = EPS_FACTOR (max - min) / K) exceeds
OCCLUSION_THRESHOLD.
"""

from __future__ import annotations

import torch

from omnifast import ops
from omnifast.model.geometry import project, sample_depths, unproject
from omnifast.model.omnimotion import OmniMotion
from omnifast.pixels import in_frame

#: a point is occluded when the light absorbed in front of it exceeds this (spec 3.9)
OCCLUSION_THRESHOLD = 0.99
#: occlusion margin: eps = EPS_FACTOR * (max_depth - min_depth) / K (divided by K, as the original)
EPS_FACTOR = 1.1


def default_points_per_call(device: torch.device) -> int:
    """Points (samples included) per network call on ``device``: bounds peak memory. Small
    chunks keep the colour net's [points, width] intermediates in cache on a CPU."""
    return 1 << (13 if torch.device(device).type == "cpu" else 18)


class Rays:
    """Deterministic rays (``K = config.num_samples`` samples from ``min_depth`` to
    ``max_depth``) of a model whose frames are ``height`` x ``width`` pixels.

    Pixels are (x, y) in the model's parameter dtype, frames int64 indices, all on the model's
    device. Nothing here switches the model's mode or autograd: callers run it under
    ``torch.no_grad()`` for inference.

    Args:
        model: the networks.
        height, width: frame size in pixels.
    """

    def __init__(self, model: OmniMotion, height: int, width: int) -> None:
        self.model = model
        self.height, self.width = int(height), int(width)

    @property
    def device(self) -> torch.device:
        return self.model.output_param().device

    def depths(self) -> torch.Tensor:
        """The sample depths of every ray. [K]"""
        c = self.model.config
        return sample_depths((), c.num_samples, c.min_depth, c.max_depth, device=self.device,
                             dtype=self.model.param_dtype)

    def map(self, x: torch.Tensor, frames: torch.Tensor, inverse: bool) -> torch.Tensor:
        """Points of frames through T (local -> canonical), or to frames through T^-1 with
        ``inverse``. x [M, 3], frames [M] -> [M, 3]"""
        frame_ids, idx = torch.unique(frames, return_inverse=True)
        return self.model.map_points(x, idx, frame_ids, inverse=inverse)

    def _canonical_samples(self, frames: torch.Tensor, px: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.depths()
        k = d.shape[0]
        x = unproject(px, d, self.height, self.width)  # [M, K, 3]
        u = self.map(x.reshape(-1, 3), frames.repeat_interleave(k), inverse=False)
        return x, u.reshape(-1, k, 3)

    def render(self, frames: torch.Tensor, px: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Composite the rays at pixels ``px`` [M, 2] of ``frames`` [M].

        Returns:
            ``(canonical samples [M, K, 3], rgb [M, 3], pseudo-depth sum_k w_k d_k [M],
            weights [M, K])``.
        """
        x, u = self._canonical_samples(frames, px)
        rgb, extra, w = self.model.render(u, values=x[..., 2:3])
        return u, rgb, extra[..., 0], w

    def density(self, frames: torch.Tensor, px: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Canonical samples [M, K, 3] and their densities [M, K] of the rays at pixels
        ``px`` [M, 2] of ``frames`` [M]."""
        _, u = self._canonical_samples(frames, px)
        return u, self.model.color_density(u)[1]

    def anchors(self, frames: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
        """The canonical sample of largest compositing weight on each ray (the first on ties).
        frames [M], px [M, 2] -> [M, 3]"""
        u, sigma = self.density(frames, px)
        best = ops.composite_argmax(sigma)
        return u[torch.arange(u.shape[0], device=u.device), best]

    def occluded(self, frames: torch.Tensor, px: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Whether the light absorbed in front of depth ``z`` [M] on the ray at ``px`` [M, 2]
        of ``frames`` [M] exceeds :data:`OCCLUSION_THRESHOLD` (samples count as in front when
        their depth < z - eps). -> [M] bool"""
        c = self.model.config
        d = self.depths()
        _, sigma = self.density(frames, px)
        eps = EPS_FACTOR * (c.max_depth - c.min_depth) / c.num_samples
        limit = (z - eps).to(sigma.dtype)
        score = ops.occlusion_score(sigma, d.expand_as(sigma).contiguous(), limit)
        return score > OCCLUSION_THRESHOLD

    def follow(self, anchors: torch.Tensor, targets: torch.Tensor, with_occlusion: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Map canonical anchors [M, 3] into target frames [M].

        Returns:
            ``(pixels (x, y) [M, 2], occluded [M] bool)``; without ``with_occlusion`` all
            False. A point projected outside the frame counts as occluded.
        """
        y = self.map(anchors, targets, inverse=True)
        px, z = project(y, self.height, self.width)
        if not with_occlusion:
            return px, torch.zeros_like(z, dtype=torch.bool)
        # Deliberate difference from the original (which decides occlusion from the density
        # alone): a point mapped outside the frame is not visible, as TAP-Vid counts it.
        outside = ~in_frame(px[:, 0], px[:, 1], self.height, self.width)
        return px, self.occluded(targets, px, z) | outside

    def pixel_grid(self, stride: int = 1) -> torch.Tensor:
        """Every ``stride``-th pixel (x, y) in each direction from pixel 0, row-major.
        -> [ceil(H / stride) * ceil(W / stride), 2]"""
        ys, xs = torch.meshgrid(torch.arange(0, self.height, stride),
                                torch.arange(0, self.width, stride), indexing="ij")
        return torch.stack([xs, ys], -1).reshape(-1, 2).to(self.device, self.model.param_dtype)

    def flow(self, i: int, j: int, *, with_occlusion: bool = True, stride: int = 1,
             points_per_call: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense correspondence from frame ``i`` to frame ``j`` (frames are not checked).

        Args:
            with_occlusion: also decide occlusion in frame j (one more ray per pixel).
            stride: only every ``stride``-th pixel in each direction (from pixel 0).
            points_per_call: points per network call (default
                :func:`default_points_per_call`).

        Returns:
            ``(flow [H', W', 2] as (dx, dy) pixels, occluded [H', W'] bool)`` with
            ``H' = ceil(H / stride)``, ``W' = ceil(W / stride)``.
        """
        stride = max(1, int(stride))
        px = self.pixel_grid(stride)
        hs, ws = -(-self.height // stride), -(-self.width // stride)
        per_call = points_per_call or default_points_per_call(self.device)
        chunk = max(1, per_call // self.model.config.num_samples)
        flows, occs = [], []
        for s in range(0, px.shape[0], chunk):
            p = px[s:s + chunk]
            src = torch.full((p.shape[0],), int(i), device=self.device, dtype=torch.long)
            dst = torch.full_like(src, int(j))
            p_j, occ = self.follow(self.anchors(src, p), dst, with_occlusion)
            flows.append(p_j - p)
            occs.append(occ)
        return torch.cat(flows).reshape(hs, ws, 2), torch.cat(occs).reshape(hs, ws)
