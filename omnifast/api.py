"""The user-facing entry points: :func:`fit` a clip, :func:`load_tracker`, write the pictures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from omnifast.config import Preset, get_preset
from omnifast.data.motion import MotionData
from omnifast.files import atomic_write
from omnifast.runtime import cpu_settings
from omnifast.track import Tracker, load_tracker
from omnifast.train.trainer import Trainer, frames_digest

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

TRACKER_NAME = "tracker.pt"
TRACKS_NAME = "tracks.npz"
MOTION_CACHE = "motion-cache"
#: at most this many grid points are drawn in tracks.mp4
VIDEO_POINTS = 100


def tensorboard_writer(logdir: str | os.PathLike | None):
    """A ``torch.utils.tensorboard.SummaryWriter`` for ``logdir``, or None (with a one-line
    note on stderr) when TensorBoard is not installed."""
    if logdir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    except Exception:  # noqa: BLE001 (ImportError, or a broken tensorboard install)
        print("omnifast: tensorboard is not installed (pip install tensorboard); "
              "continuing without TensorBoard logs", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=os.fspath(logdir))


def known_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a fit cannot run on its input or options (bad or missing
    video, bad arguments, damaged or foreign checkpoint, unavailable backend, NaN fit):
    reported as one line, never retried."""
    from omnifast.dispatch import BackendUnavailableError  # noqa: PLC0415
    from omnifast.model.checkpoint import CheckpointError  # noqa: PLC0415
    from omnifast.train.trainer import FitError  # noqa: PLC0415

    errors: list[type[BaseException]] = [FileNotFoundError, ValueError, CheckpointError,
                                         BackendUnavailableError, FitError]
    try:
        from omnifast.data.video import VideoError  # noqa: PLC0415 (OpenCV)

        errors.append(VideoError)
    except ImportError:
        pass
    return tuple(errors)


def _frames_of(video, max_side: int | None) -> np.ndarray:
    from omnifast.data.video import load_video  # noqa: PLC0415 (cv2/imageio on demand)

    return load_video(video, max_side=max_side)


def has_supplied_flows(video) -> bool:
    """An OmniMotion sequence folder that carries its own flows (``raft_exhaustive/``)."""
    if not isinstance(video, (str, os.PathLike)):
        return False
    root = Path(video).expanduser()
    return (root / "color").is_dir() and (root / "raft_exhaustive").is_dir()


def command_line_max_side(max_side: int | None, preset: Preset, video=None) -> int | None:
    """The longest side ``omnifast fit`` and :func:`omnifast.fit_many` shrink frames to:
    ``max_side`` when given (0: full resolution), else the preset's ``max_side``; None for an
    OmniMotion folder with its own flows when none is given (its flows are used as they are).
    """
    if max_side is not None:
        if max_side < 0 or max_side == 1:
            raise ValueError(f"max_side must be 0 (full resolution) or at least 2, "
                             f"got {max_side}")
        return max_side or None
    if video is not None and has_supplied_flows(video):
        return None
    return preset.max_side


