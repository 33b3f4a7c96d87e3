"""Fitting many videos: one Ray task per video, resumable, with a results table.

:func:`fit_many` runs :func:`omnifast.fit` on every video, each in ``out_root/<name>/`` with its
checkpoint, as Ray tasks with declared resources (``cpus_per_fit``, ``gpus_per_fit``):

* on a local Ray started in-process by default, or on a running cluster (``address``); the
  output folder must then be one that every node sees (a shared file system);
* a task whose worker or node dies is run again (at most ``max_retries`` times) and resumes
  from the video's checkpoint; a video that fails on its own (unreadable, one frame, a foreign
  checkpoint, NaN) is reported with its one-line error and not retried, and the rest go on;
* Ctrl-C cancels the tasks: each running fit saves its checkpoint and stops;
* a rerun with the same options skips the finished videos and resumes the others;
* the state of each video lives in ``out_root/<name>/fit-many.json``, and the results in
  ``out_root/summary.csv`` and ``summary.json`` (:func:`format_table` prints them).

Ray is an optional dependency (``pip install "omnifast[ray]"``), imported only when a fit is
started. Nothing here is part of OmniMotion.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from omnifast.config import Preset, config_to_dict, get_preset
from omnifast.files import atomic_write
from omnifast.interrupt import ctrl_c_sets

STATE_NAME = "fit-many.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
#: seconds the running fits get to save their checkpoints after Ctrl-C
CANCEL_GRACE_S = 120.0
RAY_INSTALL_HINT = 'Ray is not installed; install it with: pip install "omnifast[ray]" (or pip ' \
                   'install ray)'
#: statuses of a video
DONE, FAILED, INTERRUPTED = "done", "failed", "interrupted"
CSV_COLUMNS = ("name", "status", "error", "steps", "fit_seconds", "final_loss", "attempts",
               "resumed_from", "skipped", "video", "out_dir", "tracker", "tracks")


class RayUnavailableError(ImportError):
    """Ray, which :func:`fit_many` runs on, is not installed."""


class FitManyInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit_many`; the running fits saved their checkpoints first.

    Attributes:
        results: the :class:`VideoResult` of every video (those stopped: ``interrupted``).
    """

    def __init__(self, results: list[VideoResult], out_root: Path) -> None:
        self.results = results
        stopped = sum(r.status == INTERRUPTED for r in results)
        super().__init__(f"interrupted; {stopped} fit(s) stopped with their checkpoints saved, "
                         f"summary in {out_root / SUMMARY_CSV}; rerun the same command to "
                         "resume them")


