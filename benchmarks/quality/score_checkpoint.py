"""Score a fit's checkpoint on a synthetic clip, including the depth of each query's surface.

    python benchmarks/quality/score_checkpoint.py easy out/fit/checkpoint.pt

Prints dAvg and occlusion accuracy (TAP-Vid, first-frame queries), dAvg on background and
foreground queries, and per layer the mean index of the sample with the largest compositing
weight on the query rays (0 = the nearest of the preset's samples): the depth at which the fit
put each layer's surface. Works on checkpoints written during a fit, so a run can be followed.
``--per-frame`` also prints, per layer, the median tracking error in pixels on each frame
(visible points only): a layer that moves with another shows an error growing frame by frame.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from omnifast import ops
from omnifast.config import model_config_from_dict
from omnifast.eval.run import score_tracks, synthetic_clips
from omnifast.model.omnimotion import OmniMotion
from omnifast.track import Tracker


def surface_index_per_layer(tracker: Tracker, clip) -> dict[int, float]:
    """Mean argmax-weight sample index on the query rays, per synthetic layer."""
    q = clip.query_points
    layers = clip.source.layer_ids(q)
    with torch.no_grad():
        _, sigma = tracker.rays.density(torch.tensor(q[:, 0], dtype=torch.long),
                                        torch.tensor(q[:, [2, 1]], dtype=torch.float32))
        best = ops.composite_argmax(sigma).float()
    return {int(k): round(float(best[torch.from_numpy(layers == k)].mean()), 2)
            for k in np.unique(layers)}


def score(tracker: Tracker, clip) -> dict:
    tracks, occluded = tracker.track(clip.query_points)
    res = score_tracks(clip, np.asarray(tracks, np.float64), np.asarray(occluded, bool))
    out = {"dAvg": float(np.mean(res["average_pts_within_thresh"])),
           "OA": float(np.mean(res["occlusion_accuracy"])),
           "AJ": float(np.mean(res["average_jaccard"]))}
    out.update({k: float(v) for k, v in res.items() if k.startswith("davg_")})
    out["surface_index"] = surface_index_per_layer(tracker, clip)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def layer_errors(tracker: Tracker, clip) -> dict[int, list[float]]:
    """Per layer, the median distance (px) to the truth in each frame, visible points only."""
    q = clip.query_points
    tracks, _ = tracker.track(q)
    true, hidden = clip.source.ground_truth(q)
    err = np.linalg.norm(np.asarray(tracks, np.float64) - true, axis=-1)
    layers = clip.source.layer_ids(q)
    out = {}
    for k in np.unique(layers):
        e, h = err[layers == k], hidden[layers == k]
        out[int(k)] = [round(float(np.median(e[~h[:, t], t])), 1) if (~h[:, t]).any()
                       else float("nan") for t in range(e.shape[1])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", choices=["easy", "medium", "hard"])
    ap.add_argument("checkpoint")
    ap.add_argument("--per-frame", action="store_true", help="per-layer error in each frame")
    a = ap.parse_args()
    clip = synthetic_clips([a.clip])[0]
    ck = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
    model = OmniMotion(model_config_from_dict(ck["model_config"]), ck["num_frames"])
    model.load_state_dict(ck["model"])
    tracker = Tracker(model, ck["height"], ck["width"])
    print({"step": ck.get("step"), **score(tracker, clip)})
    if a.per_frame:
        for k, errs in layer_errors(tracker, clip).items():
            print(f"layer {k}: median error per frame (px):", " ".join(f"{e:.1f}" for e in errs))


if __name__ == "__main__":
    main()
