"""Readers for the TAP-Vid benchmark files, with the benchmark's two query-sampling modes.

Supported inputs (for people who have the real files; nothing is downloaded):

* **TAP-Vid DAVIS / Kinetics pickles.** DAVIS: one pickle holding a dict ``{video_name: item}``.
  Kinetics: pickles holding a list of items. Each item has ``video`` ([T, H, W, 3] uint8, or a
  sequence of JPEG-encoded frames as in the Kinetics files), ``points`` ([N, T, 2] (x, y)
  normalised to [0, 1] over the frame) and ``occluded`` ([N, T] bool).
* **Kubric-style folders.** ``ROOT/<seq>/frames/*.png`` (or ``.jpg``) with the annotations in
  ``ROOT/<seq>/<seq>.npy`` (a pickled dict with ``coords`` [N, T, 2] in pixels and either
  ``occluded`` or ``visibility`` [N, T]; the widely shared MOVi-F export stores occlusion
  flags under the name ``visibility``, so that key is read as occlusion unless told
  otherwise), or one ``ROOT/<seq>.npz`` per clip with ``video``, ``target_points`` (pixels)
  and ``occluded``.

Coordinates: normalised benchmark points p in [0, 1] are scaled by the frame size as the
benchmark does (p * W), which puts pixel centres at i + 0.5; this project puts them at integer
i, so readers return x = p * W - 0.5 (likewise y). Metrics only use differences, so the shift
does not change any score.

Query sampling (as the benchmark defines it):

* ``"first"``: one query per track, at its first visible frame; tracks never visible are dropped.
* ``"strided"``: in every ``stride``-th frame (0, stride, 2 stride, ...), one query for each
  track visible there; a track can therefore be queried several times.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass
class TrackingSample:
    """One benchmark clip with its queries and true tracks.

    Attributes:
        name: clip name.
        video: RGB frames. [T, H, W, 3] uint8
        query_points: (t, y, x) in pixels. [N, 3] float64
        tracks: true positions (x, y) in pixels. [N, T, 2] float64
        occluded: true occlusion flags. [N, T] bool
        query_mode: ``"first"`` or ``"strided"``.
    """

    name: str
    video: np.ndarray
    query_points: np.ndarray
    tracks: np.ndarray
    occluded: np.ndarray
    query_mode: str = "first"

    @property
    def height(self) -> int:
        return int(self.video.shape[1])

    @property
    def width(self) -> int:
        return int(self.video.shape[2])


def sample_queries_first(tracks: np.ndarray, occluded: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query every track at its first visible frame (TAP-Vid "first" mode).

    Args:
        tracks: (x, y). [N, T, 2]
        occluded: [N, T] bool

    Returns:
        (query_points [M, 3] (t, y, x), tracks [M, T, 2], occluded [M, T]) for the M tracks
        visible in at least one frame.
    """
    tracks = np.asarray(tracks, dtype=np.float64)
    occluded = np.asarray(occluded, dtype=bool)
    keep = (~occluded).any(axis=1)
    tracks, occluded = tracks[keep], occluded[keep]
    first = np.argmax(~occluded, axis=1)
    xy = tracks[np.arange(len(first)), first]
    qp = np.stack([first.astype(np.float64), xy[:, 1], xy[:, 0]], axis=-1).reshape(-1, 3)
    return qp, tracks, occluded


