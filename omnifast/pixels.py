"""Pixel primitives: the one bilinear sampler and the one in-frame rule.

Coordinates follow the project's convention (spec 1.2): pixel ``(i, j)`` (row, column) has its
centre at ``(x, y) = (j, i)`` ("align-corners"), so the pixel centres span ``[0, W-1] x [0, H-1]``
and the frame's outer edges lie half a pixel beyond them, at ``x = -0.5`` and ``x = W - 0.5``.

* :func:`bilinear` samples an image at such positions, numpy or torch, with an explicit
  ``border`` rule for positions outside the pixel centres.
* :func:`in_frame` is the one rule for "inside the frame" (TAP-Vid's: within the frame's outer
  edges); every visibility decision (ground truth, omnifast, baselines) uses it, so they are
  scored alike. ``margin=0`` asks the same question of the pixel-centre rectangle, the region a
  bilinear lookup reads from real pixels only.

This module imports only numpy and torch (OpenCV on demand, for the fast numpy path).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Border = Literal["zeros", "clamp"]
BORDERS: tuple[str, ...] = ("zeros", "clamp")

#: how far beyond the outermost pixel centres a point still counts as inside the frame: the
#: frame's outer edges, as TAP-Vid counts it (its tracks are in-frame within [0, 1] of the
#: image's width and height)
FRAME_MARGIN: float = 0.5


def in_frame(x, y, height: int, width: int, *, margin: float = FRAME_MARGIN):
    """Whether positions lie inside the frame: ``-margin <= x <= W-1+margin`` (same for y).

    The default margin (half a pixel) is the frame's outer edges, TAP-Vid's rule, used for every
    visibility decision. ``margin=0`` is the pixel-centre rectangle ``[0, W-1] x [0, H-1]``,
    where a bilinear lookup touches no pixel outside the image.

    Args:
        x, y: positions in pixels (x = column, y = row), numpy arrays or torch tensors of one
            shape ``S`` (or broadcastable).
        height, width: the frame size H, W.
        margin: distance beyond the outermost pixel centres that still counts as inside.

    Returns:
        Boolean array or tensor ``S``; NaN positions are outside.
    """
    lo = -margin
    return (x >= lo) & (x <= width - 1 + margin) & (y >= lo) & (y <= height - 1 + margin)


def _check_border(border: str) -> None:
    if border not in BORDERS:
        raise ValueError(f"border must be one of {list(BORDERS)}, got {border!r}")


def bilinear(img, x, y, *, border: Border, dtype=None):
    """Sample ``img`` bilinearly at pixel positions (x, y), align-corners.

    ``border`` decides what a position beyond the pixel centres reads:

    * ``"zeros"``: the image is surrounded by zeros, so a position between the last pixel
      centre and one pixel beyond blends the edge value with zero, and farther out reads 0
      (``grid_sample(..., padding_mode="zeros", align_corners=True)``);
    * ``"clamp"``: the position is clamped to the pixel-centre rectangle, so it reads the
      nearest edge value (``padding_mode="border"``).

    numpy images: computed in ``dtype`` (default: float64 if the image or the positions are
    float64, else float32); positions keep their own precision for the floor and fraction.
    When everything is float32 and ``x`` is 2-D, ``cv2.remap`` does the work (faster
    than the numpy gathers, thread-parallel with the GIL released; it agrees with them to
    float32 rounding for 1, 3 and 4 channels, and other channel counts are sampled one at a
    time because its 2-channel path quantises positions to 1/32 px).

    torch images: ``torch.nn.functional.grid_sample`` in the image's dtype and device; numpy
    positions are converted. NaN positions read 0 in the numpy ``"zeros"`` path.

    Args:
        img: ``[H, W]`` or ``[H, W, C]`` numpy array or torch tensor (channels last).
        x, y: positions in pixels (x = column, y = row), matching shapes ``S``.
        border: ``"zeros"`` or ``"clamp"`` (required: there is no default rule).
        dtype: numpy images only: the arithmetic and output dtype.

    Returns:
        ``S`` (for a 2-D ``img``) or ``S + [C]`` samples, of the image's kind (numpy or torch).
    """
    _check_border(border)
    if isinstance(img, torch.Tensor):
        return _bilinear_torch(img, x, y, border)
    img = np.asarray(img)
    x, y = np.asarray(x), np.asarray(y)
    if img.ndim not in (2, 3):
        raise ValueError(f"img must be [H, W] or [H, W, C], got shape {img.shape}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {x.shape} and {y.shape}")
    dtype = np.dtype(dtype or np.result_type(np.float32, img.dtype, x.dtype, y.dtype))
    h, w = img.shape[:2]
    if (dtype == np.float32 and x.dtype == np.float32 and y.dtype == np.float32
            and x.ndim == 2 and x.size and max(h, w) < 32767):
        return _bilinear_remap(img, x, y, border)
    return _bilinear_numpy(img, x, y, border, dtype)


def _axis(c: np.ndarray, n: int, border: str):
    """Taps along one axis of length n: (i0, i1, fraction, ok0, ok1); ok is None for clamp."""
    if border == "clamp":
        c = np.clip(c, 0, n - 1)
        i0 = np.minimum(np.floor(c).astype(np.int64), max(n - 2, 0))
        return i0, np.minimum(i0 + 1, n - 1), c - i0, None, None
    fl = np.floor(c)
    near = (fl >= -1) & (fl <= n - 1)  # some tap inside; False for NaN and far-out positions
    i0 = np.where(near, fl, -2).astype(np.int64)
    with np.errstate(invalid="ignore"):  # inf - inf where not near: discarded
        frac = np.where(near, c - fl, 0)
    i1 = i0 + 1
    ok0, ok1 = (i0 >= 0) & (i0 < n), (i1 >= 0) & (i1 < n)
    return np.clip(i0, 0, n - 1), np.clip(i1, 0, n - 1), frac, ok0, ok1


def _bilinear_numpy(img: np.ndarray, x: np.ndarray, y: np.ndarray, border: str,
                    dtype: np.dtype) -> np.ndarray:
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot sample an empty image of shape {img.shape}")
    x0, x1, fx, okx0, okx1 = _axis(x, w, border)
    y0, y1, fy, oky0, oky1 = _axis(y, h, border)
    fx, fy = fx.astype(dtype, copy=False), fy.astype(dtype, copy=False)
    if img.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]

    def tap(yi, xi, oky, okx):
        v = img[yi, xi].astype(dtype, copy=False)
        if oky is None:
            return v
        ok = oky & okx
        return np.where(ok[..., None] if img.ndim == 3 else ok, v, dtype.type(0))

    top = tap(y0, x0, oky0, okx0) * (1 - fx) + tap(y0, x1, oky0, okx1) * fx
    bot = tap(y1, x0, oky1, okx0) * (1 - fx) + tap(y1, x1, oky1, okx1) * fx
    return top * (1 - fy) + bot * fy


def _bilinear_remap(img: np.ndarray, x: np.ndarray, y: np.ndarray, border: str) -> np.ndarray:
    import cv2  # noqa: PLC0415 (OpenCV on demand: `import omnifast` stays light)

    mode = cv2.BORDER_CONSTANT if border == "zeros" else cv2.BORDER_REPLICATE
    src = np.ascontiguousarray(img, dtype=np.float32)

    def remap(a: np.ndarray) -> np.ndarray:
        return cv2.remap(a, x, y, cv2.INTER_LINEAR, borderMode=mode, borderValue=0)

    if src.ndim == 2:
        return remap(src)
    c = src.shape[2]
    if c in (1, 3, 4):
        return remap(src).reshape(*x.shape, c)
    return np.stack([remap(np.ascontiguousarray(src[..., k])) for k in range(c)], -1)


def _bilinear_torch(img: torch.Tensor, x, y, border: str) -> torch.Tensor:
    if img.dim() not in (2, 3):
        raise ValueError(f"img must be [H, W] or [H, W, C], got shape {list(img.shape)}")
    x = torch.as_tensor(x, device=img.device).to(img.dtype)
    y = torch.as_tensor(y, device=img.device).to(img.dtype)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {list(x.shape)} and "
                         f"{list(y.shape)}")
    h, w = img.shape[:2]
    chw = img.permute(2, 0, 1) if img.dim() == 3 else img[None]
    c = chw.shape[0]
    if x.numel() == 0:
        out = img.new_zeros((*x.shape, c))
    else:
        xs, ys = x.reshape(-1), y.reshape(-1)
        grid = torch.stack([xs * 2 / max(w - 1, 1) - 1, ys * 2 / max(h - 1, 1) - 1], -1)
        out = F.grid_sample(chw[None], grid[None, None], mode="bilinear",
                            padding_mode="zeros" if border == "zeros" else "border",
                            align_corners=True)
        out = out[0, :, 0].t().reshape(*x.shape, c)
    return out if img.dim() == 3 else out[..., 0]


__all__ = ["BORDERS", "FRAME_MARGIN", "Border", "bilinear", "in_frame"]
