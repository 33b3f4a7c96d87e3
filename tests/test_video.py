"""Loading videos: arrays, files, folders, frame selection, resizing, errors, digests."""

from __future__ import annotations

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from omnifast.data.video import VideoError, load_video, video_digest
from omnifast.viz import write_video


def test_load_array_grey_rgba_and_selection(tiny_clip):
    out = load_video(tiny_clip)
    assert out.shape == tiny_clip.shape and out.dtype == np.uint8
    assert np.array_equal(out, tiny_clip)
    grey = load_video(tiny_clip[..., 0])
    assert grey.shape == tiny_clip.shape
    assert np.array_equal(grey[..., 2], tiny_clip[..., 0])
    rgba = np.concatenate([tiny_clip, np.full(tiny_clip.shape[:3] + (1,), 7, np.uint8)], -1)
    assert np.array_equal(load_video(rgba), tiny_clip)
    assert np.array_equal(load_video(tiny_clip, frames=slice(1, 5, 2)), tiny_clip[1:5:2])
    assert np.array_equal(load_video(tiny_clip, frames=(2, 6)), tiny_clip[2:6])
    assert np.array_equal(load_video(tiny_clip, frames=(0, 6, 3)), tiny_clip[[0, 3]])
    assert np.array_equal(load_video(tiny_clip, frames=[5, 0, -2]), tiny_clip[[5, 0, 4]])


def test_load_max_side_keeps_aspect(tiny_clip):
    small = load_video(tiny_clip, max_side=20)
    assert small.shape == (6, 16, 20, 3)
    expected = cv2.resize(tiny_clip[3], (20, 16), interpolation=cv2.INTER_AREA)
    assert np.array_equal(small[3], expected)
    assert load_video(tiny_clip, max_side=100).shape == tiny_clip.shape  # never enlarged


def test_load_mp4_written_by_write_video(tmp_path, tiny_clip):
    path = write_video(tmp_path / "clip.mp4", tiny_clip, fps=10)
    out = load_video(path)
    assert out.shape == tiny_clip.shape
    err = np.abs(out.astype(np.int16) - tiny_clip.astype(np.int16)).mean()
    assert err < 6.0, f"lossy round trip too far off: mean abs error {err:.2f}"
    sel = load_video(path, frames=(1, 4), max_side=20)
    assert sel.shape == (3, 16, 20, 3)
    assert np.abs(sel.astype(int) - load_video(tiny_clip[1:4], max_side=20).astype(int)).mean() < 6
    assert load_video(path, frames=[-1, 0]).shape == (2, 32, 40, 3)


def test_load_png_folder_and_omnimotion_folder(tmp_path, tiny_clip):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, f in enumerate(tiny_clip):  # names sort lexicographically, not by creation order
        iio.imwrite(folder / f"f{k:03d}.png", f)
    (folder / "notes.txt").write_text("ignored")
    assert np.array_equal(load_video(folder), tiny_clip)
    assert np.array_equal(load_video(folder, frames=[1, 3]), tiny_clip[[1, 3]])
    seq = tmp_path / "seq"
    (seq / "color").mkdir(parents=True)
    for k, f in enumerate(tiny_clip):
        iio.imwrite(seq / "color" / f"{k:05d}.png", f)
    assert np.array_equal(load_video(seq), tiny_clip)


def test_load_gif(tmp_path, tiny_clip):
    path = tmp_path / "clip.gif"
    iio.imwrite(path, tiny_clip, loop=0, duration=100)
    out = load_video(path)
    assert out.shape == tiny_clip.shape
    # gif stores a 256-colour palette: close, not exact
    assert np.abs(out.astype(int) - tiny_clip.astype(int)).mean() < 8


def test_load_errors(tmp_path, tiny_clip):
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
    iio.imwrite(folder / "a.png", tiny_clip[0])
    (folder / "b.png").write_bytes(b"not a png")
    with pytest.raises(VideoError, match="cannot read image .*b.png"):
        load_video(folder)
    (folder / "b.png").unlink()
    iio.imwrite(folder / "b.png", tiny_clip[1, :20])
    with pytest.raises(VideoError, match="frames differ in size"):
        load_video(folder)
    (tmp_path / "none").mkdir()
    with pytest.raises(VideoError, match="no images"):
        load_video(tmp_path / "none")
    with pytest.raises(VideoError, match="at least 2 frames"):
        load_video(tiny_clip, frames=[3])
    with pytest.raises(VideoError, match="at least 2 frames"):
        load_video(tiny_clip[:1])
    with pytest.raises(VideoError, match="nothing to track"):
        load_video(np.full((4, 8, 8, 3), 3, np.uint8))
    with pytest.raises(VideoError, match="uint8"):
        load_video(tiny_clip.astype(np.float32))
    with pytest.raises(VideoError, match=r"\[T, H, W, 3\]"):
        load_video(np.zeros((4, 8, 8, 2), np.uint8))
    with pytest.raises(VideoError, match="out of range"):
        load_video(tiny_clip, frames=[0, 9])
    assert issubclass(VideoError, ValueError)


def test_video_digest(tiny_clip):
    d = video_digest(tiny_clip)
    assert d == video_digest(tiny_clip.copy()) and len(d) == 16
    other = tiny_clip.copy()
    other[2, 5, 5, 1] ^= 1
    assert video_digest(other) != d
    assert video_digest(tiny_clip.reshape(6, 40, 32, 3)) != d  # same bytes, other shape


# ------------------------------------------------------------------------------ DIS motion
