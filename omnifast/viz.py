"""Pictures and videos of a fit: track overlays, depth and flow colourings, mp4 and PNG writers.

Pure numpy / OpenCV / imageio (no torch). Frames are RGB ``uint8`` everywhere; files are written
atomically (to a temporary name in the same folder, then renamed), so a killed run never leaves a
truncated file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from omnifast.files import atomic_write

_SHIFT = 4  # sub-pixel bits for cv2 drawing calls
_ONE = 1 << _SHIFT


# ------------------------------------------------------------------------------------ writers


def _check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name} must be [T, H, W, 3] (or [T, H, W] grey), got shape "
                         f"{tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {frames.dtype}")
    if len(frames) == 0:
        raise ValueError(f"{name} is empty")
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 10,
                quality: float = 8) -> Path:
    """Write an H.264 mp4 (libx264, yuv420p) through imageio-ffmpeg, atomically.

    Odd frame sizes are padded (edge replicate) by one pixel to even, which yuv420p needs.

    Args:
        path: output file (``.mp4``); parent folders are created.
        frames: ``[T, H, W, 3]`` uint8 RGB (or ``[T, H, W]`` grey).
        fps: frames per second.
        quality: imageio-ffmpeg quality, 1 (worst) to 10 (best); 8 as in the original.

    Returns:
        The path written.
    """
    import imageio_ffmpeg

    frames = _check_frames(frames)
    t, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    path = Path(path)
    with atomic_write(path, suffix=".mp4") as tmp:  # ffmpeg picks the format from the suffix
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w + pw, h + ph), fps=float(fps), codec="libx264", pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p", quality=quality, macro_block_size=1,
            ffmpeg_log_level="error", output_params=["-movflags", "+faststart"])
        writer.send(None)
        for frame in frames:
            if ph or pw:
                frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    return path


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write one RGB (or grey, or uint16) image, atomically; the format follows the suffix."""
    path = Path(path)
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix or ".png", img)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {img.shape} as {path.suffix}")
    with atomic_write(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


# --------------------------------------------------------------------------------- colourings


def point_colors(query_xy: np.ndarray) -> np.ndarray:
    """One RGB colour per point: the hue of its angle around the median query position.

    Args:
        query_xy: ``[N, 2]`` (x, y) query positions.

    Returns:
        ``[N, 3]`` uint8 RGB colours (full saturation and value).
    """
    query_xy = np.asarray(query_xy, dtype=np.float64).reshape(-1, 2)
    if len(query_xy) == 0:
        return np.zeros((0, 3), np.uint8)
    d = query_xy - np.median(query_xy, axis=0)
    angle = np.arctan2(d[:, 1], d[:, 0])  # (-pi, pi]
    hue = ((angle + np.pi) / (2 * np.pi) * 180.0).astype(np.int64) % 180  # OpenCV hue: 0..179
    hsv = np.stack([hue, np.full_like(hue, 255), np.full_like(hue, 255)], -1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def colorize_depth(depth: np.ndarray, lo: float | None = None,
                   hi: float | None = None) -> np.ndarray:
    """Colour a depth video with a jet colormap, normalised over the whole video.

    Args:
        depth: ``[T, H, W]`` (or ``[H, W]``) float depths. NaN/Inf are shown as the lowest value.
        lo, hi: normalisation range; default the global finite min / max over the video.

    Returns:
        ``[T, H, W, 3]`` (or ``[H, W, 3]``) uint8 RGB; blue = near (low), red = far (high).
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim not in (2, 3):
        raise ValueError(f"depth must be [T, H, W] or [H, W], got shape {depth.shape}")
    finite = np.isfinite(depth)
    if not finite.any():
        lo_, hi_ = 0.0, 1.0
    else:
        lo_ = float(depth[finite].min()) if lo is None else float(lo)
        hi_ = float(depth[finite].max()) if hi is None else float(hi)
    scale = 255.0 / (hi_ - lo_) if hi_ > lo_ else 0.0
    d = np.where(finite, depth, lo_)
    u8 = np.clip((d - lo_) * scale, 0, 255).round().astype(np.uint8)
    flat = u8.reshape(-1, u8.shape[-1])
    bgr = cv2.applyColorMap(flat, cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).reshape(*u8.shape, 3)


def _color_wheel() -> np.ndarray:
    """The Middlebury flow colour wheel: [55, 3] float RGB in 0..255.

    Six hue transitions (red-yellow-green-cyan-blue-magenta-red) with 15, 6, 4, 11, 13 and 6
    steps, the segment lengths of the Middlebury benchmark's wheel (they even out perceived hue).
    """
    segments = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)),
                (4, (0, 255, 0), (0, 255, 255)), (11, (0, 255, 255), (0, 0, 255)),
                (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    rows = []
    for n, a, b in segments:
        f = np.arange(n, dtype=np.float64)[:, None] / n
        rows.append((1 - f) * np.array(a, np.float64) + f * np.array(b, np.float64))
    return np.concatenate(rows)


_WHEEL = _color_wheel()


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """Colour a flow field with the Middlebury wheel: hue = direction, saturation = magnitude.

    Args:
        flow: ``[H, W, 2]`` (dx, dy) in pixels. NaN/Inf are shown as zero motion (white).
        max_flow: magnitude shown at full saturation; default the largest finite magnitude.

    Returns:
        ``[H, W, 3]`` uint8 RGB; zero motion is white.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be [H, W, 2], got shape {flow.shape}")
    u, v = flow[..., 0], flow[..., 1]
    bad = ~(np.isfinite(u) & np.isfinite(v))
    u, v = np.where(bad, 0.0, u), np.where(bad, 0.0, v)
    mag = np.hypot(u, v)
    top = float(mag.max()) if max_flow is None else float(max_flow)
    rad = mag / top if top > 0 else np.zeros_like(mag)
    n = len(_WHEEL)
    # angle measured so that rightward motion is red and upward (dy < 0) is yellow-green
    pos = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * (n - 1)
    k0 = np.floor(pos).astype(np.int64) % n
    k1 = (k0 + 1) % n
    frac = (pos - np.floor(pos))[..., None]
    col = (1 - frac) * _WHEEL[k0] + frac * _WHEEL[k1]
    r = np.clip(rad, 0, None)[..., None]
    inside = r <= 1
    col = np.where(inside, 255 - r * (255 - col), col * 0.75)  # beyond max_flow: darker
    return np.clip(col, 0, 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------------- drawing


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]) * _ONE)), int(round(float(xy[1]) * _ONE))


