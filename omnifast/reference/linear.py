"""A linear layer that follows :func:`omnifast.matmul_precision`."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from omnifast.precision import get_matmul_precision


@contextlib.contextmanager
def _tf32(enabled: bool):
    if not enabled:
        yield
        return
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           precision: str | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` at the active matmul precision.

    Args:
        x: inputs. [..., in]
        weight: [out, in]
        bias: [out] or None.
        precision: overrides :func:`omnifast.get_matmul_precision` when given.

    Returns:
        [..., out] in ``x``'s dtype. In ``"bf16"`` the operands are rounded to bf16, the product
        is accumulated in fp32 by PyTorch and the bias is added in ``x``'s dtype. ``"tf32"``
        enables TF32 tensor cores for CUDA tensors and is plain fp32 elsewhere.
    """
    precision = precision or get_matmul_precision()
    if precision == "bf16":
        y = F.linear(x.to(torch.bfloat16), weight.to(torch.bfloat16)).to(x.dtype)
        return y if bias is None else y + bias
    with _tf32(precision == "tf32" and x.is_cuda):
        return F.linear(x, weight, bias)
