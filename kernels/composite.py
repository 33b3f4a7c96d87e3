"""Triton kernels of ``composite``: transmittance-weighted compositing along rays.

One program handles ``BLOCK_R`` rays with all their samples (``BLOCK_K`` >= K, a power of two)
and channels (``BLOCK_C`` >= C). Per ray, with keep_k = 0 for the first ``NUM_NEAR`` samples:

    alpha_k = (1 - exp(-sigma_k)) * keep_k,     f_k = (1 - alpha_k) + 1e-10
    T_k = prod_{j<k} f_j  (tl.cumprod of the factors shifted by one sample)
    w_k = alpha_k T_k,    out_c = sum_k w_k m_kc v_kc   (m_kc = value_mask_k for c >= MASK_FROM)

Backward, with g_k = dL/dw_k + sum_c dL/dout_c m_kc v_kc and S_k = sum_{j>k} g_j w_j (a
reverse tl.cumsum of the products shifted by one sample, so no total is ever subtracted):

    dv_kc = w_k m_kc dL/dout_c,    dsigma_k = (g_k T_k - S_k / f_k) exp(-sigma_k) keep_k

which is the reference's own formula (torch's cumprod backward divides by f_k too).
Shifted quantities are recomputed from shifted loads instead of being moved between lanes.

The launchers take contiguous flattened tensors: sigma [R, K], values [R, K, C], float32.
Under ``TRITON_INTERPRET=1`` they launch few, large programs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from omnifast.kernels._env import triton_interpret

_EPS = 1e-10


@triton.jit
def _alpha(S_ptr, rows2, ks2, K, NUM_NEAR, valid):
    """alpha and exp(-sigma) at samples ks2 of rows2 (0 where not valid)."""
    s = tl.load(S_ptr + rows2 * K + ks2, mask=valid, other=0.0)
    e = tl.exp(-s)
    keep = tl.where(ks2 >= NUM_NEAR, 1.0, 0.0)
    a = (1.0 - e) * keep
    return a, e, keep


@triton.jit
def _weights(S_ptr, rows2, ks2, K, NUM_NEAR, valid):
    """w, alpha, exp(-sigma), keep and the exclusive transmittance T of each sample."""
    a, e, keep = _alpha(S_ptr, rows2, ks2, K, NUM_NEAR, valid)
    a_prev, _, _ = _alpha(S_ptr, rows2, ks2 - 1, K, NUM_NEAR, valid & (ks2 >= 1))
    f_prev = tl.where(ks2 >= 1, (1.0 - a_prev) + 1e-10, 1.0)
    T = tl.cumprod(f_prev, axis=1)
    return a * T, a, e, keep, T


@triton.jit
def _composite_fwd_kernel(S_ptr, V_ptr, M_ptr, O_ptr, W_ptr, R, K, C, MASK_FROM, NUM_NEAR,
                          HAS_MASK: tl.constexpr, NEED_W: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    """out [R, C] = sum_k w_k m_kc v_kc; optionally weights [R, K]."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    cs = tl.arange(0, BLOCK_C)
    rows2, ks2 = rows[:, None], ks[None, :]
    valid = (rows2 < R) & (ks2 < K)
    w, a, e, keep, T = _weights(S_ptr, rows2, ks2, K, NUM_NEAR, valid)
    if NEED_W:
        tl.store(W_ptr + rows2 * K + ks2, w, mask=valid)
    rows3, ks3, cs3 = rows[:, None, None], ks[None, :, None], cs[None, None, :]
    valid3 = valid[:, :, None] & (cs3 < C)
    v = tl.load(V_ptr + (rows3 * K + ks3) * C + cs3, mask=valid3, other=0.0)
    w3 = w[:, :, None]
    if HAS_MASK:
        m = tl.load(M_ptr + rows2 * K + ks2, mask=valid, other=0.0)
        w3 = tl.where(cs3 >= MASK_FROM, w3 * m[:, :, None], w3)
    out = tl.sum(w3 * v, axis=1)
    rows_o = rows[:, None]
    tl.store(O_ptr + rows_o * C + cs[None, :], out, mask=(rows_o < R) & (cs[None, :] < C))


