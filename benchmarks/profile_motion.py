"""Time :func:`omnifast.data.flow.compute_motion` stage by stage on a generated clip.

``python benchmarks/profile_motion.py --frames 24 --height 144 --width 256`` builds a
translating-texture clip, runs ``compute_motion`` once into a temporary cache (timing DIS flow,
filtering and chaining, each summed over the worker threads) and once more (a cache hit), and
prints one line. Run it under ``flock -x /tmp/omnifast-cpu.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import cv2
import numpy as np

from omnifast.data import flow as flow_mod


def translating_clip(t: int, h: int, w: int, step=(1.3, 0.7), seed: int = 0) -> np.ndarray:
    """Frame k shows a smooth random texture moved by k * step pixels."""
    pad = int(np.ceil(max(abs(step[0]), abs(step[1])) * t)) + 4
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.random((h + 2 * pad, w + 2 * pad, 3)).astype(np.float32),
                           (0, 0), 2.0)
    big = ((big - big.min()) / (big.max() - big.min()) * 255).astype(np.uint8)
    out = []
    for k in range(t):
        m = np.float32([[1, 0, pad - step[0] * k], [0, 1, pad - step[1] * k]])
        out.append(cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return np.stack(out)


def profile(t: int, h: int, w: int, workers: int | None = None) -> dict:
    clip = translating_clip(t, h, w)
    totals = {"flow": 0.0, "filter": 0.0, "chain": 0.0}
    lock = threading.Lock()
    originals = {"pair_flow": flow_mod.pair_flow, "filter_pair": flow_mod.filter_pair,
                 "chain_row": flow_mod.chain_row}

    def timed(fn, key):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            with lock:
                totals[key] += time.perf_counter() - start
            return out
        return run

    root = tempfile.mkdtemp(prefix="omnifast-motion-")
    try:
        flow_mod.pair_flow = timed(originals["pair_flow"], "flow")
        flow_mod.filter_pair = timed(originals["filter_pair"], "filter")
        flow_mod.chain_row = timed(originals["chain_row"], "chain")
        start = time.perf_counter()
        flow_mod.compute_motion(clip, cache_dir=root, progress=False, workers=workers)
        wall = time.perf_counter() - start
        start = time.perf_counter()
        flow_mod.compute_motion(clip, cache_dir=root, progress=False, workers=workers)
        hit = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    finally:
        for name, fn in originals.items():
            setattr(flow_mod, name, fn)
        shutil.rmtree(root, ignore_errors=True)
    return {"frames": t, "pairs": t * (t - 1), "wall_s": wall, "hit_s": hit,
            "cache_mb": size / 1e6, **{f"{k}_s": v for k, v in totals.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    a = parser.parse_args()
    r = profile(a.frames, a.height, a.width, a.workers)
    print(f"T={r['frames']} {a.height}x{a.width}: {r['wall_s']:.2f} s wall for {r['pairs']} "
          f"ordered pairs ({r['pairs'] / r['wall_s']:.1f} pairs/s); thread-summed: DIS flow "
          f"{r['flow_s']:.2f} s, filtering {r['filter_s']:.2f} s, chaining {r['chain_s']:.2f} s;"
          f" cache hit {r['hit_s'] * 1000:.0f} ms; cache {r['cache_mb']:.1f} MB; load average "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
