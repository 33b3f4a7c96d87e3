"""The synthetic quality suite: omnifast against the optical-flow baselines, with exact truth.

Fits the easy, medium and hard synthetic clips (24 frames of 96 x 128, first-frame queries)
with the chosen preset, scores omnifast, chained DIS flow and direct DIS flow with the TAP-Vid
metrics at the 256 x 256 scale plus temporal coherence, and writes:

* ``OUT/results.json``, ``OUT/quality_bars.png``, ``OUT/threshold_curves.png``,
  ``OUT/<clip>/compare.mp4`` (as ``omnifast eval``);
* ``OUT/table.md``: the Markdown table with the command, machine and load, for RESULTS.md.

Usage (run under the benchmark lock so that runs do not overlap)::

    flock /tmp/omnifast-bench.lock .venv/bin/python benchmarks/quality/run_quality.py \
        --out runs/quality [--iters N] [--clips easy,medium,hard] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path


def _commit() -> str:
    try:
        out = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                      stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run(["git", "diff", "--quiet"], stderr=subprocess.DEVNULL).returncode
        return out + ("+local changes" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/quality"))
    p.add_argument("--clips", default="easy,medium,hard")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--iters", type=int, default=None, help="default: the preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--baselines-only", action="store_true")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--no-refine", action="store_true",
                   help="do not score the appearance-refined tracks")
    p.add_argument("--load", type=Path, default=None,
                   help="score trackers fitted earlier (an earlier --out) instead of fitting")
    p.add_argument("--exact-motion", action="store_true",
                   help="fit on exact pairwise motion (diagnostic) instead of DIS flow")
    args = p.parse_args(argv)

    import torch

    from omnifast.eval.run import run_eval, synthetic_clips

    clips = synthetic_clips([c for c in args.clips.split(",") if c], seed=args.seed,
                            num_frames=args.frames, height=args.height, width=args.width)
    load0 = os.getloadavg()
    t0 = time.time()
    res = run_eval(clips, args.out, preset=args.preset, iters=args.iters, seed=args.seed,
                   skip_omnifast=args.baselines_only, write_videos=not args.no_video,
                   exact_motion=args.exact_motion, refine=not args.no_refine, load=args.load)
    load1 = os.getloadavg()
    print(res["table"])
    tgt = res.get("target") or {}
    cmd = "flock /tmp/omnifast-bench.lock .venv/bin/python benchmarks/quality/run_quality.py " \
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        res["markdown"], "",
        f"Command: `{cmd}`", "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, commit {_commit()}; "
        f"load average {load0[0]:.1f} at the start and {load1[0]:.1f} at the end "
        f"(the machine is shared: fit times are inflated when the load exceeds the core "
        f"count); wall time {time.time() - t0:.0f} s.",
    ]
    if tgt:
        lines += ["", f"Target (means over clips): omnifast dAvg - chained-flow dAvg = "
                      f"{tgt['davg_gap']:+.3f} (need >= {tgt['davg_gap_required']:.2f}); "
                      f"omnifast OA = {tgt['occlusion_accuracy']:.3f} "
                      f"(need >= {tgt['occlusion_accuracy_required']:.2f}): "
                      f"**{'met' if tgt['met'] else 'not met'}**."]
        if "refined_davg_gap" in tgt:
            lines += ["", f"Refined tracks (omnifast_refined): dAvg gap "
                          f"{tgt['refined_davg_gap']:+.3f}, OA "
                          f"{tgt['refined_occlusion_accuracy']:.3f}: "
                          f"**{'met' if tgt['refined_met'] else 'not met'}**."]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
