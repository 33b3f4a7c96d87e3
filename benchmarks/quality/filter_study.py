"""How the flow-filter thresholds of :func:`omnifast.data.flow.compute_motion` were chosen.

Run ``python benchmarks/quality/filter_study.py`` (about 15 s on 2 cores). It generates a clip with
known motion and visibility, a textured background translating by (1, 0.5) px per frame and a
textured 36x36 square moving by (-2.5, 1.5) px per frame in front of it (10 frames of 96x128),
computes DIS flow for every ordered pair once, and reports, for several thresholds:

* for the cycle test, split into near (|i - j| < 3) and far pairs: precision (accepted pixels
  that are truly visible in j with an end-point error < 1 px), recall (truly visible pixels that
  are accepted with such an error), and the share of accepted pixels off by more than 2 px;
* for the occlusion test (near pairs): how many pixels are flagged, the share of them that are
  truly occluded with a flow error < 1.5 px, and the share of truly occluded pixels flagged.

``--synthetic`` instead runs the full :func:`~omnifast.data.flow.compute_motion` (with and
without chaining, several appearance thresholds) on clips of :mod:`omnifast.datasets.synthetic`
(16 frames of 96x128, "medium" and "hard", seeds 0 and 1) against their exact motion (about
2 minutes).
"""

from __future__ import annotations

import argparse
import itertools

import cv2
import numpy as np

from omnifast.data.flow import MotionSettings, filter_pair, pair_flow, smooth_frames
from omnifast.data.pairs import pixel_grid
from omnifast.pixels import in_frame


def _texture(h: int, w: int, seed: int, sigma: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.float32)


