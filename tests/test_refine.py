"""Appearance refinement: recovers known sub-pixel motion of a textured image, leaves what it
must not touch alone, validates its inputs; and the tracker methods that feed it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from omnifast.refine import RefineConfig, frame_flows, refine_tracks, similarity_part
from omnifast.refine.candidates import direct_flow_positions

H, W = 48, 64


def _texture(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """A smooth analytic colour texture (sums of sinusoids): exact at any sub-pixel position.
    [..., 3] float in [0, 1]"""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        v = np.zeros_like(x, dtype=np.float64)
        for _ in range(6):
            f = rng.uniform(0.15, 0.45, 2) * rng.choice([-1, 1], 2)
            v += np.sin(f[0] * x + f[1] * y + rng.uniform(0, 2 * np.pi))
        out.append(0.5 + v / 12.0)
    return np.stack(out, -1)


def _video(motions) -> np.ndarray:
    """Frames where frame t shows the texture moved by the map ``motions[t]`` (a function from
    frame-t pixel coordinates back to texture coordinates). [T, H, W, 3] float"""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([_texture(*m(xx, yy)) for m in motions]).astype(np.float32)


def _shift(dx, dy):
    return lambda x, y: (x - dx, y - dy)


SHIFTS = [(0.0, 0.0), (0.6, -0.35), (1.7, 0.45), (-0.8, 1.25)]


def _queries(n=30, seed=1):
    rng = np.random.default_rng(seed)
    return np.stack([np.zeros(n), rng.uniform(12, H - 12, n), rng.uniform(12, W - 12, n)], 1)


def _truth(q, shifts):
    return np.stack([q[:, [2, 1]] + np.array(s) for s in shifts], 1)


@pytest.mark.parametrize(("iterations", "robust"), [(4, True), (4, False), (0, False)])
def test_recovers_a_subpixel_translation(iterations, robust):
    video = _video([_shift(*s) for s in SHIFTS])
    q = _queries()
    truth = _truth(q, SHIFTS)
    rng = np.random.default_rng(2)
    # a model's errors are smooth in time: up to 2 px per query, drifting by up to 0.3 px
    pred = truth + rng.uniform(-2.0, 2.0, (len(q), 1, 2)) \
        + rng.uniform(-0.3, 0.3, truth.shape)
    pred[:, 0] = q[:, [2, 1]]
    out, score = refine_tracks(video, q, pred,
                               config=RefineConfig(iterations=iterations, robust=robust))
    assert out.shape == pred.shape and out.dtype == np.float32
    err0 = np.abs(pred[:, 1:] - truth[:, 1:]).max()
    err = np.abs(out[:, 1:] - truth[:, 1:])
    # Gauss-Newton steps reach a small fraction of a pixel; the parabola only half a pixel
    tol = 0.05 if iterations else 0.5
    assert err.max() < tol < err0, (err.max(), err0)
    assert np.isnan(score[:, 0]).all() and (score[:, 1:] > 0.95).all()
    assert (out[:, 0] == q[:, [2, 1]].astype(np.float32)).all()  # the query itself


def test_a_frame_without_a_match_takes_its_neighbours_correction():
    shifts = [(0.0, 0.0), (0.4, 0.2), (0.9, 0.3), (1.3, 0.5), (1.8, 0.6)]
    video = _video([_shift(*s) for s in shifts])
    video[2] = np.random.default_rng(4).uniform(0, 1, video[2].shape)  # nothing to match
    q = _queries(10)
    truth = _truth(q, shifts)
    pred = truth + np.array([1.5, -1.2])  # the same model error in every frame
    pred[:, 0] = q[:, [2, 1]]
    out, score = refine_tracks(video, q, pred)
    raw, _ = refine_tracks(video, q, pred, config=RefineConfig(temporal_median=1))
    # unfiltered, frame 2 keeps the model's error; filtered, it gets frames 1 and 3's fix
    np.testing.assert_array_equal(raw[:, 2], pred[:, 2].astype(np.float32))
    assert np.abs(out[:, 2] - truth[:, 2]).max() < 0.05
    others = [1, 3, 4]
    np.testing.assert_allclose(out[:, others], raw[:, others])
    assert np.abs(out[:, others] - truth[:, others]).max() < 0.05
    # frames flagged occluded are not moved by the filter
    occ = np.zeros((10, 5), bool)
    occ[:, 2] = True
    out_o, _ = refine_tracks(video, q, pred, occ)
    np.testing.assert_array_equal(out_o[:, 2], pred[:, 2].astype(np.float32))


def test_follows_rotation_with_the_jacobian():
    ang = np.deg2rad(25.0)
    c, s = np.cos(ang), np.sin(ang)
    cx, cy = W / 2, H / 2

    def rot(a):
        ca, sa = np.cos(a), np.sin(a)
        # frame pixel -> texture: rotate back by a about the centre
        return lambda x, y: (ca * (x - cx) + sa * (y - cy) + cx,
                             -sa * (x - cx) + ca * (y - cy) + cy)

    video = _video([rot(0.0), rot(ang)])
    q = _queries(20, seed=3)
    x, y = q[:, 2] - cx, q[:, 1] - cy
    truth = np.stack([q[:, [2, 1]], np.stack([c * x - s * y + cx, s * x + c * y + cy], 1)], 1)
    pred = truth.copy()
    pred[:, 1] += np.array([1.3, -0.9])
    jac = np.zeros((len(q), 2, 2, 2), np.float32)
    jac[:, 0] = np.eye(2)
    jac[:, 1] = np.array([[c, -s], [s, c]])
    out, score = refine_tracks(video, q, pred, jacobians=jac, config=RefineConfig(radius=3))
    assert np.abs(out[:, 1] - truth[:, 1]).max() < 0.1
    assert (score[:, 1] > 0.95).all()


def test_later_passes_warp_by_the_matched_similarity():
    # a layer turning by 7 degrees and growing by 4 % a frame; the Jacobians given say it does
    # neither: one pass loses precision as the rotation grows, later passes warp the
    # templates by the transform the windows' matches fitted and recover the point
    cx, cy = W / 2, H / 2
    angs, scales = np.deg2rad(7.0 * np.arange(5)), 1.0 + 0.04 * np.arange(5)

    def sim(a, k):
        ca, sa = np.cos(a), np.sin(a)
        return lambda x, y: ((ca * (x - cx) + sa * (y - cy)) / k + cx,
                             (-sa * (x - cx) + ca * (y - cy)) / k + cy)

    video = _video([sim(a, k) for a, k in zip(angs, scales)])
    q = _queries(20, seed=3)
    x, y = q[:, 2] - cx, q[:, 1] - cy
    truth = np.stack([np.stack([k * (np.cos(a) * x - np.sin(a) * y) + cx,
                                k * (np.sin(a) * x + np.cos(a) * y) + cy], 1)
                      for a, k in zip(angs, scales)], 1)
    pred = truth + np.array([1.0, -0.7])
    pred[:, 0] = q[:, [2, 1]]
    jac = np.broadcast_to(np.eye(2, dtype=np.float32), (len(q), 5, 2, 2))
    err1 = np.linalg.norm(refine_tracks(video, q, pred, jacobians=jac,
                                        config=RefineConfig(passes=1))[0] - truth,
                          axis=-1)
    out, score = refine_tracks(video, q, pred, jacobians=jac, config=RefineConfig(passes=4))
    err4 = np.linalg.norm(out - truth, axis=-1)
    assert err1[:, 3:].max() > 1.0
    assert err4.max() < 0.1, err4.max(0)
    assert (score[:, 1:] > 0.99).all()


def test_fallback_search_beyond_the_first_window():
    video = _video([_shift(*s) for s in SHIFTS])
    q = _queries(12, seed=6)
    truth = _truth(q, SHIFTS)
    pred = truth + np.array([4.6, -3.7])  # beyond the first search's 3 px
    pred[:, 0] = q[:, [2, 1]]
    jac = np.broadcast_to(np.eye(2, dtype=np.float32), (len(q), len(SHIFTS), 2, 2))
    out, score = refine_tracks(video, q, pred, jacobians=jac)
    assert np.abs(out[:, 1:] - truth[:, 1:]).max() < 0.05
    assert (score[:, 1:] >= 0.9).all()  # accepted by the stricter second threshold
    # without the second search nothing is found: the prediction stays
    out0, _ = refine_tracks(video, q, pred, jacobians=jac,
                            config=RefineConfig(fallback_search=0))
    np.testing.assert_array_equal(out0[:, 1:], pred[:, 1:].astype(np.float32))


def test_similarity_part():
    ang, scale = 0.3, 1.2
    rs = scale * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    np.testing.assert_allclose(similarity_part(rs), rs, atol=1e-6)
    shear = np.array([[[1.0, 0.4], [0.0, 1.0]]])
    np.testing.assert_allclose(similarity_part(shear), [[[1.0, 0.2], [-0.2, 1.0]]], atol=1e-6)
    # the nearest one: the residual is orthogonal to the similarity matrices
    rng = np.random.default_rng(0)
    m = rng.normal(size=(5, 2, 2))
    res = m - similarity_part(m)
    for basis in (np.eye(2), np.array([[0.0, -1.0], [1.0, 0.0]])):
        np.testing.assert_allclose((res * basis).sum((-1, -2)), 0.0, atol=1e-6)


def test_occluded_outside_and_textureless_frames_are_left_alone():
    video = _video([_shift(*s) for s in SHIFTS])
    q = _queries(12)
    truth = _truth(q, SHIFTS)
    pred = truth + 1.0
    pred[:, 0] = q[:, [2, 1]]
    occ = np.zeros(pred.shape[:2], bool)
    occ[:6, 2] = True
    pred[6:, 3] = [W + 5.0, 10.0]  # predicted outside the frame
    out, score = refine_tracks(video, q, pred, occ)
    np.testing.assert_array_equal(out[:6, 2], pred[:6, 2].astype(np.float32))
    np.testing.assert_array_equal(out[6:, 3], pred[6:, 3].astype(np.float32))
    assert np.isnan(score[:6, 2]).all() and np.isnan(score[6:, 3]).all()
    assert np.abs(out[6:, 2] - truth[6:, 2]).max() < 0.05  # the others are refined
    # a flat video gives no confident match anywhere: nothing moves
    flat = np.full_like(video, 0.5)
    out2, _ = refine_tracks(flat, q, pred)
    np.testing.assert_array_equal(out2[:, 1:], pred[:, 1:].astype(np.float32))


def test_backward_in_time_and_uint8_frames():
    video = _video([_shift(*s) for s in SHIFTS])
    v8 = np.clip(np.rint(video * 255), 0, 255).astype(np.uint8)
    q = _queries(15, seed=4)
    q[:, 0] = 3
    q[:, 1:] = q[:, 1:] + np.array(SHIFTS[3])[::-1]  # (y, x) of frame 3
    truth = np.stack([q[:, [2, 1]] + np.array(s) - np.array(SHIFTS[3]) for s in SHIFTS], 1)
    pred = truth + np.array([-1.2, 0.7])
    pred[:, 3] = q[:, [2, 1]]
    out, _ = refine_tracks(v8, q, pred)
    assert np.abs(out[:, :3] - truth[:, :3]).max() < 0.1  # uint8 rounding costs a little


def _boundary_clip(shifts, boundary=30.0):
    """Layer A (x < boundary + s, moving right by s) occludes a still layer B."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    frames = []
    for s in shifts:
        a = _texture(xx - s, yy, seed=0)
        b = _texture(xx, yy, seed=5)
        frames.append(np.where((xx < boundary + s)[..., None], a, b))
    return np.stack(frames).astype(np.float32)