def sample_queries_strided(tracks: np.ndarray, occluded: np.ndarray, stride: int = 5
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query every track visible in frames 0, stride, 2 stride, ... (TAP-Vid "strided" mode).

    Args:
        tracks: (x, y). [N, T, 2]
        occluded: [N, T] bool
        stride: frame step.

    Returns:
        (query_points [M, 3] (t, y, x), tracks [M, T, 2], occluded [M, T]), queries grouped by
        query frame.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    tracks = np.asarray(tracks, dtype=np.float64)
    occluded = np.asarray(occluded, dtype=bool)
    qps, trs, occs = [], [], []
    for t in range(0, tracks.shape[1], stride):
        vis = ~occluded[:, t]
        xy = tracks[vis, t]
        qps.append(np.stack([np.full(len(xy), float(t)), xy[:, 1], xy[:, 0]], axis=-1))
        trs.append(tracks[vis])
        occs.append(occluded[vis])
    return (np.concatenate(qps).reshape(-1, 3), np.concatenate(trs), np.concatenate(occs))


def sample_queries(tracks: np.ndarray, occluded: np.ndarray, query_mode: str = "first",
                   stride: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dispatch to :func:`sample_queries_first` or :func:`sample_queries_strided`."""
    if query_mode == "first":
        return sample_queries_first(tracks, occluded)
    if query_mode == "strided":
        return sample_queries_strided(tracks, occluded, stride)
    raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")


def decode_frames(frames) -> np.ndarray:
    """Frames as [T, H, W, 3] uint8 RGB: an array passes through, encoded images are decoded."""
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4:
        return frames
    out = []
    for f in frames:
        if isinstance(f, (bytes, bytearray, np.bytes_)):
            img = cv2.imdecode(np.frombuffer(bytes(f), np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError("a frame could not be decoded as an image")
            out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        else:
            out.append(np.asarray(f, dtype=np.uint8))
    return np.stack(out)


def _resize(video: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or tuple(video.shape[1:3]) == tuple(size):
        return video
    h, w = size
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in video])


def _sample_from(name: str, video: np.ndarray, tracks: np.ndarray, occluded: np.ndarray,
                 query_mode: str, stride: int) -> TrackingSample:
    n, t = occluded.shape
    if video.shape[0] != t or tracks.shape != (n, t, 2):
        raise ValueError(f"{name}: video {video.shape}, tracks {tracks.shape} and occluded "
                         f"{occluded.shape} disagree")
    qp, tr, occ = sample_queries(tracks, occluded, query_mode, stride)
    return TrackingSample(name, video, qp, tr, occ, query_mode)


def read_tapvid_pickle(path: str | os.PathLike, *, query_mode: str = "first", stride: int = 5,
                       resize: tuple[int, int] | None = None) -> Iterator[TrackingSample]:
    """Iterate over the clips of a TAP-Vid DAVIS or Kinetics pickle.

    Args:
        path: the ``.pkl`` file.
        query_mode: ``"first"`` or ``"strided"``.
        stride: query stride of the strided mode.
        resize: (height, width) to resize frames to (e.g. (256, 256), as the benchmark does);
            None keeps the stored size. Points follow the frames.

    Yields:
        :class:`TrackingSample` per clip, tracks in pixels of the (resized) frames.
    """
    with open(path, "rb") as f:
        data = pickle.load(f)
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, (list, tuple)):
        items = [(str(d.get("video_id", f"{Path(path).stem}_{i}")) if isinstance(d, dict)
                  else f"{Path(path).stem}_{i}", d) for i, d in enumerate(data)]
    else:
        raise ValueError(f"{path}: expected a dict or a list of clips, got {type(data).__name__}")
    for name, item in items:
        try:
            video = _resize(decode_frames(item["video"]), resize)
            points = np.asarray(item["points"], dtype=np.float64)
            occluded = np.asarray(item["occluded"], dtype=bool)
        except KeyError as e:
            raise ValueError(f"{path}: clip {name!r} lacks the entry {e}") from None
        h, w = video.shape[1:3]
        tracks = points * np.array([w, h]) - 0.5
        yield _sample_from(str(name), video, tracks, occluded, query_mode, stride)


def _read_frames(folder: Path) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ValueError(f"no frames (.png/.jpg) in {folder}")
    frames = []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read {p}")
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def read_kubric_dir(root: str | os.PathLike, *, query_mode: str = "first", stride: int = 5,
                    visibility_is_occlusion: bool = True) -> Iterator[TrackingSample]:
    """Iterate over Kubric-style clips in a folder (layouts in the module docstring).

    Args:
        root: folder of clip folders (``<seq>/frames/`` + ``<seq>/<seq>.npy``) and/or ``.npz``
            files (``video``, ``target_points``, ``occluded``).
        query_mode: ``"first"`` or ``"strided"``.
        stride: query stride of the strided mode.
        visibility_is_occlusion: read a ``visibility`` entry as occlusion flags (True for the
            common MOVi-F export); False reads it as true visibility.

    Yields:
        :class:`TrackingSample` per clip, in name order.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    for entry in sorted(root.iterdir()):
        if entry.is_file() and entry.suffix == ".npz":
            with np.load(entry, allow_pickle=False) as z:
                video = decode_frames(z["video"])
                tracks = np.asarray(z["target_points"], dtype=np.float64)
                occluded = np.asarray(z["occluded"], dtype=bool)
            yield _sample_from(entry.stem, video, tracks, occluded, query_mode, stride)
        elif entry.is_dir() and (entry / f"{entry.name}.npy").exists():
            ann = np.load(entry / f"{entry.name}.npy", allow_pickle=True)
            ann = ann.item() if ann.dtype == object and ann.shape == () else ann
            tracks = np.asarray(ann["coords"], dtype=np.float64)
            if "occluded" in ann:
                occluded = np.asarray(ann["occluded"], dtype=bool)
            elif "visibility" in ann:
                vis = np.asarray(ann["visibility"], dtype=bool)
                occluded = vis if visibility_is_occlusion else ~vis
            else:
                raise ValueError(f"{entry}: annotations need 'occluded' or 'visibility'")
            video = _read_frames(entry / "frames")
            yield _sample_from(entry.name, video, tracks, occluded, query_mode, stride)


__all__ = ["TrackingSample", "decode_frames", "read_kubric_dir", "read_tapvid_pickle",
           "sample_queries", "sample_queries_first", "sample_queries_strided"]
