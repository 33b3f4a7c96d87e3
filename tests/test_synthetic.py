"""The synthetic benchmark generator: determinism, exact ground truth, difficulty properties."""

import numpy as np
import pytest

from omnifast.datasets.synthetic import DIFFICULTIES, generate_clip
from omnifast.pixels import bilinear, in_frame


@pytest.fixture(scope="module")
def clips():
    return {d: generate_clip(d, num_frames=16, height=48, width=64, seed=3) for d in DIFFICULTIES}


def _bilinear(img, x, y):
    return bilinear(img, x, y, border="clamp", dtype=np.float64)


def test_shapes_and_types(clips):
    for d, c in clips.items():
        t, h, w = 16, 48, 64
        n = len(c.query_points)
        assert c.video.shape == (t, h, w, 3) and c.video.dtype == np.uint8, d
        assert c.query_points.shape == (n, 3) and n > 0
        assert c.tracks.shape == (n, t, 2) and c.occluded.shape == (n, t)
        assert c.occluded.dtype == bool
        assert np.all(c.query_points[:, 0] == 0)
        # the track starts at the query and is visible there
        np.testing.assert_allclose(c.tracks[:, 0], c.query_points[:, [2, 1]], atol=1e-9)
        assert not c.occluded[:, 0].any()
        assert c.video.std() > 20, "textures need contrast for optical flow"


def test_deterministic_per_seed():
    a = generate_clip("medium", num_frames=8, height=32, width=40, seed=5)
    b = generate_clip("medium", num_frames=8, height=32, width=40, seed=5)
    c = generate_clip("medium", num_frames=8, height=32, width=40, seed=6)
    assert np.array_equal(a.video, b.video)
    assert np.array_equal(a.tracks, b.tracks) and np.array_equal(a.occluded, b.occluded)
    assert not np.array_equal(a.video, c.video)


def test_default_size():
    c = generate_clip("hard", seed=1)  # its speed: benchmarks/bench_synthetic.py
    assert c.video.shape == (24, 96, 128, 3) and c.tracks.shape[1] == 24


def test_ground_truth_of_default_queries_matches(clips):
    c = clips["hard"]
    tr, occ = c.ground_truth(c.query_points)
    assert np.array_equal(tr, c.tracks) and np.array_equal(occ, c.occluded)


def test_ground_truth_is_cycle_consistent(clips):
    """Querying a tracked point again in another frame returns the same trajectory."""
    c = clips["medium"]
    t2 = 9
    vis = ~c.occluded[:, t2]
    q2 = np.concatenate([np.full((vis.sum(), 1), t2), c.tracks[vis, t2][:, ::-1]], axis=1)
    tr2, occ2 = c.ground_truth(q2)
    np.testing.assert_allclose(tr2, c.tracks[vis], atol=1e-9)
    assert np.array_equal(occ2, c.occluded[vis])


def test_visible_points_lie_on_their_own_layer(clips):
    for d, c in clips.items():
        tt = np.broadcast_to(np.arange(c.num_frames), c.occluded.shape)
        vis = ~c.occluded
        q = np.stack([tt[vis], c.tracks[vis][:, 1], c.tracks[vis][:, 0]], axis=-1)
        owner = np.broadcast_to(c.query_layers[:, None], c.occluded.shape)[vis]
        assert np.array_equal(c.layer_ids(q), owner), d
        # and a hidden point in the frame is covered by a nearer layer
        inside = in_frame(c.tracks[..., 0], c.tracks[..., 1], c.height, c.width)
        hid = c.occluded & inside
        if hid.any():
            qh = np.stack([tt[hid], c.tracks[hid][:, 1], c.tracks[hid][:, 0]], axis=-1)
            owner_h = np.broadcast_to(c.query_layers[:, None], c.occluded.shape)[hid]
            assert np.all(c.layer_ids(qh) > owner_h), d


