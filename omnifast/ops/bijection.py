"""The invertible mapping's ops: the coupling-layer stack and the affine pre-layer.

Fused backends of ``coupling_stack`` (the reference is the ``"torch"`` backend):

* ``"cpu"``: C++/OpenMP kernels in ``omnifast._C`` (csrc/bijection/), fp32 and fp64, plus a bf16
  matmul mode (``omnifast.matmul_precision("bf16")``, fp32 inputs).
* ``"triton"``: kernels/bijection.py on tensor cores (custom ops in
  :mod:`omnifast.ops.triton_mlp`), CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``),
  widths that are multiples of 16 up to 512 (the dispatch sees the widths).

Both take the same exact shortcut (spec 6.5): the code columns of each layer's first linear
multiply a per-frame constant, so ``frame_bias[f, l] = w_in[l, :, :C] @ codes[f, l] + b_in[l]``
is computed once per frame here, in PyTorch (autograd carries its gradient to the codes and
weights), and the kernels only see the non-code columns ``w_in[:, :, C:]``. The ``[M, C + P]``
concatenation and the per-point code copies of the reference never exist. For backward the
CPU kernels keep each layer's input coordinates ``[L, M, 3]`` and recompute the hidden
activations from them, or keep the top hidden activations of every layer
(:data:`CPU_SAVE_HIDDEN`), which removes that many ``H x H`` products from the recompute; the
Triton kernels keep every layer's activations (bf16 in the bf16 mode) and recompute nothing
(docs/design.md, "Tensor-core MLP kernels", says why).
The frame bias is computed in fp32 even in the bf16 mode (the reference rounds the code term's
operands to bf16 like every other product): a deliberate, more precise difference of a few
thousand MACs per frame.

Fused backends of ``affine`` (the pre-layer): ``"triton"`` (kernels/affine.py, tensor cores, as
the coupling stack's) and ``"cpu"``, C++/OpenMP (csrc/bijection/affine_cpu.cpp),
fp32 and fp64 plus the same bf16 matmul mode. Per tile of points the CPU kernel runs the
depth/time MLP with its activations in cache and applies the 2-D map; for backward it keeps
nothing per point but
the top :data:`CPU_AFFINE_SAVE_HIDDEN` hidden activations and recomputes the rest from x and t
(the reference keeps every layer's 256-wide input).
"""

from __future__ import annotations

import os

import torch

from omnifast._ext import load_extension
from omnifast.dispatch import get_matmul_precision, register, resolve
from omnifast.ops.triton_mlp import auto_precision_reason
from omnifast.reference.bijection import CouplingParams, affine_ref, coupling_stack_ref

register("coupling_stack", "torch")(coupling_stack_ref)
register("affine", "torch")(affine_ref)

#: points per tile of the CPU kernels; per-thread working set ~ (3 H + P) * tile * 4 bytes
#: (512 measured fastest at the omnimotion widths: docs/studies.md).
CPU_TILE = 512

#: How many hidden activations of every layer the CPU forward keeps for the backward, per matmul
#: precision: the top ones, z[NH + 1 - K .. NH] (K in 0..NH + 1; larger values are capped). Each
#: kept activation removes one of the backward's ``H x H`` recompute products (65,536 MAC per
#: point and layer at H = 256, 1/3 of the recompute) and costs H values per point and layer,
#: fp32 (bf16 in the bf16 mode): 6 KiB (3 KiB) per point and direction at the omnimotion widths.
#: K = 0 recomputes everything from the ``[L, M, 3]`` coordinates (the least memory, the Triton
#: design). The defaults keep all of them (3 at the omnimotion depth): with the affine pre-layer
#: and the colour network fused, the whole training step stays at about a third of the
#: reference's peak memory with them (benchmarks/RESULTS.md, "coupling_stack"). The environment
#: variable ``OMNIFAST_CPU_SAVE_HIDDEN`` (``K`` or ``fp32=K,bf16=K``) overrides them.
CPU_SAVE_HIDDEN = {"fp32": 3, "bf16": 3}


#: The same for the affine pre-layer's CPU kernel: how many of its top hidden activations
#: h[NH + 1 - K .. NH] (K in 0..NH + 1, 7 at the omnimotion depth) the forward keeps, each saving
#: one ``H x H`` recompute product (65,536 MAC per point) for H values per point (1 KiB fp32,
#: 512 bytes bf16). The defaults keep all of them (no recompute), measured within the memory
#: target as above; environment variable ``OMNIFAST_CPU_AFFINE_SAVE_HIDDEN``, same syntax.
CPU_AFFINE_SAVE_HIDDEN = {"fp32": 7, "bf16": 7}