def _true_weights(q, shifts, boundary=30.0, radius=2, sigma=0.25):
    """What Tracker.template_weights computes for _boundary_clip with an exact model."""
    ar = np.arange(-radius, radius + 1)
    oy, ox = np.meshgrid(ar, ar, indexing="ij")
    ox = ox.reshape(-1)
    on_a = (q[:, 2:3] + ox[None]) < boundary  # [N, P]
    side = 2 * radius + 1
    w = np.empty((len(q), len(shifts), side * side))
    for t, s in enumerate(shifts):
        resid = np.where(on_a, 0.0, s)  # B pixels stay, the query moves by s
        w[:, t] = np.exp(-resid ** 2 / (2 * sigma * sigma))
    w = w.reshape(len(q), len(shifts), side, side)
    pad = np.pad(w, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    ero = np.min([pad[:, :, i:i + side, j:j + side] for i in range(3) for j in range(3)], 0)
    return ero.reshape(len(q), len(shifts), -1)


def test_boundary_weights_keep_the_query_layer():
    shifts = [0.0, 1.3, 2.6, 3.4]
    video = _boundary_clip(shifts)
    ys = np.linspace(10, H - 10, 8)
    q = np.stack([np.zeros(8), ys, np.full(8, 28.4)], 1)  # 1.6 px left of the boundary
    truth = np.stack([q[:, [2, 1]] + np.array([s, 0.0]) for s in shifts], 1)
    pred = truth + np.array([0.8, -0.6])
    pred[:, 0] = q[:, [2, 1]]
    w = _true_weights(q, shifts)
    assert w[:, 0].min() == 1.0 and w[:, 1:].mean() < 0.8  # the right columns are dropped
    centred = RefineConfig(window_shift=0)
    out_w, _ = refine_tracks(video, q, pred, weights=w,
                             config=RefineConfig(min_support=0.0, window_shift=0))
    out_u, _ = refine_tracks(video, q, pred, config=centred)
    err_w = np.abs(out_w[:, 1:] - truth[:, 1:]).max()
    err_u = np.abs(out_u[:, 1:] - truth[:, 1:]).max()
    assert err_w < 0.1 < err_u, (err_w, err_u)
    # all-one weights are the unweighted match
    ones = np.ones_like(w)
    np.testing.assert_allclose(refine_tracks(video, q, pred, weights=ones, config=centred)[0],
                               out_u, atol=1e-4)
    # too little support (the default threshold): the model's position is kept
    out_s, score = refine_tracks(video, q, pred, weights=w, config=centred)
    np.testing.assert_array_equal(out_s[:, 1:], pred[:, 1:].astype(np.float32))
    assert np.isnan(score[:, 1:]).all()


def test_off_centre_windows_find_the_point_next_to_a_boundary():
    # the clip above, queries 1 px from the boundary: the centred window straddles it, the
    # windows 2 px to the left lie on the query's layer and their consensus places the point
    shifts = [0.0, 1.3, 2.6, 3.4]
    video = _boundary_clip(shifts)
    ys = np.linspace(10, H - 10, 8)
    q = np.stack([np.zeros(8), ys, np.full(8, 29.0)], 1)
    truth = np.stack([q[:, [2, 1]] + np.array([s, 0.0]) for s in shifts], 1)
    pred = truth + np.array([0.8, -0.6])
    pred[:, 0] = q[:, [2, 1]]
    out, score = refine_tracks(video, q, pred)
    err = np.linalg.norm(out[:, 1:] - truth[:, 1:], axis=-1)
    centred = RefineConfig(window_shift=0)
    err0 = np.linalg.norm(refine_tracks(video, q, pred, config=centred)[0][:, 1:]
                          - truth[:, 1:], axis=-1)
    assert err.mean() < 0.15 and err.mean() < 0.5 * err0.mean(), (err.mean(), err0.mean())
    assert err.max() < 0.5 < err0.max(), (err.max(), err0.max())
    assert (score[:, 1:] >= 0.97).all()
    # at the image's corner the windows outside the image are left out
    corner = np.array([[0.0, 0.0, 0.0]])
    c_out, _ = refine_tracks(video, corner, np.zeros((1, 4, 2)))
    assert c_out.shape == (1, 4, 2) and np.isfinite(c_out).all()
    with pytest.raises(ValueError, match="window_shift"):
        refine_tracks(video, q, pred, weights=np.ones((8, 4, 25)))


def test_window_consensus_fits_a_similarity():
    # matched window centres of a turned and scaled layer, one window on another layer and
    # one not matched: the fit recovers the point, leaves the outlier out and counts the rest
    from omnifast.refine import patch_offsets
    from omnifast.refine.consensus import window_consensus

    sh = (patch_offsets(1) * 2.0).numpy()
    ang, scale, c = 0.3, 1.2, np.array([40.0, 30.0])
    a, b = scale * np.cos(ang), scale * np.sin(ang)
    mat = np.array([[a, -b], [b, a]])
    pos = (c + sh @ mat.T)[None, :, None].astype(np.float32)  # [1, 9, 1, 2]
    pos[0, 2, 0] += np.array([4.0, -3.0], np.float32)  # another layer
    good = np.ones((1, 9, 1), bool)
    good[0, 7, 0] = False
    fitted, count, lin = window_consensus(pos, good, sh)
    np.testing.assert_allclose(fitted[0, 0], c, atol=1e-3)
    np.testing.assert_allclose(lin[0, 0], mat, atol=1e-3)
    assert count[0, 0] == 7


def test_fill_nearest():
    from omnifast.refine.consensus import fill_nearest

    x = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 2, 2)
    valid = np.array([[False, False, False, True, False],
                      [False, False, False, False, False]])
    out = fill_nearest(x, valid, np.array([0, 2]))
    eye = np.eye(2, dtype=np.float32)
    # query 0: its own frame (0) the identity, frame 1 nearer to 0 than 3, frames 2-4 from 3
    for t, want in enumerate([eye, eye, x[0, 3], x[0, 3], x[0, 3]]):
        np.testing.assert_array_equal(out[0, t], want)
    # query 1: nothing estimated, the identity of its query frame everywhere
    np.testing.assert_array_equal(out[1], np.broadcast_to(eye, (5, 2, 2)))


