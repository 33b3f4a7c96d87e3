"""The tracker: query handling, occlusion rule, dense outputs, saving and loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

import omnifast
from omnifast.model.checkpoint import CheckpointError, save_checkpoint
from omnifast.model.omnimotion import OmniMotion
from omnifast.model.rays import EPS_FACTOR
from omnifast.track import Tracker, load_tracker

CFG = TINY_MODEL
T, H, W = 5, 12, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """These models are tiny: one thread is faster than two and immune to a busy machine."""


@pytest.fixture(scope="module")
def tracker():
    return Tracker(OmniMotion(CFG, T, seed=0), H, W, preset="tiny")


def test_track_shapes_and_query_frame(tracker):
    q = np.array([[0, 3, 4], [2, 5.5, 10.25], [4, 0, 0]], np.float32)
    tracks, occ = tracker.track(q)
    assert tracks.shape == (3, T, 2) and tracks.dtype == np.float32
    assert occ.shape == (3, T) and occ.dtype == bool
    # at its own frame a query is itself (as (x, y)) and visible
    for n, (t, y, x) in enumerate(q):
        assert tracks[n, int(t)].tolist() == [x, y]
        assert not occ[n, int(t)]
    assert np.isfinite(tracks).all()


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_anchor_is_the_largest_weight(tracker, backend):
    px = torch.tensor([[1.0, 2.0], [7.0, 9.0], [15.0, 11.0]])
    frames = torch.tensor([0, 3, 4])
    u, sigma = tracker.rays.density(frames, px)
    _, _, w = tracker.model.render(u)
    expect = u[torch.arange(3), w.argmax(-1)]
    with omnifast.backend(backend):
        torch.testing.assert_close(tracker.rays.anchors(frames, px), expect)


def test_chunking_does_not_change_results(tracker):
    q = tracker.grid_queries(1, spacing=3)
    a = tracker.track(q, chunk_size=7)
    # 64 points per call force several target-frame groups per chunk
    small = Tracker(tracker.model, H, W, points_per_call=64)
    b = small.track(q, chunk_size=1000)
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-4)
    assert (a[1] == b[1]).all()


def test_track_matches_dense_correspondence(tracker):
    flow, occ = tracker.correspondence(1, 3)
    assert flow.shape == (H, W, 2) and occ.shape == (H, W)
    q = np.array([[1, 2, 5], [1, 7, 11]], np.float32)
    tracks, occluded = tracker.track(q, frames=[3])
    for n, (_, y, x) in enumerate(q.astype(int)):
        np.testing.assert_allclose(tracks[n, 0], np.array([x, y]) + flow[y, x], atol=1e-4)
        assert occluded[n, 0] == occ[y, x]


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 2)), r"shape \[N, 3\]"),
    (np.zeros((2, 3, 1)), r"shape \[N, 3\]"),
    (np.array([[5, 1, 1]]), "outside the video"),
    (np.array([[-1, 1, 1]]), "outside the video"),
    (np.array([[0.5, 1, 1]]), "whole frame"),
    (np.array([[0, np.nan, 1]]), "NaN"),
    (np.array([["a", "b", "c"]]), "numbers"),
])
def test_bad_queries(tracker, bad, match):
    with pytest.raises(ValueError, match=match):
        tracker.track(bad)


def test_empty_queries(tracker):
    tracks, occ = tracker.track(np.zeros((0, 3)))
    assert tracks.shape == (0, T, 2) and occ.shape == (0, T)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_occlusion_rule(backend):
    """An opaque first sample absorbs all light: points behind it are occluded, not at it."""
    model = OmniMotion(CFG, T, seed=0)
    with torch.no_grad():
        model.color_mlp.output_linear.weight.zero_()
        model.color_mlp.output_linear.bias.fill_(50.0)  # density ~49 everywhere
    tr = Tracker(model, H, W)
    px = torch.tensor([[3.0, 4.0]] * 4)
    frames = torch.tensor([0, 2, 4, 1])
    eps = EPS_FACTOR * 2.0 / CFG.num_samples
    z = torch.tensor([0.0, 0.9 * eps, 1.01 * eps, 1.5])
    # the opaque sample at depth 0 is "in front" only when 0 < z - eps
    with omnifast.backend(backend):
        assert tr.rays.occluded(frames, px, z).tolist() == [False, False, True, True]


def test_grid_render_and_depth(tracker):
    q = tracker.grid_queries(2, num_points=20)
    assert q.shape[1] == 3 and (q[:, 0] == 2).all()
    assert (q[:, 1] < H).all() and (q[:, 2] < W).all() and 10 <= len(q) <= 40
    rgb, depth = tracker.render([0, 4])
    assert rgb.shape == (2, H, W, 3) and depth.shape == (2, H, W)
    assert (rgb >= 0).all() and (rgb <= 1).all() and np.isfinite(depth).all()
    np.testing.assert_allclose(tracker.depth_maps([4]), depth[1:], atol=1e-6)
    with pytest.raises(ValueError, match="outside the video"):
        tracker.grid_queries(T)


def test_frames_are_a_checked_field(tracker):
    frames = np.zeros((T, H, W, 3), np.uint8)
    assert Tracker(tracker.model, H, W, frames=frames).frames is frames
    assert tracker.frames is None
    with pytest.raises(ValueError, match="fitted clip"):
        Tracker(tracker.model, H, W, frames=frames[1:])


def test_save_load_roundtrip(tracker, tmp_path):
    tracker.save(tmp_path / "tracker.pt")
    loaded = load_tracker(tmp_path)  # the folder works too
    assert (loaded.height, loaded.width, loaded.num_frames, loaded.preset) == (H, W, T, "tiny")
    q = tracker.grid_queries(0, spacing=5)
    a, b = tracker.track(q), loaded.track(q)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert loaded.frames is None  # frames are not saved


def test_load_rejects_bad_files(tracker, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tracker(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError):
        load_tracker(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError):
        load_tracker(tmp_path / "foreign.pt")
    save_checkpoint(tracker.model, tmp_path / "model.pt")  # a model, not a tracker
    with pytest.raises(CheckpointError, match="not a tracker"):
        load_tracker(tmp_path / "model.pt")
    good = tmp_path / "good.pt"
    tracker.save(good)
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated
    with pytest.raises(CheckpointError):
        load_tracker(good)
