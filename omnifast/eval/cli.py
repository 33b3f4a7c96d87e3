"""``omnifast eval``: score omnifast and the optical-flow baselines on a benchmark.

Examples::

    omnifast eval                                   # synthetic easy/medium/hard, cpu preset
    omnifast eval --clips hard --iters 300 --out runs/q
    omnifast eval --suite davis --data tapvid_davis.pkl --max-clips 2 --resize 256
    omnifast eval --baselines-only                  # flow baselines only, no fitting

Also runnable on its own: ``python -m omnifast.eval.cli [options]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SUITES = ("synthetic", "davis", "kinetics", "kubric", "masks")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", choices=SUITES, default="synthetic",
                   help="benchmark: the generated synthetic clips (default), a TAP-Vid "
                        "DAVIS/Kinetics pickle or a Kubric-style folder (--data), or masks: "
                        "the mask check on DAVIS-style sequences with object masks (--data "
                        "root with JPEGImages/480p and Annotations/480p)")
    p.add_argument("--data", type=Path, default=None,
                   help="benchmark file or folder for the davis/kinetics/kubric suites")
    p.add_argument("--clips", default=None,
                   help="synthetic difficulties (default: easy,medium,hard) or, for the masks "
                        "suite, sequence names (default: all), comma-separated")
    p.add_argument("--max-clips", type=int, default=None,
                   help="evaluate at most this many clips of a real benchmark")
    p.add_argument("--query-mode", choices=("first", "strided"), default="first")
    p.add_argument("--stride", type=int, default=5, help="query stride of the strided mode")
    p.add_argument("--frames", type=int, default=24, help="synthetic clip length")
    p.add_argument("--height", type=int, default=96, help="synthetic frame height")
    p.add_argument("--width", type=int, default=128, help="synthetic frame width")
    p.add_argument("--resize", type=int, default=None,
                   help="resize real benchmark frames to N x N (the benchmark uses 256); masks "
                        "suite: shrink so that the longer side is at most N")
    p.add_argument("--max-frames", type=int, default=None, dest="max_frames",
                   help="masks suite: use the first N frames of each sequence")
    p.add_argument("--spacing", type=int, default=8,
                   help="masks suite: grid spacing of the queries on the first and middle "
                        "frame, in pixels")
    p.add_argument("--preset", default="cpu", help="omnifast preset (default: cpu)")
    p.add_argument("--iters", type=int, default=None,
                   help="optimisation steps per clip (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="clip and fitting seed")
    p.add_argument("--device", default=None, help="fitting device (default: CUDA if available)")
    p.add_argument("--load", type=Path, default=None,
                   help="load fitted trackers instead of fitting: a folder with "
                        "<clip>/tracker.pt (e.g. an earlier --out), or one tracker file")
    p.add_argument("--baselines", default="chained_flow,direct_flow",
                   help="comma-separated baselines (chained_flow, direct_flow, still: points "
                        "that never move; '' for none)")
    p.add_argument("--baselines-only", action="store_true", help="do not fit omnifast")
    p.add_argument("--exact-motion", action="store_true",
                   help="synthetic suite only: fit on the exact pairwise motion instead of "
                        "optical flow (shows what perfect supervision would give)")
    p.add_argument("--out", type=Path, default=Path("eval-out"),
                   help="output folder (results.json, charts, videos)")
    p.add_argument("--no-video", action="store_true", help="skip the comparison videos")
    p.add_argument("--no-refine", action="store_true",
                   help="do not score the appearance-refined tracks (omnifast_refined)")
    p.add_argument("--refine-direct", action="store_true", dest="refine_direct",
                   help="refine with the direct optical flow from each query's frame as a "
                        "further candidate (as `omnifast track --refine-direct`)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _clips_from_args(args):
    from omnifast.eval.run import EvalClip, synthetic_clips  # noqa: PLC0415

    if args.suite == "synthetic":
        names = [c.strip() for c in (args.clips or "easy,medium,hard").split(",") if c.strip()]
        return synthetic_clips(names, seed=args.seed, num_frames=args.frames,
                               height=args.height, width=args.width,
                               query_mode=args.query_mode, stride=args.stride)
    from omnifast.eval import readers  # noqa: PLC0415

    if args.data is None:
        raise ValueError(f"--suite {args.suite} needs --data (the benchmark file or folder)")
    if args.suite == "masks":
        from omnifast.eval.masks import mask_sequences, read_masked_clip  # noqa: PLC0415

        names = ([c.strip() for c in args.clips.split(",") if c.strip()] if args.clips
                 else mask_sequences(args.data))[:args.max_clips]
        return [read_masked_clip(args.data, n, max_side=args.resize, max_frames=args.max_frames)
                for n in names]
    if args.suite in ("davis", "kinetics"):
        size = None if args.resize is None else (args.resize, args.resize)
        it = readers.read_tapvid_pickle(args.data, query_mode=args.query_mode,
                                        stride=args.stride, resize=size)
    else:
        it = readers.read_kubric_dir(args.data, query_mode=args.query_mode, stride=args.stride)
    out = []
    for s in it:
        out.append(EvalClip(s.name, s.video, s.query_points, s.tracks, s.occluded,
                            s.query_mode, {"suite": args.suite}))
        if args.max_clips is not None and len(out) >= args.max_clips:
            break
    return out


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by parsed arguments; returns the exit code."""
    from omnifast.eval.run import run_eval  # noqa: PLC0415

    try:
        clips = _clips_from_args(args)
    except (ValueError, OSError) as e:
        print(f"omnifast eval: {e}", file=sys.stderr)
        return 2
    if not clips:
        print("omnifast eval: no clips to evaluate", file=sys.stderr)
        return 2
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if args.refine_direct and args.no_refine:
        print("omnifast eval: --refine-direct and --no-refine exclude each other", file=sys.stderr)
        return 2
    refine = not args.no_refine
    if args.refine_direct:
        from omnifast.refine import RefineConfig  # noqa: PLC0415

        refine = RefineConfig(direct_flow_candidates=True)
    if args.suite == "masks":
        from omnifast.eval.masks import run_mask_eval  # noqa: PLC0415

        try:
            res = run_mask_eval(clips, args.out, spacing=args.spacing, preset=args.preset,
                                iters=args.iters, seed=args.seed, load=args.load,
                                baselines=baselines, skip_omnifast=args.baselines_only,
                                device=args.device, progress=not args.no_progress,
                                refine=refine)
        except (ValueError, FileNotFoundError) as e:
            print(f"omnifast eval: {e}", file=sys.stderr)
            return 2
        print(res["table"])
        print(f"wrote {args.out / 'mask_results.json'} and mask_results.md")
        return 0
    try:
        res = run_eval(clips, args.out, preset=args.preset, iters=args.iters, seed=args.seed,
                       load=args.load, baselines=baselines, skip_omnifast=args.baselines_only,
                       device=args.device, write_videos=not args.no_video,
                       progress=not args.no_progress, exact_motion=args.exact_motion,
                       refine=refine)
    except (ValueError, FileNotFoundError) as e:
        print(f"omnifast eval: {e}", file=sys.stderr)
        return 2
    print(res["table"])
    tgt = res.get("target") or {}
    if tgt:
        print(f"target (mean over clips): dAvg gap to chained flow {tgt['davg_gap']:+.3f} "
              f"(need >= {tgt['davg_gap_required']:.2f}), OA {tgt['occlusion_accuracy']:.3f} "
              f"(need >= {tgt['occlusion_accuracy_required']:.2f}): "
              f"{'met' if tgt['met'] else 'NOT met'}")
        if "refined_davg_gap" in tgt:
            print(f"  refined tracks: dAvg gap {tgt['refined_davg_gap']:+.3f}, OA "
                  f"{tgt['refined_occlusion_accuracy']:.3f}: "
                  f"{'met' if tgt['refined_met'] else 'NOT met'}")
    print(f"wrote {args.out / 'results.json'}, quality_bars.png, threshold_curves.png"
          + ("" if args.no_video else ", <clip>/compare.mp4"))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to an argparse subparsers object; ``func`` runs it."""
    p = subparsers.add_parser("eval", help="score omnifast and flow baselines on a benchmark",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m omnifast.eval.cli [eval options]``."""
    parser = argparse.ArgumentParser(prog="omnifast eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
