"""Pictures of a fit: mp4/PNG writers, track overlays, depth and flow colourings."""

from __future__ import annotations

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from omnifast.viz import (
    colorize_depth,
    contact_sheet,
    draw_tracks,
    flow_to_color,
    point_colors,
    side_by_side,
    write_image,
    write_video,
)


def smooth_clip(t=5, h=31, w=41, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(t):
        img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
        img = (img - img.min()) / (img.max() - img.min())
        out.append((img * 255).astype(np.uint8))
    return np.stack(out)


def test_write_video_odd_size_is_padded_and_readable(tmp_path):
    frames = smooth_clip()
    path = write_video(tmp_path / "sub" / "v.mp4", frames, fps=10)
    assert path.is_file() and path.stat().st_size > 0
    assert [p.name for p in path.parent.iterdir()] == ["v.mp4"]  # no temporary left behind
    meta = iio.immeta(path, plugin="FFMPEG")
    assert meta["codec"] == "h264" and abs(meta["fps"] - 10) < 1e-6
    back = iio.imread(path, plugin="FFMPEG")
    assert back.shape == (5, 32, 42, 3)
    err = np.abs(back[:, :31, :41].astype(int) - frames.astype(int)).mean()
    assert err < 6, err
    write_video(path, frames[:2, :30, :40])  # overwrite in place
    assert iio.imread(path, plugin="FFMPEG").shape == (2, 30, 40, 3)


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 4), np.uint8))
    assert not list(tmp_path.iterdir())


def test_draw_tracks_discs_crosses_and_trails():
    frames = np.zeros((4, 40, 60, 3), np.uint8)
    # point 0 moves right 5 px per frame and is occluded in frame 3; point 1 stays put
    tracks = np.array([[[10 + 5 * k, 20] for k in range(4)], [[45, 10]] * 4], np.float32)
    occ = np.zeros((2, 4), bool)
    occ[0, 3] = True
    colors = np.array([[255, 0, 0], [0, 255, 0]], np.uint8)
    out = draw_tracks(frames, tracks, occ, trail=2, radius=3, colors=colors)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert not frames.any()  # the input is untouched
    # visible: a filled disc (centre and 2 px to the side are coloured)
    assert tuple(out[1, 20, 15]) == (255, 0, 0) and out[1, 20, 17, 0] > 200
    assert tuple(out[0, 10, 45]) == (0, 255, 0)
    # occluded: a cross (centre and diagonals coloured, 2 px to the side not)
    assert out[3, 20, 25, 0] > 150 and out[3, 22, 27, 0] > 100
    assert out[3, 20, 27, 0] < 60 and out[3, 18, 25, 0] < 60
    # the trail of point 0 covers the last 2 frames' path (x from 15 to 25 in frame 3) only
    assert out[3, 20, 19, 0] > 100 and out[3, 20, 12, 0] == 0
    assert out[0, 20, 10, 0] == 255 and not out[0, :, 15:, 0].any()  # frame 0: no trail


def test_draw_tracks_default_colours_by_angle():
    frames = np.zeros((2, 50, 50, 3), np.uint8)
    q = np.array([[35, 25], [25, 35], [15, 25], [25, 15]], np.float32)
    tracks = np.repeat(q[:, None], 2, axis=1)
    out = draw_tracks(frames, tracks, None, trail=0, radius=2)
    cols = [tuple(out[0, int(y), int(x)]) for x, y in q]
    assert len(set(cols)) == 4  # four directions, four hues
    np.testing.assert_array_equal(point_colors(q), np.array(cols, np.uint8))
    with pytest.raises(ValueError, match=r"tracks must be \[N, 2, 2\]"):
        draw_tracks(frames, tracks[:, :1], None)


