"""Chaining adjacent flows into long-range correspondences."""

from __future__ import annotations

import numpy as np
from conftest import translating

from omnifast.data.chain import ChainInputs, chain_row
from omnifast.data.flow import compute_motion


def test_chaining_extends_far_pairs():
    """3 px per frame on a 32x40 clip: direct DIS loses pairs two frames apart, chains don't."""
    clip = translating(t=5, dx=3.0, dy=2.0)
    direct = compute_motion(clip, cache_dir=False, progress=False, chain=False, workers=1)
    chained = compute_motion(clip, cache_dir=False, progress=False, chain=True, workers=2)
    assert chained.source == "dis+chain" and direct.source == "dis"
    for i, j in [(0, 2), (0, 3), (4, 2), (4, 1)]:
        assert chained.flow_stats[i, j] > 2 * direct.flow_stats[i, j] + 100, (i, j)
        true = np.array([3.0, 2.0]) * (j - i)
        err = np.linalg.norm(chained.flows[i, j] - true, axis=-1)[chained.cycle[i, j]]
        assert np.median(err) < 0.5
    # DIS is deterministic whatever the threading, so the two runs share their direct flows:
    # direct, trusted correspondences are unchanged by chaining; occlusion stays the direct one
    keep = direct.cycle
    assert np.array_equal(chained.flows[keep], direct.flows[keep])
    assert chained.cycle[keep].all()
    assert np.array_equal(chained.occluded, direct.occluded)
    # adjacent pairs are exactly the direct ones
    for i in range(4):
        assert np.array_equal(chained.flows[i, i + 1], direct.flows[i, i + 1])
        assert np.array_equal(chained.cycle[i + 1, i], direct.cycle[i + 1, i])


def test_chain_row_on_synthetic_flows():
    """Chaining arithmetic on hand-made flows: constant hops add up, invalid hops stop chains."""
    t, h, w = 4, 8, 12
    flows = np.zeros((t, t, h, w, 2), np.float32)
    cycle = np.zeros((t, t, h, w), bool)
    occluded = np.zeros((t, t, h, w), bool)
    for k in range(t - 1):
        flows[k, k + 1, ..., 0] = 1.0
        cycle[k, k + 1] = True
        flows[k + 1, k, ..., 0] = -1.0
        cycle[k + 1, k] = True
    cycle[1, 2, :, 5] = False  # the hop 1 -> 2 is unreliable in column 5 of frame 1
    occluded[0, 3, 2, 2] = True
    flows[0, 3, 2, 2] = (7.0, 0.0)
    rgb = np.zeros((t, h, w, 3), np.float32)
    data = ChainInputs(rgb=rgb, smooth=rgb, appearance_threshold=0.1, rgb_threshold=0.3)
    chain_row(0, +1, flows, cycle, occluded, data)
    np.testing.assert_allclose(flows[0, 2, :, :11, 0], 2.0)  # x = 11 hops off the image
    np.testing.assert_allclose(flows[0, 3, cycle[0, 3], 0], 3.0)
    assert flows[0, 3, 2, 2, 0] == 7.0  # a direct valid (here: occluded) flow is adopted
    xs = np.arange(w)
    expect2 = (xs + 2 <= w - 1) & (xs != 4)  # column 4 of frame 0 lands on column 5 of frame 1
    assert np.array_equal(cycle[0, 2], np.broadcast_to(expect2, (h, w)))
    expect3 = np.broadcast_to((xs + 3 <= w - 1) & (xs != 4), (h, w)).copy()
    expect3[2, 2] = False  # directly occluded wins
    assert np.array_equal(cycle[0, 3], expect3)
    chain_row(3, -1, flows, cycle, occluded, data)
    np.testing.assert_allclose(flows[3, 0, cycle[3, 0], 0], -3.0)
    assert cycle[3, 0, :, 3:].all() and not cycle[3, 0, :, :3].any()


def test_chain_does_not_trust_far_direct_flows_beyond_the_limit():
    """A cycle-consistent but wrong direct flow 3 frames apart: adopted by default, replaced by
    the chained flow when direct flows are trusted only up to 2 frames apart."""
    t, h, w = 4, 8, 12
    flows = np.zeros((t, t, h, w, 2), np.float32)
    cycle = np.zeros((t, t, h, w), bool)
    occluded = np.zeros((t, t, h, w), bool)
    for k in range(t - 1):
        flows[k, k + 1, ..., 0] = 1.0
        cycle[k, k + 1] = True
    flows[0, 3, ..., 0] = 5.0  # wrong (the truth is 3) but marked reliable
    cycle[0, 3] = True
    rgb = np.zeros((t, h, w, 3), np.float32)
    results = {}
    for limit in (None, 2):
        f, c = flows.copy(), cycle.copy()
        data = ChainInputs(rgb=rgb, smooth=rgb, appearance_threshold=0.1, rgb_threshold=0.3,
                           direct_max_interval=limit)
        chain_row(0, +1, f, c, occluded, data)
        results[limit] = (f[0, 3, ..., 0], c[0, 3])
    np.testing.assert_allclose(results[None][0], 5.0)
    assert results[None][1].all()
    xs = np.arange(w)
    inside = np.broadcast_to(xs + 3 <= w - 1, (h, w))
    np.testing.assert_allclose(results[2][0][inside], 3.0)
    assert np.array_equal(results[2][1], inside)