@triton.jit
def _dw_total(V_ptr, M_ptr, GO_ptr, GW_ptr, rows, ks, cs, K, C, MASK_FROM, valid,
              HAS_MASK: tl.constexpr, HAS_GW: tl.constexpr):
    """g_k = dL/dw_k + sum_c dL/dout_c m_kc v_kc, and the per-channel mask factor m_kc."""
    rows2, ks2 = rows[:, None], ks[None, :]
    rows3, ks3, cs3 = rows[:, None, None], ks[None, :, None], cs[None, None, :]
    valid3 = valid[:, :, None] & (cs3 < C)
    v = tl.load(V_ptr + (rows3 * K + ks3) * C + cs3, mask=valid3, other=0.0)
    go = tl.load(GO_ptr + rows3 * C + cs3, mask=valid3, other=0.0)
    mm = tl.full(v.shape, 1.0, tl.float32)
    if HAS_MASK:
        m = tl.load(M_ptr + rows2 * K + ks2, mask=valid, other=0.0)
        mm = tl.where(cs3 >= MASK_FROM, m[:, :, None], mm)
    g = tl.sum(go * mm * v, axis=2)
    if HAS_GW:
        g += tl.load(GW_ptr + rows2 * K + ks2, mask=valid, other=0.0)
    return g, mm, go


