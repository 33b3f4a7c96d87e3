"""``composite``: transmittance-weighted compositing along rays, dispatched to a backend.

Backends:

* ``"torch"``: :func:`omnifast.reference.composite_ref` (autograd derives its backward).
* ``"cpu"``: the C++/OpenMP kernels of ``omnifast._C`` (float32 and float64).
* ``"cuda"``: the CUDA kernels of ``omnifast._C`` (float32 and float64; the backward keeps up to
  128 samples per ray in per-thread arrays).
* ``"triton"``: :mod:`omnifast.kernels.composite` (float32).

Every fused backend runs one pass per ray forward and one forward-then-reverse pass per ray
backward, and saves only the inputs for the backward (:class:`CompositeFunction`). Transmittance
is carried as a running product, in the input's precision, exactly like the reference's
``cumprod``; on the CPU the reference's ``cumprod`` accumulates float32 in float64 and rounds
each step, so the float32 weights differ from it by rounding only (a few ulp per sample,
checked in ``tests/test_composite.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from omnifast.dispatch import register, resolve
from omnifast.reference.composite import (
    composite_argmax_ref,
    composite_ref,
    occlusion_score_ref,
)

_FLOATS = (torch.float32, torch.float64)


def _float_support(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in _FLOATS:
        return f"composite kernels support float32 and float64, got {dtype}"
    return None


def _fp32_support(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype != torch.float32:
        return f"the Triton composite kernels support float32 only, got {dtype}"
    return None


# --------------------------------------------------------------------------- kernel families
class _ExtKernels:
    """The C++ extension's entry points (CPU or CUDA, chosen by the tensors' device)."""

    @staticmethod
    def _ext():
        from omnifast._ext import load_extension  # noqa: PLC0415

        return load_extension()

    @classmethod
    def fwd(cls, sigma, values, value_mask, value_mask_from, num_masked_near, need_weights):
        out, weights = cls._ext().composite_fwd(sigma, values, value_mask, value_mask_from,
                                                num_masked_near, need_weights)
        return out, (weights if need_weights else None)

    @classmethod
    def bwd(cls, sigma, values, value_mask, dout, dweights, value_mask_from, num_masked_near,
            need_dsigma, need_dvalues):
        dsigma, dvalues = cls._ext().composite_bwd(sigma, values, value_mask, dout, dweights,
                                                   value_mask_from, num_masked_near,
                                                   need_dsigma, need_dvalues)
        return (dsigma if need_dsigma else None), (dvalues if need_dvalues else None)

    @classmethod
    def argmax(cls, sigma):
        return cls._ext().composite_argmax(sigma)

    @classmethod
    def occlusion(cls, sigma, depths, depth_limit):
        return cls._ext().occlusion_score(sigma, depths, depth_limit)


class _TritonKernels:
    """The Triton launchers of :mod:`omnifast.kernels.composite` (imported on first use)."""

    @staticmethod
    def _mod():
        from omnifast.kernels import composite as mod  # noqa: PLC0415

        return mod

    @classmethod
    def fwd(cls, *args):
        return cls._mod().composite_fwd(*args)

    @classmethod
    def bwd(cls, *args):
        return cls._mod().composite_bwd(*args)

    @classmethod
    def argmax(cls, sigma):
        return cls._mod().composite_argmax(sigma)

    @classmethod
    def occlusion(cls, sigma, depths, depth_limit):
        return cls._mod().occlusion_score(sigma, depths, depth_limit)


# --------------------------------------------------------------------------- autograd
class CompositeFunction(torch.autograd.Function):
    """Fused compositing with a hand-written backward.

    Inputs are flattened rays: sigma [R, K], values [R, K, C], value_mask [R, K] or None. Only
    these inputs are saved for the backward, which recomputes the transmittance per ray.
    Gradients flow to sigma and values; value_mask is treated as a constant.
    """

    @staticmethod
    def forward(ctx: Any, sigma: torch.Tensor, values: torch.Tensor,
                value_mask: torch.Tensor | None, num_masked_near: int, value_mask_from: int,
                need_weights: bool, kernels: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, weights = kernels.fwd(sigma, values, value_mask, value_mask_from, num_masked_near,
                                   need_weights)
        ctx.save_for_backward(sigma, values, value_mask)
        ctx.num_masked_near = num_masked_near
        ctx.value_mask_from = value_mask_from
        ctx.kernels = kernels
        ctx.set_materialize_grads(False)
        return out, weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout: torch.Tensor | None, dweights: torch.Tensor | None):
        sigma, values, value_mask = ctx.saved_tensors
        need_dsigma, need_dvalues = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if dout is None and dweights is None:
            return None, None, None, None, None, None, None
        if dout is None:
            dout = sigma.new_zeros(values.shape[0], values.shape[2])
        dout = dout.contiguous()
        if dweights is not None:
            dweights = dweights.contiguous()
        dsigma, dvalues = ctx.kernels.bwd(sigma, values, value_mask, dout, dweights,
                                          ctx.value_mask_from, ctx.num_masked_near,
                                          need_dsigma, need_dvalues)
        return dsigma, dvalues, None, None, None, None, None


def _fused(kernels: Any):
    def run(sigma, values, num_masked_near, *, need_weights=True, value_mask=None,
            value_mask_from=0):
        batch, K, C = sigma.shape[:-1], sigma.shape[-1], values.shape[-1]
        R = math.prod(batch)
        s2 = sigma.reshape(R, K).contiguous()
        v3 = values.reshape(R, K, C).contiguous()
        m2 = None
        if value_mask is not None:
            m2 = value_mask.detach().to(sigma.dtype).reshape(R, K).contiguous()
        out, weights = CompositeFunction.apply(s2, v3, m2, int(num_masked_near),
                                               int(value_mask_from), bool(need_weights), kernels)
        out = out.reshape(*batch, C)
        if weights is not None:
            weights = weights.reshape(*batch, K)
        return out, weights

    return run


def _composite_torch(sigma, values, num_masked_near, *, need_weights=True, value_mask=None,
                     value_mask_from=0):
    out, weights = composite_ref(sigma, values, num_masked_near,
                                 value_mask=None if value_mask is None else value_mask.detach(),
                                 value_mask_from=value_mask_from)
    return out, (weights if need_weights else None)


register("composite", "torch")(_composite_torch)
register("composite", "cpu", supports=_float_support)(_fused(_ExtKernels))
register("composite", "cuda", supports=_float_support)(_fused(_ExtKernels))
register("composite", "triton", supports=_fp32_support)(_fused(_TritonKernels))

register("composite_argmax", "torch")(composite_argmax_ref)
register("occlusion_score", "torch")(occlusion_score_ref)
for _name, _kern, _sup in (("cpu", _ExtKernels, _float_support),
                           ("cuda", _ExtKernels, _float_support),
                           ("triton", _TritonKernels, _fp32_support)):
    register("composite_argmax", _name, supports=_sup)(
        lambda sigma, _k=_kern: _k.argmax(sigma.reshape(-1, sigma.shape[-1]).contiguous())
        .reshape(sigma.shape[:-1]))
    register("occlusion_score", _name, supports=_sup)(
        lambda sigma, depths, depth_limit, _k=_kern: _k.occlusion(
            sigma.reshape(-1, sigma.shape[-1]).contiguous(),
            depths.reshape(-1, sigma.shape[-1]).contiguous(),
            depth_limit.reshape(-1).contiguous()).reshape(sigma.shape[:-1]))


# --------------------------------------------------------------------------- public functions
def composite(sigma: torch.Tensor, values: torch.Tensor, num_masked_near: int = 0, *,
              need_weights: bool = True, value_mask: torch.Tensor | None = None,
              value_mask_from: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Composite per-sample values along rays with OmniMotion's transmittance (spec 3.7).

    alpha = 1 - exp(-sigma), T = exclusive cumprod(1 - alpha + 1e-10), weights = alpha * T,
    out = sum_k weights_k * values_k.

    Args:
        sigma: densities. [..., K]
        values: values to composite, any number of channels. [..., K, C]
        num_masked_near: alpha of the first this-many samples is forced to 0 (spec 3.2).
        need_weights: return the weights; when False they are neither computed nor stored and
            ``None`` is returned in their place.
        value_mask: optional per-sample mask multiplied into the weights of the value sums of
            channels ``value_mask_from:`` (spec 3.8's depth-range mask of the mapped points).
            The returned weights stay unmasked; the mask gets no gradient. [..., K]
        value_mask_from: first channel ``value_mask`` applies to.

    Returns:
        ``(out [..., C], weights [..., K] or None)``.
    """
    if not isinstance(sigma, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError("composite expects tensors for sigma and values")
    if values.dim() != sigma.dim() + 1 or values.shape[:-1] != sigma.shape:
        raise ValueError(
            "composite: values must be [..., K, C] with sigma [..., K]; got sigma "
            f"{tuple(sigma.shape)} and values {tuple(values.shape)}"
        )
    if sigma.device != values.device:
        raise ValueError(f"composite: sigma is on {sigma.device}, values on {values.device}")
    if values.dtype != sigma.dtype:
        raise TypeError(f"composite: sigma is {sigma.dtype}, values {values.dtype}")
    if value_mask is not None and value_mask.shape != sigma.shape:
        raise ValueError(f"composite: value_mask must be {tuple(sigma.shape)} like sigma, got "
                         f"{tuple(value_mask.shape)}")
    if num_masked_near < 0 or value_mask_from < 0:
        raise ValueError("composite: num_masked_near and value_mask_from must be >= 0")
    _, fn = resolve("composite", sigma.device, sigma.dtype)
    return fn(sigma, values, num_masked_near, need_weights=need_weights, value_mask=value_mask,
              value_mask_from=value_mask_from)


def composite_argmax(sigma: torch.Tensor) -> torch.Tensor:
    """Index of the largest compositing weight per ray (``use_max_loc``, spec 3.8), fused.

    Args:
        sigma: densities. [..., K], K >= 1

    Returns:
        ``argmax_k w_k``, the first on ties (as :func:`torch.argmax`). [...] int64
    """
    if sigma.dim() < 1 or sigma.shape[-1] == 0:
        raise ValueError(f"composite_argmax: sigma must be [..., K] with K >= 1, got "
                         f"{tuple(sigma.shape)}")
    _, fn = resolve("composite_argmax", sigma.device, sigma.dtype)
    with torch.no_grad():
        return fn(sigma)


def occlusion_score(sigma: torch.Tensor, depths: torch.Tensor,
                    depth_limit: torch.Tensor) -> torch.Tensor:
    """Light absorbed in front of a depth limit (spec 3.9), fused; forward only.

    Args:
        sigma: densities of the ray cast at the point's pixel. [..., K]
        depths: the samples' depths. [..., K]
        depth_limit: samples at depth >= this are left out (the caller passes z - eps). [...]

    Returns:
        ``sum_k w_k [depths_k < depth_limit]``. [...]
    """
    if depths.shape != sigma.shape or depth_limit.shape != sigma.shape[:-1]:
        raise ValueError(f"occlusion_score: depths must be {tuple(sigma.shape)} and depth_limit "
                         f"{tuple(sigma.shape[:-1])}; got {tuple(depths.shape)} and "
                         f"{tuple(depth_limit.shape)}")
    depths = depths.to(sigma.dtype)
    depth_limit = depth_limit.to(sigma.dtype)
    _, fn = resolve("occlusion_score", sigma.device, sigma.dtype)
    with torch.no_grad():
        return fn(sigma, depths, depth_limit)
