"""Procedurally rendered tracking clips with exact ground truth.

A clip is a stack of planar layers, back to front: a large textured background under a global
2-D motion (translation plus a small rotation), then several textured foreground shapes
(ellipses, rounded rectangles, wobbly blobs) that move along curved (Lissajous) paths with a
small rotation and scale change. Each layer k carries a similarity transform per frame t,

    x = c_k(t) + s_k(t) R(theta_k(t)) u,

from its own texture coordinates u to image pixels x (pixel centres at integer coordinates).
Rendering is exact: every output pixel is mapped back through each layer's inverse transform,
tested against the layer's analytic shape, and coloured by bilinear lookup in the front-most
covering layer's texture. So a point u of layer k is *exactly* at c_k(t) + s_k(t) R u in
frame t, which gives the true track of any query: find the front-most layer covering the
query pixel in the query frame, map it to u, then forward to every frame. The point is
occluded where a nearer layer covers it or where it lies outside the frame (beyond its outer
edges: :func:`omnifast.pixels.in_frame`, the rule omnifast and the baselines are scored by).

Difficulty levels:

* ``easy``: slow global motion, 1-2 slow layers kept apart (little occlusion).
* ``medium``: 3 layers on crossing paths (occlusions), moderate speed and rotation.
* ``hard``: 4 faster layers, paths leaving and re-entering the frame, longer occlusions.

Everything is deterministic per (difficulty, size, frames, seed). A clip's layout is drawn
again (from the same seeded stream) until its measured occlusion statistics fall in the
difficulty's range, so that each level really has the property it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from omnifast.pixels import bilinear, in_frame
from omnifast.queries import validate_queries

DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")


@dataclass(frozen=True)
class _Level:
    num_layers: tuple[int, int]  # inclusive range
    bg_speed: float  # px / frame at the 96-pixel reference size
    bg_rot_deg: float  # rotation amplitude of the background
    layer_speed: tuple[float, float]  # peak px / frame at the reference size
    radius: tuple[float, float]  # layer radius as a fraction of min(H, W)
    rot_deg: float  # rotation amplitude of a layer
    scale_amp: float  # relative scale amplitude of a layer
    layout: str  # "apart", "crossing", "exiting"
    occ_range: tuple[float, float]  # accepted fraction of occluded (point, frame) entries
    need_exit: bool = False  # some foreground point must leave the frame


_LEVELS: dict[str, _Level] = {
    "easy": _Level((1, 2), 0.35, 0.5, (0.4, 0.7), (0.17, 0.22), 5.0, 0.03, "apart",
                   (0.0, 0.06)),
    "medium": _Level((3, 3), 0.7, 1.5, (0.9, 1.5), (0.17, 0.23), 15.0, 0.08, "crossing",
                     (0.06, 0.30)),
    "hard": _Level((4, 4), 1.2, 2.5, (1.8, 2.8), (0.16, 0.22), 30.0, 0.12, "exiting",
                   (0.12, 0.45), need_exit=True),
}


@dataclass
class _Layer:
    """One planar layer: texture, analytic shape and per-frame similarity transform."""

    texture: np.ndarray  # [Ht, Wt, 3] float32, texel (i, j) <-> u = (j - ox, i - oy)
    origin: tuple[float, float]  # (ox, oy)
    centers: np.ndarray  # [T, 2] (x, y)
    angles: np.ndarray  # [T] radians
    scales: np.ndarray  # [T]
    background: bool = False
    axes: tuple[float, float] = (1.0, 1.0)  # (a, b) half-axes in texture units
    power: float = 2.0  # superellipse exponent (2 = ellipse)
    wobble: tuple[float, int, float] = (0.0, 0, 0.0)  # (amplitude, lobes, phase)

    def to_local(self, t: np.ndarray | int, x: np.ndarray, y: np.ndarray):
        """Inverse transform of image points (x, y) in frame(s) t to texture coordinates u."""
        c, a, s = self.centers[t], self.angles[t], self.scales[t]
        dx, dy = x - c[..., 0], y - c[..., 1]
        cos, sin = np.cos(a), np.sin(a)
        return (cos * dx + sin * dy) / s, (-sin * dx + cos * dy) / s

    def to_image(self, t: np.ndarray | int, ux: np.ndarray, uy: np.ndarray):
        """Forward transform of texture coordinates u to image points in frame(s) t."""
        c, a, s = self.centers[t], self.angles[t], self.scales[t]
        cos, sin = np.cos(a), np.sin(a)
        return c[..., 0] + s * (cos * ux - sin * uy), c[..., 1] + s * (sin * ux + cos * uy)

    def inside(self, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        """Analytic shape test in texture coordinates."""
        if self.background:
            return np.ones(np.broadcast(ux, uy).shape, dtype=bool)
        a, b = self.axes
        p = self.power
        rho = (np.abs(ux / a) ** p + np.abs(uy / b) ** p) ** (1.0 / p)
        amp, lobes, phase = self.wobble
        if amp:
            rho = rho / (1.0 + amp * np.sin(lobes * np.arctan2(uy, ux) + phase))
        return rho < 1.0

    def sample(self, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        """Bilinear texture lookup at texture coordinates u. [...] -> [..., 3] float32"""
        return bilinear(self.texture, ux + self.origin[0], uy + self.origin[1], border="clamp",
                        dtype=np.float32)


def _noise_texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray,
                   contrast: float) -> np.ndarray:
    """Smooth multi-scale coloured noise with enough fine detail for optical flow."""

    def band(sigma: float) -> np.ndarray:
        n = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
        return n / max(float(n.std()), 1e-6)

    grey = 0.45 * band(1.0) + 0.35 * band(2.5) + 0.25 * band(6.0) + 0.2 * band(14.0)
    colour = np.stack([band(5.0) for _ in range(3)], axis=-1)
    img = base[None, None, :] + contrast * (grey[..., None] + 0.5 * colour)
    return np.clip(img, 0.0, 255.0).astype(np.float32)


def _hues(rng: np.random.Generator, n: int) -> np.ndarray:
    """n well-separated saturated base colours (RGB, 0..255)."""
    hue = (rng.uniform(0, 180) + np.arange(n) * 180.0 / n) % 180
    hsv = np.stack([hue, np.full(n, 170.0), rng.uniform(150, 215, n)], axis=-1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]
    return rgb.astype(np.float32)


def _build_layers(rng: np.random.Generator, level: _Level, t_count: int, height: int,
                  width: int) -> list[_Layer]:
    ref = min(height, width)
    unit = ref / 96.0
    t = np.arange(t_count, dtype=np.float64)
    n_fg = int(rng.integers(level.num_layers[0], level.num_layers[1] + 1))
    colours = _hues(rng, n_fg + 1)

    # background: global drift plus a gentle sway and a small rotation
    direction = rng.uniform(0, 2 * np.pi)
    sway_w = 2 * np.pi / rng.uniform(20, 40)
    sway = 0.3 * level.bg_speed * unit / sway_w
    drift = np.stack([
        level.bg_speed * unit * t * np.cos(direction) + sway * np.sin(sway_w * t),
        level.bg_speed * unit * t * np.sin(direction) + sway * np.cos(sway_w * t + 1.0),
    ], axis=-1)
    bg_angles = np.deg2rad(level.bg_rot_deg) * np.sin(2 * np.pi * t / rng.uniform(30, 50)
                                                       + rng.uniform(0, 2 * np.pi))
    half_diag = 0.5 * np.hypot(height, width)
    reach = int(np.ceil(half_diag + np.abs(drift).max() + 4))
    bg_tex = _noise_texture(rng, 2 * reach + 1, 2 * reach + 1, colours[0] * 0.6 + 40, 38.0)
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    layers = [_Layer(bg_tex, (float(reach), float(reach)), centre + drift, bg_angles,
                     np.ones(t_count), background=True)]

    for k in range(n_fg):
        radius = rng.uniform(*level.radius) * ref
        aspect = rng.uniform(0.65, 1.0)
        a, b = (radius, radius * aspect) if rng.random() < 0.5 else (radius * aspect, radius)
        kind = int(rng.integers(0, 3))
        power = (2.0, 4.0, 2.0)[kind]
        wobble = (rng.uniform(0.1, 0.2), int(rng.integers(3, 6)),
                  rng.uniform(0, 2 * np.pi)) if kind == 2 else (0.0, 0, 0.0)
        # curved path: a Lissajous figure with a peak speed drawn from the level's range
        speed = rng.uniform(*level.layer_speed) * unit
        wx, wy = 2 * np.pi / rng.uniform(22, 40), 2 * np.pi / rng.uniform(22, 40)
        amp_x, amp_y = speed / wx, 0.7 * speed / wy
        px, py = rng.uniform(0, 2 * np.pi, 2)
        if level.layout == "apart":
            slot = (k + 0.5) / n_fg
            c0 = np.array([slot * width, rng.uniform(0.35, 0.65) * height])
        elif level.layout == "crossing":
            c0 = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height])
        else:  # exiting: half the layers start near a frame edge and swing out and back
            if k % 2 == 0:
                side = rng.choice([-1.0, 1.0])
                c0 = np.array([(0.5 + side * 0.5) * (width - 1) - side * 0.1 * width,
                               rng.uniform(0.3, 0.7) * height])
                amp_x = max(amp_x, 1.6 * radius)
                wx = min(wx, speed / amp_x * 1.6)
            else:
                c0 = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height])
        path = np.stack([c0[0] + amp_x * np.sin(wx * t + px),
                         c0[1] + amp_y * np.sin(wy * t + py)], axis=-1)
        path -= path.mean(axis=0) - c0  # centre the swing on c0
        angles = rng.uniform(-0.3, 0.3) + np.deg2rad(level.rot_deg) * np.sin(
            2 * np.pi * t / rng.uniform(24, 48) + rng.uniform(0, 2 * np.pi))
        scales = 1.0 + level.scale_amp * np.sin(2 * np.pi * t / rng.uniform(24, 48)
                                                + rng.uniform(0, 2 * np.pi))
        tex_r = int(np.ceil(max(a, b) * (1.0 + wobble[0]) + 3))
        tex = _noise_texture(rng, 2 * tex_r + 1, 2 * tex_r + 1, colours[k + 1], 45.0)
        layers.append(_Layer(tex, (float(tex_r), float(tex_r)), path, angles, scales,
                             axes=(a, b), power=power, wobble=wobble))
    return layers


def _owner(layers: list[_Layer], t: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Index of the front-most layer covering image points (x, y) in frames t."""
    owner = np.zeros(np.broadcast(t, x, y).shape, dtype=np.int64)
    for k in range(1, len(layers)):
        ux, uy = layers[k].to_local(t, x, y)
        owner[layers[k].inside(ux, uy)] = k
    return owner


