"""Inputs of a fit: video loading, DIS motion (filtering, counts, chaining, cache), tracks."""

from __future__ import annotations

import json
import os

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from omnifast.data import flow as flow_mod
from omnifast.data.chain import ChainInputs, chain_row
from omnifast.data.flow import (
    compute_motion,
    load_tracks,
    merge_tracks,
    motion_cache_key,
    motion_from_omnimotion_folder,
    motion_from_tracks,
    write_omnimotion_folder,
)
from omnifast.data.motion import MotionData
from omnifast.data.pairs import mask_stats
from omnifast.data.video import VideoError, load_video, video_digest
from omnifast.viz import write_video

# ------------------------------------------------------------------------------- clip makers


def texture(h: int, w: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """A random smooth RGB texture, uint8, using the full 0..255 range."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)


def translating(t: int = 6, h: int = 32, w: int = 40, dx: float = 1.0, dy: float = 0.5,
                seed: int = 0, pad: int = 40) -> np.ndarray:
    """Frame k shows a texture moved by (k dx, k dy): the true flow i -> j is (j - i)(dx, dy)."""
    big = texture(h + 2 * pad, w + 2 * pad, seed)
    out = []
    for k in range(t):
        m = np.float32([[1, 0, pad - dx * k], [0, 1, pad - dy * k]])
        out.append(cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return np.stack(out)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return translating()


@pytest.fixture(scope="module")
def motion(clip) -> MotionData:
    return compute_motion(clip, cache_dir=False, progress=False, workers=2)


# ------------------------------------------------------------------------------- load_video


def test_load_array_grey_rgba_and_selection(clip):
    out = load_video(clip)
    assert out.shape == clip.shape and out.dtype == np.uint8
    assert np.array_equal(out, clip)
    grey = load_video(clip[..., 0])
    assert grey.shape == clip.shape
    assert np.array_equal(grey[..., 2], clip[..., 0])
    rgba = np.concatenate([clip, np.full(clip.shape[:3] + (1,), 7, np.uint8)], -1)
    assert np.array_equal(load_video(rgba), clip)
    assert np.array_equal(load_video(clip, frames=slice(1, 5, 2)), clip[1:5:2])
    assert np.array_equal(load_video(clip, frames=(2, 6)), clip[2:6])
    assert np.array_equal(load_video(clip, frames=(0, 6, 3)), clip[[0, 3]])
    assert np.array_equal(load_video(clip, frames=[5, 0, -2]), clip[[5, 0, 4]])


def test_load_max_side_keeps_aspect(clip):
    small = load_video(clip, max_side=20)
    assert small.shape == (6, 16, 20, 3)
    expected = cv2.resize(clip[3], (20, 16), interpolation=cv2.INTER_AREA)
    assert np.array_equal(small[3], expected)
    assert load_video(clip, max_side=100).shape == clip.shape  # never enlarged


def test_load_mp4_written_by_write_video(tmp_path, clip):
    path = write_video(tmp_path / "clip.mp4", clip, fps=10)
    out = load_video(path)
    assert out.shape == clip.shape
    err = np.abs(out.astype(np.int16) - clip.astype(np.int16)).mean()
    assert err < 6.0, f"lossy round trip too far off: mean abs error {err:.2f}"
    sel = load_video(path, frames=(1, 4), max_side=20)
    assert sel.shape == (3, 16, 20, 3)
    assert np.abs(sel.astype(int) - load_video(clip[1:4], max_side=20).astype(int)).mean() < 6
    assert load_video(path, frames=[-1, 0]).shape == (2, 32, 40, 3)


def test_load_png_folder_and_omnimotion_folder(tmp_path, clip):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, f in enumerate(clip):  # names sort lexicographically, not by creation order
        iio.imwrite(folder / f"f{k:03d}.png", f)
    (folder / "notes.txt").write_text("ignored")
    assert np.array_equal(load_video(folder), clip)
    assert np.array_equal(load_video(folder, frames=[1, 3]), clip[[1, 3]])
    seq = tmp_path / "seq"
    (seq / "color").mkdir(parents=True)
    for k, f in enumerate(clip):
        iio.imwrite(seq / "color" / f"{k:05d}.png", f)
    assert np.array_equal(load_video(seq), clip)


def test_load_gif(tmp_path, clip):
    path = tmp_path / "clip.gif"
    iio.imwrite(path, clip, loop=0, duration=100)
    out = load_video(path)
    assert out.shape == clip.shape
    # gif stores a 256-colour palette: close, not exact
    assert np.abs(out.astype(int) - clip.astype(int)).mean() < 8


def test_load_errors(tmp_path, clip):
    with pytest.raises(VideoError, match="no such file or folder: .*missing.mp4"):
        load_video(tmp_path / "missing.mp4")
    bad = tmp_path / "corrupt.mp4"
    # fixed bytes: an unlucky draw of random bytes can make ffmpeg decode a single garbage
    # frame (then the error is the frame count, not the unreadable file); seed 0 decodes none
    bad.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(VideoError, match="cannot read video .*corrupt.mp4"):
        load_video(bad)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        load_video(empty)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VideoError, match="unsupported file type"):
        load_video(tmp_path / "notes.txt")
    folder = tmp_path / "frames"
    folder.mkdir()
    iio.imwrite(folder / "a.png", clip[0])
    (folder / "b.png").write_bytes(b"not a png")
    with pytest.raises(VideoError, match="cannot read image .*b.png"):
        load_video(folder)
    (folder / "b.png").unlink()
    iio.imwrite(folder / "b.png", clip[1, :20])
    with pytest.raises(VideoError, match="frames differ in size"):
        load_video(folder)
    (tmp_path / "none").mkdir()
    with pytest.raises(VideoError, match="no images"):
        load_video(tmp_path / "none")
    with pytest.raises(VideoError, match="at least 2 frames"):
        load_video(clip, frames=[3])
    with pytest.raises(VideoError, match="at least 2 frames"):
        load_video(clip[:1])
    with pytest.raises(VideoError, match="nothing to track"):
        load_video(np.full((4, 8, 8, 3), 3, np.uint8))
    with pytest.raises(VideoError, match="uint8"):
        load_video(clip.astype(np.float32))
    with pytest.raises(VideoError, match=r"\[T, H, W, 3\]"):
        load_video(np.zeros((4, 8, 8, 2), np.uint8))
    with pytest.raises(VideoError, match="out of range"):
        load_video(clip, frames=[0, 9])
    assert issubclass(VideoError, ValueError)


def test_video_digest(clip):
    d = video_digest(clip)
    assert d == video_digest(clip.copy()) and len(d) == 16
    other = clip.copy()
    other[2, 5, 5, 1] ^= 1
    assert video_digest(other) != d
    assert video_digest(clip.reshape(6, 40, 32, 3)) != d  # same bytes, other shape


# ------------------------------------------------------------------------------ DIS motion


def test_compute_motion_recovers_shift_and_masks_are_consistent(clip, motion):
    t = len(clip)
    motion.validate()
    assert motion.flows.shape == (t, t, 32, 40, 2) and motion.source == "dis+chain"
    for i, j in [(0, 1), (1, 0), (2, 4), (5, 3), (0, 5)]:
        true = np.array([1.0, 0.5]) * (j - i)
        err = np.linalg.norm(motion.flows[i, j] - true, axis=-1)
        valid = motion.cycle[i, j]
        assert valid.mean() > 0.5, f"pair {(i, j)}: only {valid.mean():.2f} cycle-consistent"
        assert np.median(err[valid]) < 0.1, f"pair {(i, j)}: median error {np.median(err):.3f}"
    assert not (motion.cycle & motion.occluded).any()
    diag = np.arange(t)
    assert not motion.cycle[diag, diag].any() and not motion.flows[diag, diag].any()
    valid = motion.cycle | motion.occluded
    assert np.array_equal(motion.flow_stats, valid.sum((2, 3)))
    assert np.array_equal(motion.count_maps, valid.sum(1))


def test_filter_pair_occlusion_and_far_appearance_test(clip):
    """A hand-made pair: cycle below the threshold, occluded when the second hop agrees."""
    s = flow_mod.MotionSettings()
    h, w = 16, 20
    f_ij = np.zeros((h, w, 2), np.float32)
    f_ij[:, :12, 0], f_ij[:, 12:, 0] = 2.0, -4.0
    f_ji = np.zeros((h, w, 2), np.float32)
    f_ji[:, :10, 0], f_ji[:, 10:, 0] = -2.0, 4.0
    sm = np.zeros((h, w, 3), np.float32)
    cycle, occ = flow_mod.filter_pair(f_ij, f_ji, 1, sm, sm, s)
    xs = np.arange(w)
    # x < 8 and x >= 14 come back home; x in 8..13 fail the round trip by 6 px (> 4.5) but a
    # second forward hop from where they came back agrees exactly: occluded
    assert np.array_equal(cycle, np.broadcast_to((xs < 8) | (xs >= 14), (h, w)))
    assert np.array_equal(occ, np.broadcast_to((xs >= 8) & (xs < 14), (h, w)))
    _, occ_far = flow_mod.filter_pair(f_ij, f_ji, 3, sm, sm, s)
    assert not occ_far.any()  # occlusion only for |i - j| <= 2
    # far pairs: the appearance test and the inside-image test
    g_ij = np.zeros((h, w, 2), np.float32)
    g_ij[..., 0] = 2.0
    other = sm.copy()
    other[:, 6:] = 1.0  # frame j differs in colour from x = 6 on: targets there fail
    cyc_near, _ = flow_mod.filter_pair(g_ij, -g_ij, 2, sm, other, s)
    # near pairs have no appearance test (as the original); targets off the image read zero
    # backward flow there and fail the round trip
    assert np.array_equal(cyc_near, np.broadcast_to(xs + 2 <= w - 1, (h, w)))
    cyc_far, _ = flow_mod.filter_pair(g_ij, -g_ij, 3, sm, sm, s)
    assert np.array_equal(cyc_far, np.broadcast_to(xs + 2 <= w - 1, (h, w)))
    cyc_far, _ = flow_mod.filter_pair(g_ij, -g_ij, 3, sm, other, s)
    assert np.array_equal(cyc_far, np.broadcast_to(xs + 2 < 6, (h, w)))


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


def test_cache_hit_miss_and_atomic(tmp_path, clip, monkeypatch):
    small = clip[:3]
    first = compute_motion(small, cache_dir=tmp_path, progress=False)
    entries = [p.name for p in tmp_path.iterdir()]
    assert entries == [motion_cache_key(small, flow_mod.MotionSettings())]
    assert isinstance(first.flows, np.memmap)

    def boom(*args, **kwargs):
        raise AssertionError("recomputed despite a cache entry")

    monkeypatch.setattr(flow_mod, "pair_flow", boom)
    again = compute_motion(small, cache_dir=tmp_path, progress=False)
    assert np.array_equal(again.flows, first.flows)
    assert np.array_equal(again.cycle, first.cycle)
    assert np.array_equal(again.flow_stats, first.flow_stats)
    with pytest.raises(AssertionError, match="recomputed"):
        compute_motion(small, cache_dir=tmp_path, progress=False, cycle_threshold=1.0)
    with pytest.raises(AssertionError, match="recomputed"):
        compute_motion(clip[1:4], cache_dir=tmp_path, progress=False)
    # the failed runs left no entry and no temporary folder behind
    assert [p.name for p in tmp_path.iterdir()] == entries
    # env override of the default location (pair_flow still raises: this must be a hit)
    monkeypatch.setenv("OMNIFAST_CACHE_DIR", str(tmp_path))
    assert flow_mod.default_cache_dir() == tmp_path
    loaded = compute_motion(small, progress=False)  # default dir = tmp_path: a hit
    assert np.array_equal(loaded.flows, first.flows)


def test_cache_entry_missing_meta_is_rebuilt(tmp_path, clip):
    small = clip[:2]
    dead = tmp_path / ".motion-0123.999999999.abcd1234.tmp"  # a killed run's leftovers
    dead.mkdir()
    (dead / "flows.npy").write_bytes(b"partial")
    alive = tmp_path / f".motion-0123.{os.getpid()}.abcd1234.tmp"  # a run in progress
    alive.mkdir()
    first = compute_motion(small, cache_dir=tmp_path, progress=False, chain=False)
    entry = tmp_path / motion_cache_key(small, flow_mod.MotionSettings(chain=False))
    (entry / "meta.json").unlink()
    again = compute_motion(small, cache_dir=tmp_path, progress=False, chain=False)
    assert np.array_equal(again.flows, first.flows) and (entry / "meta.json").is_file()
    assert not dead.exists() and alive.is_dir()


def test_compute_motion_rejects_bad_input(clip):
    with pytest.raises(VideoError, match="at least 2 frames"):
        compute_motion(clip[:1], cache_dir=False, progress=False)
    with pytest.raises(VideoError, match="uint8"):
        compute_motion(clip.astype(np.float32), cache_dir=False, progress=False)
    with pytest.raises(ValueError, match="unknown DIS preset"):
        compute_motion(clip, cache_dir=False, progress=False, preset="slow")


# -------------------------------------------------------------------- OmniMotion-format folder


def _write_original_layout(root, frames, flows, cyc, occ, names, stats=True, counts=True):
    """The original's layout, written with the original's tools (imageio, RGB channel order)."""
    for sub in ("color", "raft_exhaustive", "raft_masks", "count_maps"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    t = len(frames)
    table = {}
    for i in range(t):
        iio.imwrite(root / "color" / names[i], frames[i])
        table[names[i]] = {}
        for j in range(t):
            if i == j:
                continue
            np.save(root / "raft_exhaustive" / f"{names[i]}_{names[j]}.npy", flows[i, j])
            mask = np.stack([cyc[i, j], occ[i, j], np.zeros_like(cyc[i, j])], -1)
            iio.imwrite(root / "raft_masks" / f"{names[i]}_{names[j]}.png",
                        mask.astype(np.uint8) * 255)
            table[names[i]][names[j]] = int(cyc[i, j].sum() + occ[i, j].sum())
        if counts:
            cm = (cyc[i] | occ[i]).sum(0).astype(np.uint16)
            cv2.imwrite(str(root / "count_maps" / names[i].replace(".jpg", ".png")), cm)
    if stats:
        (root / "flow_stats.json").write_text(json.dumps(table))


def _random_motion(t=3, h=6, w=7, seed=0):
    rng = np.random.default_rng(seed)
    flows = rng.normal(0, 3, (t, t, h, w, 2)).astype(np.float32)
    cyc = rng.random((t, t, h, w)) < 0.5
    occ = (rng.random((t, t, h, w)) < 0.3) & ~cyc
    for k in range(t):
        flows[k, k] = 0
        cyc[k, k] = occ[k, k] = False
    return flows, cyc, occ


def test_omnimotion_folder_round_trip(tmp_path, clip):
    frames = clip[:3, :6, :7].copy()
    flows, cyc, occ = _random_motion()
    names = ["00000.jpg", "00001.jpg", "00002.jpg"]
    _write_original_layout(tmp_path / "seq", frames, flows, cyc, occ, names)
    m = motion_from_omnimotion_folder(tmp_path / "seq")
    assert np.array_equal(m.flows, flows)
    assert np.array_equal(m.cycle, cyc) and np.array_equal(m.occluded, occ)
    valid = cyc | occ
    assert np.array_equal(m.flow_stats, valid.sum((2, 3)))
    assert np.array_equal(m.count_maps, valid.sum(1))
    assert m.frames.shape == (3, 6, 7, 3) and m.source.startswith("omnimotion-folder")
    # stats and count maps come from the files: a stale json wins over the masks
    table = json.loads((tmp_path / "seq" / "flow_stats.json").read_text())
    table["00000.jpg"]["00002.jpg"] = 12345
    (tmp_path / "seq" / "flow_stats.json").write_text(json.dumps(table))
    assert motion_from_omnimotion_folder(tmp_path / "seq").flow_stats[0, 2] == 12345
    # without json and count maps, both are recomputed from the masks
    _write_original_layout(tmp_path / "bare", frames, flows, cyc, occ,
                           ["a.png", "b.png", "c.png"], stats=False, counts=False)
    bare = motion_from_omnimotion_folder(tmp_path / "bare")
    assert np.array_equal(bare.flow_stats, valid.sum((2, 3)))
    assert np.array_equal(bare.count_maps, valid.sum(1))
    # our writer produces the same layout back
    out = write_omnimotion_folder(m, tmp_path / "copy")
    assert (out / "raft_masks" / "00000.png_00001.png.png").is_file()
    back = motion_from_omnimotion_folder(out)
    assert np.array_equal(back.flows, flows) and np.array_equal(back.cycle, cyc)
    assert np.array_equal(back.occluded, occ) and np.array_equal(back.frames, m.frames)
    assert np.array_equal(back.count_maps, m.count_maps)


def test_omnimotion_folder_errors(tmp_path, clip):
    frames = clip[:3, :6, :7].copy()
    flows, cyc, occ = _random_motion()
    flows[1, 2, 3, 4, 0] = np.nan
    names = ["00000.jpg", "00001.jpg", "00002.jpg"]
    _write_original_layout(tmp_path / "seq", frames, flows, cyc, occ, names)
    with pytest.raises(ValueError, match="NaN or Inf"):
        motion_from_omnimotion_folder(tmp_path / "seq")
    (tmp_path / "seq" / "raft_exhaustive" / "00000.jpg_00002.jpg.npy").unlink()
    with pytest.raises(FileNotFoundError, match="00000.jpg_00002.jpg.npy"):
        motion_from_omnimotion_folder(tmp_path / "seq")
    with pytest.raises(VideoError, match="no color/ folder"):
        motion_from_omnimotion_folder(tmp_path)


# ------------------------------------------------------------------------------------ tracks


def _tracks_for(t=4, n=5):
    rng = np.random.default_rng(3)
    start = rng.uniform(2, 20, (n, 2))
    step = rng.uniform(-1.5, 1.5, (n, 2))
    tracks = (start[:, None] + step[:, None] * np.arange(t)[None, :, None]).astype(np.float32)
    visible = np.ones((n, t), bool)
    visible[1, 2] = False
    return tracks, visible


def test_motion_from_tracks_npz(tmp_path, clip):
    frames = clip[:4]
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


def test_merge_tracks_overrides_dense(motion, clip):
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


def test_tracks_errors(tmp_path, clip):
    tracks, visible = _tracks_for()
    bad = tracks.copy()
    bad[0, 1, 0] = np.inf
    np.savez(tmp_path / "bad.npz", tracks=bad, visible=visible)
    with pytest.raises(ValueError, match="NaN or Inf"):
        motion_from_tracks(clip[:4], tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="4 frames but the clip has 6"):
        motion_from_tracks(clip, (tracks, visible))
    with pytest.raises(ValueError, match="needs a 'tracks' array"):
        load_tracks({"points": tracks})
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_tracks(tmp_path / "nope.npz")


def test_motion_validate_rejects_nan_flows(motion):
    bad = MotionData(frames=motion.frames, flows=np.array(motion.flows), cycle=motion.cycle,
                     occluded=motion.occluded, flow_stats=motion.flow_stats,
                     count_maps=motion.count_maps)
    bad.flows[1, 2, 0, 0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        bad.validate()


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


def test_full_resolution_dis_is_the_default_and_more_accurate():
    """finest_scale=0 (full resolution) is the default; on the fast foreground layers of a
    generated "hard" clip it is closer to the exact motion than the preset's half resolution."""
    from omnifast.datasets.synthetic import generate_clip  # noqa: PLC0415

    clip = generate_clip("hard", num_frames=6, height=96, width=128, seed=0)
    assert flow_mod.MotionSettings().finest_scale == 0
    exact = clip.exact_motion()
    fg = clip.segmentation()
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip.video]
    err = {}
    for scale in (0, None):
        e = []
        for i in range(5):
            flow = flow_mod.pair_flow(gray[i], gray[i + 1], finest_scale=scale)
            keep = (fg[i] > 0) & exact.cycle[i, i + 1]
            e.append(np.linalg.norm(flow - exact.flows[i, i + 1], axis=-1)[keep])
        err[scale] = np.median(np.concatenate(e))
    assert err[0] < 0.2 and err[None] > 3 * err[0], err  # measured: 0.09 and 0.44 px
