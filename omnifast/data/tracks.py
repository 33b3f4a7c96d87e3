"""Motion from another tracker's point tracks (sparse long-range correspondences).

A track n gives, for every ordered pair (i, j) in which it is visible in both frames, one
correspondence: the flow at its rounded pixel in frame i is set to its displacement
``tracks[n, j] - tracks[n, i]`` and marked cycle-consistent. All other pixels are invalid, so
tracks alone give sparse supervision; :func:`merge_tracks` puts them on top of dense DIS motion.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from omnifast.data.motion import MotionData
from omnifast.data.pairs import mask_stats
from omnifast.pixels import in_frame

TracksSource = str | os.PathLike | Mapping


def load_tracks(src: TracksSource, num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read tracks from an npz file or a dict.

    Args:
        src: path to an ``.npz`` or a mapping with ``tracks`` ``[N, T, 2]`` (x, y) pixels and
            either ``visible`` ``[N, T]`` bool or ``occluded`` ``[N, T]`` bool (its negation);
            without either, every point is visible.
        num_frames: if given, T must equal it.

    Returns:
        ``tracks`` ``[N, T, 2]`` float32 and ``visible`` ``[N, T]`` bool.

    Raises:
        FileNotFoundError: missing file.
        ValueError: missing key, wrong shapes, or NaN/Inf at visible points.
    """
    if isinstance(src, Mapping):
        data, what = dict(src), "tracks dict"
    else:
        path = Path(src).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such tracks file: {path}")
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        what = str(path)
    if "tracks" not in data:
        raise ValueError(f"{what}: needs a 'tracks' array [N, T, 2], has {sorted(data)}")
    tracks = np.asarray(data["tracks"], dtype=np.float32)
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise ValueError(f"{what}: tracks must be [N, T, 2], got {tracks.shape}")
    n, t = tracks.shape[:2]
    if "visible" in data:
        visible = np.asarray(data["visible"]).astype(bool)
    elif "occluded" in data:
        visible = ~np.asarray(data["occluded"]).astype(bool)
    else:
        visible = np.ones((n, t), bool)
    if visible.shape != (n, t):
        raise ValueError(f"{what}: visible/occluded must be [{n}, {t}], got {visible.shape}")
    if num_frames is not None and t != num_frames:
        raise ValueError(f"{what}: tracks cover {t} frames but the clip has {num_frames}")
    if not np.isfinite(tracks[visible]).all():
        raise ValueError(f"{what}: the tracks contain NaN or Inf values at visible points")
    return tracks, visible


def _apply_tracks(flows: np.ndarray, cycle: np.ndarray, occluded: np.ndarray,
                  tracks: np.ndarray, visible: np.ndarray) -> int:
    """Write the tracks' correspondences into the arrays in place; returns how many."""
    t = flows.shape[0]
    h, w = flows.shape[2:4]
    px = np.rint(tracks[..., 0]).astype(np.int64)
    py = np.rint(tracks[..., 1]).astype(np.int64)
    on_image = visible & in_frame(px, py, h, w, margin=0)  # the nearest pixel exists
    written = 0
    for i in range(t):
        src = np.flatnonzero(on_image[:, i])
        if len(src) == 0:
            continue
        for j in range(t):
            if i == j:
                continue
            sel = src[visible[src, j]]
            if len(sel) == 0:
                continue
            yy, xx = py[sel, i], px[sel, i]
            flows[i, j, yy, xx] = tracks[sel, j] - tracks[sel, i]
            cycle[i, j, yy, xx] = True
            occluded[i, j, yy, xx] = False
            written += len(sel)
    return written


def motion_from_tracks(frames: np.ndarray, tracks: TracksSource | tuple,
                       visible: np.ndarray | None = None) -> MotionData:
    """Sparse motion from external point tracks.

    Args:
        frames: ``[T, H, W, 3]`` uint8 clip the tracks belong to.
        tracks: an ``.npz`` path or dict (see :func:`load_tracks`), or a ``[N, T, 2]`` array
            (then ``visible`` ``[N, T]`` may be given; default all visible).
        visible: visibility for an array ``tracks``.

    Returns:
        :class:`MotionData` with source "tracks": only the tracks' pixels are valid.

    Raises:
        ValueError: bad shapes, NaN/Inf, or a frame count that differs from the clip's.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.dtype} {frames.shape}")
    tr, vis = _as_tracks(tracks, visible, len(frames))
    t, h, w = frames.shape[:3]
    flows = np.zeros((t, t, h, w, 2), np.float32)
    cycle = np.zeros((t, t, h, w), bool)
    occluded = np.zeros((t, t, h, w), bool)
    _apply_tracks(flows, cycle, occluded, tr, vis)
    stats, counts = mask_stats(cycle, occluded)
    motion = MotionData(frames=frames, flows=flows, cycle=cycle, occluded=occluded,
                        flow_stats=stats, count_maps=counts, source=f"tracks:{len(tr)}")
    motion.validate()
    return motion


def merge_tracks(motion: MotionData, tracks: TracksSource | tuple,
                 visible: np.ndarray | None = None) -> MotionData:
    """Dense motion with external tracks on top: where a track gives a correspondence, it wins.

    The arrays are copied into memory (the input, possibly a read-only cache, is not changed).

    Args:
        motion: dense motion, e.g. from :func:`omnifast.data.flow.compute_motion`.
        tracks, visible: as for :func:`motion_from_tracks`.

    Returns:
        A new :class:`MotionData` with source ``"<motion.source>+tracks:<N>"``.
    """
    tr, vis = _as_tracks(tracks, visible, motion.num_frames)
    flows = np.array(motion.flows, dtype=np.float32)
    cycle = np.array(motion.cycle, dtype=bool)
    occluded = np.array(motion.occluded, dtype=bool)
    _apply_tracks(flows, cycle, occluded, tr, vis)
    stats, counts = mask_stats(cycle, occluded)
    merged = MotionData(frames=motion.frames, flows=flows, cycle=cycle, occluded=occluded,
                        flow_stats=stats, count_maps=counts,
                        source=f"{motion.source}+tracks:{len(tr)}")
    merged.validate()
    return merged


def _as_tracks(tracks, visible, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(tracks, np.ndarray):
        data = {"tracks": tracks}
        if visible is not None:
            data["visible"] = visible
        return load_tracks(data, num_frames)
    if isinstance(tracks, tuple) and len(tracks) == 2:
        return load_tracks({"tracks": tracks[0], "visible": tracks[1]}, num_frames)
    return load_tracks(tracks, num_frames)
