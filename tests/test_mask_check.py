"""The mask check on a hand-made clip whose answers are counted by hand: a 6x6 textured square
moving 3 px right per frame over a static textured background."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from omnifast.eval.masks import (
    METRICS,
    SHEET_COLORS,
    mask_check,
    mask_contact_sheet,
    mask_grid_queries,
    read_masked_clip,
)

T, H, W = 5, 20, 30
SIZE, X0, Y0, STEP = 6, 4, 7, 3


def square_clip():
    rng = np.random.default_rng(0)
    background = rng.integers(0, 120, (H, W, 3), dtype=np.uint8)
    texture = rng.integers(130, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    video = np.repeat(background[None], T, axis=0)
    masks = np.zeros((T, H, W), dtype=bool)
    for t in range(T):
        x = X0 + STEP * t
        video[t, Y0:Y0 + SIZE, x:x + SIZE] = texture
        masks[t, Y0:Y0 + SIZE, x:x + SIZE] = True
    return video, masks


# (t, y, x): the square's left and right columns, a background point in the square's rows
# (the square passes over it in frame 4) and one far from it
QUERIES = np.array([[0, 9, X0], [0, 9, X0 + SIZE - 1], [0, 9, 20], [0, 1, 1]], dtype=float)
ON_OBJECT = [True, True, False, False]


def true_tracks():
    tracks = np.zeros((len(QUERIES), T, 2))
    for n, (_, y, x) in enumerate(QUERIES):
        for t in range(T):
            tracks[n, t] = (x + STEP * t if ON_OBJECT[n] else x, y)
    occluded = np.zeros((len(QUERIES), T), dtype=bool)
    occluded[2, 4] = True  # the square covers (20, 9) in frame 4: x in [16, 21]
    return tracks, occluded


def test_true_tracks_stay_on_their_side_and_match_colour():
    video, masks = square_clip()
    tracks, occluded = true_tracks()
    got = mask_check(video, masks, QUERIES, tracks, occluded)
    assert got["fg_kept"] == 1.0 and got["bg_kept"] == 1.0
    assert got["photometric_error"] == 0.0
    assert got["fg_occluded_in_view"] == 0.0
    assert got["bg_occluded_in_view"] == pytest.approx(1 / 8)  # 1 flag, 2 points x 4 frames
    assert got["fg_queries"] == 2 and got["bg_queries"] == 2


def test_static_tracks_lose_the_object():
    """Tracks that never move: the left column leaves the object at once, the right column
    after frame 1 (square at x 7..12 then 10..15); the background point in the square's path
    lands on the object in frame 4 (flags all visible)."""
    video, masks = square_clip()
    tracks = np.repeat(QUERIES[:, None, [2, 1]], T, axis=1)
    got = mask_check(video, masks, QUERIES, tracks, np.zeros((len(QUERIES), T), dtype=bool))
    assert got["fg_kept"] == pytest.approx(1 / 8)
    assert got["bg_kept"] == pytest.approx(7 / 8)
    assert got["photometric_error"] > 20
    assert got["fg_occluded_in_view"] == 0.0 and got["bg_occluded_in_view"] == 0.0


def test_occluded_and_outside_predictions_are_not_scored():
    video, masks = square_clip()
    tracks = np.repeat(QUERIES[:, None, [2, 1]], T, axis=1)
    occluded = np.zeros((len(QUERIES), T), dtype=bool)
    occluded[:2, 1:] = True  # every foreground frame but the query frame
    tracks[2, 4] = (W + 5, 9)  # the background point leaves the frame where it would fail
    got = mask_check(video, masks, QUERIES, tracks, occluded)
    assert np.isnan(got["fg_kept"])
    assert got["bg_kept"] == 1.0
    assert got["fg_occluded_in_view"] == 1.0


def test_region_out_of_view_does_not_count_occlusion():
    """Frames where the object has shrunk below half its query-frame area are not 'in view'."""
    video, masks = square_clip()
    masks[3:, :, :] = False
    masks[3:, Y0:Y0 + 2, X0:X0 + 2] = True  # 4 px of 36: out of view
    tracks, _ = true_tracks()
    occluded = np.zeros((len(QUERIES), T), dtype=bool)
    occluded[0, 1:] = True
    got = mask_check(video, masks, QUERIES, tracks, occluded)
    # in view: frames 1 and 2 of the two foreground queries; flagged: query 0 in both
    assert got["fg_occluded_in_view"] == pytest.approx(2 / 4)


def test_bad_shapes_are_refused():
    video, masks = square_clip()
    tracks, occluded = true_tracks()
    with pytest.raises(ValueError, match="expected tracks"):
        mask_check(video, masks, QUERIES, tracks[:, :3], occluded)
    with pytest.raises(ValueError, match="do not match"):
        mask_check(video[:3], masks, QUERIES, tracks, occluded)


def test_contact_sheet_draws_each_method_where_it_puts_the_points():
    """Row 0: the true tracks; row 1: every point left where it started and called occluded
    from frame 1 on. Frame 4's tile (column 4) shows the object's outline, the true tracks'
    markers on the moved square, and the static row's markers where the points started. (The
    clip is scaled up 4x so that the frame-number labels cover none of it.)"""
    k = 4
    video, masks = square_clip()
    video, masks = (a.repeat(k, axis=1).repeat(k, axis=2) for a in (video, masks))
    queries = QUERIES * [1, k, k]
    tracks, occluded = true_tracks()
    tracks = tracks * k
    static = np.repeat(tracks[:, :1], T, axis=1)
    hidden = np.zeros_like(occluded)
    hidden[:, 1:] = True
    gap, h, w = 2, H * k, W * k
    sheet = mask_contact_sheet(video, masks, queries, {"true": (tracks, occluded),
                                                       "static": (static, hidden)}, gap=gap)
    assert sheet.shape == (2 * h + gap, 5 * w + 4 * gap, 3)

    def tile(row, col):
        return sheet[row * (h + gap):row * (h + gap) + h, col * (w + gap):col * (w + gap) + w]

    def marked(img, x, y, color):  # any pixel of that colour within 2 px
        near = img[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3)
        return bool((near == color).all(-1).any())

    fg, bg = SHEET_COLORS["fg"], SHEET_COLORS["bg"]
    y = 9 * k
    x0, x4 = (int(tracks[0, t, 0]) for t in (0, 4))
    assert tuple(tile(0, 4)[y, x4]) == fg  # a filled disc on the moved square's left column
    assert tuple(tile(0, 4)[k, k]) == bg  # the far background point
    assert not marked(tile(0, 4), x0, y, fg)  # nothing left behind
    # the outline: the square's bottom edge in frame 4 is drawn white
    assert (tile(0, 4)[(Y0 + SIZE) * k - 1, x4 + SIZE * k // 2] >= 200).all()
    # the static row: nothing on the moved square, a cross where the point started
    assert not marked(tile(1, 4), x4, y, fg)
    assert marked(tile(1, 4), x0, y, fg) and tuple(tile(1, 4)[y - 1, x0 + 2]) != fg
    assert tuple(tile(1, 0)[y, x0]) == fg  # frame 0: the query itself, a filled disc
    with pytest.raises(ValueError):
        mask_contact_sheet(video, masks, queries, {})


def test_grid_queries_take_the_mask_side():
    _, masks = square_clip()
    queries, on_object = mask_grid_queries(masks, spacing=2)
    assert set(queries[:, 0]) == {0, T // 2}
    t, y, x = queries.T.astype(int)
    np.testing.assert_array_equal(on_object, masks[t, y, x])
    assert on_object.any() and not on_object.all()
    with pytest.raises(ValueError, match="outside"):
        mask_grid_queries(masks, frames=(T,))


def test_read_masked_clip(tmp_path):
    video, masks = square_clip()
    frames = tmp_path / "JPEGImages" / "480p" / "square"
    anns = tmp_path / "Annotations" / "480p" / "square"
    frames.mkdir(parents=True)
    anns.mkdir(parents=True)
    for t in range(T):
        cv2.imwrite(str(frames / f"{t:05d}.png"), cv2.cvtColor(video[t], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(anns / f"{t:05d}.png"), masks[t].astype(np.uint8) * 255)
    clip = read_masked_clip(tmp_path, "square")
    np.testing.assert_array_equal(clip.video, video)
    np.testing.assert_array_equal(clip.masks, masks)
    small = read_masked_clip(tmp_path, "square", max_side=15, max_frames=3)
    assert small.video.shape == (3, 10, 15, 3) and small.masks.shape == (3, 10, 15)
    (anns / "00004.png").unlink()
    with pytest.raises(ValueError, match="5 frames but 4 masks"):
        read_masked_clip(tmp_path, "square")
    with pytest.raises(FileNotFoundError):
        read_masked_clip(tmp_path, "missing")


def _write_davis(root, name, video, masks):
    frames = root / "JPEGImages" / "480p" / name
    anns = root / "Annotations" / "480p" / name
    frames.mkdir(parents=True)
    anns.mkdir(parents=True)
    for t in range(len(video)):
        cv2.imwrite(str(frames / f"{t:05d}.png"), cv2.cvtColor(video[t], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(anns / f"{t:05d}.png"), masks[t].astype(np.uint8) * 255)


def test_eval_masks_suite_scores_every_method(tmp_path, capsys, monkeypatch):
    """`omnifast eval --suite masks`: a (tiny) fit, its refined tracks and chained flow, each
    scored by the mask check on the grid queries of the first and middle frame."""
    import json

    from conftest import TINY

    import omnifast.api
    from omnifast.cli import main
    from omnifast.eval.masks import mask_sequences

    video, masks = square_clip()
    _write_davis(tmp_path / "davis", "square", video, masks)
    (tmp_path / "davis" / "JPEGImages" / "480p" / "no-masks").mkdir()
    assert mask_sequences(tmp_path / "davis") == ["square"]
    real_fit = omnifast.api.fit
    monkeypatch.setattr(omnifast.api, "fit",
                        lambda video, **kw: real_fit(video, **{**kw, "preset": TINY}))
    code = main(["eval", "--suite", "masks", "--data", str(tmp_path / "davis"), "--iters", "2",
                 "--spacing", "4", "--out", str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    res = json.loads((tmp_path / "out" / "mask_results.json").read_text())["clips"]["square"]
    assert set(res) == {"omnifast", "omnifast_refined", "chained_flow", "direct_flow"}
    # spacing 4 on 20x30: rows 2, 6, ..., 18 and columns 2, 6, ..., 26 on frames 0 and 2; the
    # square covers rows 7-12, so row 10: columns 4-9 in frame 0 (column 6) and 10-15 in frame
    # 2 (columns 10 and 14)
    for method, r in res.items():
        assert r["fg_queries"] == 3 and r["bg_queries"] == 2 * 35 - 3, method
        assert 0 <= r["bg_kept"] <= 1 and r["photometric_error"] >= 0, method
    assert "| square | chained_flow |" in out and "| **mean** | omnifast |" in out
    sheet = cv2.imread(str(tmp_path / "out" / "square" / "contact_sheet.png"))
    assert sheet.shape == (4 * H + 3 * 2, 5 * W + 4 * 2, 3)  # 4 methods x 5 frames
    assert main(["eval", "--suite", "masks", "--out", str(tmp_path / "o2")]) == 2

    # --load re-scores the saved fit (same tracks, same numbers) without fitting again
    monkeypatch.setattr(omnifast.api, "fit", lambda *a, **kw: pytest.fail("fitted again"))
    data = ["--data", str(tmp_path / "davis"), "--spacing", "4", "--no-progress"]
    assert main(["eval", "--suite", "masks", *data, "--load", str(tmp_path / "out"),
                 "--no-refine", "--baselines", "", "--out", str(tmp_path / "o3")]) == 0
    again = json.loads((tmp_path / "o3" / "mask_results.json").read_text())["clips"]["square"]
    assert set(again) == {"omnifast"}
    scores = [*METRICS, "fg_queries", "bg_queries"]
    assert [again["omnifast"][k] for k in scores] == [res["omnifast"][k] for k in scores]
    # --refine-direct refines as Tracker.track_refined(direct_flow_candidates=True) does
    assert main(["eval", "--suite", "masks", *data, "--load", str(tmp_path / "out"),
                 "--refine-direct", "--baselines", "", "--out", str(tmp_path / "o8")]) == 0
    direct = json.loads((tmp_path / "o8" / "mask_results.json").read_text())["clips"]["square"]
    tracker = omnifast.load_tracker(tmp_path / "out" / "square" / "fit" / "tracker.pt")
    queries, _ = mask_grid_queries(masks, spacing=4)
    tracks, occluded = tracker.track_refined(queries, video, direct_flow_candidates=True)
    expect = mask_check(video, masks, queries, tracks, occluded)
    assert [direct["omnifast_refined"][k] for k in scores] == [expect[k] for k in scores]
    assert main(["eval", "--suite", "masks", *data, "--load", str(tmp_path / "out"),
                 "--refine-direct", "--no-refine", "--out", str(tmp_path / "o9")]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["eval", "--suite", "masks", *data, "--baselines-only",
                 "--out", str(tmp_path / "o4")]) == 0
    only = json.loads((tmp_path / "o4" / "mask_results.json").read_text())["clips"]["square"]
    assert set(only) == {"chained_flow", "direct_flow"}
    # the points that never move, scored when asked for: the square moves right, so its
    # frame-0 queries fall off it (the still points do not follow) and the background stays
    assert main(["eval", "--suite", "masks", *data, "--baselines-only", "--baselines", "still",
                 "--out", str(tmp_path / "o6")]) == 0
    still = json.loads((tmp_path / "o6" / "mask_results.json").read_text())["clips"]["square"]
    assert set(still) == {"still"}
    assert still["still"]["fg_kept"] < res["chained_flow"]["fg_kept"]
    assert still["still"]["bg_kept"] > 0.9
    # a misspelt baseline stops before anything is fitted or written
    assert main(["eval", "--suite", "masks", *data, "--baselines", "chained",
                 "--out", str(tmp_path / "o7")]) == 2
    assert "unknown baseline 'chained'" in capsys.readouterr().err
    assert not (tmp_path / "o7").exists()
    assert main(["eval", "--suite", "masks", *data, "--load", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "o5")]) == 2
    assert "no tracker for clip square" in capsys.readouterr().err
