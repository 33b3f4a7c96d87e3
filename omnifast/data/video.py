"""Loading a clip: video files, image folders, OmniMotion-format sequence folders and arrays.

Everything comes out as one ``[T, H, W, 3] uint8`` RGB array. Decoding uses imageio (with the
imageio-ffmpeg plugin for mp4/avi/webm/mov/mkv and pillow for gif) and falls back to OpenCV's
``VideoCapture`` when the ffmpeg plugin cannot read a file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v")
GIF_EXTENSIONS = (".gif",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# A frame whose every value is below this is black for our purposes ("nothing to track").
BLACK_LEVEL = 4

FrameSelection = slice | tuple | Sequence[int] | None
VideoSource = str | os.PathLike | np.ndarray


class VideoError(ValueError):
    """A clip that cannot be used: missing, unreadable, too short, inconsistent or empty."""


def video_digest(frames: np.ndarray) -> str:
    """A short content hash of a clip, for cache keys.

    Args:
        frames: any array, normally the ``[T, H, W, 3] uint8`` clip.

    Returns:
        The first 16 hex digits of sha256 over the dtype, the shape and the raw bytes.
    """
    arr = np.ascontiguousarray(frames)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}|{tuple(arr.shape)}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:16]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder, sorted by name (png/jpg/jpeg/bmp/webp, any case)."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: p.name)


def is_omnimotion_folder(path: str | os.PathLike) -> bool:
    """True for an OmniMotion-format sequence folder (one that holds a ``color/`` folder)."""
    return Path(path, "color").is_dir()


def load_video(src: VideoSource, max_side: int | None = None,
               frames: FrameSelection = None) -> np.ndarray:
    """Load a clip as RGB frames.

    Args:
        src: a video file (mp4/avi/webm/mov/mkv/gif), a folder of images (sorted by name), an
            OmniMotion-format sequence folder (its ``color/`` frames are read), or an array:
            ``[T, H, W, 3]`` uint8 RGB, ``[T, H, W]`` uint8 grey (replicated to 3 channels) or
            ``[T, H, W, 4]`` uint8 RGBA (alpha dropped).
        max_side: if given, frames are shrunk (area interpolation, aspect kept) so that
            ``max(H, W) <= max_side``. Frames that are already small enough are left alone.
        frames: which frames to keep: a ``slice``, a ``(start, stop[, step])`` tuple or a list of
            indices (negative indices count from the end). The selection is applied before the
            resize, so unselected frames are never resized.

    Returns:
        ``[T, H, W, 3] uint8`` RGB frames, C-contiguous.

    Raises:
        VideoError: missing path, unreadable or corrupt file, unsupported format, wrong array
            dtype/shape, frames of different sizes, fewer than 2 frames after the selection, or
            an all-black clip.
    """
    if max_side is not None and int(max_side) < 2:
        raise VideoError(f"max_side must be at least 2, got {max_side}")
    if isinstance(src, np.ndarray):
        clip = _select(_check_array(src), frames, len(src))
        desc = f"array of shape {tuple(src.shape)}"
    else:
        path = Path(src).expanduser()
        desc = str(path)
        if not path.exists():
            raise VideoError(f"no such file or folder: {path}")
        if path.is_dir():
            clip = _load_folder(path, frames)
        else:
            clip = _load_file(path, frames)
    if len(clip) < 2:
        raise VideoError(f"{desc}: need at least 2 frames to track, got {len(clip)}"
                         + (" after the frame selection" if frames is not None else ""))
    out = np.stack([_resize(f, max_side) for f in clip]) if max_side else np.stack(clip)
    if int(out.max()) < BLACK_LEVEL:
        raise VideoError(f"{desc}: every frame is black (max value {int(out.max())}); "
                         "nothing to track")
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------ helpers


def _check_array(arr: np.ndarray) -> list[np.ndarray]:
    if arr.dtype != np.uint8:
        raise VideoError(f"a frame array must be uint8, got {arr.dtype}")
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.ndim == 4 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif not (arr.ndim == 4 and arr.shape[-1] == 3):
        raise VideoError("a frame array must be [T, H, W, 3] RGB or [T, H, W] grey, got shape "
                         f"{tuple(arr.shape)}")
    if arr.shape[1] < 2 or arr.shape[2] < 2:
        raise VideoError(f"frames must be at least 2x2 pixels, got shape {tuple(arr.shape)}")
    return list(arr)


def _indices(selection: FrameSelection, n: int) -> list[int]:
    """Resolve a frame selection against a clip of ``n`` frames (Python indexing rules)."""
    if selection is None:
        return list(range(n))
    if isinstance(selection, slice):
        return list(range(n))[selection]
    if isinstance(selection, tuple) and 1 <= len(selection) <= 3 and all(
            s is None or isinstance(s, (int, np.integer)) for s in selection):
        return list(range(n))[slice(*selection)]
    if isinstance(selection, (list, np.ndarray, range)) or (
            isinstance(selection, tuple) and selection == ()):
        out = []
        for k in selection:
            k = int(k)
            if not -n <= k < n:
                raise VideoError(f"frame index {k} is out of range for a clip of {n} frames")
            out.append(k % n)
        return out
    raise VideoError("frames must be a slice, a (start, stop[, step]) tuple or a list of "
                     f"indices, got {selection!r}")


def _streamable(selection: FrameSelection) -> tuple[set[int], int] | None:
    """For selections that don't need the clip length: (wanted indices, last index + 1)."""
    if selection is None:
        return None
    if isinstance(selection, tuple) and 1 <= len(selection) <= 3:
        selection = slice(*selection)
    if isinstance(selection, slice):
        start, stop, step = selection.start, selection.stop, selection.step
        start = 0 if start is None else start
        step = 1 if step is None else step
        if stop is None or start < 0 or stop < 0 or step <= 0:
            return None
        idx = list(range(start, stop, step))
        return set(idx), (idx[-1] + 1 if idx else 0)
    return None


