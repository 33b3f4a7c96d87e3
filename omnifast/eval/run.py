"""The evaluation loop behind ``omnifast eval``: fit (or load) each clip, track the benchmark
queries, score omnifast and the flow baselines, and write the table, JSON, charts and videos."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from omnifast.eval.baselines import BASELINES, FLOW_BASELINES, check_baselines
from omnifast.eval.metrics import THRESHOLDS, evaluate_tracks
from omnifast.files import atomic_write
from omnifast.runtime import flushes_subnormals

METHOD_OMNIFAST = "omnifast"
#: omnifast's tracks after the appearance refinement (:mod:`omnifast.refine`)
METHOD_REFINED = "omnifast_refined"
#: table columns: (header, result key, format)
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("AJ", "average_jaccard", "{:.3f}"),
    ("dAvg", "average_pts_within_thresh", "{:.3f}"),
    ("OA", "occlusion_accuracy", "{:.3f}"),
    ("TC", "temporal_coherence", "{:.3f}"),
    ("fit s", "fit_seconds", "{:.1f}"),
)
#: the quality target of the synthetic suite: omnifast's dAvg this much above chained flow's,
#: and an occlusion accuracy of at least this
TARGET_DAVG_GAP = 0.10
TARGET_OA = 0.80


@dataclass
class EvalClip:
    """A clip to evaluate: frames, queries and ground truth at the clip's own resolution."""

    name: str
    video: np.ndarray  # [T, H, W, 3] uint8
    query_points: np.ndarray  # [N, 3] (t, y, x)
    tracks: np.ndarray  # [N, T, 2] (x, y)
    occluded: np.ndarray  # [N, T] bool
    query_mode: str = "first"
    meta: dict = field(default_factory=dict)
    #: the generating :class:`~omnifast.datasets.synthetic.SyntheticClip`, when there is one
    source: object | None = field(default=None, repr=False)


def synthetic_clips(names: Iterable[str] = ("easy", "medium", "hard"), *, seed: int = 0,
                    num_frames: int = 24, height: int = 96, width: int = 128,
                    query_mode: str = "first", stride: int = 5,
                    num_queries: int = 256) -> list[EvalClip]:
    """The synthetic suite: one clip per difficulty name, with first or strided queries."""
    from omnifast.datasets.synthetic import generate_clip  # noqa: PLC0415

    out = []
    for name in names:
        c = generate_clip(name, num_frames=num_frames, height=height, width=width, seed=seed,
                          num_queries=num_queries)
        if query_mode == "first":
            qp, tr, occ = c.query_points, c.tracks, c.occluded
        elif query_mode == "strided":
            qp = c.strided_queries(stride)
            tr, occ = c.ground_truth(qp)
        else:
            raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")
        out.append(EvalClip(c.name, c.video, qp, tr, occ, query_mode,
                            {"difficulty": name, "seed": seed, "layers": c.num_layers - 1},
                            source=c))
    return out


def _fit(video: np.ndarray, **kw):
    from omnifast.api import fit  # noqa: PLC0415 (torch and the trainer on demand)

    return fit(video, **kw)


def _load_tracker(path: Path):
    from omnifast.track import load_tracker  # noqa: PLC0415

    return load_tracker(path)


