"""Study: fit a masked real clip with a layer prior that holds moving pixels in front.

    python benchmarks/quality/layer_prior.py parkour --out /tmp/lp --frames 25 \
        --cache DIR/parkour/parkour/fit/motion-cache --labels flow --threshold 2.5 --weight 10

Each training step gets the extra term ``weight * (mean |d - NEAR| over points labelled moving
+ mean |d - FAR| over the others) / 2``, ``d`` the rendered depth of the step's points in their
own frame, for steps 1 to ``--until``. The labels are per pixel and frame:

* ``--labels masks``: the clip's object masks (an oracle: a diagnostic, not a method);
* ``--labels flow``: :func:`motion_masks` of the fit's motion cache, pixels whose flow to both
  neighbouring frames departs by more than ``--threshold`` px from the frame's dominant
  (homography) motion.

The term is added by replacing ``omnifast.train.losses.step_losses`` in this process only, and
renders the points a second time (about 1.5x the step's cost); the fit is otherwise ``omnifast
eval --suite masks``'s (``cpu`` preset, no refinement). ``--cache`` (a motion cache of the same
frames, e.g. from ``mask_experiment.py``) is required for the flow labels. Prints the mask
check's table, the share labelled moving, the median depths on and off the object and the
fitted model's errors on its adjacent training flows (``foreground_fit.self_fit``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from foreground_fit import layer_depths, self_fit
from foreground_pairs import add_clip_fit_arguments, cache_entry, fit_folder, reuse_motion_cache

import omnifast
import omnifast.train.losses as losses
from omnifast.eval.masks import read_masked_clip, run_mask_eval
from omnifast.model.geometry import sample_depths, unproject

#: rendered depths the prior pulls moving and other pixels to (the model's range is 0 to 2)
NEAR, FAR = 0.3, 1.2
#: grid step (px) of the flow samples a frame's homography is fitted to
GRID = 4


def motion_masks(flows, cycle, threshold: float) -> np.ndarray:
    """Pixels whose flow departs by more than ``threshold`` px from a RANSAC homography of
    that flow to each neighbouring frame (one at the clip's ends) where it is cycle-consistent,
    opened 3x3 and closed 5x5. flows [T, T, H, W, 2], cycle [T, T, H, W] -> [T, H, W] bool"""
    t, h, w = flows.shape[0], flows.shape[2], flows.shape[3]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([gx, gy], -1)
    sy, sx = np.mgrid[0:h:GRID, 0:w:GRID]
    out = np.zeros((t, h, w), dtype=bool)
    for i in range(t):
        residuals = []
        for j in (i - 1, i + 1):
            if not 0 <= j < t:
                continue
            flow, ok = np.asarray(flows[i, j]), np.asarray(cycle[i, j])
            src = np.stack([sx[ok[sy, sx]], sy[ok[sy, sx]]], 1).astype(np.float32)
            if len(src) < 8:
                continue
            hom, _ = cv2.findHomography(src, src + flow[src[:, 1].astype(int),
                                                         src[:, 0].astype(int)], cv2.RANSAC, 1.0)
            if hom is None:
                continue
            mapped = cv2.perspectiveTransform(grid.reshape(-1, 1, 2), hom).reshape(h, w, 2)
            residuals.append(np.where(ok, np.linalg.norm(grid + flow - mapped, axis=-1), np.inf))
        if residuals:  # a pixel consistent with neither neighbour is not labelled moving
            least = np.min(residuals, axis=0)
            moving = (np.isfinite(least) & (least > threshold)).astype(np.uint8)
            moving = cv2.morphologyEx(moving, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            out[i] = cv2.morphologyEx(moving, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)) > 0
    return out


def add_layer_prior(labels: np.ndarray, weight: float, until: int) -> None:
    """Replace ``losses.step_losses`` by the step plus the prior on ``labels`` ([T, H, W])."""
    moving_px = torch.from_numpy(labels)
    step_losses, compute_losses = losses.step_losses, losses.compute_losses
    current = {"step": 0}

    def counting(model, batch, step, *args, **kw):
        current["step"] = step
        return compute_losses(model, batch, step, *args, **kw)

    def with_prior(model, batch, noise, weights, cfg, height, width, near=0, dist=True):
        total, terms = step_losses(model, batch, noise, weights, cfg, height, width, near, dist)
        if current["step"] > until:
            return total, terms
        mc = model.config
        depths = sample_depths(tuple(batch.pts1.shape[:2]), mc.num_samples, mc.min_depth,
                               mc.max_depth, stratified=True, device=noise.device,
                               dtype=noise.dtype, noise=noise)
        canon = model.to_canonical(unproject(batch.pts1, depths, height, width), batch.ids1)
        _, _, w = model.render(canon, num_masked_near=near)
        d = (w * depths).sum(-1)
        x = batch.pts1[..., 0].round().long().clamp(0, width - 1)
        y = batch.pts1[..., 1].round().long().clamp(0, height - 1)
        moving = moving_px[batch.ids1[:, None].expand_as(x), y, x]
        err = torch.where(moving, (d - NEAR).abs(), (d - FAR).abs())
        on = (err * moving).sum() / moving.sum().clamp(min=1)
        off = (err * ~moving).sum() / (~moving).sum().clamp(min=1)
        return total + weight * 0.5 * (on + off), terms

    losses.compute_losses, losses.step_losses = counting, with_prior


def cached_motion(out: Path, clip: str) -> tuple[np.ndarray, np.ndarray]:
    """The flows [T, T, H, W, 2] and cycle flags [T, T, H, W] of the fit's motion cache."""
    entry = cache_entry(out, clip)
    return (np.load(entry / "flows.npy", mmap_mode="r"),
            np.load(entry / "cycle.npy", mmap_mode="r"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clip_fit_arguments(ap)
    ap.add_argument("--labels", choices=("masks", "flow"), default="flow")
    ap.add_argument("--threshold", type=float, default=2.5, help="flow labels: residual px")
    ap.add_argument("--weight", type=float, default=10.0)
    ap.add_argument("--until", type=int, default=10**9, help="last step with the prior")
    a = ap.parse_args()
    masked = read_masked_clip(a.data, a.clip, max_side=256, max_frames=a.frames)
    fit_dir = fit_folder(a.out, masked.name)
    reuse_motion_cache(fit_dir, a.cache)
    if a.labels == "flow" and cache_entry(a.out, masked.name) is None:
        raise SystemExit("--labels flow needs --cache: a motion cache of the same frames")
    labels = (np.asarray(masked.masks) if a.labels == "masks"
              else motion_masks(*cached_motion(a.out, masked.name), a.threshold))
    print(f"labelled moving: {labels.mean():.3f} of the pixels (the object: "
          f"{np.asarray(masked.masks).mean():.3f})", flush=True)
    add_layer_prior(labels, a.weight, a.until)
    res = run_mask_eval([masked], a.out / masked.name, preset="cpu", baselines=[],
                        progress=False, quiet=True, refine=False)
    print(res["table"])
    tracker = omnifast.load_tracker(fit_dir / "tracker.pt")
    print("depth on / off the object: {:.2f} / {:.2f}".format(*layer_depths(tracker,
                                                                            masked.masks)))
    flows, cycle = cached_motion(a.out, masked.name)
    for gap in (1, 3, 10):
        r = self_fit(tracker, flows, cycle, np.asarray(masked.masks), gap)
        print(f"d = {gap}: error / flow on the object {r['fg'][0]:.2f} / {r['fg'][1]:.2f} px, "
              f"off it {r['bg'][0]:.2f} / {r['bg'][1]:.2f} px")


if __name__ == "__main__":
    main()