@dataclasses.dataclass
class VideoResult:
    """The outcome of one video.

    Attributes:
        name: the video's folder name under ``out_root``.
        video: the input path.
        status: ``"done"``, ``"failed"`` or ``"interrupted"``.
        error: one line for a failed video, else ``""``.
        steps: optimisation steps reached (in the checkpoint, for an unfinished fit).
        fit_seconds: time of the fit (preprocessing and optimisation) in its last attempt.
        final_loss: loss of the last step (NaN when unknown).
        attempts: times this run started the fit (more than 1 after a lost worker).
        resumed_from: checkpoint step the last attempt started from (0: from scratch).
        skipped: finished in an earlier run (nothing was done this time).
        out_dir: the video's output folder.
        outputs: ``{name: path}`` of the files written (tracker, tracks, pictures).
    """

    name: str
    video: str
    status: str
    error: str = ""
    steps: int = 0
    fit_seconds: float = 0.0
    final_loss: float = math.nan
    attempts: int = 0
    resumed_from: int = 0
    skipped: bool = False
    out_dir: str = ""
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VideoResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------ inputs
def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_videos(videos: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """The list of inputs: paths, glob patterns and ``.txt`` lists of one path per line.

    Args:
        videos: one item or several. A ``.txt`` file lists inputs one per line (blank lines
            and ``#`` comments skipped; relative paths are relative to the list's folder); an
            item with ``*``, ``?`` or ``[`` that is not an existing path is a glob pattern
            (sorted matches); anything else is a video path, kept even when it does not exist
            (that video is reported as failed).

    Returns:
        the inputs in order, duplicates dropped.

    Raises:
        ValueError: a pattern matches nothing, or there is no input at all.
    """
    items = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
    out: list[str] = []
    for item in items:
        text = os.path.expanduser(os.fspath(item))
        path = Path(text)
        if path.suffix.lower() == ".txt" and path.is_file():
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(os.path.expanduser(line))
                    out.append(os.fspath(entry if entry.is_absolute() else path.parent / entry))
        elif _is_glob(text) and not path.exists():
            matches = sorted(glob.glob(text))
            if not matches:
                raise ValueError(f"no videos match {text!r}")
            out.extend(matches)
        else:
            out.append(text)
    seen: set[str] = set()
    unique = [v for v in out if not (os.path.abspath(v) in seen or seen.add(os.path.abspath(v)))]
    if not unique:
        raise ValueError("no videos given")
    return unique


def video_name(video: str | os.PathLike) -> str:
    """The output folder name of a video: its file name without the extension, or its folder's
    name (``clips/dog.mp4`` -> ``dog``, ``frames/dog/`` -> ``dog``)."""
    path = Path(os.path.normpath(os.fspath(video)))
    return path.stem if path.suffix and not path.is_dir() else path.name


def video_names(videos: Sequence[str]) -> list[str]:
    """:func:`video_name` of each video; two videos with one name are a ValueError."""
    names = [video_name(v) for v in videos]
    first: dict[str, str] = {}
    for name, video in zip(names, videos):
        if not name:
            raise ValueError(f"cannot name an output folder after {video!r}")
        if name in first:
            raise ValueError(f"{first[name]} and {video} would both write to <out>/{name}/; "
                             "rename one of them")
        first[name] = video
    return names


# ------------------------------------------------------------------------------ options
def fit_options(preset: str | Preset = "cpu", *, iters: int | None = None, seed: int = 0,
                max_side: int | None = None, checkpoint_every: int | None = None,
                points: int = 256, pictures: bool = True, device: str | None = None,
                threads: int = 1, tracks: str | None = None,
                tensorboard: str | os.PathLike | None = None) -> dict:
    """The options of every fit, as a plain dict (it travels to the Ray workers).

    ``tracks`` is a path pattern with ``{name}`` in it (each video's external tracks, as
    ``omnifast fit --tracks`` takes them: ``ext/{name}.npz``); ``tensorboard`` a folder in which
    each video logs into ``<name>/``. ``key`` holds what decides a fit's result: a finished
    video is skipped on a rerun only when its recorded key equals the current one.
    """
    preset_obj = get_preset(preset)
    if checkpoint_every is not None:
        if int(checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
        preset_obj = preset_obj.replace(checkpoint_every=int(checkpoint_every))
    if iters is not None and int(iters) < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if int(points) < 1:
        raise ValueError(f"points must be at least 1, got {points}")
    if tracks is not None and "{name}" not in str(tracks):
        raise ValueError(f"tracks must be a path pattern with {{name}} in it (each video's own "
                         f"tracks, e.g. ext/{{name}}.npz), got {tracks!r}")
    train = config_to_dict(preset_obj.train)
    train.pop("checkpoint_every")  # when checkpoints are written does not change the result
    key = {"preset": preset_obj.name, "model": config_to_dict(preset_obj.model),
           "train": train, "iters": iters, "seed": int(seed), "max_side": max_side,
           "points": int(points), "pictures": bool(pictures), "tracks": tracks}
    return {"preset": preset_obj, "iters": iters, "seed": int(seed), "max_side": max_side,
            "points": int(points), "pictures": bool(pictures), "device": device,
            "threads": int(threads), "tracks": None if tracks is None else str(tracks),
            "tensorboard": None if tensorboard is None else str(tensorboard),
            "key": json.loads(json.dumps(key))}


def video_inputs(name: str, options: dict) -> dict:
    """The per-video paths of one fit: its external tracks and its TensorBoard folder."""
    tracks = options.get("tracks")
    board = options.get("tensorboard")
    return {"tracks": None if tracks is None else tracks.replace("{name}", name),
            "tensorboard": None if board is None else str(Path(board) / name)}


# ------------------------------------------------------------------------------ files
def _write_json(path: Path, data) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    with atomic_write(path) as tmp, open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=str)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _checkpoint_step(out_dir: Path) -> int:
    """Step of ``out_dir/checkpoint.pt`` (0 when there is none or it cannot be read)."""
    from omnifast.train.trainer import CHECKPOINT_NAME  # noqa: PLC0415

    path = out_dir / CHECKPOINT_NAME
    if not path.exists():
        return 0
    import torch  # noqa: PLC0415

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False).get("step", 0))
    except Exception:  # noqa: BLE001 (a damaged checkpoint: the fit will say so)
        return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ------------------------------------------------------------------------------ one video