def _save_hidden_from_env(text: str, defaults: dict[str, int] | None = None,
                          name: str = "OMNIFAST_CPU_SAVE_HIDDEN") -> dict[str, int]:
    """``OMNIFAST_CPU_SAVE_HIDDEN``: one number for both precisions, or ``fp32=K,bf16=K``."""
    out = dict(CPU_SAVE_HIDDEN if defaults is None else defaults)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, val = part.rpartition("=")
        keys = [key] if key else list(out)
        if any(k not in out for k in keys) or not val.isdigit():
            raise ValueError(f"{name}: expected K or fp32=K,bf16=K, got {text!r}")
        out.update(dict.fromkeys(keys, int(val)))
    return out


if os.environ.get("OMNIFAST_CPU_SAVE_HIDDEN"):
    CPU_SAVE_HIDDEN = _save_hidden_from_env(os.environ["OMNIFAST_CPU_SAVE_HIDDEN"])
if os.environ.get("OMNIFAST_CPU_AFFINE_SAVE_HIDDEN"):
    CPU_AFFINE_SAVE_HIDDEN = _save_hidden_from_env(
        os.environ["OMNIFAST_CPU_AFFINE_SAVE_HIDDEN"], CPU_AFFINE_SAVE_HIDDEN,
        "OMNIFAST_CPU_AFFINE_SAVE_HIDDEN")


def frame_bias(codes: torch.Tensor, params: CouplingParams) -> torch.Tensor:
    """The hoisted code term of every layer's first linear, per frame.

    Args:
        codes: per-frame, per-layer projected codes. [F, L, C]
        params: the stacked layer weights.

    Returns:
        ``w_in[l, :, :C] @ codes[f, l] + b_in[l]``. [F, L, H]
    """
    C = params.code_dim
    w_code = params.w_in[:, :, :C].to(codes.dtype)
    return torch.einsum("lhc,flc->flh", w_code, codes) + params.b_in.to(codes.dtype)


def _stacked(params: CouplingParams, dtype: torch.dtype) -> list[torch.Tensor]:
    """The kernel's weight layout: [proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out]."""
    C = params.code_dim
    L, H = params.w_in.shape[:2]
    if params.w_hidden:
        w_hid = torch.stack(tuple(params.w_hidden))
        b_hid = torch.stack(tuple(params.b_hidden))
    else:
        w_hid = params.w_in.new_zeros(0, L, H, H)
        b_hid = params.w_in.new_zeros(0, L, H)
    ws = [params.proj_w, params.proj_b, params.w_in[:, :, C:], w_hid, b_hid, params.w_out,
          params.b_out]
    return [w.to(dtype).contiguous() for w in ws]


class CouplingStackFunction(torch.autograd.Function):
    """Autograd wrapper of the fused CPU coupling stack.

    Saves the ``[L, M, 3]`` layer inputs and, if ``save_hidden`` > 0, the top ``save_hidden``
    hidden activations of every layer ``[L, save_hidden, M, H]`` (bf16 in the bf16 mode).
    """

    @staticmethod
    def forward(ctx, x, frame_idx, fbias, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out,
                coords, n_freq, inverse, bf16, tile, save_hidden):
        ext = load_extension()
        save = any(ctx.needs_input_grad[i] for i in (0, 2, 3, 4, 5, 6, 7, 8, 9))
        y, saved, acts = ext.coupling_stack_fwd(x, frame_idx, fbias, proj_w, proj_b, w_in_h,
                                                w_hid, b_hid, w_out, b_out, list(coords), n_freq,
                                                inverse, save, save_hidden, bf16, tile)
        ctx.save_for_backward(saved, acts, frame_idx, fbias, proj_w, proj_b, w_in_h, w_hid,
                              b_hid, w_out, b_out)
        ctx.cfg = (list(coords), n_freq, inverse, bf16, tile)
        return y

    @staticmethod
    def backward(ctx, dy):
        saved, acts, frame_idx, *ws = ctx.saved_tensors
        coords, n_freq, inverse, bf16, tile = ctx.cfg
        grads = load_extension().coupling_stack_bwd(dy.contiguous(), saved, acts, frame_idx,
                                                    *ws, coords, n_freq, inverse, bf16, tile)
        dx, dfb, dproj_w, dproj_b, dw_in_h, dw_hid, db_hid, dw_out, db_out = grads
        return (dx, None, dfb, dproj_w, dproj_b, dw_in_h, dw_hid, db_hid, dw_out, db_out,
                None, None, None, None, None, None)


