"""How good is the supervision a fit gets? Pairwise motion of a synthetic clip vs its exact motion.

    python benchmarks/quality/motion_quality.py --clip hard [--flow finest_scale=None ...]

Computes the clip's motion as ``omnifast.fit`` does (``compute_motion``, with the ``--flow``
settings; values are Python literals) and compares it with ``SyntheticClip.exact_motion()``.
Per frame-gap band and for background / foreground pixels of the reference frame it prints:
``used`` (pixels the sampler can draw: every pixel of adjacent pairs, the cycle or occluded
ones of the others), ``precision`` (share of those truly visible in the target frame and
within 1 px of the truth), ``hidden`` (share truly hidden), ``> 2 px`` (share off by more than
2 px) and ``recall`` (share of truly visible pixels that are used and within 1 px).
"""

from __future__ import annotations

import argparse
import ast

import numpy as np

from omnifast.data.flow import compute_motion
from omnifast.eval.run import synthetic_clips

BANDS = ((1, 2), (3, 6), (7, 12), (13, 10_000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="hard", choices=["easy", "medium", "hard"])
    ap.add_argument("--flow", nargs="*", default=[], help="compute_motion settings, key=value")
    a = ap.parse_args()
    kw = {}
    for kv in a.flow:
        key, _, value = kv.partition("=")
        kw[key] = ast.literal_eval(value)
    clip = synthetic_clips([a.clip])[0]
    motion = compute_motion(clip.video, cache_dir=False, progress=False, **kw)
    exact = clip.source.exact_motion(occluded_max_interval=None)
    seg = clip.source.segmentation()
    t = clip.video.shape[0]
    sums: dict[tuple[int, str], np.ndarray] = {}
    for i in range(t):
        for j in range(t):
            gap = abs(i - j)
            if gap == 0:
                continue
            band = next(b for b, (lo, hi) in enumerate(BANDS) if lo <= gap <= hi)
            used = (np.ones(seg.shape[1:], bool) if gap == 1
                    else np.asarray(motion.cycle[i, j]) | np.asarray(motion.occluded[i, j]))
            err = np.linalg.norm(np.asarray(motion.flows[i, j]) - exact.flows[i, j], axis=-1)
            visible = exact.cycle[i, j]
            for part, mask in (("bg", seg[i] == 0), ("fg", seg[i] > 0)):
                u = used & mask
                good = u & visible & (err < 1.0)
                row = np.array([u.sum(), good.sum(), (u & ~visible).sum(), (u & (err > 2.0)).sum(),
                                (visible & mask).sum()], np.float64)
                sums[band, part] = sums.get((band, part), 0) + row
    print(f"{a.clip} {motion.source} {' '.join(a.flow)}")
    print("gap     part  used      precision  hidden  > 2 px  recall")
    for (band, part), r in sorted(sums.items()):
        lo, hi = BANDS[band]
        name = f"{lo}-{min(hi, t - 1)}"
        n = max(r[0], 1.0)
        print(f"{name:7s} {part}    {int(r[0]):9d} {r[1] / n:9.3f} {r[2] / n:7.3f} {r[3] / n:7.3f} "
              f"{r[1] / max(r[4], 1.0):7.3f}")


if __name__ == "__main__":
    main()
