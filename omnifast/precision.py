"""The matmul-precision switch of the MLP products (a bottom-level module: imports only torch
and the standard library, so that the reference and the kernels' dispatch can both read it).

The public names are re-exported by :mod:`omnifast.dispatch` and :mod:`omnifast`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16")

_precision_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "omnifast_matmul_precision", default=None
)


def _check(name: str, what: str) -> str:
    if not isinstance(name, str) or name.lower() not in PRECISIONS:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(PRECISIONS)}")
    return name.lower()


@contextlib.contextmanager
def matmul_precision(name: str) -> Iterator[None]:
    """Select the precision of the MLP matrix products inside a ``with`` block.

    On CUDA, ``"tf32"`` and ``"bf16"`` make automatic dispatch pick the Triton MLP kernels (on
    tensor cores); in ``"fp32"`` it keeps the reference, and an explicit
    ``omnifast.backend("triton")`` runs the kernels with exact fp32 products ("ieee"), for
    parity. The fused ops capture the
    precision in their forward and run their backward at it; inside the block PyTorch's CUDA
    matmuls (``torch.backends.cuda.matmul.allow_tf32``) follow it too, so a step run inside
    one block has one precision, backward included.

    Args:
        name: ``"fp32"`` (default), ``"tf32"`` (TF32 tensor cores on GPUs; plain fp32 on the CPU)
            or ``"bf16"`` (bf16 operands, fp32 accumulation; coordinates stay fp32).
    """
    name = _check(name, "matmul precision")
    token = _precision_var.set(name)
    # PyTorch's own CUDA matmuls (the reference path) follow the block too, for the whole block:
    # a training step run inside it gets the same precision in its backward as in its forward.
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
        _precision_var.reset(token)


def get_matmul_precision() -> str:
    """The active matmul precision: the innermost block, else ``OMNIFAST_MATMUL_PRECISION``."""
    name = _precision_var.get()
    if name is None:
        name = _check(os.environ.get("OMNIFAST_MATMUL_PRECISION", "fp32"),
                      "OMNIFAST_MATMUL_PRECISION value")
    return name