def fit_one(video: str, out_dir: str, options: dict, run_id: str = "") -> dict:
    """Fit one video into ``out_dir`` (resuming from its checkpoint) and write its outputs.

    The body of each Ray task; also callable in-process. Failures of the video itself are
    returned, not raised (so that Ray does not retry them); Ctrl-C (or a Ray cancel) saves
    the checkpoint and returns status ``interrupted``.

    Args:
        video: the input (any source :func:`omnifast.fit` takes).
        out_dir: the video's output folder.
        options: from :func:`fit_options`.
        run_id: identifies the :func:`fit_many` call, to count the attempts of this run.

    Returns:
        a :class:`VideoResult` as a dict; also written to ``out_dir/fit-many.json``.
    """
    from omnifast.api import (  # noqa: PLC0415
        command_line_max_side,
        fit,
        known_errors,
        save_tracks,
        write_results,
    )
    from omnifast.runtime import cpu_settings  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_NAME
    earlier = _read_json(state_path) or {}
    attempts = int(earlier.get("attempts", 0)) + 1 if earlier.get("run") == run_id else 1
    result = VideoResult(name=out.name, video=str(video), status=FAILED, attempts=attempts,
                         resumed_from=_checkpoint_step(out), out_dir=str(out))
    state = {"run": run_id, "pid": os.getpid(), "key": options["key"], "running": True}
    _write_json(state_path, {**state, **result.to_dict()})
    t0 = time.time()
    inputs = video_inputs(out.name, options)
    try:
        if inputs["tracks"] is not None and not Path(inputs["tracks"]).is_file():
            raise FileNotFoundError(f"no external tracks for {out.name}: {inputs['tracks']} "
                                    "does not exist")
        with cpu_settings(options["threads"]) as threads:  # for the pictures too
            tracker = fit(video, preset=options["preset"], iters=options["iters"], out_dir=out,
                          device=options["device"], seed=options["seed"], resume=True,
                          progress=False, threads=threads,
                          max_side=command_line_max_side(options["max_side"],
                                                         options["preset"], video),
                          tracks=inputs["tracks"], tensorboard=inputs["tensorboard"])
            outputs = {"tracker": out / "tracker.pt"}
            if options["pictures"]:
                outputs.update(write_results(tracker, out, num_points=options["points"]))
            else:
                queries = tracker.grid_queries(0, num_points=options["points"])
                outputs["tracks"] = save_tracks(out / "tracks.npz", queries,
                                                *tracker.track(queries))
        info = tracker.info
        result.status, result.steps = DONE, int(info.get("steps", 0))
        result.fit_seconds = float(info.get("fit_seconds", 0.0))
        result.final_loss = float(info.get("final_loss", math.nan))
        result.outputs = {k: str(v) for k, v in outputs.items()}
    except KeyboardInterrupt:  # FitInterrupted (checkpoint saved), or Ctrl-C in preprocessing
        result.status, result.steps = INTERRUPTED, _checkpoint_step(out)
    except known_errors() as exc:
        result.error, result.steps = _one_line(exc), _checkpoint_step(out)
    except Exception as exc:  # noqa: BLE001 (reported like the others; the rest go on)
        result.error = f"unexpected {type(exc).__name__}: {_one_line(exc)}"
        result.steps = _checkpoint_step(out)
    if result.status != DONE:
        result.fit_seconds = round(time.time() - t0, 2)
    _write_json(state_path, {**state, "running": False, **result.to_dict()})
    return result.to_dict()