def _translation_flows(shifts):
    """Exact frame-to-frame flows of a video of translations: (forward, backward)."""
    d = np.diff(np.asarray(shifts, np.float32), axis=0)  # [T-1, 2]
    fwd = np.broadcast_to(d[:, None, None], (len(d), H, W, 2)).copy()
    return fwd, -fwd


@pytest.mark.parametrize("backwards", [False, True])
def test_flow_candidates_recover_a_lost_track(backwards):
    shifts = [(0.0, 0.0), (1.3, 0.4), (2.5, 0.9), (3.4, 1.7), (4.6, 2.2), (5.5, 3.1)]
    video = _video([_shift(*s) for s in shifts])
    q = _queries(12, seed=8)
    truth = _truth(q, shifts)
    # the model follows the point for two frames, then jumps 10 px away and stays there
    pred = truth.copy()
    pred[:, 3:] += np.array([10.0, -7.0])
    flows = _translation_flows(shifts)
    if backwards:  # the same clip played backwards, queried in its last frame
        video, truth, pred = video[::-1].copy(), truth[:, ::-1], pred[:, ::-1]
        flows = (flows[1][::-1].copy(), flows[0][::-1].copy())
        q = q.copy()
        q[:, 0] = len(shifts) - 1
    out, score = refine_tracks(video, q, pred, flows=flows)
    assert np.abs(out - truth).max() < 0.05
    assert (score[np.isfinite(score)] > 0.95).all()
    # without the flow's candidates the jump is beyond both searches: the track stays lost
    out0, _ = refine_tracks(video, q, pred)
    lost = slice(3, None) if not backwards else slice(None, -3)
    assert np.abs(out0[:, lost] - truth[:, lost]).min() > 5.0