def test_colorize_depth_global_normalisation():
    depth = np.zeros((2, 4, 5))
    depth[0] = 1.0
    depth[1] = 3.0
    depth[1, 0, 0] = 2.0
    rgb = colorize_depth(depth)
    assert rgb.shape == (2, 4, 5, 3) and rgb.dtype == np.uint8
    # jet: lowest value is dark blue, highest dark red, normalised over the whole video
    lo, hi, mid = rgb[0, 0, 0], rgb[1, 1, 1], rgb[1, 0, 0]
    assert lo[2] > 100 and lo[0] < 10
    assert hi[0] > 100 and hi[2] < 10
    assert mid[1] > 200  # the middle of jet is green-ish
    assert (rgb[0] == lo).all()  # frame 0 is not stretched on its own
    flat = colorize_depth(np.full((3, 2, 2), 5.0))
    assert (flat == flat[0, 0, 0]).all()
    single = colorize_depth(np.array([[0.0, np.nan], [1.0, np.inf]]))
    assert single.shape == (2, 2, 3) and (single[0, 1] == single[0, 0]).all()


def test_flow_to_color_wheel():
    flow = np.zeros((3, 4, 2), np.float32)
    flow[0, 0] = (1, 0)
    flow[0, 1] = (-1, 0)
    flow[0, 2] = (0, 1)
    flow[0, 3] = (0.5, 0)
    img = flow_to_color(flow)
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8
    assert tuple(img[2, 2]) == (255, 255, 255)  # no motion: white
    right, left, down, half = img[0, 0], img[0, 1], img[0, 2], img[0, 3]
    assert right[0] > 200 and right[2] < 80  # rightward: red end of the wheel
    assert left[2] > 150 and left[0] < 80  # leftward: cyan/blue, opposite side
    assert down[2] > 150 or down[1] > 150
    assert right.astype(int).sum() < half.astype(int).sum() < 765  # less saturated when slower
    np.testing.assert_array_equal(flow_to_color(flow * 7), img)  # normalised by the maximum
    with pytest.raises(ValueError, match=r"\[H, W, 2\]"):
        flow_to_color(np.zeros((3, 4)))


def test_side_by_side_and_labels():
    a = smooth_clip(t=3, h=60, w=80)
    b = smooth_clip(t=3, h=30, w=36, seed=1)
    out = side_by_side(a, b, labels=["query", "target"])
    assert out.shape == (3, 60, 80 + 72, 3)
    assert np.array_equal(out[:, 30:, :80], a[:, 30:])  # below the label: untouched
    assert not np.array_equal(out[:, :15, :20], a[:, :15, :20])  # the label is drawn
    assert not np.array_equal(out[:, :15, 80:100], out[:, 20:35, 80:100])
    plain = side_by_side(a, a)
    assert np.array_equal(plain[:, :, :80], a) and np.array_equal(plain[:, :, 80:], a)
    one = side_by_side(a[0], a[1])
    assert one.shape == (60, 160, 3)
    with pytest.raises(ValueError, match="differ in length"):
        side_by_side(a, a[:2])


def test_contact_sheet_file(tmp_path):
    frames = smooth_clip(t=10, h=60, w=80)
    path = tmp_path / "sheet.png"
    sheet = contact_sheet(frames, path, num=6, cols=3)
    assert sheet.shape == (2 * 60 + 2, 3 * 80 + 4, 3)
    back = iio.imread(path)
    assert back.shape == sheet.shape and np.array_equal(back, sheet)
    # the last tile (row 1, column 2) is the last frame; its number is drawn bottom left
    tile = sheet[62:, 164:]
    assert np.array_equal(tile[:30], frames[9, :30])
    assert np.array_equal(tile[:, 30:], frames[9, :, 30:])
    assert not np.array_equal(tile[40:, :15], frames[9, 40:, :15])
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]
    few = contact_sheet(frames[:2], None, num=6, cols=3, labels=["a", "b"])
    assert few.shape == (60, 162, 3)


def test_write_image_uint16(tmp_path):
    img = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    write_image(tmp_path / "c.png", img)
    assert np.array_equal(cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_UNCHANGED), img)