def draw_tracks(frames: np.ndarray, tracks: np.ndarray, occluded: np.ndarray | None = None,
                trail: int = 10, radius: int = 2, colors: np.ndarray | None = None,
                query_frame: int = 0) -> np.ndarray:
    """Overlay point tracks: a fading trail of recent positions and a marker at the current one.

    Visible points are filled discs; occluded points are crosses (as the original draws occluded
    targets). Each point keeps one colour, the hue of its angle around the median query position
    (the positions in ``query_frame``), like the original's correspondence videos.

    Args:
        frames: ``[T, H, W, 3]`` uint8 RGB.
        tracks: ``[N, T, 2]`` (x, y) pixel positions; non-finite positions are skipped.
        occluded: ``[N, T]`` bool, True where the point is hidden; default all visible.
        trail: how many past frames the trail spans (0: no trail).
        radius: marker radius in pixels.
        colors: ``[N, 3]`` uint8 RGB colours to use instead of the angle hue.
        query_frame: frame whose positions define the colours.

    Returns:
        ``[T, H, W, 3]`` uint8, a new array (the input is not modified).
    """
    frames = _check_frames(frames)
    t = len(frames)
    tracks = np.asarray(tracks, dtype=np.float64)
    if tracks.ndim != 3 or tracks.shape[-1] != 2 or tracks.shape[1] != t:
        raise ValueError(f"tracks must be [N, {t}, 2], got shape {tracks.shape}")
    n = tracks.shape[0]
    occ = np.zeros((n, t), bool) if occluded is None else np.asarray(occluded, bool)
    if occ.shape != (n, t):
        raise ValueError(f"occluded must be [{n}, {t}], got shape {occ.shape}")
    if colors is None:
        q = tracks[:, min(max(query_frame, 0), t - 1)]
        ok = np.isfinite(q).all(-1)
        colors = np.zeros((n, 3), np.uint8)
        colors[ok] = point_colors(q[ok])
    colors = np.asarray(colors, np.uint8).reshape(n, 3)
    cols = [tuple(int(c) for c in rgb) for rgb in colors]
    finite = np.isfinite(tracks).all(-1)
    out = frames.copy()
    radius = max(1, int(radius))
    thick = max(1, radius // 2)
    for k in range(t):
        img = np.ascontiguousarray(out[k])
        if trail > 0 and k > 0:
            lo = max(0, k - trail)
            overlay = img.copy()
            for s in range(lo, k):
                # older segments are thinner; all are blended at a fixed opacity below
                w = thick if s >= k - max(1, trail // 2) else 1
                a, b = tracks[:, s], tracks[:, s + 1]
                good = finite[:, s] & finite[:, s + 1]
                for i in np.flatnonzero(good):
                    cv2.line(overlay, _pt(a[i]), _pt(b[i]), cols[i], w, cv2.LINE_AA, _SHIFT)
            img = cv2.addWeighted(overlay, 0.7, img, 0.3, 0.0)
        for i in np.flatnonzero(finite[:, k]):
            c = _pt(tracks[i, k])
            if occ[i, k]:
                r = radius * _ONE
                cv2.line(img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), cols[i], 1,
                         cv2.LINE_AA, _SHIFT)
                cv2.line(img, (c[0] - r, c[1] + r), (c[0] + r, c[1] - r), cols[i], 1,
                         cv2.LINE_AA, _SHIFT)
            else:
                cv2.circle(img, c, radius * _ONE, cols[i], -1, cv2.LINE_AA, _SHIFT)
        out[k] = img
    return out


def put_label(img: np.ndarray, text: str, org: tuple[int, int] = (3, 3),
              bottom: bool = False) -> np.ndarray:
    """Write ``text`` on a dark box in an RGB image, in place.

    Args:
        img: ``[H, W, 3]`` uint8 image (modified in place).
        text: the label.
        org: top-left corner of the box; with ``bottom``, (x, margin from the bottom edge).
        bottom: put the box at the bottom edge instead of the top.

    Returns:
        ``img``.
    """
    h, w = img.shape[:2]
    scale = max(0.3, min(h, w) / 400.0)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    if bottom:
        y = max(0, h - 1 - org[1] - (th + base + 4))
    cv2.rectangle(img, (x, y), (min(w - 1, x + tw + 4), min(h - 1, y + th + base + 4)),
                  (0, 0, 0), -1)
    cv2.putText(img, text, (x + 2, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return img


def side_by_side(a: np.ndarray, b: np.ndarray,
                 labels: Sequence[str] | None = None) -> np.ndarray:
    """Put two videos (or two images) next to each other, with optional panel labels.

    ``b`` is resized to ``a``'s height (aspect kept) when the heights differ. A single image
    ``[H, W, 3]`` is paired with every frame of a video; grey inputs are replicated to RGB.

    Args:
        a, b: ``[T, H, W, 3]`` / ``[H, W, 3]`` uint8 RGB (or grey without the last axis).
        labels: two strings written in the top-left corner of each panel.

    Returns:
        ``[T, H, Wa + Wb', 3]`` uint8 (or ``[H, W, 3]`` when both inputs are single images).
    """
    a, b = np.asarray(a), np.asarray(b)
    single = a.ndim in (2, 3) and b.ndim in (2, 3) and (a.ndim == 2 or a.shape[-1] == 3) and (
        b.ndim == 2 or b.shape[-1] == 3)
    if single:
        a, b = a[None], b[None]
    else:
        if a.ndim == 3 and a.shape[-1] == 3 and b.ndim == 4:
            a = np.broadcast_to(a, (len(b), *a.shape))
        if b.ndim == 3 and b.shape[-1] == 3 and a.ndim == 4:
            b = np.broadcast_to(b, (len(a), *b.shape))
    a, b = _check_frames(a, "a"), _check_frames(b, "b")
    if len(a) != len(b):
        raise ValueError(f"the two videos differ in length: {len(a)} vs {len(b)} frames")
    ha, hb, wb = a.shape[1], b.shape[1], b.shape[2]
    if hb != ha:
        nw = max(1, round(wb * ha / hb))
        b = np.stack([cv2.resize(f, (nw, ha), interpolation=cv2.INTER_AREA) for f in b])
    out = np.ascontiguousarray(np.concatenate([a, b], axis=2))
    if labels is not None:
        if len(labels) != 2:
            raise ValueError(f"labels must hold 2 strings, got {len(labels)}")
        for f in out:
            if labels[0]:
                put_label(f, str(labels[0]))
            if labels[1]:
                put_label(f, str(labels[1]), (a.shape[2] + 3, 3))
    return out[0] if single else out


def contact_sheet(frames: np.ndarray, path: str | os.PathLike | None = None, num: int = 6,
                  cols: int = 3, labels: Sequence[str] | None = None,
                  gap: int = 2) -> np.ndarray:
    """A PNG grid of a few evenly spaced frames, each stamped with its frame number (bottom left).

    Args:
        frames: ``[T, H, W, 3]`` uint8 RGB.
        path: output PNG (written atomically); None to only return the picture.
        num: how many frames (at most T), spaced evenly from the first to the last.
        cols: grid columns.
        labels: optional ``T`` strings, one per frame of the video, added after the number.
        gap: white pixels between tiles.

    Returns:
        The sheet, ``[rows * H + (rows - 1) * gap, cols' * W + (cols' - 1) * gap, 3]`` uint8
        with ``cols' = min(cols, num)``.
    """
    frames = _check_frames(frames)
    t, h, w, _ = frames.shape
    if labels is not None and len(labels) != t:
        raise ValueError(f"labels must hold one string per frame ({t}), got {len(labels)}")
    num = max(1, min(int(num), t))
    cols = max(1, min(int(cols), num))
    rows = -(-num // cols)
    idx = np.unique(np.linspace(0, t - 1, num).round().astype(np.int64))
    sheet = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, np.uint8)
    for n, k in enumerate(idx):
        r, c = divmod(n, cols)
        tile = frames[k].copy()
        text = f"{k}" + (f" {labels[k]}" if labels is not None and labels[k] else "")
        put_label(tile, text, bottom=True)  # the top-left corner often holds panel labels
        sheet[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    if path is not None:
        write_image(path, sheet)
    return sheet


__all__ = ["colorize_depth", "contact_sheet", "draw_tracks", "flow_to_color", "point_colors",
           "put_label", "side_by_side", "write_image", "write_video"]