def test_flow_candidates_do_not_override_a_better_model_match():
    # the flow is 6 px wrong in one frame; the model is right: its match wins, and the chain
    # goes on from the matched position
    video = _video([_shift(*s) for s in SHIFTS])
    q = _queries(12, seed=9)
    truth = _truth(q, SHIFTS)
    fwd, bwd = _translation_flows(SHIFTS)
    fwd[1] += np.array([6.0, 0.0], np.float32)
    out, _ = refine_tracks(video, q, truth + 0.4, flows=(fwd, bwd),
                           config=RefineConfig(fallback_search=0))
    assert np.abs(out - truth).max() < 0.05


def _noisy_translation(shifts, seed=12):
    """A translating texture with fresh pixel noise in every frame: no match is perfect."""
    video = _video([_shift(*s) for s in shifts])
    noise = np.random.default_rng(seed).normal(0.0, 0.03, video.shape)
    return (video + noise).astype(np.float32)


def test_flow_fallback_follows_the_flow_where_nothing_matches():
    # no candidate can be accepted (min_score 1: the frames are noisy); with the fallback the
    # unmatched frames take the flow chain's position, without it the model's wrong one
    shifts = [(0.0, 0.0), (1.5, 0.5), (3.0, 1.0), (4.5, 1.5), (6.0, 2.0)]
    video = _noisy_translation(shifts)
    q = _queries(10, seed=13)
    truth = _truth(q, shifts)
    pred = truth + np.array([9.0, -6.0])  # a model lost by 11 px from the first frame on
    pred[:, 0] = q[:, [2, 1]]
    flows = _translation_flows(shifts)
    strict = RefineConfig(min_score=1.0, fallback_search=0)
    out, score = refine_tracks(video, q, pred, flows=flows, config=strict)
    np.testing.assert_allclose(out[:, 1:], truth[:, 1:], atol=1e-3)
    assert np.isnan(score[:, 0]).all() and (score[:, 1:] < 1.0).all()
    off, _ = refine_tracks(video, q, pred, flows=flows,
                           config=dataclasses.replace(strict, flow_fallback=False))
    np.testing.assert_array_equal(off[:, 1:], pred[:, 1:].astype(np.float32))
    # without flows there is nothing to fall back on: the fallback setting changes nothing
    np.testing.assert_array_equal(refine_tracks(video, q, pred, config=strict)[0], off)


