"""TAP-Vid point-tracking metrics and OmniMotion's temporal coherence.

The TAP-Vid benchmark (Doersch et al., 2022) scores a tracker on a set of query points, each
given as (t, y, x) in some query frame, against true tracks and occlusion flags:

* Evaluation points are the frames other than the query frame: in ``"first"`` mode only the
  frames *after* the query frame, in ``"strided"`` mode every frame except the query frame.
* ``occlusion_accuracy``: fraction of evaluation points where the predicted occlusion flag
  equals the true one.
* ``pts_within_d`` (d in 1, 2, 4, 8, 16 pixels, strict ``<``): among evaluation points that are
  visible in the ground truth, the fraction whose predicted position lies within d of the true
  one, whatever the predicted occlusion flag.
* ``jaccard_d`` = TP / (TP + FP + FN) with TP = truly visible, predicted visible and within d;
  FN = truly visible but not (predicted visible and within d); FP = predicted visible and
  (truly occluded or not within d). TP + FN is the number of truly visible evaluation points.
* ``average_jaccard`` (AJ) and ``average_pts_within_thresh`` (delta_avg) average the five
  thresholds.

Distances are measured at the benchmark's 256 x 256 resolution: rescale tracks with
:func:`rescale_tracks` (or :func:`to_tapvid_scale`) before calling :func:`tapvid_metrics`.

One deliberate difference from the benchmark's published evaluation code: there the occlusion
accuracy of every video is divided by the number of evaluation points of the *whole batch*; here
each video is divided by its own count. With one video per batch (how the benchmark is run) the
two agree; with several videos only this version gives per-video accuracies.

Temporal coherence (TC, OmniMotion paper, lower is better) compares accelerations
a_t = p_{t+1} - 2 p_t + p_{t-1} of the predicted and true tracks: the mean L2 norm of their
difference over every triplet of consecutive frames where the ground truth is visible in all
three frames and all three frames are scored (evaluation frames or the query frame).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLDS: tuple[int, ...] = (1, 2, 4, 8, 16)
TAPVID_SIZE: int = 256

METRIC_KEYS: tuple[str, ...] = (
    "occlusion_accuracy",
    *(f"pts_within_{d}" for d in THRESHOLDS),
    *(f"jaccard_{d}" for d in THRESHOLDS),
    "average_jaccard",
    "average_pts_within_thresh",
)


def _check_inputs(query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks):
    qp = np.asarray(query_points, dtype=np.float64)
    go = np.asarray(gt_occluded).astype(bool)
    gt = np.asarray(gt_tracks, dtype=np.float64)
    po = np.asarray(pred_occluded).astype(bool)
    pt = np.asarray(pred_tracks, dtype=np.float64)
    if qp.ndim != 3 or qp.shape[-1] != 3:
        raise ValueError(f"query_points must be [B, N, 3] (t, y, x), got {qp.shape}")
    b, n = qp.shape[:2]
    if gt.ndim != 4 or gt.shape[:2] != (b, n) or gt.shape[-1] != 2:
        raise ValueError(f"gt_tracks must be [B, N, T, 2] with B, N = {b}, {n}, got {gt.shape}")
    t = gt.shape[2]
    for name, arr, shape in (("gt_occluded", go, (b, n, t)), ("pred_occluded", po, (b, n, t)),
                             ("pred_tracks", pt, (b, n, t, 2))):
        if arr.shape != shape:
            raise ValueError(f"{name} must be {list(shape)}, got {list(arr.shape)}")
    return qp, go, gt, po, pt


def evaluation_mask(query_points: np.ndarray, num_frames: int,
                    query_mode: str = "first") -> np.ndarray:
    """Which (point, frame) entries are scored.

    Args:
        query_points: (t, y, x) per query; t is rounded to the nearest frame. [..., N, 3]
        num_frames: T.
        query_mode: ``"first"`` (frames after the query frame) or ``"strided"`` (every frame
            but the query frame).

    Returns:
        Boolean mask. [..., N, T]
    """
    qt = np.rint(np.asarray(query_points, dtype=np.float64)[..., 0]).astype(np.int64)
    frames = np.arange(num_frames)
    if query_mode == "first":
        return frames > qt[..., None]
    if query_mode == "strided":
        return frames != qt[..., None]
    raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def tapvid_metrics(query_points: np.ndarray, gt_occluded: np.ndarray, gt_tracks: np.ndarray,
                   pred_occluded: np.ndarray, pred_tracks: np.ndarray,
                   query_mode: str = "first",
                   thresholds: Sequence[float] = THRESHOLDS) -> dict[str, np.ndarray]:
    """The TAP-Vid benchmark metrics, per video.

    Positions must already be at the benchmark's 256 x 256 scale (see :func:`rescale_tracks`).
    A ratio with an empty denominator (e.g. no visible evaluation point) is NaN.

    Args:
        query_points: (t, y, x) per query. [B, N, 3]
        gt_occluded: true occlusion flags. [B, N, T] bool
        gt_tracks: true positions (x, y). [B, N, T, 2]
        pred_occluded: predicted occlusion flags. [B, N, T] bool
        pred_tracks: predicted positions (x, y). [B, N, T, 2]
        query_mode: ``"first"`` or ``"strided"``.
        thresholds: distance thresholds in pixels (strict ``<``).

    Returns:
        Dict of float64 arrays of shape [B]: ``occlusion_accuracy``, ``pts_within_{d}``,
        ``jaccard_{d}``, ``average_jaccard``, ``average_pts_within_thresh``.
    """
    qp, gt_occ, gt, pred_occ, pred = _check_inputs(query_points, gt_occluded, gt_tracks,
                                                   pred_occluded, pred_tracks)
    ev = evaluation_mask(qp, gt.shape[2], query_mode)
    visible = ~gt_occ
    pred_visible = ~pred_occ
    out: dict[str, np.ndarray] = {}
    out["occlusion_accuracy"] = _safe_div(((pred_occ == gt_occ) & ev).sum(axis=(1, 2)),
                                          ev.sum(axis=(1, 2)))
    sq_dist = ((pred - gt) ** 2).sum(axis=-1)
    num_visible = (visible & ev).sum(axis=(1, 2))
    within_all, jaccard_all = [], []
    for d in thresholds:
        within = sq_dist < float(d) ** 2
        correct = within & visible & ev
        frac = _safe_div(correct.sum(axis=(1, 2)), num_visible)
        tp = (correct & pred_visible).sum(axis=(1, 2))
        fp = (pred_visible & (gt_occ | ~within) & ev).sum(axis=(1, 2))
        jac = _safe_div(tp, num_visible + fp)
        name = f"{d:g}"
        out[f"pts_within_{name}"] = frac
        out[f"jaccard_{name}"] = jac
        within_all.append(frac)
        jaccard_all.append(jac)
    out["average_jaccard"] = np.mean(np.stack(jaccard_all, axis=1), axis=1)
    out["average_pts_within_thresh"] = np.mean(np.stack(within_all, axis=1), axis=1)
    return out


def temporal_coherence(query_points: np.ndarray, gt_occluded: np.ndarray, gt_tracks: np.ndarray,
                       pred_tracks: np.ndarray, query_mode: str = "first") -> np.ndarray:
    """OmniMotion's temporal coherence: L2 error of the predicted accelerations (lower is better).

    For every triplet of consecutive frames (t-1, t, t+1) where the true point is visible in all
    three and all three are scored (evaluation frames, or the query frame itself), compare
    a = p[t+1] - 2 p[t] + p[t-1] of prediction and truth; return the mean ``||a_pred - a_gt||``.
    Positions should be at the 256 x 256 scale, like :func:`tapvid_metrics`.

    Args:
        query_points: (t, y, x). [B, N, 3]
        gt_occluded: [B, N, T] bool
        gt_tracks: (x, y). [B, N, T, 2]
        pred_tracks: (x, y). [B, N, T, 2]
        query_mode: ``"first"`` or ``"strided"``.

    Returns:
        Mean acceleration error per video, NaN where no triplet qualifies. [B]
    """
    qp, gt_occ, gt, _, pred = _check_inputs(query_points, gt_occluded, gt_tracks,
                                            np.zeros(gt_occluded.shape, bool), pred_tracks)
    t = gt.shape[2]
    if t < 3:
        return np.full(qp.shape[0], np.nan)
    ev = evaluation_mask(qp, t, query_mode)
    qt = np.rint(qp[..., 0]).astype(np.int64)
    scored = ev | (np.arange(t) == qt[..., None])
    ok = scored & ~gt_occ
    trip = ok[..., :-2] & ok[..., 1:-1] & ok[..., 2:]
    acc_gt = gt[..., 2:, :] - 2 * gt[..., 1:-1, :] + gt[..., :-2, :]
    acc_pred = pred[..., 2:, :] - 2 * pred[..., 1:-1, :] + pred[..., :-2, :]
    err = np.linalg.norm(acc_pred - acc_gt, axis=-1)
    return _safe_div(np.where(trip, err, 0.0).sum(axis=(1, 2)), trip.sum(axis=(1, 2)))


def rescale_tracks(tracks: np.ndarray, height: int, width: int,
                   size: int | tuple[int, int] = TAPVID_SIZE) -> np.ndarray:
    """Map pixel positions (x, y) of an H x W video to the same positions in a resized video.

    Pixel centres are at integer coordinates (the project's convention), so the map is
    x' = (x + 0.5) * W' / W - 0.5 (likewise for y): the frame's outer edges map onto each other.

    Args:
        tracks: positions (x, y). [..., 2]
        height: H of the source video.
        width: W of the source video.
        size: target size, an int for a square (the benchmark's 256) or (height, width).

    Returns:
        Rescaled positions, float64. [..., 2]
    """
    th, tw = (size, size) if isinstance(size, int) else size
    tr = np.asarray(tracks, dtype=np.float64)
    scale = np.array([tw / width, th / height])
    return (tr + 0.5) * scale - 0.5


def rescale_query_points(query_points: np.ndarray, height: int, width: int,
                         size: int | tuple[int, int] = TAPVID_SIZE) -> np.ndarray:
    """:func:`rescale_tracks` for query points (t, y, x): t is kept. [..., 3] -> [..., 3]"""
    qp = np.asarray(query_points, dtype=np.float64).copy()
    xy = rescale_tracks(qp[..., [2, 1]], height, width, size)
    qp[..., 2], qp[..., 1] = xy[..., 0], xy[..., 1]
    return qp


def to_tapvid_scale(query_points: np.ndarray, gt_tracks: np.ndarray, pred_tracks: np.ndarray,
                    height: int, width: int, size: int = TAPVID_SIZE):
    """Rescale queries, true and predicted tracks of an H x W video to the 256 x 256 scale.

    Returns:
        (query_points, gt_tracks, pred_tracks), each rescaled, same shapes as given.
    """
    return (rescale_query_points(query_points, height, width, size),
            rescale_tracks(gt_tracks, height, width, size),
            rescale_tracks(pred_tracks, height, width, size))


def evaluate_tracks(query_points: np.ndarray, gt_tracks: np.ndarray, gt_occluded: np.ndarray,
                    pred_tracks: np.ndarray, pred_occluded: np.ndarray, *, height: int,
                    width: int, query_mode: str = "first") -> dict[str, float]:
    """Score one video given at its own resolution: rescale to 256 x 256, then all metrics.

    Args:
        query_points: (t, y, x) in the video's pixels. [N, 3]
        gt_tracks: true (x, y). [N, T, 2]
        gt_occluded: [N, T] bool
        pred_tracks: predicted (x, y). [N, T, 2]
        pred_occluded: [N, T] bool
        height: H of the video.
        width: W of the video.
        query_mode: ``"first"`` or ``"strided"``.

    Returns:
        Plain floats: every key of :func:`tapvid_metrics` plus ``temporal_coherence``.
    """
    qp, gt, pred = to_tapvid_scale(query_points, gt_tracks, pred_tracks, height, width)
    args = (qp[None], np.asarray(gt_occluded)[None], gt[None])
    m = tapvid_metrics(*args, np.asarray(pred_occluded)[None], pred[None],
                       query_mode=query_mode)
    res = {k: float(v[0]) for k, v in m.items()}
    res["temporal_coherence"] = float(temporal_coherence(*args, pred[None], query_mode)[0])
    return res


__all__ = ["METRIC_KEYS", "TAPVID_SIZE", "THRESHOLDS", "evaluate_tracks", "evaluation_mask",
           "rescale_query_points", "rescale_tracks", "tapvid_metrics", "temporal_coherence",
           "to_tapvid_scale"]
