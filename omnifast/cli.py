"""The ``omnifast`` command line: ``fit``, ``track``, ``info`` (and ``eval`` when installed).

Known failures (bad input files, bad queries, damaged checkpoints, unavailable backends) print
``omnifast: error: <one line>`` on stderr and exit with status 2; anything unexpected exits with
status 1 (with the traceback under ``--debug``). Ctrl-C during a fit saves a checkpoint first
and exits with status 130.
"""

from __future__ import annotations

import argparse
import platform
import sys
import traceback
from pathlib import Path

EXIT_ERROR = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


def _fail(message: str) -> None:
    line = " ".join(str(message).split()) or "unknown error"
    print(f"omnifast: error: {line}", file=sys.stderr)


def _known_errors() -> tuple[type[BaseException], ...]:
    from omnifast.dispatch import BackendUnavailableError  # noqa: PLC0415
    from omnifast.model.checkpoint import CheckpointError  # noqa: PLC0415
    from omnifast.train.trainer import FitError  # noqa: PLC0415

    errors: list[type[BaseException]] = [FileNotFoundError, ValueError, CheckpointError,
                                         BackendUnavailableError, FitError]
    try:
        from omnifast.data.video import VideoError  # noqa: PLC0415

        errors.append(VideoError)
    except ImportError:
        pass
    return tuple(errors)