# ------------------------------------------------------------------------------ Ray
def import_ray():
    """``import ray``, or :class:`RayUnavailableError` saying how to install it."""
    try:
        import ray  # noqa: PLC0415
    except ImportError as exc:
        raise RayUnavailableError(RAY_INSTALL_HINT) from exc
    return ray


def _finished_earlier(out_dir: Path, key: dict) -> VideoResult | None:
    state = _read_json(out_dir / STATE_NAME)
    if not state or state.get("status") != DONE or state.get("key") != key:
        return None
    if not (out_dir / "tracker.pt").exists():
        return None
    result = VideoResult.from_dict(state)
    result.skipped = True
    return result


def _lost(name: str, video: str, out_dir: Path, run_id: str, status: str, error: str
          ) -> VideoResult:
    """The result of a task whose return value never came back (cancelled, or its worker died
    more often than allowed): what its state file says when this run's fit ended there,
    otherwise ``status`` with ``error`` and the checkpoint's step."""
    state = _read_json(out_dir / STATE_NAME) or {}
    if state.get("run") == run_id and state.get("running") is False:
        return VideoResult.from_dict(state)
    result = VideoResult(name=name, video=video, status=status, error=error,
                         out_dir=str(out_dir), steps=_checkpoint_step(out_dir))
    if state.get("run") == run_id:
        result.attempts = int(state.get("attempts", 0))
        result.resumed_from = int(state.get("resumed_from", 0))
    return result


