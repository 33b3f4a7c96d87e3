"""A real-footage check for clips with object masks (no point ground truth needed).

A point queried on the object should stay on the object in every frame where it is predicted
visible, and a point queried on the background should stay off it. :func:`mask_check` scores
predicted tracks that way, for foreground and background queries separately, and adds two
more measures that need no ground truth: how often a point is called occluded while its region
is in view, and how far the colour under the predicted position is from the colour of the
query pixel. :func:`mask_grid_queries` places the queries, :func:`read_masked_clip` reads a
DAVIS-style sequence (``JPEGImages/<res>/<seq>/*.jpg``, ``Annotations/<res>/<seq>/*.png``).

Definitions (per query with query frame q, over every other frame t):

* visible prediction: not flagged occluded and inside the frame (:func:`omnifast.pixels.in_frame`);
* kept: a visible prediction whose nearest pixel in mask t is on the query's side;
  ``fg_kept`` / ``bg_kept`` = kept / visible, pooled over the queries of that side;
* region in view: the query's side covers at least half the area in frame t that it covered
  in frame q; ``fg_occluded_in_view`` / ``bg_occluded_in_view`` = occluded flags / (query,
  frame) pairs whose region is in view (an upper bound on wrong occlusion calls: part of a
  region can be hidden while most of it is in view);
* ``photometric_error``: mean absolute difference (0-255, over the colour channels) between
  the frame sampled at a visible prediction and the query pixel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnifast.pixels import bilinear, in_frame

#: a region is in view when it covers at least this fraction of its area in the query frame
IN_VIEW_FRACTION = 0.5

METRICS = ("fg_kept", "bg_kept", "fg_occluded_in_view", "bg_occluded_in_view",
           "photometric_error")


@dataclass(frozen=True)
class MaskedClip:
    """Frames and object masks of one sequence.

    Attributes:
        name: the sequence name.
        video: RGB frames. [T, H, W, 3] uint8
        masks: object masks (True on the object). [T, H, W] bool
    """

    name: str
    video: np.ndarray
    masks: np.ndarray


def _sorted_images(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} images in {folder}")
    return files


def read_masked_clip(root: str | os.PathLike, name: str, *, resolution: str = "480p",
                     max_side: int | None = None, max_frames: int | None = None) -> MaskedClip:
    """Read ``root/JPEGImages/<resolution>/<name>`` and ``root/Annotations/<resolution>/<name>``.

    Masks are foreground where the annotation is non-zero. ``max_side`` shrinks frames (area
    filter) and masks (nearest) so that the longer side is at most this; ``max_frames`` keeps
    the first frames.
    """
    import cv2  # noqa: PLC0415

    root = Path(root)
    frame_dir = root / "JPEGImages" / resolution / name
    mask_dir = root / "Annotations" / resolution / name
    for folder in (frame_dir, mask_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
    frame_files = _sorted_images(frame_dir, (".jpg", ".jpeg", ".png"))[:max_frames]
    mask_files = _sorted_images(mask_dir, (".png",))[:max_frames]
    if len(frame_files) != len(mask_files):
        raise ValueError(f"{name}: {len(frame_files)} frames but {len(mask_files)} masks")
    frames, masks = [], []
    for f, m in zip(frame_files, mask_files):
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        ann = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE)
        if img is None or ann is None:
            raise ValueError(f"{name}: cannot read {f if img is None else m}")
        if ann.shape != img.shape[:2]:
            raise ValueError(f"{name}: mask {m.name} is {ann.shape}, frame is {img.shape[:2]}")
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        masks.append(ann > 0)
    video, mask = np.stack(frames), np.stack(masks)
    h, w = video.shape[1:3]
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        video = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in video])
        mask = np.stack([cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
                         for m in mask]).astype(bool)
    return MaskedClip(name=name, video=video, masks=mask)


def mask_grid_queries(masks: np.ndarray, frames: tuple[int, ...] | None = None,
                      spacing: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A grid of queries on each of ``frames`` (default: the first and the middle frame).

    Returns:
        ``query_points`` ``[N, 3]`` as (t, y, x) and ``on_object`` ``[N]`` bool (the query
        pixel's mask value).
    """
    masks = np.asarray(masks, dtype=bool)
    t_count, h, w = masks.shape
    if spacing < 1:
        raise ValueError(f"spacing must be at least 1, got {spacing}")
    frames = (0, t_count // 2) if frames is None else tuple(frames)
    ys = np.arange(spacing // 2, h, spacing)
    xs = np.arange(spacing // 2, w, spacing)
    gy, gx = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    queries, sides = [], []
    for t in dict.fromkeys(frames):
        if not 0 <= t < t_count:
            raise ValueError(f"query frame {t} is outside the clip's {t_count} frames")
        queries.append(np.stack([np.full(gy.shape, t), gy, gx], axis=1).astype(np.float64))
        sides.append(masks[t, gy, gx])
    return np.concatenate(queries), np.concatenate(sides)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def mask_check(video: np.ndarray, masks: np.ndarray, query_points: np.ndarray,
               tracks: np.ndarray, occluded: np.ndarray) -> dict[str, float]:
    """Score predicted tracks against the object masks (definitions in the module docstring).

    Args:
        video: RGB frames. [T, H, W, 3] uint8
        masks: object masks. [T, H, W] bool
        query_points: (t, y, x), integer query frames. [N, 3]
        tracks: predicted (x, y) positions. [N, T, 2]
        occluded: predicted occlusion flags. [N, T] bool

    Returns:
        the :data:`METRICS` (NaN where a side has no query or no visible prediction) and the
        counts ``fg_queries``, ``bg_queries``.
    """
    video = np.asarray(video)
    masks = np.asarray(masks, dtype=bool)
    query_points = np.asarray(query_points, dtype=np.float64)
    tracks = np.asarray(tracks, dtype=np.float64)
    occluded = np.asarray(occluded, dtype=bool)
    t_count, h, w = masks.shape
    n = query_points.shape[0]
    if video.shape[:3] != masks.shape:
        raise ValueError(f"video {video.shape} and masks {masks.shape} do not match")
    if tracks.shape != (n, t_count, 2) or occluded.shape != (n, t_count):
        raise ValueError(f"expected tracks [{n}, {t_count}, 2] and occluded [{n}, {t_count}], "
                         f"got {tracks.shape} and {occluded.shape}")
    qt = query_points[:, 0].astype(np.int64)
    qy = np.clip(np.rint(query_points[:, 1]).astype(np.int64), 0, h - 1)
    qx = np.clip(np.rint(query_points[:, 2]).astype(np.int64), 0, w - 1)
    side = masks[qt, qy, qx]
    other = np.arange(t_count)[None, :] != qt[:, None]  # [N, T]
    x, y = tracks[..., 0], tracks[..., 1]
    with np.errstate(invalid="ignore"):
        visible = other & ~occluded & in_frame(x, y, h, w)
    px = np.clip(np.rint(np.nan_to_num(x)).astype(np.int64), 0, w - 1)
    py = np.clip(np.rint(np.nan_to_num(y)).astype(np.int64), 0, h - 1)
    kept = masks[np.arange(t_count)[None, :], py, px] == side[:, None]
    area = masks.reshape(t_count, -1).sum(1).astype(np.float64)
    area_of = np.where(side[:, None], area[None, :], h * w - area[None, :])  # [N, T]
    in_view = other & (area_of >= IN_VIEW_FRACTION * area_of[np.arange(n), qt][:, None])

    colour = np.zeros((n, t_count), dtype=np.float64)
    ref = video[qt, qy, qx].astype(np.float64)  # [N, 3]
    for t in range(t_count):
        sel = visible[:, t]
        if sel.any():
            got = bilinear(video[t], x[sel, t], y[sel, t], border="clamp", dtype=np.float64)
            colour[sel, t] = np.abs(got - ref[sel]).mean(-1)
    out: dict[str, float] = {}
    for name, pick in (("fg", side), ("bg", ~side)):
        vis, view = visible[pick], in_view[pick]
        out[f"{name}_kept"] = _ratio((kept[pick] & vis).sum(), vis.sum())
        out[f"{name}_occluded_in_view"] = _ratio((occluded[pick] & view).sum(), view.sum())
        out[f"{name}_queries"] = int(pick.sum())
    out["photometric_error"] = _ratio(colour[visible].sum(), visible.sum())
    return out


#: marker colours of the contact sheet: queries on the object, queries on the background
SHEET_COLORS = {"fg": (255, 140, 0), "bg": (0, 200, 255)}


def mask_contact_sheet(video: np.ndarray, masks: np.ndarray, query_points: np.ndarray,
                       predictions: dict[str, tuple[np.ndarray, np.ndarray]],
                       path: str | os.PathLike | None = None, num: int = 5,
                       gap: int = 2) -> np.ndarray:
    """One row per method, ``num`` evenly spaced frames per row: the object's outline (white)
    and where each method puts the first frame's queries, orange for queries on the object and
    blue for the background (filled: visible, cross: called occluded).

    Args:
        video: RGB frames. [T, H, W, 3] uint8
        masks: object masks. [T, H, W] bool
        query_points: (t, y, x). [N, 3]
        predictions: ``{method: (tracks [N, T, 2] (x, y), occluded [N, T])}``, drawn in order.
        path: PNG to write (atomically); None to only return the picture.

    Returns:
        the sheet, ``[rows * H + (rows - 1) * gap, cols * W + (cols - 1) * gap, 3]`` uint8.
    """
    import cv2  # noqa: PLC0415

    from omnifast import viz  # noqa: PLC0415

    video = np.asarray(video)
    masks = np.asarray(masks, dtype=bool)
    query_points = np.asarray(query_points, dtype=np.float64)
    if not predictions:
        raise ValueError("predictions must name at least one method")
    t_count, h, w = masks.shape
    if video.shape[:3] != masks.shape:
        raise ValueError(f"video {video.shape} and masks {masks.shape} do not match")
    first = query_points[:, 0] == query_points[:, 0].min()
    qy = np.clip(np.rint(query_points[first, 1]).astype(np.int64), 0, h - 1)
    qx = np.clip(np.rint(query_points[first, 2]).astype(np.int64), 0, w - 1)
    t0 = int(query_points[first, 0][0]) if first.any() else 0
    side = masks[t0, qy, qx]
    colors = np.where(side[:, None], SHEET_COLORS["fg"], SHEET_COLORS["bg"]).astype(np.uint8)
    outlined = video.copy()
    for t in range(t_count):
        contours, _ = cv2.findContours(masks[t].astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(outlined[t], contours, -1, (255, 255, 255), 1, cv2.LINE_AA)
    idx = np.unique(np.linspace(0, t_count - 1, max(1, min(num, t_count))).round().astype(int))
    cols = len(idx)
    rows = []
    for method, (tracks, occluded) in predictions.items():
        drawn = viz.draw_tracks(outlined, np.asarray(tracks)[first],
                                np.asarray(occluded, dtype=bool)[first], trail=0, radius=2,
                                colors=colors)
        row = np.full((h, cols * w + (cols - 1) * gap, 3), 255, np.uint8)
        for c, k in enumerate(idx):
            tile = drawn[k].copy()
            viz.put_label(tile, f"{k}", bottom=True)
            if c == 0:
                viz.put_label(tile, method)
            row[:, c * (w + gap):c * (w + gap) + w] = tile
        rows.append(row)
    sheet = np.full((len(rows) * h + (len(rows) - 1) * gap, rows[0].shape[1], 3), 255, np.uint8)
    for r, row in enumerate(rows):
        sheet[r * (h + gap):r * (h + gap) + h] = row
    if path is not None:
        viz.write_image(path, sheet)
    return sheet


def mask_sequences(root: str | os.PathLike, resolution: str = "480p") -> list[str]:
    """The sequence names under ``root/JPEGImages/<resolution>`` that have annotations."""
    root = Path(root)
    frames = root / "JPEGImages" / resolution
    if not frames.is_dir():
        raise FileNotFoundError(f"no such folder: {frames} (expected a DAVIS-style root)")
    return sorted(p.name for p in frames.iterdir()
                  if p.is_dir() and (root / "Annotations" / resolution / p.name).is_dir())


def format_mask_table(per_clip: dict[str, dict[str, dict]]) -> str:
    """A Markdown table: one row per clip and method, then the mean over clips per method."""
    cols = ("fg_kept", "bg_kept", "fg_occluded_in_view", "bg_occluded_in_view",
            "photometric_error", "fit_seconds")
    lines = ["| clip | method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    means: dict[str, list[dict]] = {}
    for clip, methods in per_clip.items():
        for method, res in methods.items():
            means.setdefault(method, []).append(res)
            lines.append(f"| {clip} | {method} | "
                         + " | ".join(f"{res.get(c, float('nan')):.3f}" for c in cols) + " |")
    for method, rows in means.items():
        avg = {c: float(np.nanmean([r.get(c, np.nan) for r in rows])) for c in cols}
        lines.append(f"| **mean** | {method} | "
                     + " | ".join(f"{avg[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)


def run_mask_eval(clips, out_dir: str | os.PathLike, *, spacing: int = 8,
                  preset: str = "cpu", iters: int | None = None, seed: int = 0,
                  load: str | os.PathLike | None = None, baselines=("chained_flow",),
                  skip_omnifast: bool = False, device: str | None = None,
                  progress: bool = True, quiet: bool = False, refine=True) -> dict:
    """Fit omnifast on each :class:`MaskedClip` (or load its tracker from ``load``, as
    :func:`omnifast.eval.run.find_tracker` finds it; ``skip_omnifast``: neither), track a grid
    of queries on its first and middle frames (:func:`mask_grid_queries`), refine them
    (``refine``: as :func:`omnifast.eval.run.evaluate_clip` takes it), run the flow baselines
    on the same queries, and score every method with :func:`mask_check`.

    Writes ``out_dir/mask_results.json``, ``out_dir/mask_results.md`` and, per clip,
    ``out_dir/<clip>/contact_sheet.png`` (:func:`mask_contact_sheet`).

    Returns:
        ``{"clips": {clip: {method: metrics + fit_seconds}}, "table": markdown}``
    """
    import json  # noqa: PLC0415

    from omnifast.eval.baselines import check_baselines  # noqa: PLC0415
    from omnifast.eval.run import EvalClip, evaluate_clip, find_tracker  # noqa: PLC0415
    from omnifast.files import atomic_write  # noqa: PLC0415

    check_baselines(baselines)
    out = Path(out_dir)
    per_clip: dict[str, dict[str, dict]] = {}
    for masked in clips:
        queries, _ = mask_grid_queries(masked.masks, spacing=spacing)
        clip = EvalClip(masked.name, masked.video, queries, None, None, "grid",
                        {"suite": "masks"}, masked)

        def score(c, tracks, occluded):
            return mask_check(c.video, c.source.masks, c.query_points, tracks, occluded)

        results, predictions = evaluate_clip(clip, preset=preset, iters=iters, seed=seed,
                                   out_dir=out / masked.name,
                                   load=find_tracker(load, masked.name), baselines=baselines,
                                   skip_omnifast=skip_omnifast,
                                   device=device, progress=progress, quiet=quiet,
                                   refine=refine, score=score)
        per_clip[masked.name] = results
        mask_contact_sheet(masked.video, masked.masks, queries, predictions,
                           out / masked.name / "contact_sheet.png")
    table = format_mask_table(per_clip)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "mask_results.json") as tmp:
        tmp.write_text(json.dumps({"clips": per_clip}, indent=1, default=float))
    with atomic_write(out / "mask_results.md") as tmp:
        tmp.write_text(table + "\n")
    return {"clips": per_clip, "table": table}