def _supports_cpu(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in (torch.float32, torch.float64):
        return f"the fused CPU coupling stack runs float32/float64 points, got {dtype}"
    ext = load_extension()
    if ext is not None and not hasattr(ext, "coupling_stack_fwd"):
        return "omnifast._C was built without the coupling-stack kernels; rebuild it (make ext)"
    return None


@register("coupling_stack", "cpu", supports=_supports_cpu)
def coupling_stack_cpu(x: torch.Tensor, frame_idx: torch.Tensor, codes: torch.Tensor,
                       params: CouplingParams, coords: tuple[int, ...], n_freq: int,
                       inverse: bool = False) -> torch.Tensor:
    """The fused C++ coupling stack (same contract as :func:`coupling_stack_ref`).

    The matmul precision follows :func:`omnifast.get_matmul_precision`: ``"bf16"`` runs the
    products on bf16 operands with fp32 accumulation (float32 points only); ``"tf32"`` is fp32
    on the CPU.
    """
    L = params.num_layers
    if len(coords) != L:
        raise ValueError(f"coords has {len(coords)} entries for {L} layers")
    bf16 = get_matmul_precision() == "bf16" and x.dtype == torch.float32
    fb = frame_bias(codes.to(x.dtype), params).to(x.dtype).contiguous()
    ws = _stacked(params, x.dtype)
    keep = min(int(CPU_SAVE_HIDDEN["bf16" if bf16 else "fp32"]), len(params.w_hidden) + 1)
    return CouplingStackFunction.apply(x.contiguous(), frame_idx.to(torch.int64).contiguous(),
                                       fb, *ws, tuple(int(c) for c in coords), int(n_freq),
                                       bool(inverse), bf16, CPU_TILE, max(keep, 0))


class AffineFunction(torch.autograd.Function):
    """Autograd wrapper of the fused CPU affine pre-layer.

    Saves x and t (the backward recomputes the MLP from them) and, if ``save_hidden`` > 0, the
    top ``save_hidden`` hidden activations ``[save_hidden, M, H]`` (bf16 in the bf16 mode).
    """

    @staticmethod
    def forward(ctx, x, t, w0, b0, w_hid, b_hid, w_out, b_out, n_freq, inverse, bf16, tile,
                save_hidden):
        save = any(ctx.needs_input_grad[:8])
        y, acts = load_extension().affine_fwd(x, t, w0, b0, w_hid, b_hid, w_out, b_out, n_freq,
                                              inverse, save_hidden if save else 0, bf16, tile)
        ctx.save_for_backward(x, t, acts, w0, b0, w_hid, b_hid, w_out, b_out)
        ctx.cfg = (n_freq, inverse, bf16, tile)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, t, acts, *ws = ctx.saved_tensors
        n_freq, inverse, bf16, tile = ctx.cfg
        grads = load_extension().affine_bwd(dy.contiguous(), x, t, acts, *ws, n_freq, inverse,
                                            bf16, tile)
        return (*grads, None, None, None, None, None)


def _supports_cpu_affine(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in (torch.float32, torch.float64):
        return f"the fused CPU affine pre-layer runs float32/float64 points, got {dtype}"
    ext = load_extension()
    if ext is not None and not hasattr(ext, "affine_fwd"):
        return "omnifast._C was built without the affine pre-layer kernels; rebuild it (make ext)"
    return None


@register("affine", "cpu", supports=_supports_cpu_affine)
def affine_cpu(x: torch.Tensor, t: torch.Tensor, weights: list[torch.Tensor],
               biases: list[torch.Tensor], n_freq: int, inverse: bool = False) -> torch.Tensor:
    """The fused C++ affine pre-layer (same contract as :func:`affine_ref`).

    The matmul precision follows :func:`omnifast.get_matmul_precision` as for
    :func:`coupling_stack_cpu`. The hidden layers' weights are stacked into one ``[NH, H, H]``
    tensor per call (autograd carries the gradients back to each layer).
    """
    if len(weights) < 2 or len(weights) != len(biases):
        raise ValueError(f"affine: need at least 2 layers and one bias per weight, got "
                         f"{len(weights)} weights and {len(biases)} biases")
    dt = x.dtype
    H = weights[0].shape[0]
    if len(weights) > 2:
        w_hid = torch.stack([w.to(dt) for w in weights[1:-1]])
        b_hid = torch.stack([b.to(dt) for b in biases[1:-1]])
    else:
        w_hid, b_hid = x.new_zeros(0, H, H), x.new_zeros(0, H)
    bf16 = get_matmul_precision() == "bf16" and dt == torch.float32
    keep = min(int(CPU_AFFINE_SAVE_HIDDEN["bf16" if bf16 else "fp32"]), len(weights) - 1)
    ws = [weights[0], biases[0], w_hid, b_hid, weights[-1], biases[-1]]
    return AffineFunction.apply(x.contiguous(), t.to(dt).contiguous(),
                                *[w.to(dt).contiguous() for w in ws], int(n_freq),
                                bool(inverse), bf16, CPU_TILE, max(keep, 0))


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
    _, fn = resolve("coupling_stack", x.device, x.dtype, _coupling_shapes(params))
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
    shapes = dict(n_layers=len(weights), H=weights[0].shape[0] if weights else 0,
                  n_freq=int(n_freq))
    _, fn = resolve("affine", x.device, x.dtype, shapes)
    return fn(x, t, weights, biases, n_freq, inverse)


def _coupling_shapes(params: CouplingParams) -> dict:
    """The sizes the backends' ``supports`` hooks look at."""
    L, P, E = params.proj_w.shape
    return dict(L=L, E=E, P=P, H=params.w_in.shape[1], n_hidden=len(params.w_hidden))


def _supports_triton(device: torch.device, dtype: torch.dtype, shapes: dict) -> str | None:
    if dtype != torch.float32:
        return f"the Triton coupling stack runs float32 points, got {dtype}"
    if shapes:
        from omnifast.kernels.bijection import unsupported_reason  # noqa: PLC0415

        return unsupported_reason(shapes["L"], shapes["E"], shapes["P"], shapes["H"],
                                  shapes["n_hidden"])
    return None


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


@register("coupling_stack", "triton", supports=_supports_triton, auto=auto_precision_reason)
def coupling_stack_triton(x: torch.Tensor, frame_idx: torch.Tensor, codes: torch.Tensor,
                          params: CouplingParams, coords: tuple[int, ...], n_freq: int,
                          inverse: bool = False) -> torch.Tensor:
    """The Triton coupling stack on tensor cores (same contract as :func:`coupling_stack_ref`).

    Runs the custom op ``omnifast::coupling_stack_fwd`` (backward ``omnifast::coupling_stack_bwd``)
    at the active matmul precision: ``"fp32"`` exact fp32 products ("ieee"), ``"tf32"`` TF32
    and ``"bf16"`` bf16 operands (fp32 accumulation; activations kept in bf16). The widths must
    pass :func:`omnifast.kernels.bijection.unsupported_reason`; the dispatch checks that before
    choosing this backend.
    """
    from omnifast.ops.triton_mlp import coupling_stack_fwd_op  # noqa: PLC0415

    L = params.num_layers
    if len(coords) != L:
        raise ValueError(f"coords has {len(coords)} entries for {L} layers")
    fb = frame_bias(codes.to(x.dtype), params).to(x.dtype).contiguous()
    ws = _stacked(params, x.dtype)
    save = _needs_grad(x, fb, *ws)
    y, *_ = coupling_stack_fwd_op(x.contiguous(), frame_idx.to(torch.int64).contiguous(), fb,
                                  *ws, [int(c) for c in coords], int(n_freq), bool(inverse),
                                  get_matmul_precision(), save)
    return y


def _supports_triton_affine(device: torch.device, dtype: torch.dtype, shapes: dict
                            ) -> str | None:
    if dtype != torch.float32:
        return f"the Triton affine pre-layer runs float32 points, got {dtype}"
    if shapes:
        from omnifast.kernels.affine import unsupported_reason  # noqa: PLC0415

        return unsupported_reason(shapes["n_layers"], shapes["H"], shapes["n_freq"])
    return None


@register("affine", "triton", supports=_supports_triton_affine,
          auto=auto_precision_reason)
def affine_triton(x: torch.Tensor, t: torch.Tensor, weights: list[torch.Tensor],
                  biases: list[torch.Tensor], n_freq: int, inverse: bool = False) -> torch.Tensor:
    """The Triton affine pre-layer on tensor cores (same contract as :func:`affine_ref`).

    Runs the custom op ``omnifast::affine_fwd`` (backward ``omnifast::affine_bwd``) at the
    active matmul precision, as :func:`coupling_stack_triton`.
    """
    from omnifast.ops.triton_mlp import affine_fwd_op  # noqa: PLC0415

    if len(weights) < 3 or len(weights) != len(biases):
        raise ValueError(f"affine: the Triton kernels need at least 3 layers and one bias per "
                         f"weight, got {len(weights)} weights and {len(biases)} biases")
    dt = torch.float32
    w_hid = torch.stack([w.to(dt) for w in weights[1:-1]])
    b_hid = torch.stack([b.to(dt) for b in biases[1:-1]])
    ws = [w.to(dt).contiguous() for w in (weights[0], biases[0], w_hid, b_hid, weights[-1],
                                          biases[-1])]
    tt = t.to(dt).contiguous()
    save = _needs_grad(x, tt, *ws)
    y, _, _ = affine_fwd_op(x.contiguous(), tt, *ws, int(n_freq), bool(inverse),
                            get_matmul_precision(), save)
    return y
