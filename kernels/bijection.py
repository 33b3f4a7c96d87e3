"""Triton kernels of the affine coupling stack (OmniMotion's invertible map), at any width that
is a multiple of 16 up to 512, on tensor cores.

Per layer l, transforming coordinate s = coords[l] conditioned on (u_a, u_b):

    pe  = [u_a, u_b, sin(w u_a), cos(w u_a), sin(w u_b), cos(w u_b)]   (w = pi 2^k, padded to
                                                                         E_PAD columns)
    h   = leaky(pe @ proj_w[l]^T + proj_b[l])
    z_0 = leaky(h @ w_in_h[l]^T + frame_bias[frame, l])     (hoisted code term, spec 6.5)
    z_k = leaky(z_{k-1} @ w_hid[k-1, l]^T + b_hid[k-1, l])     k = 1..NH
    (s, t) = z_NH @ w_out[l]^T + b_out[l],  s <- clamp(s, -8, 8)
    forward: x_s <- (x_s - t) exp(-s);  inverse: x_s <- x_s exp(s) + t

Built from the GEMM-chain block of :mod:`omnifast.kernels.mlp`, four kernels per layer forward:

* :func:`_coupling_in_fwd_kernel`: z_0, with the encoding and its projection h computed K slice
  by K slice in the GEMM's prologue (h never goes to memory except as the saved activation);
  the per-frame bias and leaky ReLU in the epilogue;
* the generic :func:`~omnifast.kernels.mlp._linear_fwd_kernel` for z_1 .. z_{NH-1};
* :func:`_coupling_out_fwd_kernel`: z_NH, with the (s, t) head, the clamp and the coupling update
  (forward or inverse) in its epilogue; it reads and writes the points.

Backward (layers in reverse order of application) from the saved layer inputs ``[L, M, 3]``,
(s_raw, t) ``[L, M, 2]``, h ``[L, M, P]`` and z_0..z_NH ``[L, NH + 1, M, H]`` (bf16 in the bf16
mode): :func:`_coupling_head_bwd_kernel` (coupling update and head), the generic input-gradient
GEMMs with leaky ReLU derivatives, :func:`_coupling_pe_bwd_kernel` (projection and encoding, into
the point gradient), the generic weight-gradient GEMMs over points and the per-frame segmented
sum of dz_0 for the frame bias. Everything is deterministic.

Requirements (``unsupported_reason``): P and H multiples of 16 up to 512, at least one extra
hidden layer (NH >= 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from omnifast.kernels._env import triton_interpret
from omnifast.kernels.mlp import (
    ACT_LEAKY,
    DOT_CODE,
    GPU_BLOCK_M,
    NUM_WARPS,
    _act_grad,
    _dot,
    _gemm,
    _store,
    act_dtype,
    block_k,
    block_m,
    block_n,
    linear_dw,
    linear_dx,
    linear_fwd,
    num_stages,
    segment_sum,
    segments,
)

S_CLAMP = 8.0
MAX_WIDTH = 512


@triton.jit
def _leaky(v):
    return tl.where(v > 0, v, v * 0.01)


@triton.jit
def _encoding(ua, ub, NF: tl.constexpr, E: tl.constexpr, E_PAD: tl.constexpr):
    """pe [BLOCK_M, E_PAD] and its derivative columns; is_a marks the u_a columns."""
    c = tl.arange(0, E_PAD)[None, :]
    is_a = (c == 0) | ((c >= 2) & (c < 2 + 2 * NF))
    u = tl.where(is_a, ua[:, None], ub[:, None])
    k = (c + 4 * NF - 2) % NF
    freq = 3.141592653589793 * tl.exp2(k.to(tl.float32))
    is_cos = (((c + 4 * NF - 2) // NF) % 2) == 1
    arg = u * freq
    sn = tl.sin(arg)
    cs = tl.cos(arg)
    pe = tl.where(c < 2, u, tl.where(is_cos, cs, sn))
    pe = tl.where(c < E, pe, 0.0)
    dpe = tl.where(c < 2, 1.0, tl.where(is_cos, -freq * sn, freq * cs))
    dpe = tl.where(c < E, dpe, 0.0)
    return pe, dpe, is_a


@triton.jit
def _conditioning(X_ptr, rows, rmask, sidx):
    """x0, x1, x2, u_a, u_b (the two unchanged coordinates, increasing index) and x_s."""
    x0 = tl.load(X_ptr + rows * 3 + 0, mask=rmask, other=0.0)
    x1 = tl.load(X_ptr + rows * 3 + 1, mask=rmask, other=0.0)
    x2 = tl.load(X_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    ua = tl.where(sidx == 0, x1, x0)
    ub = tl.where(sidx == 2, x1, x2)
    xs = tl.where(sidx == 0, x0, tl.where(sidx == 1, x1, x2))
    return x0, x1, x2, ua, ub, xs


@triton.jit
def _coupling_in_fwd_kernel(X_ptr, FIDX_ptr, PW_ptr, PB_ptr, WI_ptr, FB_ptr, Z_ptr, H_ptr, M, P,
                            H, ldz, ldh, ldfb, sidx, NF: tl.constexpr, E: tl.constexpr,
                            E_PAD: tl.constexpr, SAVE_H: tl.constexpr, BF16_OUT: tl.constexpr,
                            DOT: tl.constexpr, INTERP: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Z [M, H] = leaky(h @ WI [H, P]^T + FB[FIDX]) with h = leaky(pe(X) @ PW [P, E]^T + PB)
    computed per K slice in the prologue; h [M, P] is stored by column tile 0 when SAVE_H.
    Grid (M tiles, H tiles)."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < H
    _, _, _, ua, ub, _ = _conditioning(X_ptr, rows, rmask, sidx)
    pe, _, _ = _encoding(ua, ub, NF, E, E_PAD)
    e_r = tl.arange(0, E_PAD)[:, None]
    ks = tl.arange(0, BLOCK_K)
    hmask = rmask & ((tl.zeros((BLOCK_M,), dtype=tl.int32) + pid_n) == 0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, P, BLOCK_K):
        kk = k0 + ks
        pw_t = tl.load(PW_ptr + kk[None, :] * E + e_r, mask=e_r < E, other=0.0)  # [E_PAD, BK]
        hk = _dot(pe, pw_t, tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32), DOT, INTERP)
        hk = _leaky(hk + tl.load(PB_ptr + kk)[None, :])
        if SAVE_H:
            _store(H_ptr + rows[:, None] * ldh + kk[None, :], hk,
                   hmask[:, None], BF16_OUT, INTERP)
        wi_t = tl.load(WI_ptr + cols[None, :] * P + kk[:, None], mask=cmask[None, :], other=0.0)
        acc = _dot(hk, wi_t, acc, DOT, INTERP)
    f = tl.load(FIDX_ptr + rows, mask=rmask, other=0)
    mask = rmask[:, None] & cmask[None, :]
    acc += tl.load(FB_ptr + f[:, None] * ldfb + cols[None, :], mask=mask, other=0.0)
    _store(Z_ptr + rows[:, None] * ldz + cols[None, :], _leaky(acc), mask, BF16_OUT, INTERP)


@triton.jit
def _coupling_out_fwd_kernel(A_ptr, W_ptr, B_ptr, WO_ptr, BO_ptr, X_ptr, Y_ptr, Z_ptr, ST_ptr, M,
                             H, lda, ldz, sidx, SAVE: tl.constexpr, INVERSE: tl.constexpr,
                             BF16_OUT: tl.constexpr, DOT: tl.constexpr, INTERP: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr):
    """The top hidden layer z = leaky(A [M, H] @ W [H, H]^T + B), the (s, t) head on z, the clamp
    and the coupling update Y [M, 3] <- X [M, 3]; z [M, H] and (s_raw, t) [M, 2] stored when
    SAVE. Grid (M tiles,): each program loops over the H columns in BLOCK_N chunks."""
    pid_m = tl.program_id(0).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    o = tl.arange(0, 16)
    st = tl.zeros((BLOCK_M, 16), dtype=tl.float32)
    for n0 in range(0, H, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < H
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _gemm(acc, A_ptr, lda, 1, rows, rmask, W_ptr, 1, H, cols, cmask, H, BLOCK_K, DOT,
                    INTERP)
        z = _leaky(acc + tl.load(B_ptr + cols, mask=cmask, other=0.0)[None, :])
        if SAVE:
            _store(Z_ptr + rows[:, None] * ldz + cols[None, :], z,
                   rmask[:, None] & cmask[None, :], BF16_OUT, INTERP)
        wo_t = tl.load(WO_ptr + o[None, :] * H + cols[:, None], mask=o[None, :] < 2,
                       other=0.0)  # [BLOCK_N, 16]
        st = _dot(z, wo_t, st, DOT, INTERP)
    s_raw = tl.sum(tl.where(o[None, :] == 0, st, 0.0), axis=1) + tl.load(BO_ptr)
    t = tl.sum(tl.where(o[None, :] == 1, st, 0.0), axis=1) + tl.load(BO_ptr + 1)
    x0, x1, x2, _, _, xs = _conditioning(X_ptr, rows, rmask, sidx)
    s = tl.minimum(tl.maximum(s_raw, -8.0), 8.0)
    if INVERSE:
        new = xs * tl.exp(s) + t
    else:
        new = (xs - t) * tl.exp(-s)
    tl.store(Y_ptr + rows * 3 + 0, tl.where(sidx == 0, new, x0), mask=rmask)
    tl.store(Y_ptr + rows * 3 + 1, tl.where(sidx == 1, new, x1), mask=rmask)
    tl.store(Y_ptr + rows * 3 + 2, tl.where(sidx == 2, new, x2), mask=rmask)
    if SAVE:
        tl.store(ST_ptr + rows * 2, s_raw, mask=rmask)
        tl.store(ST_ptr + rows * 2 + 1, t, mask=rmask)


@triton.jit
def _coupling_head_bwd_kernel(G_ptr, X_ptr, ST_ptr, Z_ptr, WO_ptr, DST_ptr, DA_ptr, M, H, ldz,
                              ldd, sidx, INVERSE: tl.constexpr, BF16_OUT: tl.constexpr,
                              DOT: tl.constexpr, INTERP: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr):
    """Back through the coupling update and the (s, t) head of one layer. G [M, 3] (in place):
    the gradient at the layer's output becomes the direct part of the gradient at its input;
    DST [M, 2] = d(s_raw, t); DA [M, H] = leaky'(z) * (DST @ WO [2, H]). Grid (M tiles,)."""
    pid_m = tl.program_id(0).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    _, _, _, _, _, xs = _conditioning(X_ptr, rows, rmask, sidx)
    s_raw = tl.load(ST_ptr + rows * 2, mask=rmask, other=0.0)
    t = tl.load(ST_ptr + rows * 2 + 1, mask=rmask, other=0.0)
    gy = tl.load(G_ptr + rows * 3 + sidx, mask=rmask, other=0.0)
    s = tl.minimum(tl.maximum(s_raw, -8.0), 8.0)
    if INVERSE:
        e = tl.exp(s)
        gx = gy * e
        dt = gy
        ds = gy * xs * e
    else:
        e = tl.exp(-s)
        gx = gy * e
        dt = -gy * e
        ds = -gy * ((xs - t) * e)
    ds = tl.where((s_raw >= -8.0) & (s_raw <= 8.0), ds, 0.0)
    tl.store(G_ptr + rows * 3 + sidx, gx, mask=rmask)
    tl.store(DST_ptr + rows * 2, ds, mask=rmask)
    tl.store(DST_ptr + rows * 2 + 1, dt, mask=rmask)
    o = tl.arange(0, 16)
    dst = tl.where(o[None, :] == 0, ds[:, None], tl.where(o[None, :] == 1, dt[:, None], 0.0))
    for n0 in range(0, H, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < H
        mask = rmask[:, None] & cmask[None, :]
        wo = tl.load(WO_ptr + o[:, None] * H + cols[None, :],
                     mask=(o[:, None] < 2) & cmask[None, :], other=0.0)  # [16, BLOCK_N]
        da = _dot(dst, wo, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT, INTERP)
        z = tl.load(Z_ptr + rows[:, None] * ldz + cols[None, :], mask=mask, other=0.0)
        _store(DA_ptr + rows[:, None] * ldd + cols[None, :], _act_grad(da, z.to(tl.float32), 1),
               mask, BF16_OUT, INTERP)


@triton.jit
def _coupling_pe_bwd_kernel(DH_ptr, PW_ptr, X_ptr, G_ptr, PE_ptr, M, P, ldd, sidx,
                            NF: tl.constexpr, E: tl.constexpr, E_PAD: tl.constexpr,
                            DOT: tl.constexpr, INTERP: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    """dpe = DH [M, P] @ PW [P, E], chained through the encoding into the two conditioning
    coordinates' gradient G [M, 3] (added in place); PE [M, E_PAD] (fp32) gets the encoding for
    the projection's weight gradient. Grid (M tiles,)."""
    pid_m = tl.program_id(0).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    _, _, _, ua, ub, _ = _conditioning(X_ptr, rows, rmask, sidx)
    pe, dpe_du, is_a = _encoding(ua, ub, NF, E, E_PAD)
    e_c = tl.arange(0, E_PAD)
    tl.store(PE_ptr + rows[:, None] * E_PAD + e_c[None, :], pe, mask=rmask[:, None])
    acc = tl.zeros((BLOCK_M, E_PAD), dtype=tl.float32)
    acc = _gemm(acc, DH_ptr, ldd, 1, rows, rmask, PW_ptr, E, 1, e_c, e_c < E, P, BLOCK_K, DOT,
                INTERP)
    dpe = acc * dpe_du
    ga = tl.sum(tl.where(is_a, dpe, 0.0), axis=1)
    gb = tl.sum(tl.where(is_a, 0.0, dpe), axis=1)
    # u_a is coordinate 1 if s == 0 else 0; u_b is coordinate 1 if s == 2 else 2
    g0 = tl.load(G_ptr + rows * 3 + 0, mask=rmask, other=0.0)
    g1 = tl.load(G_ptr + rows * 3 + 1, mask=rmask, other=0.0)
    g2 = tl.load(G_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    g0 += tl.where(sidx != 0, ga, 0.0)
    g1 += tl.where(sidx == 0, ga, 0.0) + tl.where(sidx == 2, gb, 0.0)
    g2 += tl.where(sidx != 2, gb, 0.0)
    tl.store(G_ptr + rows * 3 + 0, g0, mask=rmask)
    tl.store(G_ptr + rows * 3 + 1, g1, mask=rmask)
    tl.store(G_ptr + rows * 3 + 2, g2, mask=rmask)


# ------------------------------------------------------------------------------------- host side
def unsupported_reason(L: int, E: int, P: int, H: int, n_hidden: int) -> str | None:
    """Why the Triton kernels cannot run these widths (``None`` when they can)."""
    for name, w in (("P", P), ("H", H)):
        if w % 16 or not 16 <= w <= MAX_WIDTH:
            return (f"the Triton coupling stack needs widths that are multiples of 16 up to "
                    f"{MAX_WIDTH}, got {name}={w}")
    if n_hidden < 1:
        return "the Triton coupling stack needs at least one extra hidden layer, got 0"
    if E > 64:
        return f"the Triton coupling stack takes at most 15 encoding frequencies, got E={E}"
    return None


def _e_pad(E: int) -> int:
    return max(16, triton.next_power_of_2(E))


def _head_block_n(H: int, interp: bool | None = None) -> int:
    """Column chunk of the head kernels (the whole row is looped over inside one program)."""
    return block_n(H, interp)


def _matrices(ws: list[torch.Tensor], precision: str) -> list[torch.Tensor]:
    """Weights in the kernels' operand dtype: bf16 copies in the bf16 mode (biases stay fp32)."""
    fb, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out = ws
    if precision == "bf16":
        proj_w, w_in_h, w_hid, w_out = (w.to(torch.bfloat16).contiguous()
                                        for w in (proj_w, w_in_h, w_hid, w_out))
    return [fb, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out]


def coupling_stack_fwd(x: torch.Tensor, frame_idx: torch.Tensor, weights: list[torch.Tensor],
                       coords: list[int], n_freq: int, inverse: bool, precision: str,
                       save: bool) -> tuple[torch.Tensor, ...]:
    """Run the stack forward (or inverse).

    Args:
        x: points, float32 contiguous. [M, 3]
        frame_idx: int64. [M]
        weights: ``[frame_bias [F, L, H], proj_w [L, P, E], proj_b [L, P], w_in_h [L, H, P],
            w_hid [NH, L, H, H], b_hid [NH, L, H], w_out [L, 2, H], b_out [L, 2]]``, float32
            contiguous.
        coords: the coordinate of each layer. length L
        n_freq: encoding frequencies (E = 2 + 4 n_freq).
        inverse: run the inverse map.
        precision: "fp32", "tf32" or "bf16".
        save: keep what the backward needs.

    Returns:
        ``(y [M, 3], xin [L, M, 3], h [L, M, P], z [L, NH + 1, M, H], st [L, M, 2])``, indexed by
        step of application; the last four are empty (0 elements) unless ``save``.
    """
    fb, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out = _matrices(weights, precision)
    L, P, E = proj_w.shape
    H, NH = w_in_h.shape[1], w_hid.shape[0]
    M = x.shape[0]
    dev, adt, dot = x.device, act_dtype(precision), DOT_CODE[precision]
    interp = triton_interpret()
    y = torch.empty_like(x)
    xin = torch.empty(L, M, 3, device=dev, dtype=torch.float32)
    if save:
        h = torch.empty(L, M, P, device=dev, dtype=adt)
        z = torch.empty(L, NH + 1, M, H, device=dev, dtype=adt)
        st = torch.empty(L, M, 2, device=dev, dtype=torch.float32)
    else:
        h = torch.empty(0, device=dev, dtype=adt)
        z = torch.empty(1, NH + 1, M, H, device=dev, dtype=adt)
        st = torch.empty(0, device=dev, dtype=torch.float32)
    if M == 0:
        return y, xin if save else xin[:0], h, z if save else z[:0], st
    xin[0].copy_(x)
    bm = block_m(M)
    grid_m = triton.cdiv(M, bm)
    for step in range(L):
        layer = L - 1 - step if inverse else step
        sidx = int(coords[layer])
        zs = z[step if save else 0]
        bn, bk = block_n(H), block_k(P, dot)
        _coupling_in_fwd_kernel[(grid_m, triton.cdiv(H, bn))](
            xin[step], frame_idx, proj_w[layer], proj_b[layer], w_in_h[layer], fb[:, layer],
            zs[0], h[step] if save else zs[0], M, P, H, zs.stride(1),
            P if save else 0, fb.stride(0), sidx, NF=n_freq, E=E, E_PAD=_e_pad(E),
            SAVE_H=save, BF16_OUT=adt == torch.bfloat16, DOT=dot, INTERP=interp, BLOCK_M=bm,
            BLOCK_N=bn, BLOCK_K=bk, num_warps=NUM_WARPS, num_stages=num_stages(dot))
        for k in range(NH - 1):
            linear_fwd(zs[k], w_hid[k, layer], b_hid[k, layer], ACT_LEAKY, precision,
                       out=zs[k + 1])
        out = y if step == L - 1 else xin[step + 1]
        _coupling_out_fwd_kernel[(grid_m,)](
            zs[NH - 1], w_hid[NH - 1, layer], b_hid[NH - 1, layer], w_out[layer], b_out[layer],
            xin[step], out, zs[NH], st[step] if save else y, M, H, zs.stride(1), zs.stride(1),
            sidx, SAVE=save, INVERSE=bool(inverse), BF16_OUT=adt == torch.bfloat16, DOT=dot,
            INTERP=interp, BLOCK_M=bm, BLOCK_N=_head_block_n(H), BLOCK_K=block_k(H, dot),
            num_warps=NUM_WARPS, num_stages=num_stages(dot))
    if not save:
        return y, xin[:0], h, z[:0], st
    return y, xin, h, z, st


def coupling_stack_bwd(dy: torch.Tensor, xin: torch.Tensor, h: torch.Tensor, z: torch.Tensor,
                       st: torch.Tensor, frame_idx: torch.Tensor, weights: list[torch.Tensor],
                       coords: list[int], n_freq: int, inverse: bool, precision: str
                       ) -> list[torch.Tensor]:
    """The backward of :func:`coupling_stack_fwd` from what it saved.

    Returns:
        ``[dx, dframe_bias, dproj_w, dproj_b, dw_in_h, dw_hid, db_hid, dw_out, db_out]``, fp32.
    """
    fb, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out = _matrices(weights, precision)
    L, P, E = proj_w.shape
    H, NH = w_in_h.shape[1], w_hid.shape[0]
    F = fb.shape[0]
    M = dy.shape[0]
    dev, adt, dot = dy.device, act_dtype(precision), DOT_CODE[precision]
    interp = triton_interpret()
    g = dy.to(torch.float32).contiguous().clone()
    grads = [torch.zeros(w.shape, device=dev, dtype=torch.float32) for w in weights]
    dfb, dpw, dpb, dwi, dwh, dbh, dwo, dbo = grads
    if M == 0:
        return [g, *grads]
    order, offs = segments(frame_idx, F)
    da = torch.empty(NH + 1, M, H, device=dev, dtype=adt)
    dh = torch.empty(M, P, device=dev, dtype=adt)
    E_PAD = _e_pad(E)
    pe = torch.empty(M, E_PAD, device=dev, dtype=torch.float32)
    dst = torch.empty(M, 2, device=dev, dtype=torch.float32)
    bm = block_m(M)
    grid_m = triton.cdiv(M, bm)
    for step in reversed(range(L)):
        layer = L - 1 - step if inverse else step
        sidx = int(coords[layer])
        zs = z[step]
        _coupling_head_bwd_kernel[(grid_m,)](
            g, xin[step], st[step], zs[NH], w_out[layer], dst, da[NH], M, H, zs.stride(1),
            da.stride(1), sidx, INVERSE=bool(inverse), BF16_OUT=adt == torch.bfloat16, DOT=dot,
            INTERP=interp, BLOCK_M=bm, BLOCK_N=_head_block_n(H), num_warps=NUM_WARPS)
        linear_dw(dst, zs[NH], precision, dwo[layer], dbo[layer])
        for k in reversed(range(NH)):
            linear_dw(da[k + 1], zs[k], precision, dwh[k, layer], dbh[k, layer])
            linear_dx(da[k + 1], w_hid[k, layer], zs[k], ACT_LEAKY, precision, out=da[k])
        linear_dw(da[0], h[step], precision, dwi[layer])
        segment_sum(da[0], order, offs, dfb[:, layer])
        linear_dx(da[0], w_in_h[layer], h[step], ACT_LEAKY, precision, out=dh)
        _coupling_pe_bwd_kernel[(grid_m,)](
            dh, proj_w[layer], xin[step], g, pe, M, P, dh.stride(0), sidx, NF=n_freq, E=E,
            E_PAD=E_PAD, DOT=dot, INTERP=interp, BLOCK_M=bm, BLOCK_K=block_k(P, dot),
            num_warps=NUM_WARPS, num_stages=num_stages(dot))
        linear_dw(dh, pe[:, :E], precision, dpw[layer], dpb[layer])
    return [g, *grads]


def flops_per_point(L: int, E: int, P: int, H: int, n_hidden: int) -> int:
    """Matrix-product FLOPs of one point through the hoisted stack (one direction)."""
    return 2 * L * (E * P + P * H + n_hidden * H * H + 2 * H)


__all__ = ["coupling_stack_bwd", "coupling_stack_fwd", "flops_per_point", "unsupported_reason"]


def sm90_specs():
    """The compiles ``make check-sm90`` checks: the coupling kernels at the launch
    configurations used on a GPU, for the omnimotion widths (P = H = 256) and the cpu preset's
    (64), bf16 and tf32 (tensor cores) and, at 256, the exact fp32 mode; forward, inverse and
    backward."""
    from omnifast.kernels._aot import AOTSpec  # noqa: PLC0415

    specs = []
    E, NF = 18, 4
    for prec in ("bf16", "tf32", "fp32"):
        dot = DOT_CODE[prec]
        act = "*bf16" if dot == 2 else "*fp32"
        for width in ((256,) if dot == 0 else (256, 64)):
            bn, bk = _head_block_n(width, False), block_k(width, dot, False)
            tag = f"{prec},{width}"
            common = dict(BF16_OUT=dot == 2, DOT=dot, INTERP=False, BLOCK_M=GPU_BLOCK_M)
            specs.append(AOTSpec(
                f"coupling_in_fwd[{tag}]", _coupling_in_fwd_kernel,
                dict(X_ptr="*fp32", FIDX_ptr="*i64", PW_ptr=act, PB_ptr="*fp32", WI_ptr=act,
                     FB_ptr="*fp32", Z_ptr=act, H_ptr=act, M="i32", P="i32", H="i32", ldz="i32",
                     ldh="i32", ldfb="i32", sidx="i32"),
                dict(NF=NF, E=E, E_PAD=_e_pad(E), SAVE_H=True, BLOCK_N=bn, BLOCK_K=bk, **common),
                num_warps=NUM_WARPS, num_stages=num_stages(dot), expect_tensor_cores=dot != 0))
            for inverse in (False, True):
                specs.append(AOTSpec(
                    f"coupling_out_fwd[{tag},inv={int(inverse)}]", _coupling_out_fwd_kernel,
                    dict(A_ptr=act, W_ptr=act, B_ptr="*fp32", WO_ptr=act, BO_ptr="*fp32",
                         X_ptr="*fp32", Y_ptr="*fp32", Z_ptr=act, ST_ptr="*fp32", M="i32",
                         H="i32", lda="i32", ldz="i32", sidx="i32"),
                    dict(SAVE=True, INVERSE=inverse, BLOCK_N=bn, BLOCK_K=bk, **common),
                    num_warps=NUM_WARPS, num_stages=num_stages(dot), expect_tensor_cores=dot != 0))
            specs.append(AOTSpec(
                f"coupling_head_bwd[{tag}]", _coupling_head_bwd_kernel,
                dict(G_ptr="*fp32", X_ptr="*fp32", ST_ptr="*fp32", Z_ptr=act, WO_ptr=act,
                     DST_ptr="*fp32", DA_ptr=act, M="i32", H="i32", ldz="i32", ldd="i32",
                     sidx="i32"),
                dict(INVERSE=False, BLOCK_N=bn, **common), num_warps=NUM_WARPS,
                expect_tensor_cores=dot != 0))
            specs.append(AOTSpec(
                f"coupling_pe_bwd[{tag}]", _coupling_pe_bwd_kernel,
                dict(DH_ptr=act, PW_ptr=act, X_ptr="*fp32", G_ptr="*fp32", PE_ptr="*fp32",
                     M="i32", P="i32", ldd="i32", sidx="i32"),
                dict(NF=NF, E=E, E_PAD=_e_pad(E), DOT=dot, INTERP=False, BLOCK_M=GPU_BLOCK_M,
                     BLOCK_K=bk), num_warps=NUM_WARPS, num_stages=num_stages(dot),
                expect_tensor_cores=dot != 0))
    return specs