@triton.jit
def _composite_bwd_kernel(S_ptr, V_ptr, M_ptr, GO_ptr, GW_ptr, DS_ptr, DV_ptr, R, K, C,
                          MASK_FROM, NUM_NEAR, HAS_MASK: tl.constexpr, HAS_GW: tl.constexpr,
                          NEED_DS: tl.constexpr, NEED_DV: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    """dsigma [R, K] and dvalues [R, K, C] from dout [R, C] and dweights [R, K]."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    cs = tl.arange(0, BLOCK_C)
    rows2, ks2 = rows[:, None], ks[None, :]
    valid = (rows2 < R) & (ks2 < K)
    w, a, e, keep, T = _weights(S_ptr, rows2, ks2, K, NUM_NEAR, valid)
    g, mm, go = _dw_total(V_ptr, M_ptr, GO_ptr, GW_ptr, rows, ks, cs, K, C, MASK_FROM, valid,
                          HAS_MASK, HAS_GW)
    if NEED_DV:
        rows3, ks3, cs3 = rows[:, None, None], ks[None, :, None], cs[None, None, :]
        valid3 = valid[:, :, None] & (cs3 < C)
        dv = w[:, :, None] * mm * go
        tl.store(DV_ptr + (rows3 * K + ks3) * C + cs3, dv, mask=valid3)
    if NEED_DS:
        # the next sample's g_{k+1} w_{k+1}, recomputed from shifted loads
        valid_n = (rows2 < R) & (ks2 + 1 < K)
        a_n, _, _ = _alpha(S_ptr, rows2, ks2 + 1, K, NUM_NEAR, valid_n)
        f = (1.0 - a) + 1e-10
        w_n = a_n * (T * f)
        g_n, _, _ = _dw_total(V_ptr, M_ptr, GO_ptr, GW_ptr, rows, ks + 1, cs, K, C, MASK_FROM,
                              valid_n, HAS_MASK, HAS_GW)
        S = tl.cumsum(tl.where(valid_n, g_n * w_n, 0.0), axis=1, reverse=True)
        ds = (g * T - S / f) * e * keep
        tl.store(DS_ptr + rows2 * K + ks2, ds, mask=valid)


@triton.jit
def _composite_argmax_kernel(S_ptr, I_ptr, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """index [R] = argmax_k w_k (first on ties; a NaN weight counts as the maximum)."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    rows2, ks2 = rows[:, None], ks[None, :]
    valid = (rows2 < R) & (ks2 < K)
    w, _, _, _, _ = _weights(S_ptr, rows2, ks2, K, 0, valid)
    is_nan = (w != w) & valid
    first_nan = tl.min(tl.where(is_nan, ks2, BLOCK_K), axis=1)
    w_max = tl.max(tl.where(valid & ~is_nan, w, -float("inf")), axis=1)
    first_max = tl.min(tl.where(valid & (w == w_max[:, None]), ks2, BLOCK_K), axis=1)
    idx = tl.where(first_nan < BLOCK_K, first_nan, first_max)
    tl.store(I_ptr + rows, idx.to(tl.int64), mask=rows < R)


@triton.jit
def _occlusion_score_kernel(S_ptr, D_ptr, L_ptr, O_ptr, R, K, BLOCK_R: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    """score [R] = sum_k w_k [depths_k < depth_limit]."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    rows2, ks2 = rows[:, None], ks[None, :]
    valid = (rows2 < R) & (ks2 < K)
    w, _, _, _, _ = _weights(S_ptr, rows2, ks2, K, 0, valid)
    d = tl.load(D_ptr + rows2 * K + ks2, mask=valid, other=0.0)
    lim = tl.load(L_ptr + rows, mask=rows < R, other=0.0)
    in_front = tl.where(d < lim[:, None], 1.0, 0.0)
    score = tl.sum(tl.where(valid, w * in_front, 0.0), axis=1)
    tl.store(O_ptr + rows, score, mask=rows < R)


# --------------------------------------------------------------------------- launchers
def _blocks(K: int, C: int, per_program: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_K, BLOCK_C): about ``per_program`` elements of the [R, K, C] tile per
    program on a GPU, 65,536 under the interpreter (few, large programs)."""
    block_k = triton.next_power_of_2(max(K, 1))
    block_c = triton.next_power_of_2(max(C, 1))
    budget = (1 << 16) if triton_interpret() else per_program
    rays = max(1, min(1024, budget // (block_k * block_c)))
    return 1 << (rays.bit_length() - 1), block_k, block_c


def _check(sigma: torch.Tensor, values: torch.Tensor | None = None) -> None:
    if sigma.dtype != torch.float32:
        raise TypeError(f"Triton composite kernels take float32, got {sigma.dtype}")
    if sigma.dim() != 2 or not sigma.is_contiguous():
        raise ValueError(f"sigma must be a contiguous [R, K] tensor, got {tuple(sigma.shape)}")
    if values is not None and (values.dim() != 3 or values.shape[:2] != sigma.shape
                               or not values.is_contiguous() or values.dtype != sigma.dtype):
        raise ValueError(f"values must be a contiguous float32 [R, K, C] tensor matching sigma "
                         f"{tuple(sigma.shape)}, got {tuple(values.shape)} {values.dtype}")


def composite_fwd(sigma: torch.Tensor, values: torch.Tensor, value_mask: torch.Tensor | None,
                  value_mask_from: int, num_masked_near: int, need_weights: bool):
    """Forward launcher. sigma [R, K], values [R, K, C], value_mask [R, K] or None.

    Returns:
        ``(out [R, C], weights [R, K] or None)``.
    """
    _check(sigma, values)
    R, K = sigma.shape
    C = values.shape[2]
    out = torch.empty(R, C, device=sigma.device, dtype=sigma.dtype)
    weights = torch.empty_like(sigma) if need_weights else None
    if R == 0 or K == 0:
        out.zero_()
        return out, weights
    block_r, block_k, block_c = _blocks(K, C, 4096)
    grid = (triton.cdiv(R, block_r),)
    _composite_fwd_kernel[grid](
        sigma, values, value_mask if value_mask is not None else sigma, out,
        weights if need_weights else sigma, R, K, C, value_mask_from, num_masked_near,
        HAS_MASK=value_mask is not None, NEED_W=need_weights, BLOCK_R=block_r, BLOCK_K=block_k,
        BLOCK_C=block_c, num_warps=4)
    return out, weights


def composite_bwd(sigma: torch.Tensor, values: torch.Tensor, value_mask: torch.Tensor | None,
                  dout: torch.Tensor, dweights: torch.Tensor | None, value_mask_from: int,
                  num_masked_near: int, need_dsigma: bool, need_dvalues: bool):
    """Backward launcher. dout [R, C], dweights [R, K] or None.

    Returns:
        ``(dsigma [R, K] or None, dvalues [R, K, C] or None)``.
    """
    _check(sigma, values)
    R, K = sigma.shape
    C = values.shape[2]
    dsigma = torch.empty_like(sigma) if need_dsigma else None
    dvalues = torch.empty_like(values) if need_dvalues else None
    if R == 0 or K == 0 or not (need_dsigma or need_dvalues):
        return dsigma, dvalues
    block_r, block_k, block_c = _blocks(K, C, 2048)
    grid = (triton.cdiv(R, block_r),)
    _composite_bwd_kernel[grid](
        sigma, values, value_mask if value_mask is not None else sigma, dout.contiguous(),
        dweights if dweights is not None else sigma, dsigma if need_dsigma else sigma,
        dvalues if need_dvalues else values, R, K, C, value_mask_from, num_masked_near,
        HAS_MASK=value_mask is not None, HAS_GW=dweights is not None, NEED_DS=need_dsigma,
        NEED_DV=need_dvalues, BLOCK_R=block_r, BLOCK_K=block_k, BLOCK_C=block_c, num_warps=4)
    return dsigma, dvalues


def composite_argmax(sigma: torch.Tensor) -> torch.Tensor:
    """argmax_k of the weights. sigma [R, K] -> [R] int64."""
    _check(sigma)
    R, K = sigma.shape
    index = torch.empty(R, device=sigma.device, dtype=torch.int64)
    if R == 0:
        return index
    block_r, block_k, _ = _blocks(K, 1, 4096)
    _composite_argmax_kernel[(triton.cdiv(R, block_r),)](sigma, index, R, K, BLOCK_R=block_r,
                                                         BLOCK_K=block_k, num_warps=4)
    return index


def occlusion_score(sigma: torch.Tensor, depths: torch.Tensor,
                    depth_limit: torch.Tensor) -> torch.Tensor:
    """sum_k w_k [depths_k < depth_limit]. sigma, depths [R, K], depth_limit [R] -> [R]."""
    _check(sigma)
    R, K = sigma.shape
    score = torch.zeros(R, device=sigma.device, dtype=sigma.dtype)
    if R == 0 or K == 0:
        return score
    block_r, block_k, _ = _blocks(K, 1, 4096)
    _occlusion_score_kernel[(triton.cdiv(R, block_r),)](
        sigma, depths.contiguous(), depth_limit.contiguous(), score, R, K, BLOCK_R=block_r,
        BLOCK_K=block_k, num_warps=4)
    return score


def sm90_specs():
    """The compiles ``make check-sm90`` checks: the launch configurations of the launchers above
    (``_blocks``) for OmniMotion's shapes: K = 32 (omnimotion preset) and 16 (cpu preset), C = 7
    (colour, mapped point, depth), with and without the value mask, weights and gradients on."""
    from omnifast.kernels._aot import AOTSpec  # noqa: PLC0415

    f = "*fp32"
    common = {"R": "i32", "K": "i32", "C": "i32", "MASK_FROM": "i32", "NUM_NEAR": "i32"}
    fwd_sig = dict(S_ptr=f, V_ptr=f, M_ptr=f, O_ptr=f, W_ptr=f, **common)
    bwd_sig = dict(S_ptr=f, V_ptr=f, M_ptr=f, GO_ptr=f, GW_ptr=f, DS_ptr=f, DV_ptr=f, **common)
    specs = []
    for K in (32, 16):
        for has_mask in (False, True):
            br, bk, bc = 4096 // (K * 8), K, 8
            specs.append(AOTSpec(
                f"composite_fwd[K{K},C7,mask={int(has_mask)}]", _composite_fwd_kernel, fwd_sig,
                dict(HAS_MASK=has_mask, NEED_W=True, BLOCK_R=br, BLOCK_K=bk, BLOCK_C=bc)))
            specs.append(AOTSpec(
                f"composite_bwd[K{K},C7,mask={int(has_mask)}]", _composite_bwd_kernel, bwd_sig,
                dict(HAS_MASK=has_mask, HAS_GW=True, NEED_DS=True, NEED_DV=True,
                     BLOCK_R=2048 // (K * 8), BLOCK_K=bk, BLOCK_C=bc)))
        specs.append(AOTSpec(f"composite_argmax[K{K}]", _composite_argmax_kernel,
                             dict(S_ptr=f, I_ptr="*i64", R="i32", K="i32"),
                             dict(BLOCK_R=4096 // K, BLOCK_K=K)))
        specs.append(AOTSpec(f"occlusion_score[K{K}]", _occlusion_score_kernel,
                             dict(S_ptr=f, D_ptr=f, L_ptr=f, O_ptr=f, R="i32", K="i32"),
                             dict(BLOCK_R=4096 // K, BLOCK_K=K)))
    return specs
