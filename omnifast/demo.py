"""``make demo``: generate a short clip, fit it with the cpu preset, write the pictures.

Run as ``python -m omnifast.demo [--out DIR] [--iters N] [--frames T]`` (500 steps by
default). The clip comes from :func:`omnifast.datasets.synthetic.generate_clip` (with exact
ground truth, so the demo also prints the median tracking error); a plain moving-texture clip
is used if that module is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

#: the demo's step count: with the cpu preset it keeps the whole demo within 5 minutes on 2
#: cores and already tracks the generated clip to a fraction of a pixel
DEMO_ITERS = 500


def moving_texture_clip(num_frames: int = 24, height: int = 96, width: int = 128,
                        velocity: tuple[float, float] = (1.0, 0.5), seed: int = 0):
    """A smooth random texture translating by ``velocity`` (dx, dy) px per frame.

    Returns:
        ``(video [T, H, W, 3] uint8, true position of pixel (x, y) of frame 0 in frame t:
        a function (x, y, t) -> (x', y'))``.
    """
    import cv2  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    pad = int(np.ceil(max(abs(velocity[0]), abs(velocity[1])) * num_frames)) + 4
    big_h, big_w = height + 2 * pad, width + 2 * pad
    coarse = rng.random((big_h // 8 + 2, big_w // 8 + 2, 3)).astype(np.float32)
    big = cv2.resize(coarse, (big_w, big_h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((big_h, big_w, 3)).astype(np.float32), (0, 0), 1.5)
    big = np.clip(0.7 * big + 0.6 * (fine - 0.5) + 0.15, 0, 1)
    frames = []
    for t in range(num_frames):
        m = np.float32([[1, 0, velocity[0] * t - pad], [0, 1, velocity[1] * t - pad]])
        frames.append(cv2.warpAffine(big, m, (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT))
    video = (np.stack(frames) * 255 + 0.5).astype(np.uint8)

    def truth(x, y, t):
        return x + velocity[0] * t, y + velocity[1] * t

    return video, truth


def median_error(tracks: np.ndarray, gt_tracks: np.ndarray, gt_occluded: np.ndarray) -> float:
    """Median distance in pixels between predicted and true positions where the truth is
    visible. [N, T, 2], [N, T, 2], [N, T] -> float"""
    d = np.linalg.norm(np.asarray(tracks, np.float64) - gt_tracks, axis=-1)
    vis = ~np.asarray(gt_occluded, bool)
    return float(np.median(d[vis])) if vis.any() else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnifast.demo", description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--iters", type=int, default=DEMO_ITERS,
                        help=f"optimisation steps (default {DEMO_ITERS}; the cpu preset's "
                        "own is 2000; its schedules are scaled to the step count)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--difficulty", default="easy", choices=["easy", "medium", "hard"])
    args = parser.parse_args(argv)

    from omnifast import viz  # noqa: PLC0415
    from omnifast.api import fit, write_results  # noqa: PLC0415
    from omnifast.config import get_preset  # noqa: PLC0415

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        from omnifast.datasets.synthetic import generate_clip  # noqa: PLC0415
    except ImportError:
        generate_clip = None
    if generate_clip is not None:
        clip = generate_clip(args.difficulty, num_frames=args.frames, height=96, width=128)
        video, truth = clip.video, clip.ground_truth
        print(f"generated a {args.difficulty} synthetic clip: {video.shape[0]} frames of "
              f"{video.shape[1]}x{video.shape[2]}")
    else:
        video, move = moving_texture_clip(args.frames)

        def truth(q):
            t = np.arange(video.shape[0])
            x, y = move(q[:, 2:3], q[:, 1:2], t[None, :])
            return np.stack([x, y], -1), np.zeros((len(q), len(t)), bool)

        print(f"generated a moving-texture clip: {video.shape[0]} frames of "
              f"{video.shape[1]}x{video.shape[2]}")
    viz.write_video(out / "input.mp4", video)

    # the cpu preset with its schedules scaled to the demo's step count
    tracker = fit(video, preset=get_preset("cpu").with_steps(args.iters), out_dir=out,
                  progress=True)
    paths = write_results(tracker, out)
    data = np.load(paths["tracks"])
    gt_tracks, gt_occ = truth(data["query_points"])
    err = median_error(data["tracks"], gt_tracks, gt_occ)
    total = time.time() - t0
    print(f"\nfit {tracker.info['steps']} steps with the cpu preset; {total:.0f} s in all")
    print(f"median tracking error of the {len(data['query_points'])} grid points where "
          f"visible: {err:.2f} px")
    print("pictures and results:")
    for p in [out / "input.mp4", out / "tracker.pt", *paths.values()]:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
