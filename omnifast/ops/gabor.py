"""``gabor_net``: the GaborNet (colour/density and latent-code MLP), dispatched to a backend.

Backends: ``"torch"`` (:func:`omnifast.reference.gabor_net_ref`), ``"triton"`` (tensor-core
kernels, kernels/gabor.py, custom ops in :mod:`omnifast.ops.triton_mlp`) and ``"cpu"``, C++/OpenMP
(csrc/gabor/), fp32 and fp64 plus the bf16 matmul mode (the hidden and output products on bf16
operands with fp32 accumulation; the filters stay fp32, as in the reference). Per tile of points
the CPU kernel computes every filter, product and elementwise step with the tile's activations in
cache; it keeps the inputs and the hidden linears' outputs (NL values of width H per point) for
the backward, which recomputes the filters from them. The reference keeps about a dozen
``[M, H]`` tensors per layer and runs each elementwise step as a separate pass over memory.
"""

from __future__ import annotations

import torch

from omnifast._ext import load_extension
from omnifast.dispatch import get_matmul_precision, register, resolve
from omnifast.ops.triton_mlp import auto_precision_reason
from omnifast.reference.gabor import GaborParams, gabor_net_ref

register("gabor_net", "torch")(gabor_net_ref)

#: points per tile of the CPU kernel; per-thread working set ~ (3 NL + 9) * H * tile * 4 bytes
#: (4.7 MB at the colour network's H = 512, NL = 3: in L3; larger tiles amortize the products'
#: packing of the 512 x 512 weights).
CPU_GABOR_TILE = 128


class GaborNetFunction(torch.autograd.Function):
    """Autograd wrapper of the fused CPU GaborNet.

    Saves the inputs and the hidden linears' outputs ``[NL, M, H]`` (H values per point and
    linear, in x's dtype): the backward recomputes the filters and the products g_k a_k from them,
    elementwise, and runs no forward matrix product again.
    """

    @staticmethod
    def forward(ctx, x, filt_w, filt_b, mu, gamma, lin_w, lin_b, out_w, out_b, bf16, tile):
        ws = (filt_w, filt_b, mu, gamma, lin_w, lin_b, out_w, out_b)
        save = any(ctx.needs_input_grad[:9])
        y, acts = load_extension().gabor_net_fwd(x, *ws, save, bf16, tile)
        ctx.save_for_backward(x, acts, *ws)
        ctx.cfg = (bf16, tile)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, acts, *ws = ctx.saved_tensors
        bf16, tile = ctx.cfg
        grads = load_extension().gabor_net_bwd(dy.contiguous(), x, acts, *ws, bf16, tile)
        return (*grads, None, None)


def _supports_cpu(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in (torch.float32, torch.float64):
        return f"the fused CPU GaborNet runs float32/float64 inputs, got {dtype}"
    ext = load_extension()
    if ext is not None and not hasattr(ext, "gabor_net_fwd"):
        return "omnifast._C was built without the GaborNet kernels; rebuild it (make ext)"
    return None


def _stacked(params: GaborParams, x: torch.Tensor) -> list[torch.Tensor]:
    """The kernels' layout: filters, mu, gamma and hidden linears stacked along a leading
    dimension, in x's dtype, contiguous."""
    dt = x.dtype
    H, D = params.filt_w[0].shape

    def stack(ts, *shape):
        return torch.stack([t.to(dt) for t in ts]) if ts else x.new_zeros(0, *shape)

    p = params
    ws = [stack(p.filt_w, H, D), stack(p.filt_b, H), stack(p.mu, H, D), stack(p.gamma, H),
          stack(p.lin_w, H, H), stack(p.lin_b, H), p.out_w.to(dt), p.out_b.to(dt)]
    return [w.contiguous() for w in ws]


@register("gabor_net", "cpu", supports=_supports_cpu)
def gabor_net_cpu(x: torch.Tensor, params: GaborParams) -> torch.Tensor:
    """The fused C++ GaborNet (same contract as :func:`gabor_net_ref`)."""
    D = params.filt_w[0].shape[1]
    lead = x.shape[:-1]
    xf = x.reshape(-1, D).contiguous()
    bf16 = get_matmul_precision() == "bf16" and x.dtype == torch.float32
    y = GaborNetFunction.apply(xf, *_stacked(params, xf), bf16, CPU_GABOR_TILE)
    return y.reshape(*lead, y.shape[-1])


def _supports_triton(device: torch.device, dtype: torch.dtype, shapes: dict) -> str | None:
    if dtype != torch.float32:
        return f"the Triton GaborNet runs float32 inputs, got {dtype}"
    if shapes:
        from omnifast.kernels.gabor import unsupported_reason  # noqa: PLC0415

        return unsupported_reason(shapes["D"], shapes["H"], shapes["O"], shapes["n_linear"])
    return None


@register("gabor_net", "triton", supports=_supports_triton, auto=auto_precision_reason)
def gabor_net_triton(x: torch.Tensor, params: GaborParams) -> torch.Tensor:
    """The Triton GaborNet on tensor cores (same contract as :func:`gabor_net_ref`).

    Runs the custom op ``omnifast::gabor_net_fwd`` (backward ``omnifast::gabor_net_bwd``) at the
    active matmul precision (the hidden and output products; the filters are fp32 in every
    mode, as in the reference). Saves z_0, the hidden linears' outputs and the products (bf16 in
    the bf16 mode) and recomputes the filters in the backward.
    """
    from omnifast.ops.triton_mlp import gabor_net_fwd_op  # noqa: PLC0415

    D = params.filt_w[0].shape[1]
    lead = x.shape[:-1]
    xf = x.reshape(-1, D).contiguous()
    ws = _stacked(params, xf)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (xf, *ws))
    y, *_ = gabor_net_fwd_op(xf, *ws, get_matmul_precision(), save)
    return y.reshape(*lead, y.shape[-1])


def gabor_net(x: torch.Tensor, params: GaborParams) -> torch.Tensor:
    """The GaborNet: z_0 = g_0(x), z_k = g_k(x) * linear_k(z_{k-1}), out = linear(z_NL).

    Args:
        x: inputs. [..., D]
        params: the network's weights (see :class:`omnifast.reference.GaborParams`).

    Returns:
        [..., O]
    """
    D = params.filt_w[0].shape[1]
    if x.shape[-1] != D or len(params.filt_w) != len(params.lin_w) + 1:
        raise ValueError(f"gabor_net: x must be [..., {D}] and there must be one filter more "
                         f"than hidden linears; got x {tuple(x.shape)}, {len(params.filt_w)} "
                         f"filters, {len(params.lin_w)} linears")
    shapes = dict(D=D, H=params.filt_w[0].shape[0], O=params.out_w.shape[0],
                  n_linear=len(params.lin_w))
    _, fn = resolve("gabor_net", x.device, x.dtype, shapes)
    return fn(x, params)
