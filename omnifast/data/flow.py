"""Exhaustive pairwise motion for a clip: DIS optical flow, filtering, counts, chaining, cache.

This is the preprocessing of the original (spec sections 1.3-1.6) with RAFT and DINO replaced by
things that need no downloaded weights:

* flow: OpenCV's DIS (dense inverse search) on grey frames, for both directions of every ordered
  pair i != j (RAFT in the original);
* filtering: the original's forward-backward cycle test and its occlusion test, unchanged in
  form; the DINO cosine test for far pairs is replaced by a colour-consistency test on smoothed
  frames (see :func:`compute_motion`);
* chaining: :mod:`omnifast.data.chain`.

The other motion sources live in :mod:`omnifast.data.omnimotion_folder` (an OmniMotion-format
sequence folder, e.g. with real RAFT flows) and :mod:`omnifast.data.tracks` (correspondences from
another tracker); both are re-exported here.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from omnifast.data.chain import ChainInputs, chain_row
from omnifast.data.motion import MotionData
from omnifast.data.omnimotion_folder import motion_from_omnimotion_folder, write_omnimotion_folder
from omnifast.data.pairs import mask_stats, pixel_grid
from omnifast.data.tracks import load_tracks, merge_tracks, motion_from_tracks
from omnifast.data.video import VideoError, video_digest
from omnifast.files import atomic_write, remove_stale_temporaries
from omnifast.pixels import bilinear, in_frame

CACHE_VERSION = 1  # bump when the cached content for the same settings changes

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

_ARRAYS = ("flows", "cycle", "occluded", "flow_stats", "count_maps")


@dataclass(frozen=True)
class MotionSettings:
    """Every setting that changes the computed motion (all of them go into the cache key)."""

    preset: str = "medium"
    finest_scale: int | None = 0
    cycle_threshold: float = 1.5
    occlusion_threshold: float = 3.0
    occlusion_min_error: float = 4.5
    occlusion_max_interval: int = 2
    appearance_threshold: float = 0.12
    appearance_sigma: float = 1.5
    appearance_min_interval: int = 3
    chain: bool = True
    chain_appearance_threshold: float = 0.06
    chain_rgb_threshold: float = 0.3
    chain_direct_max_interval: int | None = 6


# ---------------------------------------------------------------------------- optical flow

_local = threading.local()


def _dis(preset: str, shape: tuple[int, int], finest_scale: int | None = 0
         ) -> cv2.DISOpticalFlow:
    cache = getattr(_local, "dis", None)
    if cache is None:
        cache = _local.dis = {}
    key = (preset, shape, finest_scale)
    if key not in cache:
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        if finest_scale is not None:
            dis.setFinestScale(int(finest_scale))
        # A fresh DIS object's first result differs slightly (up to ~0.03 px) from every later
        # one, which then no longer depend on what was computed before. One throw-away call
        # makes results independent of which thread (and which fresh object) computes a pair.
        blank = np.zeros(shape, np.uint8)
        dis.calc(blank, blank, None)
        cache[key] = dis
    return cache[key]


def grey_frames(video) -> np.ndarray:
    """Grey uint8 frames of a clip, as DIS takes them: [T, H, W, 3] RGB or [T, H, W(, 1)]
    grey, uint8 or float (in [0, 1], or [0, 255] when any value exceeds 1). -> [T, H, W]"""
    v = np.asarray(video)
    if v.ndim == 4 and v.shape[-1] == 1:
        v = v[..., 0]
    if not ((v.ndim == 4 and v.shape[-1] == 3) or v.ndim == 3):
        raise ValueError(f"video must be [T, H, W, 3] RGB or [T, H, W] grey, got {list(v.shape)}")
    if v.dtype != np.uint8:
        scale = 255.0 if float(np.nanmax(v, initial=0.0)) <= 1.0 else 1.0
        v = np.clip(np.rint(np.nan_to_num(v.astype(np.float64)) * scale), 0, 255).astype(np.uint8)
    if v.ndim == 3:
        return np.ascontiguousarray(v)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in v]) if len(v) else \
        np.zeros(v.shape[:3], np.uint8)


def pair_flow(gray_i: np.ndarray, gray_j: np.ndarray, preset: str = "medium",
              finest_scale: int | None = 0) -> np.ndarray:
    """DIS optical flow from one grey frame to another.

    Args:
        gray_i, gray_j: ``[H, W]`` uint8 grey frames.
        preset: DIS preset, "ultrafast", "fast" or "medium".
        finest_scale: pyramid level of the final flow (0: full resolution; None: the preset's,
            which is 1, half resolution, for "medium").

    Returns:
        ``[H, W, 2]`` float32 (dx, dy): pixel p of frame i moves to p + flow in frame j.
    """
    # one DIS object per thread: the objects keep internal buffers and are not thread-safe
    dis = _dis(preset, gray_i.shape[:2], finest_scale)
    return dis.calc(gray_i, gray_j, None).astype(np.float32, copy=False)


def filter_pair(f_ij: np.ndarray, f_ji: np.ndarray, interval: int, smooth_i: np.ndarray,
                smooth_j: np.ndarray, s: MotionSettings) -> tuple[np.ndarray, np.ndarray]:
    """The reliability masks of one ordered pair (spec 1.5, DINO replaced by colour).

    Args:
        f_ij, f_ji: ``[H, W, 2]`` flows i -> j and j -> i.
        interval: |i - j|.
        smooth_i, smooth_j: ``[H, W, 3]`` float32 smoothed RGB frames in [0, 1].
        s: thresholds.

    Returns:
        ``cycle`` and ``occluded``, ``[H, W]`` bool each, mutually exclusive.
    """
    h, w = f_ij.shape[:2]
    xs, ys = pixel_grid(h, w)
    qx, qy = xs + f_ij[..., 0], ys + f_ij[..., 1]
    back = bilinear(f_ji, qx, qy, border="zeros")
    e_fb = np.hypot(f_ij[..., 0] + back[..., 0], f_ij[..., 1] + back[..., 1])
    cycle = e_fb < s.cycle_threshold
    inside = in_frame(qx, qy, h, w, margin=0)  # where the lookups read real pixels only
    if interval >= s.appearance_min_interval:
        diff = np.linalg.norm(smooth_i - bilinear(smooth_j, qx, qy, border="zeros"), axis=-1)
        cycle &= inside & (diff < s.appearance_threshold)
    if interval <= s.occlusion_max_interval:
        rx, ry = qx + back[..., 0], qy + back[..., 1]
        again = bilinear(f_ij, rx, ry, border="zeros")
        e_fbf = np.hypot(rx + again[..., 0] - qx, ry + again[..., 1] - qy)
        occluded = (e_fbf < s.occlusion_threshold) & (e_fb > s.occlusion_min_error) & inside
    else:
        occluded = np.zeros((h, w), bool)
    return cycle, occluded


def smooth_frames(frames: np.ndarray, sigma: float) -> np.ndarray:
    """RGB frames as float32 in [0, 1], Gaussian-smoothed with ``sigma`` pixels (0: not)."""
    out = frames.astype(np.float32) / 255.0
    if sigma > 0:
        out = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in out])
    return out


# ---------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$OMNIFAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/omnifast`` (normally ~/.cache/omnifast)."""
    env = os.environ.get("OMNIFAST_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "omnifast"


def motion_cache_key(frames: np.ndarray, settings: MotionSettings) -> str:
    """The cache entry name for a clip and its settings."""
    import hashlib

    blob = json.dumps({"v": CACHE_VERSION, "video": video_digest(frames), **asdict(settings)},
                      sort_keys=True)
    return f"motion-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def _load_cached(entry: Path, frames: np.ndarray) -> MotionData | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r" if name in
                                ("flows", "cycle", "occluded") else None) for name in _ARRAYS}
    except (OSError, ValueError):
        return None
    motion = MotionData(frames=frames, source=meta.get("source", "dis"), **arrays)
    try:
        motion.validate()
    except ValueError:
        return None
    return motion