def _select(items: list, selection: FrameSelection, n: int) -> list:
    return [items[k] for k in _indices(selection, n)]


def _resize(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    if not max_side:
        return frame
    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    size = (min(size[0], max_side), min(size[1], max_side))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _to_rgb(img: np.ndarray, what: str) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise VideoError(f"{what}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.ndim == 3 and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    elif not (img.ndim == 3 and img.shape[-1] == 3):
        raise VideoError(f"{what}: unsupported image shape {tuple(img.shape)}")
    return np.ascontiguousarray(img)


def _read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise VideoError(f"cannot read image {path} (corrupt or not an image)")
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[-1] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return _to_rgb(img, str(path))


def _load_folder(path: Path, selection: FrameSelection) -> list[np.ndarray]:
    folder = path / "color" if is_omnimotion_folder(path) else path
    files = list_images(folder)
    if not files:
        raise VideoError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    files = _select(files, selection, len(files))
    clip = [_read_image(f) for f in files]
    first = clip[0].shape
    for f, img in zip(files, clip):
        if img.shape != first:
            raise VideoError(f"frames differ in size in {folder}: {files[0].name} is "
                             f"{first[1]}x{first[0]}, {f.name} is {img.shape[1]}x{img.shape[0]}")
    return clip


def _iter_imageio(path: Path) -> Iterator[np.ndarray]:
    import imageio.v3 as iio

    if path.suffix.lower() in GIF_EXTENSIONS:
        # pillow: mode RGB composites palette / transparency into plain RGB frames
        yield from iio.imiter(path, plugin="pillow", mode="RGB")
    else:
        yield from iio.imiter(path, plugin="FFMPEG")


def _iter_cv2(path: Path) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"cannot open video {path} (corrupt or unsupported)")
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def _collect(it: Iterable[np.ndarray], selection: FrameSelection, what: str) -> list[np.ndarray]:
    stream = _streamable(selection)
    out: list[np.ndarray] = []
    try:
        if stream is not None:
            wanted, end = stream
            if end == 0:
                return []
            for k, frame in enumerate(it):
                if k in wanted:
                    out.append(_to_rgb(np.asarray(frame), what))
                if k + 1 >= end:
                    break
            return out
        every = [_to_rgb(np.asarray(f), what) for f in it]
        return _select(every, selection, len(every))
    finally:
        close = getattr(it, "close", None)
        if close is not None:  # stop the decoder (an ffmpeg subprocess) when leaving early
            close()


def _load_file(path: Path, selection: FrameSelection) -> list[np.ndarray]:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        raise VideoError(f"{path} is a single image; a clip needs a video file or a folder of "
                         "frames")
    if ext not in VIDEO_EXTENSIONS + GIF_EXTENSIONS:
        raise VideoError(f"unsupported file type {ext or '(none)'} for {path}; use one of "
                         f"{', '.join(VIDEO_EXTENSIONS + GIF_EXTENSIONS)} or a folder of images")
    if path.stat().st_size == 0:
        raise VideoError(f"cannot read video {path}: the file is empty")
    try:
        clip = _collect(_iter_imageio(path), selection, str(path))
    except VideoError:
        raise
    except Exception as exc:  # imageio raises many types for corrupt input
        if ext in GIF_EXTENSIONS:
            raise VideoError(f"cannot read gif {path}: {_short(exc)}") from None
        try:
            clip = _collect(_iter_cv2(path), selection, str(path))
        except VideoError:
            raise VideoError(f"cannot read video {path} (corrupt or unsupported): "
                             f"{_short(exc)}") from None
        if not clip:
            raise VideoError(f"cannot read video {path} (corrupt or unsupported): "
                             f"{_short(exc)}") from None
    if not clip and selection is None:
        raise VideoError(f"cannot read video {path}: no frames could be decoded")
    shapes = {f.shape for f in clip}
    if len(shapes) > 1:
        raise VideoError(f"frames differ in size in {path}: {sorted(shapes)}")
    return clip


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[-1] if msg else ''}"[:200]


__all__ = ["VideoError", "is_omnimotion_folder", "list_images", "load_video", "video_digest"]
