"""CPU runtime settings of a fit: OpenMP's wait policy, the thread count and flush-to-zero.

The one home for process-wide CPU settings. Two kinds:

* settings that the OpenMP runtime reads from the environment once, when it loads (with
  ``import torch``): :func:`prepare_environment` puts them there, and ``omnifast/__init__.py``
  calls it before it imports torch. This module imports nothing but the standard library so
  that it can run that early.
* settings that can change at any time: :func:`cpu_settings` applies them for the duration of
  one fit and restores them afterwards (:func:`omnifast.fit`, ``omnifast fit``,
  :func:`omnifast.fit_many` all go through it): the thread count and flush-to-zero.

Why passive: with the default policy, OpenMP threads that finish their share of a parallel
region spin for a while before they sleep. On a machine whose cores are shared (another fit, a
busy process, the fits of :func:`omnifast.fit_many`) the spinning threads steal the cores the
working threads need. ``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep at once. A policy
the user set is left alone.

Why flush-to-zero: subnormal floats (below 1.2e-38 in fp32) cost x86 cores about a hundred
cycles per operation instead of one, and a CPU fit produces millions per step after about a
thousand steps (``docs/design.md``, "Subnormal floats"). :func:`flush_to_zero` sets the two
MXCSR bits that make the CPU treat subnormal inputs and results as zero (DAZ and FTZ) on every
thread that computes for omnifast: the calling thread and each thread of the OpenMP pool that
torch's intra-op parallelism, MKL and omnifast's C++ kernels share. The bits live in each
thread's own register, so torch's ``set_flush_denormal`` (calling thread only) is not enough.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from collections.abc import Callable, Iterator

#: the wait policy omnifast asks for unless the environment already names one
DEFAULT_WAIT_POLICY = "PASSIVE"

# What prepare_environment() found: the user's own OMP_WAIT_POLICY and whether torch (and with
# it the OpenMP runtime) was already loaded. Empty until it runs.
_found: dict = {}


def prepare_environment() -> None:
    """Put the load-time OpenMP settings into ``os.environ`` (only those the user has not set).

    Must run before the OpenMP runtime loads (before ``import torch``) to take effect;
    ``import omnifast`` does that. Sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set.
    """
    if not _found:
        _found["user_policy"] = os.environ.get("OMP_WAIT_POLICY")
        _found["torch_first"] = "torch" in sys.modules
    os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT_WAIT_POLICY)


def wait_policy() -> tuple[str, bool]:
    """The OpenMP wait policy this process asks for, and whether OpenMP uses it.

    Returns:
        ``(policy, effective)``: the value of ``OMP_WAIT_POLICY`` (``""`` when unset) and
        whether it was in the environment when OpenMP loaded. It is not when torch was
        imported before omnifast and the user set no policy: then OpenMP spins by its default
        (set ``OMP_WAIT_POLICY=PASSIVE`` in the environment, or import omnifast first).
    """
    policy = os.environ.get("OMP_WAIT_POLICY", "")
    effective = bool(policy) and (not _found.get("torch_first", True)
                                  or _found.get("user_policy") is not None)
    return policy, effective


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (``cpu.max``), rounded up; None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def cpus_given() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)


def default_threads() -> int:
    """Threads of a fit when none are asked for: ``OMP_NUM_THREADS`` when it is set to a
    positive number (Ray sets it to a task's CPUs), otherwise :func:`cpus_given`."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return cpus_given()


def _cv2():
    """OpenCV (it runs the optical flow), or None where it cannot be imported."""
    try:
        import cv2  # noqa: PLC0415
    except ImportError:
        return None
    return cv2


def set_threads(threads: int) -> int:
    """Set the thread count of torch's and OpenCV's CPU thread pools.

    Args:
        threads: a positive number of threads.

    Returns:
        the torch thread count it replaced.
    """
    import torch  # noqa: PLC0415 (this module is imported before torch)

    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    cv2 = _cv2()
    if cv2 is not None:
        cv2.setNumThreads(threads)
    return before


def _ext():
    from omnifast._ext import load_extension  # noqa: PLC0415

    ext = load_extension()
    return ext if ext is not None and hasattr(ext, "set_flush_to_zero") else None


def set_flush_to_zero(on: bool) -> bool:
    """Turn flush-to-zero (FTZ and DAZ) on or off for omnifast's CPU threads.

    With the extension, every OpenMP thread and the calling thread; without it, the calling
    thread only (through torch), which still covers single-threaded math.

    Returns:
        whether the calling thread had it on before.
    """
    import torch  # noqa: PLC0415

    ext = _ext()
    if ext is not None:
        return bool(ext.set_flush_to_zero(bool(on)))
    before = flush_to_zero_enabled()
    torch.set_flush_denormal(bool(on))
    return before


def flush_to_zero_enabled() -> bool:
    """Whether the calling thread flushes subnormals to zero now."""
    import torch  # noqa: PLC0415

    tiny = torch.finfo(torch.float32).tiny
    return bool(torch.tensor(tiny, dtype=torch.float32) / 2 == 0)


@contextlib.contextmanager
def flush_to_zero(on: bool = True) -> Iterator[None]:
    """Flush-to-zero on (or off) inside a ``with`` block, the previous state restored after.

    The previous state is the calling thread's; on exit it is restored on every thread.
    """
    before = set_flush_to_zero(on)
    try:
        yield
    finally:
        set_flush_to_zero(before)


def flushes_subnormals(fn: Callable) -> Callable:
    """Decorator: run ``fn`` inside :func:`flush_to_zero` (the caller's state restored)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with flush_to_zero():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def cpu_settings(threads: int | None = None) -> Iterator[int]:
    """Apply a fit's CPU settings for the duration of a ``with`` block, then restore them:
    the thread count, then flush-to-zero on every one of those threads.

    Args:
        threads: CPU threads (default :func:`default_threads`: all CPUs this process was
            given, or ``OMP_NUM_THREADS``).

    Yields:
        the thread count in effect.
    """
    n = default_threads() if threads is None else int(threads)
    cv2 = _cv2()
    cv2_before = cv2.getNumThreads() if cv2 is not None else None
    before = set_threads(n)
    ftz_before = set_flush_to_zero(True)
    try:
        yield n
    finally:
        import torch  # noqa: PLC0415

        # flush-to-zero first, on all n threads: the pool keeps the threads beyond ``before``
        # (idle, with their own MXCSR) for the next time the count grows
        set_flush_to_zero(ftz_before)
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
        cv2 = _cv2()
        if cv2 is not None and cv2_before is not None:
            cv2.setNumThreads(cv2_before)


__all__ = ["DEFAULT_WAIT_POLICY", "cpu_settings", "cpus_given", "default_threads",
           "flush_to_zero", "flush_to_zero_enabled", "flushes_subnormals", "prepare_environment",
           "set_flush_to_zero", "set_threads", "wait_policy"]
