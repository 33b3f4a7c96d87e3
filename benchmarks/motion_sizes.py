"""What the exhaustive pairwise flow of a real clip costs at two resolutions.

    flock -x /tmp/omnifast-cpu.lock .venv/bin/python benchmarks/motion_sizes.py \
        ../shared/real-clips/DAVIS/JPEGImages/480p/parkour [--frames 10] [--sides 0,256]

For the first ``--frames`` frames at each longer side (0: as stored), times ``compute_motion``
with its cache on local disk (flow and filters, no chaining), then in memory with chaining, and
prints the cache entry's size with the figures for 100 frames (the pairs extrapolated: their
count grows as T^2). Run it alone: it is a timing.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from omnifast.data.flow import compute_motion, motion_cache_bytes
from omnifast.data.video import load_video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--sides", default="0,256")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print("| frames | flow + filters (cached) | pairs/s | flow + filters + chaining (in memory) "
          "| cache | cache, 100 frames | flow + filters, 100 frames |")
    print("|---|---|---|---|---|---|---|")
    for side in (int(s) for s in args.sides.split(",")):
        frames = load_video(args.clip, max_side=side or None)[:args.frames]
        t, h, w = frames.shape[:3]
        pairs = t * (t - 1)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            compute_motion(frames, cache_dir=tmp, progress=False, workers=args.workers,
                           chain=False)
            cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        compute_motion(frames, cache_dir=False, progress=False, workers=args.workers)
        in_memory = time.perf_counter() - t0
        rate = pairs / cached
        print(f"| {t} x {w}x{h} | {cached:.1f} s | {rate:.1f} | {in_memory:.1f} s | "
              f"{motion_cache_bytes(frames.shape) / 1e9:.2f} GB | "
              f"{motion_cache_bytes((100, h, w)) / 1e9:.1f} GB | {100 * 99 / rate / 60:.1f} min |")


if __name__ == "__main__":
    main()