def occluder_clip(t: int = 10, h: int = 96, w: int = 128, seed: int = 0,
                  bg_step=(1.0, 0.5), fg_step=(-2.5, 1.5), fg_size: int = 36,
                  noise: float = 0.0):
    """A translating background with a translating square in front.

    Returns:
        frames ``[T, H, W, 3]`` uint8, foreground masks ``[T, H, W]`` bool, and the per-frame
        background and foreground steps (dx, dy).
    """
    pad = 64
    bg = _texture(h + 2 * pad, w + 2 * pad, seed)
    fg = _texture(fg_size, fg_size, seed + 1)
    rng = np.random.default_rng(seed + 5)
    frames, masks = [], []
    for k in range(t):
        m_bg = np.float32([[1, 0, pad - bg_step[0] * k], [0, 1, pad - bg_step[1] * k]])
        img = cv2.warpAffine(bg, m_bg, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        m_fg = np.float32([[1, 0, 50 + fg_step[0] * k], [0, 1, 20 + fg_step[1] * k]])
        layer = cv2.warpAffine(fg, m_fg, (w, h), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(np.ones((fg_size, fg_size), np.float32), m_fg, (w, h),
                               flags=cv2.INTER_LINEAR)
        img = img * (1 - alpha[..., None]) + layer * alpha[..., None]
        if noise:
            img = img + rng.normal(0, noise, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(alpha > 0.5)
    return np.stack(frames), np.stack(masks), np.array(bg_step), np.array(fg_step)


def _truth(masks, bg_step, fg_step, i, j):
    h, w = masks.shape[1:]
    xs, ys = pixel_grid(h, w)
    fg = masks[i]
    d = np.where(fg[..., None], fg_step * (j - i), bg_step * (j - i)).astype(np.float32)
    qx, qy = xs + d[..., 0], ys + d[..., 1]
    inside = in_frame(qx, qy, h, w, margin=0)  # the masks' rule (filter_pair)
    qi = np.clip(np.rint(qy).astype(int), 0, h - 1)
    qj = np.clip(np.rint(qx).astype(int), 0, w - 1)
    covered = masks[j][qi, qj] & ~fg
    return d, inside & ~covered, inside & covered


def study(noise: float = 0.0) -> None:
    frames, masks, bg_step, fg_step = occluder_clip(noise=noise)
    t = len(frames)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    flows = {(i, j): pair_flow(gray[i], gray[j]) for i in range(t) for j in range(t) if i != j}
    truth = {p: _truth(masks, bg_step, fg_step, *p) for p in flows}
    raw = np.mean([(np.linalg.norm(flows[p] - truth[p][0], axis=-1)[truth[p][1]] < 1).mean()
                   for p in flows])
    print(f"noise sigma {noise}: raw DIS flows within 1 px on visible pixels: {raw:.3f}")
    print("cycle test (near = |i-j| < 3, far = |i-j| >= 3)")
    for ct, at in itertools.product([0.75, 1.0, 1.5, 2.0, 3.0], [0.08, 0.12, 0.2, np.inf]):
        s = MotionSettings(cycle_threshold=ct, appearance_threshold=at)
        smooth = smooth_frames(frames, s.appearance_sigma)
        acc = {"near": np.zeros(4), "far": np.zeros(4)}
        for (i, j), f_ij in flows.items():
            cyc, _ = filter_pair(f_ij, flows[j, i], abs(i - j), smooth[i], smooth[j], s)
            d, vis, _ = truth[i, j]
            err = np.linalg.norm(f_ij - d, axis=-1)
            a = acc["near" if abs(i - j) < 3 else "far"]
            a += [cyc.sum(), (cyc & vis & (err < 1)).sum(), vis.sum(), (cyc & (err > 2)).sum()]
        line = f"  cycle {ct:4.2f} px, appearance {at:5.2f}"
        for key, a in acc.items():
            line += (f" | {key}: precision {a[1] / max(a[0], 1):.3f} recall {a[1] / a[2]:.3f}"
                     f" >2px {a[3] / max(a[0], 1):.4f}")
        print(line)
    print("occlusion test (|i-j| <= 2)")
    n_occ = sum(truth[p][2].sum() for p in flows if abs(p[0] - p[1]) <= 2)
    for min_err, th in itertools.product([2.25, 3.0, 4.5], [1.5, 3.0]):
        s = MotionSettings(occlusion_min_error=min_err, occlusion_threshold=th)
        flagged = good = hit = 0
        for (i, j), f_ij in flows.items():
            if abs(i - j) > 2:
                continue
            z = np.zeros((*f_ij.shape[:2], 3), np.float32)
            _, occ = filter_pair(f_ij, flows[j, i], abs(i - j), z, z, s)
            d, _, true_occ = truth[i, j]
            err = np.linalg.norm(f_ij - d, axis=-1)
            flagged += occ.sum()
            good += (occ & true_occ & (err < 1.5)).sum()
            hit += (occ & true_occ).sum()
        print(f"  e_fb > {min_err:4.2f}, e_fbf < {th:3.1f}: flagged {flagged:5d}, correct "
              f"{good / max(flagged, 1):.3f}, share of occluded pixels flagged {hit / n_occ:.3f}")


def synthetic_study(num_frames: int = 16) -> None:
    from omnifast.data.flow import compute_motion
    from omnifast.datasets.synthetic import generate_clip

    settings = [
        dict(cycle_threshold=3.0, appearance_threshold=np.inf, chain=False),
        dict(chain=False),
        dict(chain_appearance_threshold=0.12),
        dict(chain_appearance_threshold=0.08),
        dict(chain_appearance_threshold=0.06),
        dict(chain_appearance_threshold=0.04),
    ]
    iv = np.abs(np.arange(num_frames)[:, None] - np.arange(num_frames)[None])
    for difficulty, seed in itertools.product(["medium", "hard"], [0, 1]):
        clip = generate_clip(difficulty, num_frames=num_frames, height=96, width=128, seed=seed)
        exact = clip.exact_motion()
        print(f"{difficulty}, seed {seed} (changes from the defaults; precision / recall of "
              "pixels visible and within 1 px; share of accepted pixels off by > 2 px)")
        for kw in settings:
            m = compute_motion(clip.video, cache_dir=False, progress=False, **kw)
            err = np.linalg.norm(np.asarray(m.flows) - exact.flows, axis=-1)
            line = f"  {kw}"
            for name, sel in [("near", (iv >= 1) & (iv < 3)), ("far", iv >= 3),
                              ("far>=8", iv >= 8)]:
                c, gt, e = m.cycle[sel], exact.cycle[sel], err[sel]
                good = (c & gt & (e < 1)).sum()
                line += (f" | {name}: {good / max(c.sum(), 1):.3f} / {good / gt.sum():.3f}"
                         f" >2px {(c & (e > 2)).sum() / max(c.sum(), 1):.3f}")
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=0.0,
                        help="Gaussian pixel noise sigma (0..255 scale)")
    parser.add_argument("--synthetic", action="store_true",
                        help="evaluate compute_motion on the synthetic clips instead")
    args = parser.parse_args()
    if args.synthetic:
        synthetic_study()
    else:
        study(args.noise)


if __name__ == "__main__":
    main()