def _slots(ray, cpus_per_fit: float, gpus_per_fit: float, local: bool) -> int:
    """How many fits the cluster can run at once (at least 1).

    Raises:
        ValueError: a local Ray that cannot run a single fit (it would wait forever); on a
            cluster that is only a warning, as nodes may join later.
    """
    res = ray.cluster_resources()
    slots = int(res.get("CPU", 0) // cpus_per_fit) if cpus_per_fit > 0 else 10**9
    if gpus_per_fit > 0:
        slots = min(slots, int(res.get("GPU", 0) // gpus_per_fit))
    if slots < 1:
        msg = (f"each fit asks for {cpus_per_fit:g} CPUs and {gpus_per_fit:g} GPUs, and this "
               f"Ray has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs "
               "(see --cpus-per-fit, --gpus-per-fit)")
        if local:
            raise ValueError(msg)
        print(f"omnifast: warning: {msg}; the fits wait for nodes that have them",
              file=sys.stderr)
    return max(1, slots)


def fit_many(videos: str | os.PathLike | Iterable[str | os.PathLike],
             out_root: str | os.PathLike, *, preset: str | Preset = "cpu",
             iters: int | None = None, seed: int = 0, max_side: int | None = None,
             checkpoint_every: int | None = None, points: int = 256, pictures: bool = True,
             device: str | None = None, cpus_per_fit: float = 1, gpus_per_fit: float = 0,
             threads: int | None = None, address: str | None = None, max_retries: int = 3,
             progress: bool = True, tracks: str | None = None,
             tensorboard: str | os.PathLike | None = None) -> list[VideoResult]:
    """Fit every video on Ray, one task each, into ``out_root/<name>/``.

    Args:
        videos: paths, glob patterns or ``.txt`` lists (see :func:`expand_videos`).
        out_root: output root; each video writes into ``out_root/<name>/`` what
            ``omnifast fit`` writes, plus ``fit-many.json``; ``summary.csv`` and
            ``summary.json`` go to ``out_root``.
        preset, iters, seed, max_side, checkpoint_every, points: as for ``omnifast fit``
            (the same for every video; ``max_side`` None: the preset's, 0: full resolution).
        pictures: also write the pictures (tracks/depth/colour videos and the contact sheet);
            otherwise only ``tracker.pt`` and ``tracks.npz``.
        device: ``"cpu"`` or ``"cuda"`` (default: ``"cuda"`` when ``gpus_per_fit > 0``).
        cpus_per_fit: CPUs each task declares to Ray.
        gpus_per_fit: GPUs each task declares (fractions share a GPU).
        threads: CPU threads of each fit (default: ``cpus_per_fit``, rounded up).
        address: ``None`` starts a local Ray in this process (or uses the one already
            initialised); ``"auto"`` or ``"HOST:PORT"`` joins a running cluster.
        max_retries: times a task is run again after its worker or node died.
        progress: a progress bar over the videos on stderr.
        tracks: each video's external tracks, as a path pattern with ``{name}`` (the video's
            output name) in it, e.g. ``"ext/{name}.npz"``; a video whose file is missing fails
            with that error and the others go on.
        tensorboard: a folder; each video writes its TensorBoard logs into ``<folder>/<name>/``.

    Returns:
        the :class:`VideoResult` of every video, in input order (also in the summaries).

    Raises:
        RayUnavailableError: Ray is not installed.
        ValueError: bad options, no videos, or two videos with one name.
        FitManyInterrupted: Ctrl-C (after the running fits saved their checkpoints and the
            summaries were written).
    """
    items = expand_videos(videos)
    names = video_names(items)
    if cpus_per_fit < 0 or gpus_per_fit < 0 or (cpus_per_fit == 0 and gpus_per_fit == 0):
        raise ValueError("each fit needs some CPUs or GPUs (cpus_per_fit, gpus_per_fit)")
    if int(max_retries) < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if device is None:
        device = "cuda" if gpus_per_fit > 0 else "cpu"
    if threads is None:
        threads = max(1, math.ceil(cpus_per_fit))
    elif int(threads) < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    options = fit_options(preset, iters=iters, seed=seed, max_side=max_side,
                          checkpoint_every=checkpoint_every, points=points, pictures=pictures,
                          device=device, threads=int(threads), tracks=tracks,
                          tensorboard=tensorboard)
    root = Path(out_root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, VideoResult] = {}
    todo = []
    for name, video in zip(names, items):
        earlier = _finished_earlier(root / name, options["key"])
        if earlier is not None:
            results[name] = earlier
        else:
            todo.append((name, video))

    def ordered() -> list[VideoResult]:
        return [results[n] for n in names if n in results]

    if todo:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:  # "local": a new Ray, even where `ray start` runs one on this machine
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=True)
        try:
            slots = _slots(ray, cpus_per_fit, gpus_per_fit, local=started and address is None)
            _run_tasks(ray, todo, root, options, results, len(names), cpus_per_fit,
                       gpus_per_fit, int(max_retries), progress, slots)
        except KeyboardInterrupt:
            write_summary(ordered(), root)
            raise FitManyInterrupted(ordered(), root) from None
        finally:
            if started:
                ray.shutdown()
    out = ordered()
    write_summary(out, root)
    return out


def _run_tasks(ray, todo, root: Path, options: dict, results: dict, total: int,
               cpus_per_fit: float, gpus_per_fit: float, max_retries: int,
               progress: bool, slots: int) -> None:
    """Submit one task per video and collect the results into ``results`` (by name)."""
    task = ray.remote(fit_one).options(num_cpus=cpus_per_fit, num_gpus=gpus_per_fit,
                                       max_retries=max_retries, retry_exceptions=False,
                                       name="omnifast-fit")
    run_id = uuid.uuid4().hex[:12]
    refs = {task.remote(str(video), str(root / name), options, run_id): (name, str(video))
            for name, video in todo}
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=total, initial=total - len(todo), unit="video", desc="fit-many",
                   dynamic_ncols=True)

    def collect(ref) -> None:
        name, video = refs[ref]
        try:
            results[name] = VideoResult.from_dict(ray.get(ref))
        except ray.exceptions.TaskCancelledError:
            results[name] = _lost(name, video, root / name, run_id, INTERRUPTED, "")
        except ray.exceptions.RayError as exc:  # the worker or node died too often
            first = _one_line(exc).split(". ")[0][:200]
            results[name] = _lost(name, video, root / name, run_id, FAILED,
                                  f"the fit's worker was lost {max_retries + 1} times "
                                  f"(last: {first})")

    def show(pending: int) -> None:
        if bar is None:
            return
        failed = sum(r.status != DONE for r in results.values())
        bar.set_postfix_str(f"done {len(results) - failed}, running {min(pending, slots)}, "
                            f"failed {failed}", refresh=True)

    pending = list(refs)
    # Ctrl-C sets an event that the loop checks at least once a second, instead of relying on
    # a KeyboardInterrupt reaching the loop through Ray's wait (one was seen not to, and the
    # fits then ran to the end)
    stop = threading.Event()
    try:
        show(len(pending))
        with ctrl_c_sets(stop):
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    collect(ref)
                if bar is not None and ready:
                    bar.update(len(ready))
                show(len(pending))
                if stop.is_set() and pending:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        # Each running fit turns the cancel into a stop after its current step, with the
        # checkpoint saved; queued ones never start. A second Ctrl-C stops waiting.
        for ref in pending:
            ray.cancel(ref, force=False)
        deadline = time.time() + CANCEL_GRACE_S
        while pending and time.time() < deadline:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            for ref in ready:
                collect(ref)
        for ref in pending:
            name, video = refs[ref]
            results[name] = _lost(name, video, root / name, run_id, INTERRUPTED, "")
        raise
    finally:
        if bar is not None:
            bar.close()


# ------------------------------------------------------------------------------ results
def write_summary(results: Sequence[VideoResult], out_root: str | os.PathLike
                  ) -> tuple[Path, Path]:
    """Write ``summary.csv`` (one row per video, :data:`CSV_COLUMNS`) and ``summary.json``
    (``{"counts": {...}, "videos": [every field, outputs included]}``) atomically.

    Returns:
        the two paths.
    """
    root = Path(out_root)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        row = {k: v for k, v in r.to_dict().items() if k in CSV_COLUMNS}
        row["tracker"] = r.outputs.get("tracker", "")
        row["tracks"] = r.outputs.get("tracks", "")
        writer.writerow(row)
    csv_path, json_path = root / SUMMARY_CSV, root / SUMMARY_JSON
    with atomic_write(csv_path) as tmp:
        tmp.write_text(buf.getvalue())
    counts = {s: sum(r.status == s for r in results) for s in (DONE, FAILED, INTERRUPTED)}
    counts["skipped"] = sum(r.skipped for r in results)
    _write_json(json_path, {"counts": counts, "videos": [r.to_dict() for r in results]})
    return csv_path, json_path


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 3)] + "..."


