"""The Triton MLP kernels as ``torch.library.custom_op``s (``omnifast::*``), with fake (meta)
implementations so that ``torch.compile`` and CUDA-graph capture see through them, and autograd
formulas that call the backward ops.

Each network has a forward op that returns its output plus what its backward needs (empty
tensors when nothing needs a gradient), and a backward op. The matmul precision is an argument
of both, captured once in the forward: the backward runs at the forward's precision, whatever
``omnifast.matmul_precision`` says when autograd reaches it. Importing this module does not
import triton; the ops import ``omnifast.kernels`` when they first run.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BF16 = "bf16"


def _act_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == _BF16 else torch.float32


def auto_precision_reason(device: torch.device, dtype: torch.dtype | None = None,
                          shapes: dict | None = None) -> str | None:
    """Why automatic dispatch passes the Triton MLP kernels over here (``None`` if it takes
    them): the ``auto`` hook of their registrations.

    On CUDA the automatic choice takes them for matmul precision ``"tf32"`` or ``"bf16"`` (the
    tensor cores). In ``"fp32"`` it keeps the reference (cuBLAS fp32 GEMMs): the kernels' exact
    fp32 mode multiplies on the CUDA cores through Triton's FMA path and exists for parity, so
    it runs only when ``omnifast.backend("triton")`` asks for it.
    """
    from omnifast.dispatch import get_matmul_precision  # noqa: PLC0415

    if torch.device(device).type == "cuda" and get_matmul_precision() == "fp32":
        return ("automatic dispatch picks the Triton MLP kernels for matmul precision 'tf32' or "
                "'bf16'; in 'fp32' it runs the reference (ask for omnifast.backend('triton') to "
                "run the kernels' exact-fp32 mode)")
    return None


# ------------------------------------------------------------------------------ coupling stack
@torch.library.custom_op("omnifast::coupling_stack_fwd", mutates_args=())
def coupling_stack_fwd_op(x: Tensor, frame_idx: Tensor, fbias: Tensor, proj_w: Tensor,
                          proj_b: Tensor, w_in_h: Tensor, w_hid: Tensor, b_hid: Tensor,
                          w_out: Tensor, b_out: Tensor, coords: list[int], n_freq: int,
                          inverse: bool, precision: str, save: bool
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y [M, 3], xin [L, M, 3], h [L, M, P], z [L, NH + 1, M, H], st [L, M, 2])``; see
    :func:`omnifast.kernels.bijection.coupling_stack_fwd`."""
    from omnifast.kernels import bijection as kb  # noqa: PLC0415 (imports triton)

    ws = [fbias, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out]
    return kb.coupling_stack_fwd(x, frame_idx, ws, coords, n_freq, inverse, precision, save)


@coupling_stack_fwd_op.register_fake
def _(x, frame_idx, fbias, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out, coords, n_freq,
      inverse, precision, save):
    M, (L, P, _), H, NH = x.shape[0], proj_w.shape, w_in_h.shape[1], w_hid.shape[0]
    adt = _act_dtype(precision)
    n = L if save else 0
    return (x.new_empty(M, 3), x.new_empty(n, M, 3), x.new_empty(n, M, P, dtype=adt),
            x.new_empty(n, NH + 1, M, H, dtype=adt), x.new_empty(n, M, 2))


@torch.library.custom_op("omnifast::coupling_stack_bwd", mutates_args=())
def coupling_stack_bwd_op(dy: Tensor, xin: Tensor, h: Tensor, z: Tensor, st: Tensor,
                          frame_idx: Tensor, fbias: Tensor, proj_w: Tensor, proj_b: Tensor,
                          w_in_h: Tensor, w_hid: Tensor, b_hid: Tensor, w_out: Tensor,
                          b_out: Tensor, coords: list[int], n_freq: int, inverse: bool,
                          precision: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                   Tensor, Tensor, Tensor, Tensor]:
    """``(dx, dfbias, dproj_w, dproj_b, dw_in_h, dw_hid, db_hid, dw_out, db_out)``."""
    from omnifast.kernels import bijection as kb  # noqa: PLC0415

    ws = [fbias, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out]
    return tuple(kb.coupling_stack_bwd(dy, xin, h, z, st, frame_idx, ws, coords, n_freq,
                                       inverse, precision))