@pytest.mark.parametrize("window_shift", [0, 2])
def test_direct_candidates_recover_a_track_lost_beyond_every_search(window_shift):
    shifts = [(0.0, 0.0), (1.2, 0.4), (2.6, 0.9), (3.5, 1.6)]
    video = _video([_shift(*s) for s in shifts])
    q = _queries(12, seed=14)
    q[::2, 0] = 3  # half of them queried in the last frame: backwards too
    truth = np.stack([q[:, [2, 1]] + np.subtract(s, np.array(shifts)[q[:, 0].astype(int)])
                      for s in shifts], 1)
    pred = truth + np.array([12.0, 9.0])  # beyond both searches (3 and 6 px)
    pred[np.arange(len(q)), q[:, 0].astype(int)] = q[:, [2, 1]]
    cfg = RefineConfig(window_shift=window_shift)
    out, _ = refine_tracks(video, q, pred, direct=truth + 0.7, config=cfg)
    assert np.abs(out - truth).max() < 0.05
    lost, _ = refine_tracks(video, q, pred, config=cfg)
    far = np.ones(lost.shape[:2], bool)
    far[np.arange(len(q)), q[:, 0].astype(int)] = False
    assert np.abs(lost - truth).max(-1)[far].min() > 5.0


def test_direct_flow_positions_of_a_translation():
    shifts = [(0.0, 0.0), (1.0, 0.5), (2.5, -0.5), (3.0, 1.0)]
    video = (_video([_shift(*s) for s in shifts]) * 255).round().astype(np.uint8)
    q = _queries(16, seed=15)
    q[1::2, 0] = 2
    qt = q[:, 0].astype(int)
    got = direct_flow_positions(video, q[:, [2, 1]], qt)
    assert got.shape == (16, 4, 2) and got.dtype == np.float32
    want = np.stack([q[:, [2, 1]] + np.subtract(s, np.array(shifts)[qt]) for s in shifts], 1)
    np.testing.assert_array_equal(got[np.arange(16), qt], q[:, [2, 1]].astype(np.float32))
    assert np.median(np.abs(got - want)) < 0.1 and np.abs(got - want).max() < 0.5
    assert direct_flow_positions(video, np.zeros((0, 2)), np.zeros(0, int)).shape == (0, 4, 2)


def test_frame_flows_of_a_translation():
    shifts = [(0.0, 0.0), (1.0, 0.5), (2.5, 0.0)]
    video = (_video([_shift(*s) for s in shifts]) * 255).round().astype(np.uint8)
    fwd, bwd = frame_flows(video)
    assert fwd.shape == bwd.shape == (2, H, W, 2) and fwd.dtype == np.float32
    inner = (slice(8, -8), slice(8, -8))
    for i in range(2):
        step = np.subtract(shifts[i + 1], shifts[i])
        assert np.abs(np.median(fwd[i][inner].reshape(-1, 2), 0) - step).max() < 0.15
        assert np.abs(np.median(bwd[i][inner].reshape(-1, 2), 0) + step).max() < 0.15
    f1, b1 = frame_flows(video[:1])
    assert f1.shape == b1.shape == (0, H, W, 2)
    with pytest.raises(ValueError, match="video"):
        frame_flows(video[0, 0])