# ------------------------------------------------------------------------------- compute


def motion_cache_bytes(shape: tuple[int, ...]) -> int:
    """Bytes of a motion cache entry for frames of ``shape`` ``[T, H, W, ...]``: every ordered
    pair's flow (8 bytes a pixel) and its two masks (1 byte each)."""
    t, h, w = (int(v) for v in shape[:3])
    return t * t * h * w * 10


def compute_motion(frames: np.ndarray, *, cache_dir: str | os.PathLike | bool | None = None,
                   chain: bool = True, progress: bool = True, workers: int | None = None,
                   preset: str = "medium", finest_scale: int | None = 0,
                   cycle_threshold: float = 1.5,
                   occlusion_threshold: float = 3.0, occlusion_min_error: float = 4.5,
                   appearance_threshold: float = 0.12,
                   appearance_sigma: float = 1.5, chain_appearance_threshold: float = 0.06,
                   chain_rgb_threshold: float = 0.3,
                   chain_direct_max_interval: int | None = 6) -> MotionData:
    """Exhaustive pairwise DIS flow with the original's filtering, counts and chaining.

    For every ordered pair (i, j), i != j, the flow i -> j is computed with OpenCV's DIS on grey
    frames, then filtered as in the original (spec 1.5):

    * cycle: the forward-backward error e_fb = |F_ij(p) + F_ji(p + F_ij(p))| is below
      ``cycle_threshold``; for |i - j| >= 3 the target must also lie inside the image and pass
      the appearance test below (the original's DINO test);
    * occluded (only |i - j| <= 2): e_fb > ``occlusion_min_error``, the second forward hop
      agrees (e_fbf < ``occlusion_threshold``) and the target lies inside the image.

    The far-pair appearance test replaces the original's DINO test (cosine > 0.5), which needs
    ViT weights that are not available: the RGB distance (in [0, 1] units) between frame i at p
    and frame j at q, both smoothed with a Gaussian of ``appearance_sigma`` px, must stay below
    ``appearance_threshold``, and q must lie inside the image. Chaining uses its own, tighter
    ``chain_appearance_threshold``. How every threshold was chosen, with the numbers:
    docs/studies.md ("Motion preprocessing").

    flow_stats[i, j] counts the valid pixels (cycle or occluded) and count_maps[i] sums the valid
    masks over j, as in the original. With ``chain`` (the original always chains), long-range
    pairs are then extended hop by hop (:mod:`omnifast.data.chain`) and the statistics
    recomputed.

    Results are cached under ``cache_dir``/``motion-<key>/``, the key being the clip's content
    hash plus every setting above. An entry is built in a temporary folder and renamed into
    place, so a killed run never leaves a half entry; the next call with the same clip and
    settings loads it (flows and masks memory-mapped) instead of recomputing. An entry takes
    about T^2 * H * W * 10 bytes, like the original's exhaustive flow folder; pixel thresholds
    refer to the resolution of ``frames`` (after any ``max_side`` resize of the clip).

    Args:
        frames: ``[T, H, W, 3]`` uint8 RGB clip, T >= 2.
        cache_dir: cache folder; None for :func:`default_cache_dir` (``$OMNIFAST_CACHE_DIR`` or
            ~/.cache/omnifast); False to compute in memory without caching.
        chain: chain adjacent flows into long-range ones (spec 1.6).
        progress: show tqdm progress bars.
        workers: threads over pairs (default: the number of CPU cores). With more than one,
            OpenCV's own threading is set to 1 while this runs (restored afterwards).
        preset: DIS preset: "ultrafast", "fast" or "medium".
        finest_scale: DIS pyramid level of the final flow: 0 (default) is full resolution
            (about twice the flow time of half resolution, and more accurate); None keeps the
            preset's (1, half resolution, for "medium").
        cycle_threshold: forward-backward threshold in pixels (original: 3.0 with RAFT).
        occlusion_threshold: second-hop threshold of the occlusion test in pixels (original 3.0).
        occlusion_min_error: forward-backward error above which a pixel can be occluded
            (original: 1.5 x 3.0 = 4.5 px).
        appearance_threshold: smoothed-colour distance for far pairs (replaces DINO's
            cosine > 0.5).
        appearance_sigma: Gaussian sigma in pixels of that smoothing.
        chain_appearance_threshold: the same distance along a chain (replaces DINO there).
        chain_rgb_threshold: raw RGB distance allowed along a chain (original: 0.3).
        chain_direct_max_interval: while chaining, a direct flow of a pair further apart than
            this is no longer trusted (None: trusted at every gap, as the original); the chain
            alone then decides (see :mod:`omnifast.data.chain`): direct DIS flows across many
            frames can be wrong and still pass the cycle and appearance tests.

    Returns:
        The clip's :class:`MotionData` (``source`` "dis" or "dis+chain").

    Raises:
        VideoError: frames that are not a ``[T, H, W, 3]`` uint8 clip with T >= 2.
    """
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError("compute_motion needs [T, H, W, 3] uint8 frames, got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    if len(frames) < 2:
        raise VideoError(f"compute_motion needs at least 2 frames, got {len(frames)}")
    if preset not in DIS_PRESETS:
        raise ValueError(f"unknown DIS preset {preset!r}; choose one of {', '.join(DIS_PRESETS)}")
    settings = MotionSettings(
        preset=preset, finest_scale=None if finest_scale is None else int(finest_scale),
        cycle_threshold=float(cycle_threshold),
        occlusion_threshold=float(occlusion_threshold),
        occlusion_min_error=float(occlusion_min_error),
        appearance_threshold=float(appearance_threshold),
        appearance_sigma=float(appearance_sigma), chain=bool(chain),
        chain_appearance_threshold=float(chain_appearance_threshold),
        chain_rgb_threshold=float(chain_rgb_threshold),
        chain_direct_max_interval=(None if chain_direct_max_interval is None
                                   else int(chain_direct_max_interval)))
    workers = max(1, int(workers or os.cpu_count() or 1))

    if cache_dir is False:
        return _compute(frames, settings, workers, progress, None)
    root = Path(cache_dir).expanduser() if cache_dir not in (None, True) else default_cache_dir()
    entry = root / motion_cache_key(frames, settings)
    if entry.is_dir():
        cached = _load_cached(entry, frames)
        if cached is not None:
            return cached
        shutil.rmtree(entry, ignore_errors=True)  # unreadable: rebuild it
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root, "motion-*")  # half-written entries of killed runs
    need, free = motion_cache_bytes(frames.shape), shutil.disk_usage(root).free
    if need > free:
        t, h, w = frames.shape[:3]
        raise ValueError(f"the motion of {t} frames at {w}x{h} needs {need / 1e9:.1f} GB in "
                         f"{root}, which has {free / 1e9:.1f} GB free: shrink the frames "
                         "(--max-side / max_side; the cache grows with T^2 * H * W) or free space")
    # a concurrent writer that publishes the same entry first wins; ours is discarded
    with atomic_write(entry, directory=True) as tmp:
        _compute(frames, settings, workers, progress, tmp)
    motion = _load_cached(entry, frames)
    if motion is None:
        raise RuntimeError(f"the motion cache entry {entry} could not be read back")
    return motion