def fit(video, *, preset: str | Preset = "cpu", iters: int | None = None,
        out_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
        seed: int = 0, resume: bool = False, progress: bool = True,
        tensorboard: str | os.PathLike | SummaryWriter | None = None,
        max_side: int | None = None,
        motion: MotionData | None = None, tracks=None, threads: int | None = None,
        compile: str | bool | None = None) -> Tracker:
    """Fit OmniMotion to a clip and return a tracker.

    Args:
        video: a video file, an image folder, an OmniMotion sequence folder (its own flows,
            masks and statistics are used when it has ``raft_exhaustive/`` and ``max_side`` is
            not given), a ``[T, H, W, 3]`` uint8 array, or a
            :class:`~omnifast.data.MotionData` (frames and motion given).
        preset: ``"cpu"`` (minutes on a laptop CPU), ``"gpu"`` (the original's model, batch
            and steps in TF32, the step as one CUDA graph) or ``"omnimotion"`` (the original's
            sizes and 100k steps, for a GPU), or a :class:`~omnifast.Preset`.
        iters: number of optimisation steps (default: the preset's).
        out_dir: folder for ``checkpoint.pt`` (written periodically), the motion cache and
            ``tracker.pt``; nothing is written when None.
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
        seed: seed of the network initialisation and of the sampling.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        progress: progress bars on stderr.
        tensorboard: TensorBoard logs of the losses and learning rates: a folder (fit opens
            a writer there and closes it before returning) or an open
            ``torch.utils.tensorboard.SummaryWriter`` (the caller's: fit writes and flushes
            it, the caller closes it; pass the same writer to :func:`write_results` to log
            the contact sheet next to the losses).
        max_side: shrink frames so that their longer side is at most this (default: full
            resolution; the command line uses the preset's ``max_side``, 256 for ``"cpu"``).
            Tracks, queries and pictures are in the pixels of the frames fitted.
        motion: precomputed motion for ``video`` (skips the optical-flow step).
        tracks: external correspondences from another tracker: an ``.npz`` path or a dict with
            ``tracks [N, T, 2]`` (x, y pixels) and ``visible [N, T]`` (or ``occluded``). They
            become long-range pairs on top of the optical flow (where a track gives a
            correspondence, it wins).
        threads: CPU threads of this fit (default: all CPUs this process was given, or
            ``OMP_NUM_THREADS``); the previous count is restored afterwards. OpenMP's idle
            threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, unless set) when
            omnifast is imported before torch; see :mod:`omnifast.runtime`.
        compile: how each step runs: ``"eager"`` (the default), ``"graph"`` (the whole step
            as one CUDA graph; also the automatic choice on CUDA with
            ``OMNIFAST_CUDA_GRAPH=1``), or ``"compile"`` (forward and losses through
            ``torch.compile``).

    Returns:
        a :class:`~omnifast.track.Tracker`; its ``frames`` hold the input frames, its
        ``info`` the steps, seed, fit seconds, final loss and threads.

    Raises:
        omnifast.data.video.VideoError: unusable input clip.
        ValueError: bad arguments or motion (e.g. NaN in supplied flows).
        omnifast.CheckpointError: ``resume`` with a damaged or foreign checkpoint.
        omnifast.train.FitInterrupted: Ctrl-C (after saving the checkpoint).
        omnifast.train.FitError: the optimisation keeps producing NaN.
    """
    with cpu_settings(threads) as n_threads:
        tracker = _fit(video, preset=preset, iters=iters, out_dir=out_dir, device=device,
                       seed=seed, resume=resume, progress=progress, tensorboard=tensorboard,
                       max_side=max_side, motion=motion, tracks=tracks, threads=n_threads,
                       compile=compile)
    tracker.info["threads"] = n_threads
    if out_dir is not None:
        tracker.save(Path(out_dir) / TRACKER_NAME)
    return tracker


def _fit(video, *, preset, iters, out_dir, device, seed, resume, progress, tensorboard,
         max_side, motion, tracks, threads, compile=None) -> Tracker:
    preset_obj = get_preset(preset)
    if isinstance(video, MotionData):
        motion = video
    elif motion is None and has_supplied_flows(video) and max_side is None:
        from omnifast.data.flow import motion_from_omnimotion_folder  # noqa: PLC0415

        motion = motion_from_omnimotion_folder(video)
    if motion is None:
        frames = _frames_of(video, max_side)
    else:
        motion.validate()
        frames = np.asarray(motion.frames)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in (TRACKER_NAME, TRACKS_NAME):  # results of an earlier fit would look current
            (out / name).unlink(missing_ok=True)
    if motion is None:
        from omnifast.data.flow import compute_motion  # noqa: PLC0415

        cache = out / MOTION_CACHE if out is not None else None
        motion = compute_motion(frames, cache_dir=cache, progress=progress, workers=threads)
    if tracks is not None:
        from omnifast.data.tracks import merge_tracks  # noqa: PLC0415

        motion = merge_tracks(motion, tracks)
    opened = isinstance(tensorboard, (str, os.PathLike))
    writer = tensorboard_writer(tensorboard) if opened else tensorboard
    log = None
    if writer is not None:
        def log(step, scalars):
            for key, value in scalars.items():
                writer.add_scalar(key, value, step)
    t0 = time.time()
    trainer = Trainer(motion, preset_obj, iters=iters, out_dir=out, device=device, seed=seed,
                      progress=progress, log=log, compile=compile)
    try:
        model = trainer.run(resume=resume)
    finally:
        if writer is not None:
            writer.flush()
            if opened:
                writer.close()
    return Tracker(model, motion.height, motion.width, preset=preset_obj.name,
                   device=trainer.device, frames=frames,
                   info={"steps": trainer.step, "seed": seed,
                         "video_digest": frames_digest(frames),
                         "fit_seconds": round(time.time() - t0, 2),
                         "motion_source": motion.source,
                         "final_loss": trainer.last_loss})