def test_input_validation_and_empty():
    video = _video([_shift(0, 0), _shift(1, 0)])
    q = _queries(3)
    pred = _truth(q, [(0, 0), (1, 0)])
    with pytest.raises(ValueError, match="query points must have shape"):
        refine_tracks(video, q[:, :2], pred)
    with pytest.raises(ValueError, match="tracks"):
        refine_tracks(video, q, pred[:, :1])
    with pytest.raises(ValueError, match="occluded"):
        refine_tracks(video, q, pred, np.zeros((3, 5), bool))
    with pytest.raises(ValueError, match="jacobians"):
        refine_tracks(video, q, pred, jacobians=np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="outside the video"):
        refine_tracks(video, np.array([[5, 10, 10]]), pred[:1])
    with pytest.raises(ValueError, match="whole frame"):
        refine_tracks(video, np.array([[0.5, 10, 10]]), pred[:1])
    with pytest.raises(ValueError, match="video"):
        refine_tracks(video[0, 0], q, pred)
    with pytest.raises(ValueError, match="finite"):
        refine_tracks(video, q, pred, jacobians=np.full((3, 2, 2, 2), np.nan))
    with pytest.raises(ValueError, match="weights must be"):
        refine_tracks(video, q, pred, weights=np.ones((3, 2, 9)))
    with pytest.raises(ValueError, match="finite"):
        refine_tracks(video, q, pred, weights=np.full((3, 2, 25), np.nan))
    with pytest.raises(ValueError, match="forward flows"):
        refine_tracks(video, q, pred, flows=(np.zeros((2, H, W, 2)), np.zeros((1, H, W, 2))))
    with pytest.raises(ValueError, match="backward flows must be finite"):
        refine_tracks(video, q, pred, flows=(np.zeros((1, H, W, 2)),
                                             np.full((1, H, W, 2), np.nan)))
    with pytest.raises(ValueError, match="pair"):
        refine_tracks(video, q, pred, flows=np.zeros((1, H, W, 2)))
    with pytest.raises(ValueError, match="direct must be"):
        refine_tracks(video, q, pred, direct=pred[:2])
    with pytest.raises(ValueError, match="direct positions must be finite"):
        refine_tracks(video, q, pred, direct=np.full_like(pred, np.nan))
    with pytest.raises(TypeError, match="RefineConfig"):
        refine_tracks(video, q, pred, config={"radius": 2})
    out, score = refine_tracks(video, np.zeros((0, 3)), np.zeros((0, 2, 2)))
    assert out.shape == (0, 2, 2) and score.shape == (0, 2)
    out, _ = refine_tracks(video, np.zeros((0, 3)), np.zeros((0, 2, 2)),
                           direct=np.zeros((0, 2, 2)))
    assert out.shape == (0, 2, 2)


# ------------------------------------------------------------------------- tracker methods


@pytest.fixture(scope="module")
def tracker(one_thread):
    from omnifast.config import ModelConfig
    from omnifast.model.omnimotion import OmniMotion
    from omnifast.track import Tracker

    cfg = ModelConfig(code_dim=8, code_hidden=16, coupling_hidden=(16, 16, 16), proj_dim=16,
                      use_affine=False, color_hidden=16, num_samples=8)
    return Tracker(OmniMotion(cfg, 4, seed=0), H, W, preset="tiny")


def test_tracker_positions_without_occlusion_and_jacobians(tracker):
    q = _queries(7)
    tr, occ = tracker.track(q)
    tr2, occ2 = tracker.track(q, with_occlusion=False)
    np.testing.assert_allclose(tr2, tr, rtol=0, atol=1e-5)
    assert not occ2.any()
    jac = tracker.local_jacobians(q)
    assert jac.shape == (7, 4, 2, 2) and np.isfinite(jac).all()
    # at the query frame a track is the query itself: its derivative is the identity
    np.testing.assert_allclose(jac[:, 0], np.broadcast_to(np.eye(2), (7, 2, 2)), atol=1e-5)
    # column 0 is the central difference along x
    qq = [q.copy(), q.copy()]
    qq[0][:, 2] += 1.5
    qq[1][:, 2] -= 1.5
    fd = (tracker.track(qq[0], with_occlusion=False)[0]
          - tracker.track(qq[1], with_occlusion=False)[0]) / 3.0
    np.testing.assert_allclose(jac[..., 0], fd, atol=1e-5)