def _track(layers: list[_Layer], num_frames: int, height: int, width: int,
           query_points: np.ndarray):
    qp = validate_queries(query_points, num_frames)
    n = qp.shape[0]
    tq = qp[:, 0].astype(np.int64)
    qy, qx = qp[:, 1], qp[:, 2]
    owner = _owner(layers, tq, qx, qy)
    frames = np.arange(num_frames)[None, :]
    tracks = np.zeros((n, num_frames, 2))
    occluded = np.zeros((n, num_frames), dtype=bool)
    for k in np.unique(owner):
        sel = owner == k
        ux, uy = layers[k].to_local(tq[sel], qx[sel], qy[sel])
        x, y = layers[k].to_image(frames, ux[:, None], uy[:, None])
        tracks[sel, :, 0], tracks[sel, :, 1] = x, y
        hidden = np.zeros(x.shape, dtype=bool)
        for j in range(k + 1, len(layers)):
            hidden |= layers[j].inside(*layers[j].to_local(frames, x, y))
        occluded[sel] = hidden
    occluded |= ~in_frame(tracks[..., 0], tracks[..., 1], height, width)
    return tracks, occluded, owner


@dataclass
class SyntheticClip:
    """A rendered clip with exact ground truth.

    Attributes:
        video: RGB frames. [T, H, W, 3] uint8
        query_points: default queries (t, y, x), all in frame 0, half of them on foreground
            layers where the layers cover enough pixels. [N, 3] float64
        tracks: true positions (x, y) of the default queries. [N, T, 2] float64
        occluded: true occlusion flags of the default queries. [N, T] bool
        difficulty: ``"easy"``, ``"medium"`` or ``"hard"``.
        seed: the seed the clip was drawn from.
        query_layers: index of the layer each default query lies on (0 = background). [N]
    """

    video: np.ndarray
    query_points: np.ndarray
    tracks: np.ndarray
    occluded: np.ndarray
    difficulty: str
    seed: int
    query_layers: np.ndarray
    _layers: list[_Layer] = field(repr=False, default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def height(self) -> int:
        return int(self.video.shape[1])

    @property
    def width(self) -> int:
        return int(self.video.shape[2])

    @property
    def num_layers(self) -> int:
        """Number of layers including the background."""
        return len(self._layers)

    @property
    def name(self) -> str:
        return f"{self.difficulty}-s{self.seed}"

    def ground_truth(self, query_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact true tracks and occlusion for arbitrary queries.

        Args:
            query_points: (t, y, x) with t a whole frame index (checked by
                :func:`omnifast.queries.validate_queries`). [N, 3]

        Returns:
            (tracks [N, T, 2] float64 (x, y), occluded [N, T] bool)
        """
        tracks, occluded, _ = _track(self._layers, self.num_frames, self.height, self.width,
                                     query_points)
        return tracks, occluded

    def layer_ids(self, query_points: np.ndarray) -> np.ndarray:
        """Index of the layer each query lies on in its query frame (0 = background). [N]"""
        qp = validate_queries(query_points, self.num_frames)
        return _owner(self._layers, qp[:, 0].astype(np.int64), qp[:, 2], qp[:, 1])

    def segmentation(self) -> np.ndarray:
        """Front-most layer index of every pixel. [T, H, W] int64"""
        t, y, x = np.meshgrid(np.arange(self.num_frames), np.arange(self.height),
                              np.arange(self.width), indexing="ij")
        return _owner(self._layers, t, x.astype(np.float64), y.astype(np.float64))

    def strided_queries(self, stride: int = 5, points_per_frame: int | None = None,
                        seed: int | None = None) -> np.ndarray:
        """Queries in every ``stride``-th frame (TAP-Vid's strided mode).

        The same number of points is drawn in each query frame t = 0, stride, 2 stride, ...,
        half on foreground layers where possible, like the default queries. Use
        :meth:`ground_truth` for their true tracks and occlusion.

        Args:
            stride: frame step between query frames.
            points_per_frame: queries per query frame (default: N / number of query frames,
                at least 16).
            seed: sampling seed (default: the clip's seed).

        Returns:
            Query points (t, y, x). [M, 3] float64
        """
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        frames = list(range(0, self.num_frames, stride))
        if points_per_frame is None:
            points_per_frame = max(16, len(self.query_points) // len(frames))
        rng = np.random.default_rng([self.seed, 7919, stride])
        if seed is not None:
            rng = np.random.default_rng([seed, 7919, stride])
        out = [_sample_queries(rng, self._layers, t, points_per_frame, self.height,
                               self.width) for t in frames]
        return np.concatenate(out, axis=0)

    def exact_motion(self, occluded_max_interval: int | None = 2):
        """Exhaustive pairwise motion from the exact ground truth (a diagnostic input for fitting).

        The same container the optical-flow preprocessing produces, with exact flows: ``cycle``
        marks pixels of frame i visible in frame j, ``occluded`` pixels hidden by a nearer layer
        in j but inside the frame (only for pairs at most ``occluded_max_interval`` apart, as the
        original's occlusion masks; None for every pair). Fitting on this separates what is
        lost to noisy optical flow from what the model and optimisation lose.

        Returns:
            :class:`omnifast.data.motion.MotionData` with source ``"synthetic-exact"``.
        """
        from omnifast.data.motion import MotionData  # noqa: PLC0415
        from omnifast.data.pairs import mask_stats  # noqa: PLC0415

        t, h, w = self.num_frames, self.height, self.width
        ys, xs = np.mgrid[0:h, 0:w]
        flows = np.zeros((t, t, h, w, 2), np.float32)
        cycle = np.zeros((t, t, h, w), bool)
        occluded = np.zeros((t, t, h, w), bool)
        for i in range(t):
            q = np.stack([np.full(xs.size, float(i)), ys.ravel(), xs.ravel()], -1)
            tr, occ = self.ground_truth(q)
            flow = tr - q[:, None, [2, 1]]  # [HW, T, 2]
            outside = ~in_frame(tr[..., 0], tr[..., 1], h, w)
            flows[i] = flow.transpose(1, 0, 2).reshape(t, h, w, 2)
            cycle[i] = (~occ).T.reshape(t, h, w)
            hidden = (occ & ~outside).T.reshape(t, h, w)
            if occluded_max_interval is not None:
                far = np.abs(np.arange(t) - i) > occluded_max_interval
                hidden[far] = False
            occluded[i] = hidden
            cycle[i, i] = occluded[i, i] = False
            flows[i, i] = 0.0
        stats, counts = mask_stats(cycle, occluded)
        return MotionData(frames=self.video, flows=flows, cycle=cycle, occluded=occluded,
                          flow_stats=stats, count_maps=counts, source="synthetic-exact")

    def to_tapvid(self) -> dict[str, np.ndarray]:
        """The default queries in the batch-first layout of :func:`omnifast.eval.tapvid_metrics`.

        Returns:
            Dict with ``video`` [1, T, H, W, 3], ``query_points`` [1, N, 3], ``target_points``
            [1, N, T, 2] and ``occluded`` [1, N, T].
        """
        return {"video": self.video[None], "query_points": self.query_points[None],
                "target_points": self.tracks[None], "occluded": self.occluded[None]}


def _sample_queries(rng: np.random.Generator, layers: list[_Layer], t: int, n: int,
                    height: int, width: int, margin: int = 2) -> np.ndarray:
    """n distinct integer pixels of frame t: half on foreground layers when they are big enough."""
    ys, xs = np.mgrid[margin:height - margin, margin:width - margin]
    xs, ys = xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)
    owner = _owner(layers, np.full(xs.shape, t), xs, ys)
    fg, bg = np.flatnonzero(owner > 0), np.flatnonzero(owner == 0)
    n = min(n, xs.size)
    n_fg = min(len(fg), n // 2)
    n_bg = min(len(bg), n - n_fg)
    n_fg = n - n_bg
    pick = np.concatenate([rng.choice(fg, n_fg, replace=False),
                           rng.choice(bg, n_bg, replace=False)])
    pick.sort()
    return np.stack([np.full(pick.size, float(t)), ys[pick], xs[pick]], axis=-1)


def _render(layers: list[_Layer], num_frames: int, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    video = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        img = layers[0].sample(*layers[0].to_local(t, xs, ys))
        for layer in layers[1:]:
            ux, uy = layer.to_local(t, xs, ys)
            m = layer.inside(ux, uy)
            if m.any():
                img[m] = layer.sample(ux[m], uy[m])
        video[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return video


def generate_clip(difficulty: str = "easy", num_frames: int = 24, height: int = 96,
                  width: int = 128, seed: int = 0, num_queries: int = 256) -> SyntheticClip:
    """Render a synthetic clip with exact ground truth.

    Args:
        difficulty: ``"easy"``, ``"medium"`` or ``"hard"`` (see the module docstring).
        num_frames: T (at least 2).
        height: H in pixels (at least 16).
        width: W in pixels (at least 16).
        seed: everything (layout, textures, paths, queries) is a function of the arguments.
        num_queries: number of default first-frame queries.

    Returns:
        A :class:`SyntheticClip`; ``clip.ground_truth(q)`` gives exact tracks for any queries.
    """
    if difficulty not in _LEVELS:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if num_frames < 2 or height < 16 or width < 16:
        raise ValueError(f"need num_frames >= 2 and a frame of at least 16x16, got "
                         f"{num_frames} frames of {height}x{width}")
    level = _LEVELS[difficulty]
    rng = np.random.default_rng([seed, DIFFICULTIES.index(difficulty), 104729])
    # draw layouts until the occlusion statistics match the level (bounded, deterministic)
    gy, gx = np.mgrid[2:height - 2:4, 2:width - 2:4]
    probe = np.stack([np.zeros(gx.size), gy.ravel(), gx.ravel()], axis=-1).astype(np.float64)
    best, best_score = None, np.inf
    for _ in range(24):
        layers = _build_layers(rng, level, num_frames, height, width)
        _, occ, owner = _track(layers, num_frames, height, width, probe)
        frac = float(occ.mean())
        fg_out = bool(owner.max() > 0) and bool(occ[owner > 0].any())
        lo, hi = level.occ_range
        score = max(lo - frac, 0.0) + max(frac - hi, 0.0)
        if level.need_exit:
            fg = owner > 0
            tr, _, _ = _track(layers, num_frames, height, width, probe[fg])
            left = ~in_frame(tr[..., 0], tr[..., 1], height, width)
            score += 0.0 if left.any() else 1.0
        if difficulty != "easy" and not fg_out:
            score += 1.0
        if score < best_score:
            best, best_score = layers, score
        if score == 0.0:
            break
    layers = best
    video = _render(layers, num_frames, height, width)
    queries = _sample_queries(rng, layers, 0, num_queries, height, width)
    tracks, occluded, owner = _track(layers, num_frames, height, width, queries)
    return SyntheticClip(video=video, query_points=queries, tracks=tracks, occluded=occluded,
                         difficulty=difficulty, seed=seed, query_layers=owner, _layers=layers)


__all__ = ["DIFFICULTIES", "SyntheticClip", "generate_clip"]
