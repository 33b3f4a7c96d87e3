"""Chaining adjacent flows into long-range correspondences (spec section 1.6).

For every reference frame i the pass walks away from i one frame at a time (forward: j = i+1,
i+2, ...; backward: j = i-1, i-2, ...), carrying an accumulated flow A and a validity mask C:

* wherever the direct pair (i, j) is valid (cycle or occluded), A takes the direct flow (with
  ``direct_max_interval`` set, only for pairs at most that many frames apart: further apart, a
  wrong direct flow can pass the cycle and appearance tests, and the chain is more reliable);
* C is multiplied by the appearance checks at q = p + A, then forced true where the direct pair is
  cycle-consistent and false where it is occluded; (A, C) overwrite flow (i, j) and its cycle
  mask (the occluded mask stays the direct one);
* A hops on with the adjacent flow (j, j+1) sampled at q, and C requires the adjacent cycle mask,
  sampled bilinearly at q, to be 1 (all four neighbours valid and inside the image).

Difference from the original: its DINO cosine test (> 0.5) needs DINO ViT-S/16 weights, which are
not available here. It is replaced by the check :func:`omnifast.data.flow.compute_motion` uses for
far pairs, with its own (tighter) threshold: the distance between Gaussian-smoothed colours of
frame i at p and frame j at q, with q required to lie inside the image (a target outside the image
read zero DINO features in the original, which failed the cosine test). The original's raw RGB
test (distance < 0.3 in [0, 1] units) is kept as it is.

Rows are independent: a row reads and then writes only its own pairs, plus the adjacent pairs it
hops on, which chaining never changes (an adjacent pair's chained result is its direct one). Rows
therefore run in parallel threads and update the arrays in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnifast.data.pairs import pixel_grid
from omnifast.pixels import bilinear, in_frame

# The original compares the bilinearly sampled 0/1 mask with exactly 1.0; float32 bilinear
# weights need not sum to exactly 1, so "1" means within this tolerance.
_ONE_TOL = 1e-4


@dataclass(frozen=True)
class ChainInputs:
    """Read-only per-clip data a chaining row needs."""

    rgb: np.ndarray  # [T, H, W, 3] float32 in [0, 1]
    smooth: np.ndarray  # [T, H, W, 3] float32 in [0, 1], Gaussian-smoothed (DINO replacement)
    appearance_threshold: float
    rgb_threshold: float
    # direct (non-adjacent) flows are trusted only up to this frame gap; beyond it the chain
    # alone decides (None: at every gap, as the original)
    direct_max_interval: int | None = None


def chain_row(i: int, step: int, flows: np.ndarray, cycle: np.ndarray, occluded: np.ndarray,
              data: ChainInputs) -> None:
    """Chain one reference frame in one direction, overwriting its pairs in place.

    Args:
        i: reference frame.
        step: +1 for the forward pass (j > i), -1 for the backward pass (j < i).
        flows: ``[T, T, H, W, 2]`` float32, direct flows on input, chained for row i on return.
        cycle: ``[T, T, H, W]`` bool, direct cycle masks on input, chained for row i on return.
        occluded: ``[T, T, H, W]`` bool direct occlusion masks (read only).
        data: frames and thresholds.
    """
    t = flows.shape[0]
    h, w = flows.shape[2:4]
    if not 0 <= i + step < t:
        return
    xs, ys = pixel_grid(h, w)
    rgb_i, smooth_i = data.rgb[i], data.smooth[i]
    acc = np.array(flows[i, i + step], dtype=np.float32)
    valid = np.array(cycle[i, i + step], dtype=bool)
    j = i + step
    while 0 <= j < t:
        cyc_ij = np.asarray(cycle[i, j])
        occ_ij = np.asarray(occluded[i, j])
        if data.direct_max_interval is not None and abs(j - i) > data.direct_max_interval:
            cyc_ij = np.zeros_like(cyc_ij)
        direct = cyc_ij | occ_ij
        acc[direct] = flows[i, j][direct]
        qx, qy = xs + acc[..., 0], ys + acc[..., 1]
        app = bilinear(data.smooth[j], qx, qy, border="zeros")
        col = bilinear(data.rgb[j], qx, qy, border="zeros")
        ok = in_frame(qx, qy, h, w, margin=0)  # where the lookups read real pixels only
        ok &= np.linalg.norm(smooth_i - app, axis=-1) < data.appearance_threshold
        ok &= np.linalg.norm(rgb_i - col, axis=-1) < data.rgb_threshold
        valid &= ok
        valid |= cyc_ij
        valid &= ~occ_ij
        flows[i, j] = acc
        cycle[i, j] = valid
        nxt = j + step
        if 0 <= nxt < t:
            acc += bilinear(flows[j, nxt], qx, qy, border="zeros")
            hop = bilinear(np.asarray(cycle[j, nxt], dtype=np.float32), qx, qy, border="zeros")
            valid &= hop >= 1.0 - _ONE_TOL
        j = nxt