@coupling_stack_bwd_op.register_fake
def _(dy, xin, h, z, st, frame_idx, *ws_and_cfg):
    ws = ws_and_cfg[:8]
    return (torch.empty_like(dy, dtype=torch.float32),
            *(torch.empty_like(w, dtype=torch.float32) for w in ws))


def _coupling_setup(ctx, inputs, output):
    x, frame_idx, *ws = inputs[:10]
    coords, n_freq, inverse, precision, save = inputs[10:]
    _, xin, h, z, st = output
    ctx.save_for_backward(xin, h, z, st, frame_idx, *ws)
    ctx.cfg = (coords, n_freq, inverse, precision, save)


def _coupling_backward(ctx, dy, *_unused):
    coords, n_freq, inverse, precision, save = ctx.cfg
    if not save:
        raise RuntimeError("coupling_stack: the forward ran with save=False (nothing needed a "
                           "gradient then), so there is nothing to backpropagate through")
    xin, h, z, st, frame_idx, *ws = ctx.saved_tensors
    dx, *grads = coupling_stack_bwd_op(dy.contiguous(), xin, h, z, st, frame_idx, *ws, coords,
                                       n_freq, inverse, precision)
    return (dx, None, *grads, None, None, None, None, None)


coupling_stack_fwd_op.register_autograd(_coupling_backward, setup_context=_coupling_setup)


