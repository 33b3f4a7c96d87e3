"""How much long-range supervision does a real clip's object get? Valid pairs on and off the mask.

    python benchmarks/quality/foreground_pairs.py EVAL_OUT [--data DAVIS] [--clips a,b]

``EVAL_OUT`` holds one ``omnifast eval --suite masks --out EVAL_OUT/<clip>`` run per clip (each
with its fit's motion cache, ``<clip>/<clip>/fit/motion-cache``). For each frame gap d it prints
the fraction of pixels of frame i with a valid correspondence in frame i + d (cycle-consistent
or occluded, after filtering and chaining: what the sampler draws from), on the object and off
it, the object taken from the DAVIS annotation of frame i at the cache's resolution.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

GAPS = (1, 2, 3, 5, 10, 20, 40)


def masks_at(data: Path, clip: str, shape: tuple[int, int, int]) -> np.ndarray:
    """The clip's annotations ``[T, H, W]`` bool, resized (nearest) to the cache's frames."""
    t, h, w = shape
    files = sorted((data / "Annotations" / "480p" / clip).glob("*.png"))[:t]
    return np.stack([cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (w, h),
                                interpolation=cv2.INTER_NEAREST) > 0 for f in files])


def fit_folder(eval_out: Path, clip: str) -> Path:
    """The fit folder of one clip's ``omnifast eval --suite masks`` run under ``eval_out``."""
    return eval_out / clip / clip / "fit"


def cache_entry(eval_out: Path, clip: str) -> Path | None:
    """That fit's motion cache entry (None when there is none)."""
    entries = sorted((fit_folder(eval_out, clip) / "motion-cache").glob("motion-*"))
    return entries[0] if entries else None


def valid_fractions(entry: Path, masks: np.ndarray) -> dict[int, tuple[float, float]]:
    """{gap: (fraction valid on the object, fraction valid off it)} over every frame i."""
    cycle = np.load(entry / "cycle.npy", mmap_mode="r")
    occluded = np.load(entry / "occluded.npy", mmap_mode="r")
    t = cycle.shape[0]
    out = {}
    for d in GAPS:
        on = off = n_on = n_off = 0
        for i in range(t - d):
            valid = np.asarray(cycle[i, i + d]) | np.asarray(occluded[i, i + d])
            fg = masks[i]
            on += (valid & fg).sum()
            off += (valid & ~fg).sum()
            n_on += fg.sum()
            n_off += (~fg).sum()
        if n_on and n_off:
            out[d] = (on / n_on, off / n_off)
    return out


def add_clip_fit_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments of the studies that fit one masked clip: the clip, ``--data``, ``--out``,
    ``--frames`` and ``--cache``."""
    ap.add_argument("clip")
    ap.add_argument("--data", type=Path, default=Path("../shared/real-clips/DAVIS"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=None, help="keep the first N frames")
    ap.add_argument("--cache", type=Path, default=None, help="a motion cache to reuse")


def reuse_motion_cache(fit_dir: Path, cache: Path | None) -> None:
    """Link ``cache`` (a motion cache of the same frames) where the fit in ``fit_dir`` looks
    for its motion; nothing when ``cache`` is None."""
    if cache is None:
        return
    fit_dir.mkdir(parents=True, exist_ok=True)
    link = fit_dir / "motion-cache"
    if not link.exists():
        link.symlink_to(cache.resolve(), target_is_directory=True)


def eval_out_arguments(description: str) -> argparse.Namespace:
    """The command line of the real-clip studies: EVAL_OUT, ``--data``, ``--clips``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("eval_out", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/real-clips/DAVIS"))
    ap.add_argument("--clips", default="blackswan,car-roundabout,libby,breakdance,parkour")
    return ap.parse_args()


def main() -> None:
    args = eval_out_arguments(__doc__.splitlines()[0])
    print("| clip | " + " | ".join(f"d = {d} fg / bg" for d in GAPS) + " |")
    print("|---|" + "---|" * len(GAPS))
    for clip in args.clips.split(","):
        entry = cache_entry(args.eval_out, clip)
        if entry is None:
            print(f"| {clip} | no motion cache under {args.eval_out / clip} |")
            continue
        cycle = np.load(entry / "cycle.npy", mmap_mode="r")
        masks = masks_at(args.data, clip, (cycle.shape[0], *cycle.shape[2:]))
        got = valid_fractions(entry, masks)
        print(f"| {clip} | " + " | ".join(
            f"{got[d][0]:.3f} / {got[d][1]:.3f}" if d in got else "(none)" for d in GAPS) + " |")


if __name__ == "__main__":
    main()