def _compute(frames: np.ndarray, s: MotionSettings, workers: int, progress: bool,
             out_dir: Path | None) -> MotionData:
    from tqdm.auto import tqdm

    t, h, w, _ = frames.shape
    if out_dir is None:
        flows = np.zeros((t, t, h, w, 2), np.float32)
        cycle = np.zeros((t, t, h, w), bool)
        occluded = np.zeros((t, t, h, w), bool)
    else:
        from numpy.lib.format import open_memmap

        flows = open_memmap(out_dir / "flows.npy", "w+", np.float32, (t, t, h, w, 2))
        cycle = open_memmap(out_dir / "cycle.npy", "w+", bool, (t, t, h, w))
        occluded = open_memmap(out_dir / "occluded.npy", "w+", bool, (t, t, h, w))
    gray = grey_frames(frames)
    smooth = smooth_frames(frames, s.appearance_sigma)

    def one_pair(pair: tuple[int, int]) -> None:
        i, j = pair
        f_ij = pair_flow(gray[i], gray[j], s.preset, s.finest_scale)
        f_ji = pair_flow(gray[j], gray[i], s.preset, s.finest_scale)
        for a, b, fa, fb in ((i, j, f_ij, f_ji), (j, i, f_ji, f_ij)):
            c, o = filter_pair(fa, fb, abs(a - b), smooth[a], smooth[b], s)
            flows[a, b] = fa
            cycle[a, b] = c
            occluded[a, b] = o

    pairs = [(i, j) for i in range(t) for j in range(i + 1, t)]
    old_threads = cv2.getNumThreads()
    if workers > 1:
        cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            bar = tqdm(total=len(pairs) * 2, desc="optical flow (pairs)", unit="pair",
                       disable=not progress, leave=False)
            for _ in pool.map(one_pair, pairs):
                bar.update(2)
            bar.close()
            if s.chain:
                data = ChainInputs(rgb=frames.astype(np.float32) / 255.0, smooth=smooth,
                                   appearance_threshold=s.chain_appearance_threshold,
                                   rgb_threshold=s.chain_rgb_threshold,
                                   direct_max_interval=s.chain_direct_max_interval)
                rows = [(i, +1) for i in range(t - 1)] + [(i, -1) for i in range(t - 1, 0, -1)]
                bar = tqdm(total=len(rows), desc="chaining (rows)", unit="row",
                           disable=not progress, leave=False)
                for _ in pool.map(lambda r: chain_row(r[0], r[1], flows, cycle, occluded, data),
                                  rows):
                    bar.update(1)
                bar.close()
    finally:
        cv2.setNumThreads(old_threads)
    stats, counts = mask_stats(cycle, occluded)
    source = "dis+chain" if s.chain else "dis"
    motion = MotionData(frames=frames, flows=flows, cycle=cycle, occluded=occluded,
                        flow_stats=stats, count_maps=counts, source=source)
    if out_dir is not None:
        for arr in (flows, cycle, occluded):
            arr.flush()
        np.save(out_dir / "flow_stats.npy", stats)
        np.save(out_dir / "count_maps.npy", counts)
        meta = {"source": source, "version": CACHE_VERSION, "video": video_digest(frames),
                "shape": [t, h, w], **asdict(s)}
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
        del flows, cycle, occluded, motion
        return None  # the caller reads the renamed entry back
    return motion


__all__ = ["DIS_PRESETS", "MotionSettings", "compute_motion", "default_cache_dir",
           "filter_pair", "grey_frames", "load_tracks", "merge_tracks", "motion_cache_key",
           "motion_from_omnimotion_folder", "motion_from_tracks", "pair_flow", "smooth_frames",
           "write_omnimotion_folder"]
