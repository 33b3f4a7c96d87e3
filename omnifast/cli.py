"""The ``omnifast`` command line: ``fit``, ``fit-many``, ``track``, ``info`` (and ``eval`` when
installed).

Known failures (bad input files, bad queries, damaged checkpoints, unavailable backends) print
``omnifast: error: <one line>`` on stderr and exit with status 2; anything unexpected exits with
status 1 (with the traceback under ``--debug``). Ctrl-C during a fit saves a checkpoint first
and exits with status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import sys
import threading
import traceback
from pathlib import Path

EXIT_ERROR = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


def _fail(message: str) -> None:
    line = " ".join(str(message).split()) or "unknown error"
    print(f"omnifast: error: {line}", file=sys.stderr)


def _known_errors() -> tuple[type[BaseException], ...]:
    from omnifast.api import known_errors  # noqa: PLC0415
    from omnifast.many import RayUnavailableError  # noqa: PLC0415

    return (*known_errors(), RayUnavailableError)


# ------------------------------------------------------------------------------ commands
def cmd_fit(args: argparse.Namespace) -> int:
    from omnifast.api import (  # noqa: PLC0415
        command_line_max_side,
        fit,
        tensorboard_writer,
        write_results,
    )

    out = Path(args.out)
    from omnifast.config import get_preset  # noqa: PLC0415

    preset = get_preset(args.preset)
    if args.checkpoint_every is not None:
        if args.checkpoint_every < 1:
            raise ValueError("--checkpoint-every must be at least 1")
        preset = preset.replace(checkpoint_every=args.checkpoint_every)
    from omnifast.runtime import cpu_settings  # noqa: PLC0415

    # one writer for the losses and the contact sheet, opened and closed here
    writer = tensorboard_writer(args.tensorboard)
    try:
        with cpu_settings(args.threads) as threads:  # the pictures are drawn with them too
            tracker = fit(args.video, preset=preset, iters=args.iters, out_dir=out,
                          device=args.device, seed=args.seed, resume=args.resume,
                          progress=not args.quiet, tensorboard=writer,
                          max_side=command_line_max_side(args.max_side, preset, args.video),
                          tracks=args.tracks, threads=threads)
            paths = write_results(tracker, out, num_points=args.points, tensorboard=writer)
    finally:
        if writer is not None:
            writer.close()
    steps = tracker.info.get("steps")
    secs = tracker.info.get("fit_seconds")
    print(f"fitted {steps} steps in {secs:.0f} s; wrote:")
    print(f"  {out / 'tracker.pt'}")
    for p in paths.values():
        print(f"  {p}")
    return 0


def cmd_fit_many(args: argparse.Namespace) -> int:
    from omnifast.many import (  # noqa: PLC0415
        FAILED,
        SUMMARY_CSV,
        SUMMARY_JSON,
        FitManyInterrupted,
        fit_many,
        format_table,
    )

    out = Path(args.out)
    try:
        results = fit_many(args.videos, out, preset=args.preset, iters=args.iters,
                           seed=args.seed, max_side=args.max_side,
                           checkpoint_every=args.checkpoint_every, points=args.points,
                           pictures=not args.no_pictures, device=args.device,
                           cpus_per_fit=args.cpus_per_fit, gpus_per_fit=args.gpus_per_fit,
                           threads=args.threads, address=args.address,
                           max_retries=args.max_retries, progress=not args.quiet,
                           tracks=args.tracks, tensorboard=args.tensorboard)
    except FitManyInterrupted as exc:
        print(format_table(exc.results))
        print(f"omnifast: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_table(results))
    print(f"wrote {out / SUMMARY_CSV} and {out / SUMMARY_JSON}")
    failed = sum(r.status == FAILED for r in results)
    if failed:
        _fail(f"{failed} of {len(results)} videos failed (their errors are in "
              f"{out / SUMMARY_CSV}); rerun the same command to retry them")
        return EXIT_ERROR
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    import numpy as np  # noqa: PLC0415

    from omnifast.api import load_tracker  # noqa: PLC0415

    if args.refine_direct and args.refine is None:
        raise ValueError("--refine-direct needs --refine VIDEO")
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
        tracks, occluded = tracker.track_refined(
            queries, video, direct_flow_candidates=args.refine_direct)
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
def _add_fit_options(p: argparse.ArgumentParser) -> None:
    """The options that `fit` and `fit-many` share."""
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "omnimotion"])
    p.add_argument("--iters", type=int, default=None, help="optimisation steps (preset default)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=None, dest="max_side",
                   help="shrink frames so that the longer side is at most this (default: the "
                   "preset's, 256 for cpu; 0: full resolution)")
    p.add_argument("--checkpoint-every", type=int, default=None, dest="checkpoint_every",
                   help="steps between checkpoints (preset default)")
    p.add_argument("--points", type=int, default=256, help="grid points tracked for tracks.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


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
    _add_fit_options(p)
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: all CPUs this process may use, or "
                        "OMP_NUM_THREADS)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--tracks", default=None, metavar="NPZ",
                   help="external tracks (tracks [N, T, 2], visible [N, T]) used as extra "
                   "long-range correspondences")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write TensorBoard logs to DIR")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "fit-many", help="fit many videos on Ray (local or a cluster), resumable",
        description="Fit every video as one Ray task into OUT/<name>/ (what `omnifast fit` "
        "writes), then write OUT/summary.csv and OUT/summary.json. A rerun skips finished "
        "videos and resumes the others from their checkpoints. Needs Ray: "
        'pip install "omnifast[ray]".')
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video files or folders, glob patterns (quoted), or .txt files "
                        "listing one per line")
    p.add_argument("--out", required=True, help="output root (shared by every node of a "
                   "cluster)")
    _add_fit_options(p)
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="join a running Ray cluster (default: start a local Ray in-process)")
    p.add_argument("--cpus-per-fit", type=float, default=1, dest="cpus_per_fit",
                   help="CPUs each fit declares to Ray (default 1)")
    p.add_argument("--gpus-per-fit", type=float, default=0, dest="gpus_per_fit",
                   help="GPUs each fit declares to Ray (default 0; 0.5 puts two fits on a GPU)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of each fit (default: --cpus-per-fit, rounded up)")
    p.add_argument("--max-retries", type=int, default=3, dest="max_retries",
                   help="times a fit is restarted after its worker or node died (default 3)")
    p.add_argument("--no-pictures", action="store_true", dest="no_pictures",
                   help="write only tracker.pt and tracks.npz, not the videos and sheets")
    p.add_argument("--tracks", default=None, metavar="PATTERN",
                   help="each video's external tracks, a path with {name} in it (e.g. "
                        "'ext/{name}.npz'; as `omnifast fit --tracks`)")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write each video's TensorBoard logs to DIR/<name>")
    p.set_defaults(func=cmd_fit_many)

    p = sub.add_parser("track", help="track query points with a fitted tracker")
    p.add_argument("dir", help="output folder of `omnifast fit` (or a tracker.pt file)")
    p.add_argument("--queries", required=True, help=".npy float array [N, 3] as (t, y, x)")
    p.add_argument("--out", required=True, help="output .npz (tracks [N, T, 2], occluded [N, T])")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--refine", default=None, metavar="VIDEO",
                   help="refine the positions against the fitted clip (the same video or "
                        "frames): template matching from each query's frame")
    p.add_argument("--refine-direct", action="store_true", dest="refine_direct",
                   help="with --refine, also follow one optical flow from each query's frame "
                        "straight to every frame (helps where objects pass behind others; "
                        "costs (query frames) x (frames - 1) flows)")
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


@contextlib.contextmanager
def _terminate_as_interrupt():
    """Treat SIGTERM (``kill``, a job scheduler's stop) like Ctrl-C while a command runs: a fit
    stops after its current step with its checkpoint saved, ``fit-many`` stops every fit so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_interrupt(signum, frame):
        os.kill(os.getpid(), signal.SIGINT)  # whatever handles Ctrl-C now handles it

    previous = signal.signal(signal.SIGTERM, as_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns (and, as a console script, exits with) the status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from omnifast.runtime import flush_to_zero  # noqa: PLC0415
    from omnifast.train.trainer import FitInterrupted  # noqa: PLC0415

    try:
        with flush_to_zero(), _terminate_as_interrupt():  # subnormals slow the CPU math ~5x
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
