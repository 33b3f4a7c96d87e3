"""Motion from another tracker's point tracks, alone or merged over dense motion."""

from __future__ import annotations

import numpy as np
import pytest

from omnifast.data.flow import load_tracks, merge_tracks, motion_from_tracks
from omnifast.data.pairs import mask_stats


def _tracks_for(t=4, n=5):
    rng = np.random.default_rng(3)
    start = rng.uniform(2, 20, (n, 2))
    step = rng.uniform(-1.5, 1.5, (n, 2))
    tracks = (start[:, None] + step[:, None] * np.arange(t)[None, :, None]).astype(np.float32)
    visible = np.ones((n, t), bool)
    visible[1, 2] = False
    return tracks, visible


def test_motion_from_tracks_npz(tmp_path, tiny_clip):
    frames = tiny_clip[:4]
    tracks, visible = _tracks_for()
    np.savez(tmp_path / "tr.npz", tracks=tracks, occluded=~visible)
    m = motion_from_tracks(frames, tmp_path / "tr.npz")
    m.validate()
    assert not m.occluded.any()
    count = 0
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            for n in range(len(tracks)):
                x, y = np.rint(tracks[n, i]).astype(int)
                both = visible[n, i] and visible[n, j]
                assert m.cycle[i, j, y, x] == both, (i, j, n)
                if both:
                    np.testing.assert_allclose(m.flows[i, j, y, x], tracks[n, j] - tracks[n, i],
                                               rtol=0, atol=1e-6)
    valid_pairs = sum(int((visible[:, i] & visible[:, j]).sum())
                      for i in range(4) for j in range(4) if i != j)
    count = int(m.flow_stats.sum())
    assert count == valid_pairs  # no two tracks share a pixel here
    assert np.array_equal(m.count_maps, m.cycle.sum(1))
    t2, v2 = load_tracks({"tracks": tracks, "visible": visible})
    assert np.array_equal(t2, tracks) and np.array_equal(v2, visible)


def test_merge_tracks_overrides_dense(tiny_motion):
    motion = tiny_motion
    tracks, visible = _tracks_for(t=6, n=3)
    merged = merge_tracks(motion, (tracks, visible))
    x, y = np.rint(tracks[0, 0]).astype(int)
    np.testing.assert_allclose(merged.flows[0, 3, y, x], tracks[0, 3] - tracks[0, 0], atol=1e-6)
    assert merged.cycle[0, 3, y, x] and not merged.occluded[0, 3, y, x]
    untouched = np.ones(merged.cycle.shape[2:], bool)
    untouched[np.rint(tracks[:, :, 1]).astype(int), np.rint(tracks[:, :, 0]).astype(int)] = False
    assert np.array_equal(merged.flows[2, 4][untouched], motion.flows[2, 4][untouched])
    stats, counts = mask_stats(merged.cycle, merged.occluded)
    assert np.array_equal(merged.flow_stats, stats) and np.array_equal(merged.count_maps, counts)
    assert merged.source == "dis+chain+tracks:3"


def test_tracks_errors(tmp_path, tiny_clip):
    tracks, visible = _tracks_for()
    bad = tracks.copy()
    bad[0, 1, 0] = np.inf
    np.savez(tmp_path / "bad.npz", tracks=bad, visible=visible)
    with pytest.raises(ValueError, match="NaN or Inf"):
        motion_from_tracks(tiny_clip[:4], tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="4 frames but the clip has 6"):
        motion_from_tracks(tiny_clip, (tracks, visible))
    with pytest.raises(ValueError, match="needs a 'tracks' array"):
        load_tracks({"points": tracks})
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_tracks(tmp_path / "nope.npz")
