"""Tracking with a fitted model: point tracks with occlusion, pseudo-depth, dense
correspondence, the feeders of refinement, and tracker files.

The ray primitives (the ``use_max_loc`` correspondence rule and the occlusion test) live in
:mod:`omnifast.model.rays`; :class:`Tracker` validates what users ask for and runs them in
chunks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from omnifast.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from omnifast.model.omnimotion import OmniMotion
from omnifast.model.rays import Rays, default_points_per_call
from omnifast.queries import validate_queries
from omnifast.runtime import flushes_subnormals

#: tracker files carry this tag among their extra entries
TRACKER_KIND = "omnifast-tracker"


class Tracker:
    """Tracks points through a clip with a fitted :class:`~omnifast.model.OmniMotion`.

    Args:
        model: the fitted networks.
        height, width: frame size in pixels.
        preset: name of the preset the model was fitted with (kept in saved files).
        device: where to run (defaults to the model's device).
        chunk_size: queries processed together; bounds the memory of :meth:`track`.
        info: extra entries kept in saved files (e.g. number of steps, video digest).
        frames: the fitted clip, for the pictures (:func:`omnifast.api.write_results`) and
            refinement; kept in memory only (not in saved files; None after :meth:`load`).
            [T, H, W, C]
        points_per_call: points (ray samples included) per network call; bounds peak memory
            (default :func:`omnifast.model.rays.default_points_per_call`).
    """

    def __init__(self, model: OmniMotion, height: int, width: int, *, preset: str = "",
                 device: torch.device | str | None = None, chunk_size: int = 4096,
                 info: dict | None = None, frames: np.ndarray | None = None,
                 points_per_call: int | None = None) -> None:
        self.model = model.eval()
        self.height, self.width = int(height), int(width)
        self.preset = preset
        self.device = torch.device(device) if device is not None else \
            next(model.parameters()).device
        self.model.to(self.device)
        self.chunk_size = int(chunk_size)
        self.info = dict(info or {})
        if frames is not None:
            frames = np.asarray(frames)
            if frames.ndim != 4 or frames.shape[:3] != (model.num_frames, self.height,
                                                        self.width):
                raise ValueError(f"frames must be [{model.num_frames}, {self.height}, "
                                 f"{self.width}, C] (the fitted clip), got "
                                 f"{list(frames.shape)}")
        self.frames = frames
        self.points_per_call = int(points_per_call or default_points_per_call(self.device))
        self.rays = Rays(self.model, self.height, self.width)

    @property
    def num_frames(self) -> int:
        return self.model.num_frames

    def __repr__(self) -> str:
        return (f"Tracker(num_frames={self.num_frames}, height={self.height}, "
                f"width={self.width}, preset={self.preset!r})")

    # ------------------------------------------------------------------ queries
    def check_queries(self, query_points) -> np.ndarray:
        """Validate queries [N, 3] as (t, y, x) pixels; returns them as float64 numpy.

        See :func:`omnifast.queries.validate_queries` (fractional times are rejected).
        """
        return validate_queries(query_points, self.num_frames)

    @torch.no_grad()
    @flushes_subnormals
    def track(self, query_points, *, chunk_size: int | None = None,
              frames: Sequence[int] | None = None, with_occlusion: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
        """Track query points through every frame.

        Args:
            query_points: (t, y, x) in pixels, t an integer frame index (the TAP-Vid order).
                [N, 3]
            chunk_size: queries processed together (default ``self.chunk_size``).
            frames: target frames (default all ``T``).
            with_occlusion: decide occlusion (one more ray per query and frame); when False
                positions are computed and ``occluded`` is all False.

        Returns:
            ``(tracks [N, T', 2] float32 as (x, y) pixels, occluded [N, T'] bool)``; at the
            query's own frame the track is the query and not occluded.

        Raises:
            ValueError: wrong shape, non-finite values or query times outside the video.
        """
        q = self.check_queries(query_points)
        targets = list(range(self.num_frames)) if frames is None else [int(f) for f in frames]
        if any(f < 0 or f >= self.num_frames for f in targets):
            raise ValueError(f"target frames must lie in 0..{self.num_frames - 1}")
        n, nt = q.shape[0], len(targets)
        tracks = np.zeros((n, nt, 2), np.float32)
        occluded = np.zeros((n, nt), bool)
        chunk = max(1, int(chunk_size or self.chunk_size))
        k = self.model.config.num_samples
        dtype = self.model.param_dtype
        tgt = torch.tensor(targets, device=self.device, dtype=torch.long)
        for start in range(0, n, chunk):
            qc = torch.as_tensor(q[start:start + chunk], device=self.device, dtype=dtype)
            m = qc.shape[0]
            qt = qc[:, 0].round().long()
            px = qc[:, [2, 1]]
            anchors = self.rays.anchors(qt, px)
            group = max(1, self.points_per_call // max(m * k, 1))
            for g0 in range(0, nt, group):
                tg = tgt[g0:g0 + group]
                a = anchors.repeat(tg.shape[0], 1)
                tf = tg.repeat_interleave(m)
                p_out, occ = self.rays.follow(a, tf, with_occlusion=with_occlusion)
                p_out = p_out.reshape(tg.shape[0], m, 2).transpose(0, 1)
                occ = occ.reshape(tg.shape[0], m).transpose(0, 1)
                same = qt[:, None] == tg[None, :]
                p_out = torch.where(same[..., None], px[:, None, :], p_out)
                occ = occ & ~same
                tracks[start:start + m, g0:g0 + tg.shape[0]] = p_out.float().cpu().numpy()
                occluded[start:start + m, g0:g0 + tg.shape[0]] = occ.cpu().numpy()
        return tracks, occluded

    def local_jacobians(self, query_points, *, delta: float = 1.5,
                        chunk_size: int | None = None) -> np.ndarray:
        """Derivative of each track with respect to its query position, by central differences.

        Tracks the queries moved by +-``delta`` pixels in x and in y (four calls of
        :meth:`track` without occlusion, about twice the cost of one with it). Returns
        [N, T, 2, 2] float32: ``[..., :, 0]`` = d(x, y)/dx, ``[..., :, 1]`` = d(x, y)/dy of
        the query.
        """
        q = self.check_queries(query_points)
        moved = []
        for dx, dy in ((delta, 0.0), (-delta, 0.0), (0.0, delta), (0.0, -delta)):
            qq = q.copy()
            qq[:, 2] += dx
            qq[:, 1] += dy
            moved.append(self.track(qq, chunk_size=chunk_size, with_occlusion=False)[0])
        jx = (moved[0] - moved[1]) / (2 * delta)
        jy = (moved[2] - moved[3]) / (2 * delta)
        return np.stack([jx, jy], -1).astype(np.float32)

    def template_weights(self, query_points, tracks=None, jacobians=None, *, radius: int = 2,
                         sigma: float = 0.25, with_occlusion: bool = True,
                         chunk_size: int | None = None) -> np.ndarray:
        """Per target frame, how far each pixel of a query's template moves with the query.

        Every pixel ``o`` of the (2r+1)^2 patch around a query is tracked too; its weight in
        frame t is ``exp(-|track(q + o) - track(q) - J o|^2 / (2 sigma^2))`` (zero where the
        model says that pixel is occluded, with ``with_occlusion``), then the smallest over
        its 3x3 neighbourhood, because a bilinear sample next to a layer boundary mixes in
        the other layer. Near a boundary this keeps the query's own layer and drops the rest.
        Costs (2r+1)^2 :meth:`track` calls for the queries.

        Args:
            query_points: [N, 3] (t, y, x).
            tracks: the queries' own tracks (default: computed). [N, T, 2]
            jacobians: as :meth:`local_jacobians` (default: computed). [N, T, 2, 2]

        Returns:
            [N, T, (2r+1)^2] float32 in [0, 1], pixels row-major (y, then x), the layout of
            :func:`omnifast.refine.refine_tracks`' ``weights``.
        """
        q = self.check_queries(query_points)
        if radius < 0 or not sigma > 0:
            raise ValueError("radius must be >= 0 and sigma > 0")
        n, t_count, side = len(q), self.num_frames, 2 * radius + 1
        if tracks is None:
            tracks = self.track(q, chunk_size=chunk_size, with_occlusion=False)[0]
        if jacobians is None:
            jacobians = self.local_jacobians(q, chunk_size=chunk_size)
        from omnifast.refine import patch_offsets  # noqa: PLC0415

        offs = patch_offsets(radius).double().numpy()  # [P, 2] as (x, y), refine's order
        num_pix = len(offs)
        qq = np.repeat(q, num_pix, 0)
        qq[:, 2] += np.tile(offs[:, 0], n)
        qq[:, 1] += np.tile(offs[:, 1], n)
        moved, occ = self.track(qq, chunk_size=chunk_size, with_occlusion=with_occlusion)
        moved = moved.reshape(n, num_pix, t_count, 2)
        expect = np.asarray(tracks, np.float64)[:, None] + np.einsum(
            "ntab,pb->npta", np.asarray(jacobians, np.float64), offs)
        w = np.exp(-((moved - expect) ** 2).sum(-1) / (2.0 * sigma * sigma))
        if with_occlusion:
            w = w * ~occ.reshape(n, num_pix, t_count)
        wt = torch.from_numpy(w.transpose(0, 2, 1).reshape(n * t_count, 1, side, side)).float()
        wt = -F.max_pool2d(F.pad(-wt, (1, 1, 1, 1), mode="replicate"), 3, 1)
        return wt.reshape(n, t_count, num_pix).numpy()

    @flushes_subnormals
    def track_refined(self, query_points, video, *, chunk_size: int | None = None,
                      boundary_weights: bool = False, config=None, **refine_kw
                      ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`track`, then :func:`omnifast.refine.refine_fitted_tracks` against the video.

        Positions are corrected by template matching from the query frame in every frame;
        occlusion flags are the model's. ``config`` (a :class:`omnifast.refine.RefineConfig`)
        holds the settings; keyword arguments override its fields (``radius``, ``passes``,
        ``window_shift``, ...). ``boundary_weights=True`` turns on the model's template
        weights (and the centred window alone, unless ``window_shift`` is given);
        ``flows``: the clip's frame-to-frame flows if already computed, None: no flow
        candidates. Costs about 3 :meth:`track` calls plus the matching and, with
        ``direct_flow_candidates``, (query frames) x (T-1) optical flows (docs/design.md,
        "Refinement").

        Returns:
            ``(tracks [N, T, 2] float32, occluded [N, T] bool)`` as :meth:`track`.
        """
        import dataclasses  # noqa: PLC0415

        from omnifast.refine import RefineConfig, refine_fitted_tracks  # noqa: PLC0415

        frames = np.asarray(video)
        if frames.ndim != 4 or frames.shape[0] != self.num_frames or \
                frames.shape[1:3] != (self.height, self.width):
            raise ValueError(f"video must be [{self.num_frames}, {self.height}, {self.width}, C] "
                             f"(the fitted clip), got {list(frames.shape)}")
        # ``flows=None`` (an explicit None) turns the flow candidates off
        no_flows = "flows" in refine_kw and refine_kw["flows"] is None
        flows = refine_kw.pop("flows", None)
        if no_flows:
            refine_kw["flow_candidates"] = False
        if boundary_weights:
            refine_kw["boundary_weights"] = True
            refine_kw.setdefault("window_shift", 0)
        config = dataclasses.replace(config or RefineConfig(), **refine_kw)
        q = self.check_queries(query_points)
        tracks, occluded = self.track(q, chunk_size=chunk_size)
        refined = refine_fitted_tracks(self, frames, q, tracks, config=config, flows=flows,
                                       chunk_size=chunk_size)
        return refined, occluded

    def grid_queries(self, frame: int = 0, spacing: int | None = None,
                     num_points: int = 256) -> np.ndarray:
        """A regular grid of queries (t, y, x) on one frame. Returns [N, 3] float32.

        Args:
            frame: query frame.
            spacing: grid step in pixels (default: about ``num_points`` points in all).
        """
        if not 0 <= frame < self.num_frames:
            raise ValueError(f"query frame {frame} is outside the video (frames 0..."
                             f"{self.num_frames - 1})")
        h, w = self.height, self.width
        if spacing is None:
            spacing = max(1, int(round(np.sqrt(h * w / max(num_points, 1)))))
        ys = np.arange(spacing / 2, h, spacing)
        xs = np.arange(spacing / 2, w, spacing)
        yy, xx = np.meshgrid(np.floor(ys), np.floor(xs), indexing="ij")
        t = np.full(yy.size, float(frame))
        return np.stack([t, yy.ravel(), xx.ravel()], -1).astype(np.float32)

    # ------------------------------------------------------------------ dense outputs
    @torch.no_grad()
    def render(self, frames: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rendered colour and pseudo-depth of whole frames, in one pass per frame.

        Returns:
            ``(rgb [F, H, W, 3] float32 in [0, 1], depth [F, H, W] float32)``.
        """
        frames = list(range(self.num_frames)) if frames is None else [int(f) for f in frames]
        px = self.rays.pixel_grid()
        k = self.model.config.num_samples
        chunk = max(1, self.points_per_call // k)
        rgbs, depths = [], []
        for f in frames:
            rgb_f, depth_f = [], []
            for s in range(0, px.shape[0], chunk):
                p = px[s:s + chunk]
                fr = torch.full((p.shape[0],), f, device=self.device, dtype=torch.long)
                _, rgb, depth, _ = self.rays.render(fr, p)
                rgb_f.append(rgb)
                depth_f.append(depth)
            rgbs.append(torch.cat(rgb_f).reshape(self.height, self.width, 3))
            depths.append(torch.cat(depth_f).reshape(self.height, self.width))
        return (torch.stack(rgbs).float().cpu().numpy(),
                torch.stack(depths).float().cpu().numpy())

    def depth_maps(self, frames: Sequence[int] | None = None) -> np.ndarray:
        """Pseudo-depth sum_k w_k d_k of every pixel. Returns [F, H, W] float32."""
        return self.render(frames)[1]

    @torch.no_grad()
    def correspondence(self, i: int, j: int, *, with_occlusion: bool = True, stride: int = 1
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Dense correspondence from frame i to frame j (the predicted optical flow).

        Args:
            i, j: source and target frames.
            with_occlusion: also decide occlusion in frame j (one more ray per pixel).
            stride: only every ``stride``-th pixel in each direction (from pixel 0).

        Returns:
            ``(flow [H', W', 2] float32 as (dx, dy) pixels, occluded [H', W'] bool)`` with
            ``H' = ceil(H / stride)``, ``W' = ceil(W / stride)``.
        """
        for f in (i, j):
            if not 0 <= int(f) < self.num_frames:
                raise ValueError(f"frame {f} is outside the video (frames 0..."
                                 f"{self.num_frames - 1})")
        flow, occ = self.rays.flow(int(i), int(j), with_occlusion=with_occlusion, stride=stride,
                                   points_per_call=self.points_per_call)
        return flow.float().cpu().numpy(), occ.cpu().numpy()

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the tracker (model, frame size, preset) atomically to ``path``."""
        save_checkpoint(self.model, path, kind=TRACKER_KIND, height=self.height,
                        width=self.width, preset=self.preset, info=self.info)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None
             ) -> Tracker:
        """Read a tracker written by :meth:`save` (a folder holding ``tracker.pt`` works too).

        Raises:
            FileNotFoundError: no such file.
            omnifast.CheckpointError: not a tracker file, or a damaged one.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tracker.pt")
        model, extra = load_checkpoint(path, with_extra=True)
        if extra.get("kind") != TRACKER_KIND:
            raise CheckpointError(f"{path} is an omnifast model checkpoint, not a tracker file")
        try:
            h, w = int(extra["height"]), int(extra["width"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path} is a damaged tracker file (no frame size)") from None
        return cls(model, h, w, preset=str(extra.get("preset", "")), device=device or "cpu",
                   info=extra.get("info") or {})


def load_tracker(path: str | os.PathLike, device: torch.device | str | None = None) -> Tracker:
    """Load a tracker saved by :meth:`Tracker.save` (or a fit's output folder)."""
    return Tracker.load(path, device=device)