# ------------------------------------------------------------------------- affine pre-layer
@torch.library.custom_op("omnifast::affine_fwd", mutates_args=())
def affine_fwd_op(x: Tensor, t: Tensor, w0: Tensor, b0: Tensor, w_hid: Tensor, b_hid: Tensor,
                  w_out: Tensor, b_out: Tensor, n_freq: int, inverse: bool, precision: str,
                  save: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(y [M, 3], a [NH + 1, M, H], theta [M, 5])``; see
    :func:`omnifast.kernels.affine.affine_fwd`."""
    from omnifast.kernels import affine as ka  # noqa: PLC0415

    return ka.affine_fwd(x, t, [w0, b0, w_hid, b_hid, w_out, b_out], n_freq, inverse, precision,
                         save)


@affine_fwd_op.register_fake
def _(x, t, w0, b0, w_hid, b_hid, w_out, b_out, n_freq, inverse, precision, save):
    M, H, NH = x.shape[0], w0.shape[0], w_hid.shape[0]
    n = M if save else 0
    return (x.new_empty(M, 3), x.new_empty(NH + 1 if save else 0, M, H,
                                           dtype=_act_dtype(precision)), x.new_empty(n, 5))


@torch.library.custom_op("omnifast::affine_bwd", mutates_args=())
def affine_bwd_op(dy: Tensor, x: Tensor, t: Tensor, a: Tensor, theta: Tensor, w0: Tensor,
                  b0: Tensor, w_hid: Tensor, b_hid: Tensor, w_out: Tensor, b_out: Tensor,
                  n_freq: int, inverse: bool, precision: str
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dx, dt, dw0, db0, dw_hid, db_hid, dw_out, db_out)``."""
    from omnifast.kernels import affine as ka  # noqa: PLC0415

    return tuple(ka.affine_bwd(dy, x, t, a, theta, [w0, b0, w_hid, b_hid, w_out, b_out], n_freq,
                               inverse, precision))


@affine_bwd_op.register_fake
def _(dy, x, t, a, theta, *ws_and_cfg):
    ws = ws_and_cfg[:6]
    return (torch.empty_like(x, dtype=torch.float32), torch.empty_like(t, dtype=torch.float32),
            *(torch.empty_like(w, dtype=torch.float32) for w in ws))


def _affine_setup(ctx, inputs, output):
    x, t, *ws = inputs[:8]
    ctx.cfg = inputs[8:]
    _, a, theta = output
    ctx.save_for_backward(x, t, a, theta, *ws)


def _affine_backward(ctx, dy, *_unused):
    n_freq, inverse, precision, save = ctx.cfg
    if not save:
        raise RuntimeError("affine: the forward ran with save=False (nothing needed a gradient "
                           "then), so there is nothing to backpropagate through")
    x, t, a, theta, *ws = ctx.saved_tensors
    grads = affine_bwd_op(dy.contiguous(), x, t, a, theta, *ws, n_freq, inverse, precision)
    return (*grads, None, None, None, None)


affine_fwd_op.register_autograd(_affine_backward, setup_context=_affine_setup)


# ----------------------------------------------------------------------------------- GaborNet
@torch.library.custom_op("omnifast::gabor_net_fwd", mutates_args=())
def gabor_net_fwd_op(x: Tensor, filt_w: Tensor, filt_b: Tensor, mu: Tensor, gamma: Tensor,
                     lin_w: Tensor, lin_b: Tensor, out_w: Tensor, out_b: Tensor, precision: str,
                     save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(out [M, O], z0 [M, H], a [NL, M, H], z [NL, M, H])``; see
    :func:`omnifast.kernels.gabor.gabor_net_fwd`."""
    from omnifast.kernels import gabor as kg  # noqa: PLC0415

    return kg.gabor_net_fwd(x, [filt_w, filt_b, mu, gamma, lin_w, lin_b, out_w, out_b],
                            precision, save)


@gabor_net_fwd_op.register_fake
def _(x, filt_w, filt_b, mu, gamma, lin_w, lin_b, out_w, out_b, precision, save):
    M, (NL, H, _), O = x.shape[0], lin_w.shape, out_w.shape[0]
    adt = _act_dtype(precision)
    return (x.new_empty(M, O), x.new_empty(M if save else 0, H, dtype=adt),
            x.new_empty(NL if save else 0, M, H, dtype=adt),
            x.new_empty(NL if save else 0, M, H, dtype=adt))


@torch.library.custom_op("omnifast::gabor_net_bwd", mutates_args=())
def gabor_net_bwd_op(dout: Tensor, x: Tensor, z0: Tensor, a: Tensor, z: Tensor, filt_w: Tensor,
                     filt_b: Tensor, mu: Tensor, gamma: Tensor, lin_w: Tensor, lin_b: Tensor,
                     out_w: Tensor, out_b: Tensor, precision: str
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                Tensor]:
    """``(dx, dfilt_w, dfilt_b, dmu, dgamma, dlin_w, dlin_b, dout_w, dout_b)``."""
    from omnifast.kernels import gabor as kg  # noqa: PLC0415

    ws = [filt_w, filt_b, mu, gamma, lin_w, lin_b, out_w, out_b]
    return tuple(kg.gabor_net_bwd(dout, x, z0, a, z, ws, precision))


@gabor_net_bwd_op.register_fake
def _(dout, x, z0, a, z, *ws_and_cfg):
    ws = ws_and_cfg[:8]
    return (torch.empty_like(x, dtype=torch.float32),
            *(torch.empty_like(w, dtype=torch.float32) for w in ws))


def _gabor_setup(ctx, inputs, output):
    x, *ws = inputs[:9]
    ctx.cfg = inputs[9:]
    _, z0, a, z = output
    ctx.save_for_backward(x, z0, a, z, *ws)


def _gabor_backward(ctx, dout, *_unused):
    precision, save = ctx.cfg
    if not save:
        raise RuntimeError("gabor_net: the forward ran with save=False (nothing needed a "
                           "gradient then), so there is nothing to backpropagate through")
    x, z0, a, z, *ws = ctx.saved_tensors
    grads = gabor_net_bwd_op(dout.contiguous(), x, z0, a, z, *ws, precision)
    return (*grads, None, None)


gabor_net_fwd_op.register_autograd(_gabor_backward, setup_context=_gabor_setup)