def _save_npz(path: Path, **arrays) -> Path:
    with atomic_write(path, suffix=".npz") as tmp:  # np.savez appends .npz to other names
        np.savez(tmp, **arrays)
    return path


def save_tracks(path: str | os.PathLike, query_points: np.ndarray, tracks: np.ndarray,
                occluded: np.ndarray) -> Path:
    """Write ``query_points [N, 3]``, ``tracks [N, T, 2]``, ``occluded [N, T]`` atomically."""
    return _save_npz(Path(path), query_points=np.asarray(query_points, np.float32),
                     tracks=np.asarray(tracks, np.float32), occluded=np.asarray(occluded, bool))


def write_results(tracker: Tracker, out_dir: str | os.PathLike,
                  frames: np.ndarray | None = None, *, num_points: int = 256,
                  query_frame: int = 0, fps: float = 10,
                  tensorboard: SummaryWriter | None = None) -> dict[str, Path]:
    """Track a grid of points and write the pictures of a fit.

    Writes ``tracks.npz`` (grid queries on ``query_frame``: query_points, tracks, occluded),
    ``tracks.mp4`` (trails of a grid of at most 100 points; occluded points drawn as
    crosses), ``depth.mp4`` (pseudo-depth),
    ``color.mp4`` (input | rendered colour) and ``contact_sheet.png`` (a few frames of all three).

    Args:
        tracker: the fitted tracker.
        out_dir: where the files go.
        frames: the clip (default ``tracker.frames``, which :func:`fit` fills). [T, H, W, 3]
        tensorboard: an open ``SummaryWriter``: the contact sheet is logged there too, at step
            ``tracker.info["steps"]`` (the writer stays open).

    Returns:
        ``{name: path}`` of the written files.
    """
    from omnifast import viz  # noqa: PLC0415 (cv2/imageio on demand)

    frames = tracker.frames if frames is None else frames
    if frames is None:
        raise ValueError("write_results needs the input frames (a loaded tracker has none)")
    frames = np.asarray(frames)
    out = Path(out_dir)
    queries = tracker.grid_queries(query_frame, num_points=num_points)
    tracks, occluded = tracker.track(queries)
    paths = {"tracks": save_tracks(out / TRACKS_NAME, queries, tracks, occluded)}
    rgb, depth = tracker.render()
    rendered = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    if len(queries) > VIDEO_POINTS:  # a sparser grid keeps the trails readable
        queries = tracker.grid_queries(query_frame, num_points=VIDEO_POINTS)
        tracks, occluded = tracker.track(queries)
    track_vid = viz.draw_tracks(frames, tracks, occluded, query_frame=query_frame)
    # normalised over the whole video like the original, but by the 1st and 99th percentiles
    # instead of min and max, so that a few stray pixels do not flatten the picture
    finite = depth[np.isfinite(depth)]
    lo, hi = (float(v) for v in np.percentile(finite, [1, 99])) if finite.size else (0.0, 1.0)
    depth_vid = viz.colorize_depth(depth, lo=lo, hi=max(hi, lo + 1e-6))
    color_vid = viz.side_by_side(frames, rendered, labels=("input", "rendered"))
    paths["tracks_video"] = viz.write_video(out / "tracks.mp4", track_vid, fps=fps)
    paths["depth_video"] = viz.write_video(out / "depth.mp4", depth_vid, fps=fps)
    paths["color_video"] = viz.write_video(out / "color.mp4", color_vid, fps=fps)
    # the sheet stamps each tile's frame number where the first panel's label would go
    panels = viz.side_by_side(viz.side_by_side(track_vid, depth_vid, labels=("", "depth")),
                              rendered, labels=("", "rendered"))
    paths["contact_sheet"] = Path(out / "contact_sheet.png")
    viz.contact_sheet(panels, paths["contact_sheet"], num=6, cols=2)
    if tensorboard is not None:
        step = int(tracker.info.get("steps", 0))
        sheet = viz.contact_sheet(panels, None, num=6, cols=2)
        tensorboard.add_image("pictures/contact_sheet", sheet, step, dataformats="HWC")
        tensorboard.flush()
    return {k: Path(v) for k, v in paths.items()}


__all__ = ["fit", "known_errors", "load_tracker", "save_tracks", "tensorboard_writer",
           "write_results"]