# ------------------------------------------------------------------------------ commands
def cmd_fit(args: argparse.Namespace) -> int:
    from omnifast.api import fit, write_results  # noqa: PLC0415

    out = Path(args.out)
    from omnifast.config import get_preset  # noqa: PLC0415

    preset = get_preset(args.preset)
    if args.checkpoint_every is not None:
        if args.checkpoint_every < 1:
            raise ValueError("--checkpoint-every must be at least 1")
        preset = preset.replace(checkpoint_every=args.checkpoint_every)
    tracker = fit(args.video, preset=preset, iters=args.iters, out_dir=out,
                  device=args.device, seed=args.seed, resume=args.resume,
                  progress=not args.quiet, tensorboard=args.tensorboard,
                  max_side=args.max_side, tracks=args.tracks)
    paths = write_results(tracker, out, num_points=args.points)
    steps = tracker.info.get("steps")
    secs = tracker.info.get("fit_seconds")
    print(f"fitted {steps} steps in {secs:.0f} s; wrote:")
    print(f"  {out / 'tracker.pt'}")
    for p in paths.values():
        print(f"  {p}")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    import numpy as np  # noqa: PLC0415

    from omnifast.api import load_tracker  # noqa: PLC0415

    qpath = Path(args.queries)
    if not qpath.exists():
        raise FileNotFoundError(f"no such query file: {qpath}")
    try:
        queries = np.load(qpath, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 (any numpy read failure is a bad file)
        raise ValueError(f"{qpath} is not a readable .npy array ({type(exc).__name__})") from None
    if not isinstance(queries, np.ndarray):
        raise ValueError(f"{qpath} must hold one [N, 3] array, not an archive")
    from omnifast.train.trainer import resolve_device  # noqa: PLC0415

    tracker = load_tracker(args.dir, device=resolve_device(args.device))
    if args.refine is not None:
        from omnifast.data.video import load_video  # noqa: PLC0415

        video = load_video(args.refine, max_side=max(tracker.height, tracker.width))
        tracks, occluded = tracker.track_refined(queries, video)
    else:
        tracks, occluded = tracker.track(queries)
    from omnifast.api import save_tracks  # noqa: PLC0415

    out = save_tracks(args.out, queries, tracks, occluded)
    print(f"tracked {len(queries)} points through {tracker.num_frames} frames; wrote {out}")
    return 0


def info_text() -> str:
    """Versions, backends (and why the others are unavailable) and build flags."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import omnifast  # noqa: PLC0415
    from omnifast import dispatch  # noqa: PLC0415
    from omnifast._ext import extension_error, load_extension  # noqa: PLC0415
    from omnifast.cpuinfo import cpu_report  # noqa: PLC0415

    lines = [f"omnifast {omnifast.__version__}",
             f"python {platform.python_version()}, torch {torch.__version__}, "
             f"numpy {np.__version__}"]
    try:
        import triton  # noqa: PLC0415

        lines.append(f"triton {triton.__version__}")
    except Exception:  # noqa: BLE001
        lines.append("triton: not installed")
    lines += cpu_report()
    cuda = torch.cuda.is_available()
    gpu = f"available, {torch.cuda.get_device_name(0)}" if cuda else "not available"
    lines.append(f"cuda: {gpu}")
    ext = load_extension()
    if ext is None:
        lines.append(f"extension omnifast._C: not loaded ({extension_error()})")
    else:
        lines.append("extension omnifast._C: loaded")
        build = getattr(ext, "build_info", None)
        if build is not None:
            try:
                info = build()
                items = info.items() if isinstance(info, dict) else [("build", info)]
                for k, v in items:
                    lines.append(f"  {k}: {v}")
            except Exception as exc:  # noqa: BLE001
                lines.append(f"  build_info() failed: {exc}")
    devices = ["cpu"] + (["cuda"] if cuda else [])
    for op in dispatch.registered_ops():
        for dev in devices:
            lines.append(f"op {op} on {dev}:")
            for name, why in dispatch.available_backends(op, dev).items():
                lines.append(f"  {name:7s} {'available' if why is None else 'unavailable: ' + why}")
    lines.append(f"selected backend: {dispatch.get_backend()}, matmul precision: "
                 f"{dispatch.get_matmul_precision()}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    print(info_text())
    return 0


# ------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnifast", description="OmniMotion dense long-range point tracking.")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("fit", help="fit a video and write the tracker, tracks and pictures")
    p.add_argument("video", help="video file, image folder or OmniMotion sequence folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="cpu", choices=["cpu", "omnimotion"])
    p.add_argument("--iters", type=int, default=None, help="optimisation steps (preset default)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--max-side", type=int, default=None, dest="max_side",
                   help="shrink frames so that the longer side is at most this")
    p.add_argument("--checkpoint-every", type=int, default=None, dest="checkpoint_every",
                   help="steps between checkpoints (preset default)")
    p.add_argument("--points", type=int, default=256, help="grid points tracked for tracks.npz")
    p.add_argument("--tracks", default=None, metavar="NPZ",
                   help="external tracks (tracks [N, T, 2], visible [N, T]) used as extra "
                   "long-range correspondences")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write TensorBoard logs to DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("track", help="track query points with a fitted tracker")
    p.add_argument("dir", help="output folder of `omnifast fit` (or a tracker.pt file)")
    p.add_argument("--queries", required=True, help=".npy float array [N, 3] as (t, y, x)")
    p.add_argument("--out", required=True, help="output .npz (tracks [N, T, 2], occluded [N, T])")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--refine", default=None, metavar="VIDEO",
                   help="refine the positions against the fitted clip (the same video or "
                        "frames): template matching from each query's frame")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("info", help="versions, available backends and build flags")
    p.set_defaults(func=cmd_info)

    try:
        from omnifast.eval import cli as eval_cli  # noqa: PLC0415
    except ImportError:
        eval_cli = None
    if eval_cli is not None and hasattr(eval_cli, "register"):
        eval_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns (and, as a console script, exits with) the status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from omnifast.train.trainer import FitInterrupted  # noqa: PLC0415

    try:
        status = args.func(args)
    except FitInterrupted as exc:
        print(f"omnifast: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("omnifast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _known_errors() as exc:
        if args.debug:
            traceback.print_exc()
        _fail(str(exc))
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001
        if args.debug:
            traceback.print_exc()
        else:
            _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return EXIT_UNEXPECTED
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
