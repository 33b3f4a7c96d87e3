"""Reading and writing OmniMotion-format sequence folders (spec sections 1.1-1.2).

Layout (names are the frame file names *with* their extension)::

    color/{name}                       RGB frames, sorted by name
    raft_exhaustive/{ni}_{nj}.npy      float32 [H, W, 2] flow i -> j, every ordered pair i != j
    raft_masks/{ni}_{nj}.png           uint8 [H, W, 3] 0/255: R = cycle, G = occluded, B = 0
    count_maps/{stem}.png              uint16 [H, W] ("{name}" with .jpg replaced by .png)
    flow_stats.json                    {ni: {nj: valid pixel count}}

Flows and masks are used exactly as stored (they are usually RAFT's, already chained).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from omnifast.data.motion import MotionData
from omnifast.data.pairs import mask_stats
from omnifast.data.video import VideoError, list_images, load_video


def _count_map_name(name: str) -> str:
    # the original replaces ".jpg" with ".png"; other extensions get ".png" in place of theirs
    return name.replace(".jpg", ".png") if ".jpg" in name else f"{Path(name).stem}.png"


def _read_mask(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read mask {path}")
    if img.ndim == 2:  # a grey mask: treat it as the cycle channel only
        return np.stack([img, np.zeros_like(img), np.zeros_like(img)], -1)
    return img[..., 2::-1] if img.shape[-1] >= 3 else img  # BGR(A) -> RGB


def motion_from_omnimotion_folder(path: str | os.PathLike,
                                  max_frames: int | None = None) -> MotionData:
    """Load an OmniMotion-format sequence folder (frames, flows, masks, counts, statistics).

    Args:
        path: the sequence folder (the one holding ``color/``).
        max_frames: use only the first frames, like the original's ``num_imgs`` cap.

    Returns:
        :class:`MotionData` with ``source`` "omnimotion-folder:<path>". ``flow_stats`` comes from
        ``flow_stats.json`` and ``count_maps`` from ``count_maps/``; either is recomputed from
        the masks when missing.

    Raises:
        VideoError: no ``color/`` folder or unreadable frames.
        FileNotFoundError: a pair's flow or mask file is missing.
        ValueError: inconsistent shapes, or NaN/Inf in the flows.
    """
    root = Path(path).expanduser()
    color = root / "color"
    if not color.is_dir():
        raise VideoError(f"{root} is not an OmniMotion sequence folder (no color/ folder)")
    files = list_images(color)
    if max_frames is not None:
        files = files[:max_frames]
    names = [f.name for f in files]
    frames = load_video(root, frames=list(range(len(names))))
    t, h, w, _ = frames.shape
    flows = np.zeros((t, t, h, w, 2), np.float32)
    cycle = np.zeros((t, t, h, w), bool)
    occluded = np.zeros((t, t, h, w), bool)
    for i, ni in enumerate(names):
        for j, nj in enumerate(names):
            if i == j:
                continue
            fpath = root / "raft_exhaustive" / f"{ni}_{nj}.npy"
            mpath = root / "raft_masks" / f"{ni}_{nj}.png"
            for p in (fpath, mpath):
                if not p.is_file():
                    raise FileNotFoundError(f"missing pair file {p}")
            flow = np.load(fpath)
            if flow.shape != (h, w, 2):
                raise ValueError(f"{fpath}: flow must be {(h, w, 2)}, got {flow.shape}")
            if not np.isfinite(flow).all():
                raise ValueError(f"{fpath}: the optical flow contains NaN or Inf values")
            mask = _read_mask(mpath)
            if mask.shape[:2] != (h, w):
                raise ValueError(f"{mpath}: mask must be {h}x{w}, got {mask.shape[:2]}")
            flows[i, j] = flow
            cycle[i, j] = mask[..., 0] > 0
            occluded[i, j] = mask[..., 1] > 0
    stats, counts = mask_stats(cycle, occluded)
    stats_path = root / "flow_stats.json"
    if stats_path.is_file():
        table = json.loads(stats_path.read_text())
        for i, ni in enumerate(names):
            for j, nj in enumerate(names):
                if i != j and nj in table.get(ni, {}):
                    stats[i, j] = int(table[ni][nj])
    cdir = root / "count_maps"
    if cdir.is_dir():
        for i, ni in enumerate(names):
            cpath = cdir / _count_map_name(ni)
            if cpath.is_file():
                cm = cv2.imread(str(cpath), cv2.IMREAD_UNCHANGED)
                if cm is None or cm.shape[:2] != (h, w):
                    raise ValueError(f"{cpath}: count map must be a {h}x{w} image")
                counts[i] = cm if cm.ndim == 2 else cm[..., 0]
    motion = MotionData(frames=frames, flows=flows, cycle=cycle, occluded=occluded,
                        flow_stats=stats, count_maps=counts, source=f"omnimotion-folder:{root}")
    motion.validate()
    return motion


def write_omnimotion_folder(motion: MotionData, path: str | os.PathLike,
                            ext: str = ".png") -> Path:
    """Write motion in the OmniMotion layout, so that the original code can train on it.

    Frames are named ``00000{ext}``, ``00001{ext}``, ... (``.png`` keeps them lossless; the
    original's own data uses ``.jpg``).

    Args:
        motion: the clip's motion.
        path: the sequence folder to create (existing files are overwritten).
        ext: frame file extension, ".png" or ".jpg".

    Returns:
        The folder path.
    """
    root = Path(path).expanduser()
    for sub in ("color", "raft_exhaustive", "raft_masks", "count_maps"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    t = motion.num_frames
    names = [f"{k:05d}{ext}" for k in range(t)]
    for k, name in enumerate(names):
        cv2.imwrite(str(root / "color" / name), cv2.cvtColor(motion.frames[k], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "count_maps" / _count_map_name(name)),
                    np.minimum(motion.count_maps[k], 65535).astype(np.uint16))
    table: dict[str, dict[str, int]] = {}
    for i, ni in enumerate(names):
        table[ni] = {}
        for j, nj in enumerate(names):
            if i == j:
                continue
            np.save(root / "raft_exhaustive" / f"{ni}_{nj}.npy",
                    np.asarray(motion.flows[i, j], np.float32))
            mask = np.zeros((*motion.cycle.shape[2:], 3), np.uint8)
            mask[..., 0] = np.asarray(motion.cycle[i, j]) * 255
            mask[..., 1] = np.asarray(motion.occluded[i, j]) * 255
            cv2.imwrite(str(root / "raft_masks" / f"{ni}_{nj}.png"), mask[..., ::-1])
            table[ni][nj] = int(motion.flow_stats[i, j])
    (root / "flow_stats.json").write_text(json.dumps(table))
    return root
