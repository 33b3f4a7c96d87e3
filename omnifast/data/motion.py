"""The container the trainer consumes: frames plus exhaustive pairwise correspondences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MotionData:
    """Frames and the filtered pairwise flows of a clip (spec section 1.7).

    Attributes:
        frames: RGB frames. [T, H, W, 3] uint8
        flows: displacement (dx, dy) in pixels from frame i to frame j: the target of pixel p in
            frame j is p + flows[i, j][p]. The diagonal is zero. [T, T, H, W, 2] float32 (may be
            an ``np.memmap``)
        cycle: cycle-consistent (reliable and visible) correspondences, the original's mask
            channel 0. [T, T, H, W] bool
        occluded: reliably occluded correspondences (forward flow trusted, pixel hidden in j), the
            original's mask channel 1; mutually exclusive with ``cycle``. [T, T, H, W] bool
        flow_stats: number of valid pixels (cycle | occluded) per ordered pair. [T, T] int64
        count_maps: per pixel of frame i, how many frames j give it a valid correspondence.
            [T, H, W] int32
        source: where the motion came from (e.g. "dis", "omnimotion-folder", "tracks:...").
    """

    frames: np.ndarray
    flows: np.ndarray
    cycle: np.ndarray
    occluded: np.ndarray
    flow_stats: np.ndarray
    count_maps: np.ndarray
    source: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line reason when shapes or values are inconsistent."""
        t, h, w = self.num_frames, self.height, self.width
        expect = {
            "frames": (self.frames, (t, h, w, 3)),
            "flows": (self.flows, (t, t, h, w, 2)),
            "cycle": (self.cycle, (t, t, h, w)),
            "occluded": (self.occluded, (t, t, h, w)),
            "flow_stats": (self.flow_stats, (t, t)),
            "count_maps": (self.count_maps, (t, h, w)),
        }
        for name, (arr, shape) in expect.items():
            if tuple(arr.shape) != shape:
                raise ValueError(f"MotionData.{name} must be {shape}, got {tuple(arr.shape)}")
        if t < 2:
            raise ValueError(f"a clip needs at least 2 frames, got {t}")
        if not np.isfinite(self.flows).all():
            raise ValueError("the optical flows contain NaN or Inf values")
