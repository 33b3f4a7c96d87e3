"""CPU runtime settings of a fit: flush-to-zero for subnormal floats.

Subnormal floats (below 1.2e-38 in fp32) cost x86 cores about a hundred cycles per operation
instead of one. A CPU fit meets them after about a thousand steps (``docs/design.md``, "Subnormal
floats") and slows down about five times. :func:`flush_to_zero` sets the two MXCSR bits that make
the CPU treat subnormal inputs and results as zero (DAZ and FTZ) on every thread that computes
for omnifast: the calling thread and each thread of the OpenMP pool that torch's intra-op
parallelism, MKL and omnifast's C++ kernels share. The bits live in each thread's own register,
so torch's ``set_flush_denormal`` (calling thread only) is not enough.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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