def format_table(results: Sequence[VideoResult], *, max_rows: int = 20, width: int = 100
                 ) -> str:
    """A one-screen table of the results: failed and interrupted videos first, at most
    ``max_rows`` rows (the rest counted), and a line of totals."""
    order = sorted(results, key=lambda r: (r.status == DONE, r.status))
    header = f"{'video':24} {'status':11} {'steps':>6} {'fit s':>7} {'loss':>9}  note"
    lines = [header, "-" * min(width, max(len(header), 60))]
    for r in order[:max_rows]:
        status = "done*" if r.skipped else r.status
        loss = "" if math.isnan(r.final_loss) else f"{r.final_loss:.4g}"
        error = r.error  # the row names the video: drop its path from the message
        if r.video and error.startswith(f"{r.video}: "):
            error = error[len(r.video) + 2:]
        note = error if error else (f"resumed from step {r.resumed_from}"
                                    if r.resumed_from and not r.skipped else "")
        if r.attempts > 1 and not r.skipped:
            note = f"{r.attempts} attempts; {note}" if note else f"{r.attempts} attempts"
        line = (f"{_cut(r.name, 24):24} {status:11} {r.steps:>6} {r.fit_seconds:>7.1f} "
                f"{loss:>9}  ")
        lines.append(line + _cut(note, max(10, width - len(line))))
    if len(order) > max_rows:
        lines.append(f"... and {len(order) - max_rows} more (see {SUMMARY_CSV})")
    done = sum(r.status == DONE for r in results)
    skipped = sum(r.skipped for r in results)
    failed = sum(r.status == FAILED for r in results)
    stopped = sum(r.status == INTERRUPTED for r in results)
    total = f"{done} of {len(results)} done"
    if skipped:
        total += f" ({skipped} earlier, marked *)"
    total += f", {failed} failed"
    if stopped:
        total += f", {stopped} interrupted"
    lines.append(total)
    return "\n".join(lines)


__all__ = ["FitManyInterrupted", "RayUnavailableError", "VideoResult", "expand_videos",
           "fit_many", "fit_one", "fit_options", "format_table", "import_ray", "video_name",
           "video_names", "write_summary"]