def test_rendering_follows_the_tracks(clips):
    """The colour at a visible point's true position matches its colour at the query."""
    c = clips["medium"]
    q_col = c.video[0][c.query_points[:, 1].astype(int), c.query_points[:, 2].astype(int)]
    errs, wrong = [], []
    for t in range(1, c.num_frames):
        vis = ~c.occluded[:, t]
        # stay away from layer edges, where bilinear lookup mixes layers
        xy = c.tracks[vis, t]
        ok = (xy[:, 0] > 1) & (xy[:, 0] < c.width - 2) & (xy[:, 1] > 1) & (xy[:, 1] < c.height - 2)
        idx = np.flatnonzero(vis)[ok]
        xy = xy[ok]
        near = np.stack([t * np.ones(len(xy)), xy[:, 1], xy[:, 0]], -1)
        same = np.ones(len(xy), bool)
        for dx, dy in ((-1.5, 0), (1.5, 0), (0, -1.5), (0, 1.5)):
            same &= c.layer_ids(near + [0, dy, dx]) == c.query_layers[idx]
        idx, xy = idx[same], xy[same]
        errs.append(np.abs(_bilinear(c.video[t], xy[:, 0], xy[:, 1]) - q_col[idx]).mean(-1))
        shifted = _bilinear(c.video[t], np.clip(xy[:, 0] + 3, 0, c.width - 1), xy[:, 1])
        wrong.append(np.abs(shifted - q_col[idx]).mean(-1))
    err, wrong = np.concatenate(errs), np.concatenate(wrong)
    assert err.size > 100
    assert np.median(err) < 4.0 and np.median(wrong) > 3 * np.median(err)


def test_difficulty_properties():
    stats = {}
    for d in DIFFICULTIES:
        c = generate_clip(d, seed=0)
        tr = c.tracks
        out = ~in_frame(tr[..., 0], tr[..., 1], c.height, c.width)
        fg = c.query_layers > 0
        occluded_by_layer = c.occluded & ~out
        # points that get hidden and come back into view
        reappear = (c.occluded[:, :-1] & ~c.occluded[:, 1:]).any(axis=1)
        speed = np.linalg.norm(np.diff(tr[fg], axis=1), axis=-1).mean()
        stats[d] = dict(layers=c.num_layers - 1, occ=occluded_by_layer.mean(),
                        fg_out=out[fg].any(), reappear=reappear.mean(), speed=speed)
    assert 1 <= stats["easy"]["layers"] <= 2 and stats["easy"]["occ"] < 0.05
    assert stats["medium"]["layers"] == 3 and stats["medium"]["occ"] > 0.04
    assert stats["hard"]["layers"] == 4 and stats["hard"]["fg_out"]
    assert stats["hard"]["reappear"] > stats["easy"]["reappear"]
    assert stats["easy"]["speed"] < stats["medium"]["speed"] < stats["hard"]["speed"]


def test_strided_queries(clips):
    c = clips["hard"]
    q = c.strided_queries(stride=5)
    assert set(np.unique(q[:, 0]).tolist()) == {0.0, 5.0, 10.0, 15.0}
    tr, occ = c.ground_truth(q)
    rows = np.arange(len(q))
    tq = q[:, 0].astype(int)
    np.testing.assert_allclose(tr[rows, tq], q[:, [2, 1]], atol=1e-9)
    assert not occ[rows, tq].any()
    assert np.array_equal(q, c.strided_queries(stride=5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="difficulty"):
        generate_clip("impossible")
    c = generate_clip("easy", num_frames=4, height=24, width=24)
    with pytest.raises(ValueError, match="outside the video"):
        c.ground_truth(np.array([[9.0, 1.0, 1.0]]))


def test_exact_motion_matches_ground_truth():
    c = generate_clip("hard", num_frames=6, height=24, width=32, seed=2)
    m = c.exact_motion()
    m.validate()
    assert m.flows.shape == (6, 6, 24, 32, 2) and m.source == "synthetic-exact"
    assert not (m.cycle & m.occluded).any()
    assert not m.cycle[np.arange(6), np.arange(6)].any()
    i, j, y, x = 1, 4, 10, 20
    tr, occ = c.ground_truth(np.array([[i, y, x]], float))
    np.testing.assert_allclose(m.flows[i, j, y, x], tr[0, j] - [x, y], atol=1e-4)
    assert m.cycle[i, j, y, x] == (not occ[0, j])
    # occlusion masks only for close pairs (as the original's), visibility for all pairs
    assert not m.occluded[0, 5].any() and m.cycle[0, 5].any()
    assert m.flow_stats[i, j] == int(m.cycle[i, j].sum() + m.occluded[i, j].sum())
