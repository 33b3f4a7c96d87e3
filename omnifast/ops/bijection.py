"""The invertible mapping's ops: the coupling-layer stack and the affine pre-layer."""

from __future__ import annotations

import torch

from omnifast.dispatch import register, resolve
from omnifast.reference.bijection import CouplingParams, affine_ref, coupling_stack_ref

register("coupling_stack", "torch")(coupling_stack_ref)
register("affine", "torch")(affine_ref)


def _check_points(x: torch.Tensor, frame_idx: torch.Tensor, op: str) -> None:
    if x.dim() != 2 or x.shape[-1] != 3:
        raise ValueError(f"{op}: x must be [M, 3] points, got {tuple(x.shape)}")
    if frame_idx.shape != x.shape[:1]:
        raise ValueError(f"{op}: frame_idx must be [M] = [{x.shape[0]}], got "
                         f"{tuple(frame_idx.shape)}")
    if frame_idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: frame_idx must be an integer tensor, got {frame_idx.dtype}")


def coupling_stack(x: torch.Tensor, frame_idx: torch.Tensor, codes: torch.Tensor,
                   params: CouplingParams, coords: tuple[int, ...], n_freq: int,
                   inverse: bool = False) -> torch.Tensor:
    """Map points through the affine coupling stack (forward: local -> canonical).

    Args:
        x: points. [M, 3]
        frame_idx: row of ``codes`` for each point. [M] int64
        codes: per-frame, per-layer projected codes. [F, L, C]
        params: stacked layer weights (see :class:`omnifast.reference.CouplingParams`).
        coords: the coordinate each layer transforms. length L
        n_freq: positional-encoding frequencies.
        inverse: apply the inverse (canonical -> local).

    Returns:
        mapped points. [M, 3]
    """
    _check_points(x, frame_idx, "coupling_stack")
    L = params.num_layers
    if codes.dim() != 3 or codes.shape[1] != L or codes.shape[2] != params.code_dim:
        raise ValueError(f"coupling_stack: codes must be [F, {L}, {params.code_dim}], got "
                         f"{tuple(codes.shape)}")
    _, fn = resolve("coupling_stack", x.device, x.dtype)
    return fn(x, frame_idx, codes, params, tuple(coords), n_freq, inverse)


def affine(x: torch.Tensor, t: torch.Tensor, weights: list[torch.Tensor],
           biases: list[torch.Tensor], n_freq: int, inverse: bool = False) -> torch.Tensor:
    """The depth/time-conditioned 2-D affine pre-layer (see :func:`omnifast.reference.affine_ref`).

    Args:
        x: points. [M, 3]
        t: time code of each point. [M]
        weights, biases: the affine MLP's layers.
        n_freq: depth-encoding frequencies.
        inverse: apply the inverse.

    Returns:
        mapped points. [M, 3]
    """
    if x.dim() != 2 or x.shape[-1] != 3 or t.shape != x.shape[:1]:
        raise ValueError(f"affine: x must be [M, 3] and t [M]; got {tuple(x.shape)} and "
                         f"{tuple(t.shape)}")
    _, fn = resolve("affine", x.device, x.dtype)
    return fn(x, t, weights, biases, n_freq, inverse)