def _to_jsonable(x):
    if isinstance(x, dict):
        return {str(k): _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def summarize(per_clip: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Mean of every numeric result over the clips, per method (NaN-aware)."""
    methods: dict[str, dict[str, list[float]]] = {}
    for res in per_clip.values():
        for m, vals in res["methods"].items():
            for k, v in vals.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    methods.setdefault(m, {}).setdefault(k, []).append(float(v))
    out = {}
    for m, vals in methods.items():
        out[m] = {}
        for k, v in vals.items():
            arr = np.asarray(v, dtype=np.float64)
            out[m][k] = float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
    return out


def check_target(summary: dict[str, dict[str, float]]) -> dict[str, object]:
    """The synthetic suite's quality target on the mean over clips.

    ``met`` is judged on the fitted model's own tracks (``omnifast``); when the refined tracks
    were scored too, ``refined_davg_gap``, ``refined_occlusion_accuracy`` and ``refined_met``
    give the same check for them.
    """
    if METHOD_OMNIFAST not in summary or "chained_flow" not in summary:
        return {}
    ch = summary["chained_flow"]["average_pts_within_thresh"]
    om = summary[METHOD_OMNIFAST]
    gap = om["average_pts_within_thresh"] - ch
    oa = om["occlusion_accuracy"]
    out: dict[str, object] = {
        "davg_gap": gap, "davg_gap_required": TARGET_DAVG_GAP, "occlusion_accuracy": oa,
        "occlusion_accuracy_required": TARGET_OA,
        "met": bool(gap >= TARGET_DAVG_GAP and oa >= TARGET_OA)}
    if METHOD_REFINED in summary:
        ref = summary[METHOD_REFINED]
        rgap = ref["average_pts_within_thresh"] - ch
        out.update(refined_davg_gap=rgap, refined_occlusion_accuracy=ref["occlusion_accuracy"],
                   refined_met=bool(rgap >= TARGET_DAVG_GAP
                                    and ref["occlusion_accuracy"] >= TARGET_OA))
    return out


def format_table(per_clip: dict[str, dict], summary: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: one row per clip and method, then the means."""
    heads = ["clip", "method", *[c[0] for c in TABLE_COLUMNS]]
    rows = []

    def fmt(vals: dict, key: str, f: str) -> str:
        v = vals.get(key)
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else \
            f.format(v)

    for clip, res in per_clip.items():
        for m, vals in res["methods"].items():
            rows.append([clip, m, *[fmt(vals, k, f) for _, k, f in TABLE_COLUMNS]])
    if len(per_clip) > 1:
        for m, vals in summary.items():
            rows.append(["mean", m, *[fmt(vals, k, f) for _, k, f in TABLE_COLUMNS]])
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    line = lambda r: "  ".join(s.ljust(w) if i < 2 else s.rjust(w)  # noqa: E731
                               for i, (s, w) in enumerate(zip(r, widths)))
    sep = "-" * len(line(heads))
    return "\n".join([line(heads), sep, *[line(r) for r in rows]])


def format_markdown(per_clip: dict[str, dict], summary: dict[str, dict[str, float]]) -> str:
    """The same table in Markdown (for benchmarks/RESULTS.md)."""
    heads = ["clip", "method", *[c[0] for c in TABLE_COLUMNS]]
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]

    def cells(vals):
        res = []
        for _, k, f in TABLE_COLUMNS:
            v = vals.get(k)
            ok = v is not None and not (isinstance(v, float) and not math.isfinite(v))
            res.append(f.format(v) if ok else "-")
        return res

    for clip, res in per_clip.items():
        for m, vals in res["methods"].items():
            out.append("| " + " | ".join([clip, m, *cells(vals)]) + " |")
    if len(per_clip) > 1:
        for m, vals in summary.items():
            out.append("| " + " | ".join(["**mean**", m, *cells(vals)]) + " |")
    return "\n".join(out)


def breakdown(clip: EvalClip, tracks: np.ndarray, occluded: np.ndarray) -> dict[str, float]:
    """Where a method gains or loses: delta_avg on subsets of the truly visible evaluation points.

    * ``davg_never_hidden``: points of tracks that stay visible from the query frame on;
    * ``davg_after_occlusion``: visible points that were hidden (by a layer or outside the
      frame) at some frame between the query frame and now: re-emerged points;
    * ``davg_background`` / ``davg_foreground``: by the layer of the query (synthetic only).

    Returns:
        Plain floats (NaN for an empty subset).
    """
    from omnifast.eval.metrics import evaluation_mask, rescale_tracks  # noqa: PLC0415

    h, w = clip.video.shape[1:3]
    gt = rescale_tracks(clip.tracks, h, w)
    pr = rescale_tracks(tracks, h, w)
    dist = np.linalg.norm(pr - gt, axis=-1)
    ev = evaluation_mask(clip.query_points, gt.shape[1], clip.query_mode)
    vis = ~clip.occluded & ev
    qt = np.rint(clip.query_points[:, 0]).astype(int)
    t = np.arange(gt.shape[1])
    after = t[None, :] > qt[:, None]
    # hidden at some frame strictly between the query frame and t (forward in time)
    hid = np.cumsum(clip.occluded & after, axis=1) > 0
    subsets = {"davg_never_hidden": vis & after & ~hid, "davg_after_occlusion": vis & hid}
    if clip.source is not None and hasattr(clip.source, "layer_ids"):
        layer = clip.source.layer_ids(clip.query_points)
        subsets["davg_background"] = vis & (layer == 0)[:, None]
        subsets["davg_foreground"] = vis & (layer > 0)[:, None]
    out = {}
    for name, m in subsets.items():
        n = int(m.sum())
        out[name] = float(np.mean([(dist[m] < d).mean() for d in THRESHOLDS])) if n else \
            float("nan")
        out[name.replace("davg_", "count_")] = n
    return out


# ------------------------------------------------------------------------------------ drawing

_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75)]  # RGB


