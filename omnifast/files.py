"""Atomic writes: a file (or folder) appears complete under its name, or not at all.

Every writer in omnifast (checkpoints, tracks, pictures, videos, JSON/CSV summaries, the motion
cache) writes through :func:`atomic_write`: it yields a temporary path beside the target (same
folder, so the final rename is atomic), and replaces the target with it only when the ``with``
block ends normally. When the block raises, the temporary is removed and an existing target is
left as it was.

Temporaries are named ``.<name>.<pid>.<8 hex>.tmp<suffix>``; :func:`remove_stale_temporaries`
deletes those whose process has died (a killed run's leftovers).

This module imports only the standard library.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp(?P<suffix>.*)$")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | os.PathLike, *, suffix: str | None = None,
                 directory: bool = False) -> Iterator[Path]:
    """Write ``path`` atomically through a temporary path, created beside it.

    Usage::

        with atomic_write(out / "tracks.npz") as tmp:
            np.savez(tmp, tracks=tracks)          # or torch.save, tmp.write_text, cv2, ffmpeg

    Args:
        path: the target; missing parent folders are created.
        suffix: the temporary's suffix (default: the target's own), for writers that choose
            the format from it (ffmpeg, ``cv2.imwrite``) or append one (``np.save`` adds
            ``.npy``, ``np.savez`` ``.npz``, to names without it).
        directory: yield a freshly made temporary folder to fill, published as ``path``. If
            another process published ``path`` first (a cache filled twice), its folder is
            kept and ours is discarded.

    Yields:
        The temporary path (the writer creates the file; for ``directory`` it exists).

    Raises:
        Whatever the ``with`` block raises (after removing the temporary); ``OSError`` when the
        final rename fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "" if directory else path.suffix
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError:
            if not (directory and path.is_dir()):
                raise
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or we cannot tell: keep its files
    return True


def remove_stale_temporaries(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Delete temporaries of :func:`atomic_write` in ``folder`` whose process is gone.

    Args:
        folder: the folder to clean (missing: nothing to do).
        pattern: only temporaries of targets whose name matches this glob (e.g. ``"motion-*"``).

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP_NAME.match(p.name)
        if m is None or not fnmatch.fnmatchcase(m["name"], pattern):
            continue
        if not _process_alive(int(m["pid"])):
            _remove(p)
            removed.append(p)
    return removed


__all__ = ["atomic_write", "remove_stale_temporaries"]