def test_template_weights(tracker):
    q = _queries(4)
    tr = tracker.track(q, with_occlusion=False)[0]
    jac = tracker.local_jacobians(q)
    w = tracker.template_weights(q, tr, jac, radius=1, sigma=0.02, with_occlusion=False)
    assert w.shape == (4, 4, 9) and w.dtype == np.float32
    assert (w >= 0).all() and (w <= 1).all()
    np.testing.assert_allclose(w[:, 0], 1.0, atol=1e-6)  # the query frame is exact
    # by hand: track the 3x3 pixels, compare with the linear prediction, 3x3 minimum
    ar = np.arange(-1, 2)
    oy, ox = np.meshgrid(ar, ar, indexing="ij")
    offs = np.stack([ox.reshape(-1), oy.reshape(-1)], -1).astype(np.float64)
    expect = np.empty((4, 4, 9))
    for p, (dx, dy) in enumerate(offs):
        qq = q.copy()
        qq[:, 2] += dx
        qq[:, 1] += dy
        moved = tracker.track(qq, with_occlusion=False)[0]
        lin = tr + np.einsum("ntab,b->nta", jac, offs[p])
        expect[:, :, p] = np.exp(-((moved - lin) ** 2).sum(-1) / (2 * 0.02 ** 2))
    e = expect.reshape(4, 4, 3, 3)
    pad = np.pad(e, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    ero = np.min([pad[:, :, i:i + 3, j:j + 3] for i in range(3) for j in range(3)], 0)
    np.testing.assert_allclose(w, ero.reshape(4, 4, 9), atol=1e-5)
    assert w[:, 1:].min() < 0.9  # the random model is not a translation: a real check
    # with occlusion the weights can only drop
    wo = tracker.template_weights(q, tr, jac, radius=1, sigma=0.02)
    assert (wo <= w + 1e-6).all()
    with pytest.raises(ValueError, match="sigma"):
        tracker.template_weights(q, sigma=0.0)


def test_track_refined_checks_the_video(tracker):
    q = _queries(5)
    video = _video([_shift(0.3 * t, 0) for t in range(4)])
    tr, occ = tracker.track_refined(q, video)
    ref_occ = tracker.track(q)[1]
    assert tr.shape == (5, 4, 2) and (occ == ref_occ).all()
    with pytest.raises(ValueError, match="fitted clip"):
        tracker.track_refined(q, video[:3])
    with pytest.raises(ValueError, match="fitted clip"):
        tracker.track_refined(q, video[:, :20])


def _tracker_clip(n=6):
    video = (_video([_shift(0.3 * t, 0.1 * t) for t in range(4)]) * 255).round().astype(np.uint8)
    q = _queries(n)
    q[::3, 0] = 2  # some queries in a later frame: both directions
    return video, q


def test_track_refined_is_the_fitted_path_with_the_clip_flows(tracker):
    # one path: the model's tracks, its Jacobians, the clip's flows, no frame left out
    video, q = _tracker_clip()
    tr = tracker.track(q)[0]
    jac = tracker.local_jacobians(q)
    direct = direct_flow_positions(video, q[:, [2, 1]], q[:, 0].astype(int))
    got, _ = tracker.track_refined(q, video)
    want, _ = refine_tracks(video, q, tr, jacobians=jac, flows=frame_flows(video))
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, tr)  # something was refined: a real check
    no_flow, _ = tracker.track_refined(q, video, flows=None)
    np.testing.assert_array_equal(no_flow, refine_tracks(video, q, tr, jacobians=jac)[0])
    direct = direct_flow_positions(video, q[:, [2, 1]], q[:, 0].astype(int))
    with_direct, _ = tracker.track_refined(q, video, direct_flow_candidates=True)
    np.testing.assert_array_equal(with_direct, refine_tracks(
        video, q, tr, jacobians=jac, flows=frame_flows(video), direct=direct)[0])


def test_track_refined_options_and_config_agree(tracker):
    # the keyword options of today and a RefineConfig with the same values give the same
    # tracks, so do explicit flows and the ones computed from the clip
    video, q = _tracker_clip()
    plain = tracker.track_refined(q, video)[0]
    np.testing.assert_array_equal(
        tracker.track_refined(q, video, flows=frame_flows(video))[0], plain)
    np.testing.assert_array_equal(tracker.track_refined(q, video, config=RefineConfig())[0],
                                  plain)
    two = tracker.track_refined(q, video, passes=2, radius=3)[0]
    np.testing.assert_array_equal(
        tracker.track_refined(q, video, config=RefineConfig(passes=2, radius=3))[0], two)
    assert not np.array_equal(two, plain)
    np.testing.assert_array_equal(
        tracker.track_refined(q, video, config=RefineConfig(flow_candidates=False))[0],
        tracker.track_refined(q, video, flows=None)[0])
    bw = tracker.track_refined(q, video, boundary_weights=True, min_support=0.0)[0]
    np.testing.assert_array_equal(
        tracker.track_refined(q, video, config=RefineConfig(
            boundary_weights=True, window_shift=0, min_support=0.0))[0], bw)
    with pytest.raises(ValueError, match="window_shift"):
        tracker.track_refined(q, video, boundary_weights=True, window_shift=2)
    with pytest.raises(ValueError, match="flow_candidates"):
        tracker.track_refined(q, video, flows=frame_flows(video), flow_candidates=False)