def _text(img, s, org, scale=0.45, color=(30, 30, 30), thick=1):
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color[::-1], thick, cv2.LINE_AA)


def _legend(img, names: Sequence[str], x: int, y: int) -> None:
    for i, n in enumerate(names):
        c = _PALETTE[i % len(_PALETTE)][::-1]
        cv2.rectangle(img, (x, y + 18 * i), (x + 12, y + 18 * i + 12), c, -1)
        _text(img, n, (x + 18, y + 18 * i + 11))


def bar_chart(per_clip: dict[str, dict], path: str | os.PathLike,
              metrics: Sequence[tuple[str, str]] = (("AJ", "average_jaccard"),
                                                     ("dAvg", "average_pts_within_thresh"),
                                                     ("OA", "occlusion_accuracy"))) -> Path:
    """Grouped bars: one panel per metric, groups = clips, bars = methods. Written as PNG."""
    clips = list(per_clip)
    methods = list(dict.fromkeys(m for r in per_clip.values() for m in r["methods"]))
    pw, ph, top, bottom, left = 90 + 70 * len(clips) * max(1, len(methods)) // 2, 300, 40, 40, 45
    # the legend lists the methods one per 18 px row below the panels
    img = np.full((ph + 18 * len(methods) + 10, pw * len(metrics) + 20, 3), 255, np.uint8)
    for p, (label, key) in enumerate(metrics):
        x0 = p * pw + left
        y0, y1 = top, ph - bottom
        cv2.line(img, (x0, y1), (x0 + pw - left - 10, y1), (0, 0, 0), 1)
        cv2.line(img, (x0, y0), (x0, y1), (0, 0, 0), 1)
        for v in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = int(y1 - v * (y1 - y0))
            cv2.line(img, (x0 - 3, y), (x0 + pw - left - 10, y), (225, 225, 225), 1)
            _text(img, f"{v:.2f}", (x0 - 40, y + 4), 0.35)
        _text(img, label, (x0 + (pw - left) // 2 - 15, 25), 0.6, thick=2)
        gw = (pw - left - 20) / max(1, len(clips))
        bw = max(4, int(gw * 0.8 / max(1, len(methods))))
        for ci, clip in enumerate(clips):
            gx = x0 + 8 + ci * gw
            for mi, m in enumerate(methods):
                v = per_clip[clip]["methods"].get(m, {}).get(key)
                if v is None or not math.isfinite(v):
                    continue
                bx = int(gx + mi * bw)
                by = int(y1 - np.clip(v, 0, 1) * (y1 - y0))
                cv2.rectangle(img, (bx, by), (bx + bw - 2, y1),
                              _PALETTE[mi % len(_PALETTE)][::-1], -1)
            _text(img, clip[:12], (int(gx), y1 + 16), 0.35)
    _legend(img, methods, 20, ph)
    return _write_png(path, img)


def threshold_curves(per_clip: dict[str, dict], path: str | os.PathLike) -> Path:
    """Fraction of points within d (1..16 px at 256 scale) per method; one panel per clip."""
    clips = list(per_clip)
    methods = list(dict.fromkeys(m for r in per_clip.values() for m in r["methods"]))
    pw, ph, left, top, bottom = 280, 260, 45, 35, 40
    img = np.full((ph + 18 * len(methods) + 10, pw * len(clips) + 10, 3), 255, np.uint8)
    xs = np.log2(np.asarray(THRESHOLDS, float))
    for ci, clip in enumerate(clips):
        x0, y0, y1 = ci * pw + left, top, ph - bottom
        x1 = x0 + pw - left - 15
        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
        for v in (0.25, 0.5, 0.75):
            y = int(y1 - v * (y1 - y0))
            cv2.line(img, (x0 + 1, y), (x1 - 1, y), (225, 225, 225), 1)
        for v in (0.0, 0.5, 1.0):
            _text(img, f"{v:.1f}", (x0 - 30, int(y1 - v * (y1 - y0)) + 4), 0.35)
        for d, lx in zip(THRESHOLDS, xs):
            px = int(x0 + 8 + lx / xs[-1] * (x1 - x0 - 16))
            _text(img, str(d), (px - 4, y1 + 14), 0.35)
        _text(img, f"{clip}: pts within d px", (x0, 22), 0.45, thick=1)
        for mi, m in enumerate(methods):
            vals = per_clip[clip]["methods"].get(m)
            if not vals:
                continue
            pts = []
            for d, lx in zip(THRESHOLDS, xs):
                v = vals.get(f"pts_within_{d}")
                if v is None or not math.isfinite(v):
                    continue
                pts.append((int(x0 + 8 + lx / xs[-1] * (x1 - x0 - 16)),
                            int(y1 - np.clip(v, 0, 1) * (y1 - y0))))
            col = _PALETTE[mi % len(_PALETTE)][::-1]
            for a, b in zip(pts[:-1], pts[1:]):
                cv2.line(img, a, b, col, 2, cv2.LINE_AA)
            for p in pts:
                cv2.circle(img, p, 3, col, -1, cv2.LINE_AA)
    _legend(img, methods, 20, ph)
    return _write_png(path, img)


def _write_png(path, img_bgr: np.ndarray) -> Path:
    path = Path(path)
    ok, buf = cv2.imencode(".png", img_bgr)
    if not ok:
        raise RuntimeError(f"cannot encode {path}")
    with atomic_write(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


def comparison_video(clip: EvalClip, predictions: dict[str, tuple[np.ndarray, np.ndarray]],
                     path: str | os.PathLike, *, max_points: int = 64, scale: int = 3,
                     fps: float = 8) -> Path:
    """Panels side by side: the true tracks, then each method's tracks, on the same points.

    Occluded points are drawn as crosses. Written as mp4 through :mod:`omnifast.viz`.
    """
    from omnifast import viz  # noqa: PLC0415

    n = len(clip.query_points)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(n, min(n, max_points), replace=False)) if n else np.zeros(0, int)
    t, h, w = clip.video.shape[:3]
    big = np.stack([cv2.resize(f, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
                    for f in clip.video])
    to_big = lambda xy: (np.asarray(xy, float) + 0.5) * scale - 0.5  # noqa: E731
    q = to_big(clip.query_points[pick][:, [2, 1]])
    colors = viz.point_colors(q) if len(q) else None
    panels = [viz.draw_tracks(big, to_big(clip.tracks[pick]), clip.occluded[pick], radius=3,
                              colors=colors)]
    labels = ["truth"]
    for m, (tr, occ) in predictions.items():
        panels.append(viz.draw_tracks(big, to_big(tr[pick]), occ[pick], radius=3,
                                      colors=colors))
        labels.append(m)
    for p, lab in zip(panels, labels):
        for f in p:
            viz.put_label(f, lab)
    return viz.write_video(path, np.concatenate(panels, axis=2), fps=fps)


# ------------------------------------------------------------------------------------ the loop


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def score_tracks(clip: EvalClip, tracks: np.ndarray, occluded: np.ndarray) -> dict:
    """TAP-Vid metrics of predicted tracks on a clip, plus the :func:`breakdown` subsets."""
    h, w = clip.video.shape[1:3]
    res = evaluate_tracks(clip.query_points, clip.tracks, clip.occluded, tracks, occluded,
                          height=h, width=w, query_mode=clip.query_mode)
    res.update(breakdown(clip, tracks, occluded))
    return res


@flushes_subnormals
def evaluate_clip(clip: EvalClip, *, preset: str = "cpu", iters: int | None = None,
                  seed: int = 0, out_dir: Path | None = None,
                  load: Path | None = None, baselines: Sequence[str] = FLOW_BASELINES,
                  skip_omnifast: bool = False, device: str | None = None,
                  progress: bool = True, quiet: bool = False, exact_motion: bool = False,
                  refine=True, score: Callable | None = None
                  ) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Score omnifast and the baselines on one clip.

    ``score(clip, tracks, occluded) -> dict`` scores each method's predictions (default
    :func:`score_tracks`, against the clip's ground truth).

    With ``refine`` (and a tracker that has ``local_jacobians``, as fitted trackers do) the
    fitted tracks are also refined against the video as ``Tracker.track_refined`` refines
    them (:func:`omnifast.refine.refine_fitted_tracks`; ``refine`` is True for the default
    settings or a :class:`omnifast.refine.RefineConfig`) and scored as a second method,
    ``omnifast_refined``.

    Returns:
        (per-method results {method: metrics + timings}, predictions {method: (tracks, occ)})
    """
    score = score_tracks if score is None else score
    results, preds = {}, {}
    if not skip_omnifast:
        t0 = time.perf_counter()
        if load is not None:
            _log(f"[{clip.name}] loading {load}", quiet)
            tracker = _load_tracker(load)
            fit_s = float(tracker.info.get("fit_seconds", float("nan")))
        else:
            _log(f"[{clip.name}] fitting omnifast (preset {preset}, iters "
                 f"{iters if iters is not None else 'preset default'})", quiet)
            kw = {}
            if exact_motion:
                if clip.source is None or not hasattr(clip.source, "exact_motion"):
                    raise ValueError("exact motion is only available for synthetic clips")
                kw["motion"] = clip.source.exact_motion()
            tracker = _fit(clip.video, preset=preset, iters=iters, seed=seed,
                           out_dir=None if out_dir is None else out_dir / "fit",
                           device=device, progress=progress, **kw)
            fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        tr, occ = tracker.track(clip.query_points)
        track_s = time.perf_counter() - t1
        tr, occ = np.asarray(tr, np.float64), np.asarray(occ, bool)
        res = score(clip, tr, occ)
        info = tracker.info
        res.update(fit_seconds=fit_s, track_seconds=track_s,
                   steps=info.get("steps"), optimise_seconds=info.get("fit_seconds"))
        results[METHOD_OMNIFAST], preds[METHOD_OMNIFAST] = res, (tr, occ)
        if refine and hasattr(tracker, "local_jacobians"):
            from omnifast.refine import refine_fitted_tracks  # noqa: PLC0415

            t2 = time.perf_counter()
            # the path of Tracker.track_refined, from the tracks just scored
            config = None if isinstance(refine, bool) else refine
            rtr = refine_fitted_tracks(tracker, clip.video, clip.query_points, tr, config=config)
            rtr = np.asarray(rtr, np.float64)
            refine_s = time.perf_counter() - t2
            rres = score(clip, rtr, occ)
            rres.update(fit_seconds=fit_s, track_seconds=track_s + refine_s,
                        steps=info.get("steps"), optimise_seconds=info.get("fit_seconds"))
            results[METHOD_REFINED], preds[METHOD_REFINED] = rres, (rtr, occ)
        elif refine:
            _log(f"[{clip.name}] the tracker has no local_jacobians: not refined", quiet)
    for name in baselines:
        t0 = time.perf_counter()
        tr, occ = BASELINES[name](clip.video, clip.query_points)
        dt = time.perf_counter() - t0
        res = score(clip, tr, occ)
        res.update(fit_seconds=0.0, track_seconds=dt)
        results[name], preds[name] = res, (tr, occ)
    return results, preds


def find_tracker(load: str | os.PathLike | None, clip_name: str) -> Path | None:
    """The saved tracker of ``clip_name`` under ``load`` (None when ``load`` is None).

    ``load`` is an earlier output folder, holding ``<clip>/tracker.pt`` or
    ``<clip>/fit/tracker.pt``, or one tracker file. Raises FileNotFoundError when none is there.
    """
    if load is None:
        return None
    lp = Path(load)
    cands = [lp / clip_name / "tracker.pt", lp / clip_name / "fit" / "tracker.pt", lp]
    found = next((c for c in cands if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no tracker for clip {clip_name} under {lp}")
    return found


@flushes_subnormals
def run_eval(clips: Sequence[EvalClip], out_dir: str | os.PathLike, *, preset: str = "cpu",
             iters: int | None = None, seed: int = 0,
             load: str | os.PathLike | None = None, baselines: Sequence[str] = FLOW_BASELINES,
             skip_omnifast: bool = False, device: str | None = None, write_videos: bool = True,
             progress: bool = True, quiet: bool = False, exact_motion: bool = False,
             refine=True) -> dict:
    """Evaluate every clip, print the table and write ``results.json``, ``quality_bars.png``,
    ``threshold_curves.png`` and ``<clip>/compare.mp4`` under ``out_dir``.

    Args:
        clips: what to evaluate (e.g. :func:`synthetic_clips`).
        out_dir: output folder (created).
        preset: omnifast preset for fitting.
        iters: optimisation steps (default: the preset's).
        seed: fitting seed.
        load: instead of fitting, load trackers: a folder holding ``<clip>/tracker.pt`` (or
            ``<clip>/fit/tracker.pt``), or one tracker file when there is one clip.
        baselines: names from :data:`omnifast.eval.baselines.BASELINES`.
        skip_omnifast: score only the baselines.
        device: fitting device.
        write_videos: write the comparison videos.
        progress: progress bars while fitting.
        quiet: no log lines on stderr (the table is still returned).
        exact_motion: fit on the synthetic clips' exact pairwise motion instead of optical
            flow (a diagnostic: what the model reaches with perfect supervision).
        refine: also score the refined tracks (``omnifast_refined``, see
            :func:`evaluate_clip`): True, False or a :class:`omnifast.refine.RefineConfig`.

    Returns:
        The results dict that is also written as JSON: ``config``, ``clips`` (per clip, per
        method: metrics, timings), ``summary`` (means over clips) and ``target``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_baselines(baselines)
    per_clip: dict[str, dict] = {}
    wall0 = time.perf_counter()
    for clip in clips:
        results, preds = evaluate_clip(
            clip, preset=preset, iters=iters, seed=seed,
            out_dir=out / clip.name, load=find_tracker(load, clip.name), baselines=baselines,
            skip_omnifast=skip_omnifast, device=device, progress=progress, quiet=quiet,
            exact_motion=exact_motion, refine=refine)
        per_clip[clip.name] = {"num_queries": int(len(clip.query_points)),
                               "num_frames": int(clip.video.shape[0]),
                               "size": [int(clip.video.shape[1]), int(clip.video.shape[2])],
                               "query_mode": clip.query_mode, "meta": clip.meta,
                               "methods": results}
        if write_videos:
            try:
                comparison_video(clip, preds, out / clip.name / "compare.mp4")
            except Exception as e:  # noqa: BLE001 (a video problem must not lose the scores)
                _log(f"[{clip.name}] comparison video not written: {e}", quiet)
        line = ", ".join(f"{m} AJ {r['average_jaccard']:.3f} dAvg "
                         f"{r['average_pts_within_thresh']:.3f} OA {r['occlusion_accuracy']:.3f}"
                         for m, r in results.items())
        _log(f"[{clip.name}] {line}", quiet)
    summary = summarize(per_clip)
    result = {
        "config": {"preset": preset, "iters": iters, "seed": seed,
                   "motion": "exact" if exact_motion else "optical flow",
                   "baselines": list(baselines), "omnifast": not skip_omnifast,
                   "loaded_from": None if load is None else str(load),
                   "refine": refine if isinstance(refine, bool) else dataclasses.asdict(refine),
                   "wall_seconds": time.perf_counter() - wall0,
                   "threads": _threads()},
        "clips": per_clip,
        "summary": summary,
        "target": check_target(summary),
    }
    with atomic_write(out / "results.json") as tmp:
        tmp.write_text(json.dumps(_to_jsonable(result), indent=2))
    if per_clip:
        bar_chart(per_clip, out / "quality_bars.png")
        threshold_curves(per_clip, out / "threshold_curves.png")
    result["table"] = format_table(per_clip, summary)
    result["markdown"] = format_markdown(per_clip, summary)
    return result


def _threads() -> int | None:
    try:
        import torch  # noqa: PLC0415

        return int(torch.get_num_threads())
    except Exception:  # noqa: BLE001
        return None


__all__ = ["EvalClip", "METHOD_OMNIFAST", "METHOD_REFINED", "TARGET_DAVG_GAP", "TARGET_OA",
           "bar_chart",
           "check_target", "comparison_video", "evaluate_clip", "format_markdown",
           "format_table", "run_eval", "summarize", "synthetic_clips", "threshold_curves"]
