"""Reading and writing OmniMotion-format sequence folders."""

from __future__ import annotations

import json

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from omnifast.data.flow import motion_from_omnimotion_folder, write_omnimotion_folder
from omnifast.data.video import VideoError


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


def test_omnimotion_folder_round_trip(tmp_path, tiny_clip):
    frames = tiny_clip[:3, :6, :7].copy()
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


def test_omnimotion_folder_errors(tmp_path, tiny_clip):
    frames = tiny_clip[:3, :6, :7].copy()
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