def test_eval_refines_as_track_refined(tracker, monkeypatch):
    # `omnifast eval` scores the tracks of Tracker.track_refined (it takes the same path)
    import omnifast.api
    from omnifast.eval.run import METHOD_REFINED, EvalClip, evaluate_clip

    monkeypatch.setattr(omnifast.api, "fit", lambda video, **kw: tracker)
    video, q = _tracker_clip(8)
    tr, occ = tracker.track(q)
    clip = EvalClip("random-model", video, q, tr, occ)
    _, preds = evaluate_clip(clip, baselines=(), progress=False, quiet=True)
    want, want_occ = tracker.track_refined(q, video)
    np.testing.assert_array_equal(preds[METHOD_REFINED][0], want)
    np.testing.assert_array_equal(preds[METHOD_REFINED][1], want_occ)


# ------------------------------------------------------------------------- the configuration

#: the settings of the refinement as they were before RefineConfig (keyword defaults and
#: module constants): the defaults must not drift
TUNED = dict(radius=2, search=3, min_score=0.8, iterations=4, robust=True, robust_floor=0.02,
             subpixel_max_shift=1.0, subpixel_max_score_drop=0.02, warp="similarity",
             fallback_search=6, fallback_min_score=0.9, window_shift=2, window_min_score=0.97,
             consensus_inlier_px=1.5, consensus_rounds=5, passes=4, warp_min_windows=4,
             temporal_median=3, spike_px=1.0, boundary_weights=False, min_support=0.8,
             flow_candidates=True, direct_flow_candidates=False, flow_fallback=True,
             chunk_size=2048)


def test_config_defaults_are_the_tuned_values():
    import dataclasses

    import omnifast

    assert {f.name for f in dataclasses.fields(RefineConfig)} == set(TUNED)
    assert RefineConfig() == RefineConfig(**TUNED)
    assert omnifast.RefineConfig is RefineConfig
    # the default config and the explicit tuned values refine alike (several chunks too)
    video = _video([_shift(*s) for s in SHIFTS])
    q = _queries(12)
    pred = _truth(q, SHIFTS) + np.array([1.1, -0.8])
    a = refine_tracks(video, q, pred)
    b = refine_tracks(video, q, pred, config=RefineConfig(**{**TUNED, "chunk_size": 20}))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], pred.astype(np.float32))


@pytest.mark.parametrize(("kw", "match"), [
    ({"radius": -1}, "radius"),
    ({"radius": 2.5}, "radius must be an integer"),
    ({"search": 0}, "search"),
    ({"iterations": -1}, "iterations"),
    ({"robust": 1}, "robust must be True or False"),
    ({"robust_floor": 0.0}, "robust_floor"),
    ({"subpixel_max_shift": -0.1}, "subpixel_max_shift"),
    ({"subpixel_max_score_drop": -0.1}, "subpixel_max_score_drop"),
    ({"min_score": 1.5}, "min_score"),
    ({"min_score": float("nan")}, "min_score must be a finite number"),
    ({"warp": "affine"}, "warp"),
    ({"fallback_search": -1}, "fallback_search"),
    ({"fallback_min_score": -2.0}, "fallback_min_score"),
    ({"window_shift": -1}, "window_shift"),
    ({"window_min_score": 1.01}, "window_min_score"),
    ({"consensus_inlier_px": 0.0}, "consensus_inlier_px"),
    ({"consensus_rounds": 0}, "consensus_rounds"),
    ({"passes": 0}, "passes"),
    ({"warp_min_windows": 1}, "warp_min_windows"),
    ({"warp_min_windows": 10}, "warp_min_windows"),
    ({"temporal_median": 2}, "temporal_median"),
    ({"temporal_median": 0}, "temporal_median"),
    ({"spike_px": -1.0}, "spike_px"),
    ({"min_support": 1.2}, "min_support"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"flow_candidates": None}, "flow_candidates"),
    ({"boundary_weights": True}, "window_shift=0"),  # weights need the centred window only
    ({"boundary_weights": True, "window_shift": 3}, "window_shift=0"),
])
def test_config_rejects_invalid_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        RefineConfig(**kw)


def test_config_is_frozen_and_replace_validates():
    import dataclasses

    c = RefineConfig(window_shift=0, boundary_weights=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.passes = 2
    assert dataclasses.replace(c, passes=2).passes == 2
    with pytest.raises(ValueError, match="window_shift"):
        dataclasses.replace(c, window_shift=2)
    with pytest.raises(TypeError):
        RefineConfig(no_such_setting=1)
    # a weights array needs a config without off-centre windows
    video = _video([_shift(0, 0), _shift(1, 0)])
    q = _queries(3)
    with pytest.raises(ValueError, match="window_shift"):
        refine_tracks(video, q, _truth(q, [(0, 0), (1, 0)]), weights=np.ones((3, 2, 25)))
