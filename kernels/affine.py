"""Triton kernels of the affine pre-layer (OmniMotion's depth/time-conditioned 2-D affine map),
on tensor cores, at any hidden width that is a multiple of 16 up to 512.

    enc = [sin(pi z), cos(pi z), ..., sin(pi 2^(NF-1) z), cos(...), t, z]     (E = 2 NF + 2,
                                                                                 padded to 16)
    a_0 = relu(enc @ w0^T + b0);  a_k = relu(a_{k-1} @ w_hid[k-1]^T + b_hid[k-1]), k = 1..NH
    theta = (phi, a1, tx, a2, ty) = a_NH @ w_out^T + b_out
    forward: (x, y) <- [[s1 cos, -s1 sin], [s2 sin, s2 cos]] (x, y) + (tx, ty),  s_i = e^(a_i)
    inverse: the analytic inverse; z is unchanged.

(The reference divides by 1 + 1e-8, which is 1 in fp32: the kernels skip the division.)

Kernels: :func:`_affine_in_fwd_kernel` (the encoding in the prologue of the first layer, ReLU in
its epilogue), the generic ReLU layers of :mod:`omnifast.kernels.mlp`, and
:func:`_affine_out_fwd_kernel` (the top hidden layer with the 5-output head and the affine map in
its epilogue). Backward: :func:`_affine_head_bwd_kernel` (the map and the head),
generic input-gradient GEMMs with ReLU derivatives, :func:`_affine_enc_bwd_kernel` (the first
layer into the depth and time gradients) and the generic weight-gradient GEMMs; the forward
saves a_0..a_NH (bf16 in the bf16 mode) and theta.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from omnifast.kernels._env import triton_interpret
from omnifast.kernels.mlp import (
    ACT_RELU,
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
)

MAX_WIDTH = 512
E_PAD = 16


@triton.jit
def _affine_encoding(zc, tc, NF: tl.constexpr):
    """enc [BLOCK_M, 16] and d enc / d z per column."""
    c = tl.arange(0, 16)[None, :]
    freq = 3.141592653589793 * tl.exp2((c // 2).to(tl.float32))
    arg = zc[:, None] * freq
    sn = tl.sin(arg)
    cs = tl.cos(arg)
    is_cos = (c % 2) == 1
    trig = c < 2 * NF
    enc = tl.where(trig, tl.where(is_cos, cs, sn),
                   tl.where(c == 2 * NF, tc[:, None], tl.where(c == 2 * NF + 1, zc[:, None], 0.0)))
    denc = tl.where(trig, tl.where(is_cos, -freq * sn, freq * cs),
                    tl.where(c == 2 * NF + 1, 1.0, 0.0))
    return enc, denc


@triton.jit
def _affine_in_fwd_kernel(X_ptr, T_ptr, W_ptr, B_ptr, Z_ptr, M, H, ldz, NF: tl.constexpr,
                          BF16_OUT: tl.constexpr, DOT: tl.constexpr, INTERP: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Z [M, H] = relu(enc(X[:, 2], T) @ W [H, 2 NF + 2]^T + B), the encoding computed in the
    prologue. Grid (M tiles, H tiles)."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < H
    zc = tl.load(X_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    tc = tl.load(T_ptr + rows, mask=rmask, other=0.0)
    enc, _ = _affine_encoding(zc, tc, NF)
    e = tl.arange(0, 16)[:, None]
    w_t = tl.load(W_ptr + cols[None, :] * (2 * NF + 2) + e,
                  mask=(e < 2 * NF + 2) & cmask[None, :], other=0.0)  # [16, BLOCK_N]
    acc = _dot(enc, w_t, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT, INTERP)
    acc = tl.maximum(acc + tl.load(B_ptr + cols, mask=cmask, other=0.0)[None, :], 0.0)
    _store(Z_ptr + rows[:, None] * ldz + cols[None, :], acc, rmask[:, None] & cmask[None, :],
           BF16_OUT, INTERP)


@triton.jit
def _theta_col(th, o, j: tl.constexpr):
    return tl.sum(tl.where(o[None, :] == j, th, 0.0), axis=1)


@triton.jit
def _affine_params(th, o):
    """theta [BLOCK_M, 16] (columns phi, a1, tx, a2, ty) -> (cos phi, sin phi, e^a1, tx, e^a2,
    ty), each [BLOCK_M]."""
    phi = _theta_col(th, o, 0)
    return (tl.cos(phi), tl.sin(phi), tl.exp(_theta_col(th, o, 1)), _theta_col(th, o, 2),
            tl.exp(_theta_col(th, o, 3)), _theta_col(th, o, 4))


@triton.jit
def _affine_out_fwd_kernel(A_ptr, W_ptr, B_ptr, WO_ptr, BO_ptr, X_ptr, Y_ptr, Z_ptr, TH_ptr, M, H,
                           lda, ldz, SAVE: tl.constexpr, INVERSE: tl.constexpr,
                           BF16_OUT: tl.constexpr, DOT: tl.constexpr, INTERP: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The top hidden layer a = relu(A [M, H] @ W [H, H]^T + B), theta = a @ WO [5, H]^T + BO
    and the affine map Y [M, 3] <- X [M, 3]; a [M, H] and theta [M, 5] stored when SAVE.
    Grid (M tiles,): each program loops over the H columns in BLOCK_N chunks."""
    pid_m = tl.program_id(0).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    o = tl.arange(0, 16)
    th = tl.zeros((BLOCK_M, 16), dtype=tl.float32)
    for n0 in range(0, H, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < H
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _gemm(acc, A_ptr, lda, 1, rows, rmask, W_ptr, 1, H, cols, cmask, H, BLOCK_K, DOT,
                    INTERP)
        a = tl.maximum(acc + tl.load(B_ptr + cols, mask=cmask, other=0.0)[None, :], 0.0)
        if SAVE:
            _store(Z_ptr + rows[:, None] * ldz + cols[None, :], a,
                   rmask[:, None] & cmask[None, :], BF16_OUT, INTERP)
        wo_t = tl.load(WO_ptr + o[None, :] * H + cols[:, None], mask=o[None, :] < 5, other=0.0)
        th = _dot(a, wo_t, th, DOT, INTERP)
    th += tl.load(BO_ptr + o, mask=o < 5, other=0.0)[None, :]
    c, s, s1, tx, s2, ty = _affine_params(th, o)
    px = tl.load(X_ptr + rows * 3 + 0, mask=rmask, other=0.0)
    py = tl.load(X_ptr + rows * 3 + 1, mask=rmask, other=0.0)
    pz = tl.load(X_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    if INVERSE:
        u = (px - tx) / s1
        v = (py - ty) / s2
        nx = c * u + s * v
        ny = -s * u + c * v
    else:
        nx = s1 * (c * px - s * py) + tx
        ny = s2 * (s * px + c * py) + ty
    tl.store(Y_ptr + rows * 3 + 0, nx, mask=rmask)
    tl.store(Y_ptr + rows * 3 + 1, ny, mask=rmask)
    tl.store(Y_ptr + rows * 3 + 2, pz, mask=rmask)
    if SAVE:
        tl.store(TH_ptr + rows[:, None] * 5 + o[None, :], th,
                 mask=rmask[:, None] & (o[None, :] < 5))


@triton.jit
def _affine_head_bwd_kernel(G_ptr, X_ptr, TH_ptr, Z_ptr, WO_ptr, DX_ptr, DTH_ptr, DA_ptr, M, H,
                            ldz, ldd, INVERSE: tl.constexpr, BF16_OUT: tl.constexpr,
                            DOT: tl.constexpr, INTERP: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr):
    """Back through the affine map and the head: DX [M, 3] = the map's direct gradient (the
    encoding's part of dz is added later), DTH [M, 5] = d theta, DA [M, H] = relu'(a) *
    (DTH @ WO [5, H]). Grid (M tiles,)."""
    pid_m = tl.program_id(0).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    o = tl.arange(0, 16)
    th = tl.load(TH_ptr + rows[:, None] * 5 + o[None, :], mask=rmask[:, None] & (o[None, :] < 5),
                 other=0.0)
    c, s, s1, tx, s2, ty = _affine_params(th, o)
    px = tl.load(X_ptr + rows * 3 + 0, mask=rmask, other=0.0)
    py = tl.load(X_ptr + rows * 3 + 1, mask=rmask, other=0.0)
    gx = tl.load(G_ptr + rows * 3 + 0, mask=rmask, other=0.0)
    gy = tl.load(G_ptr + rows * 3 + 1, mask=rmask, other=0.0)
    gz = tl.load(G_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    if INVERSE:
        u = (px - tx) / s1
        v = (py - ty) / s2
        gu = gx * c - gy * s
        gv = gx * s + gy * c
        dpx = gu / s1
        dpy = gv / s2
        dphi = gx * (-s * u + c * v) + gy * (-c * u - s * v)
        da1 = -gu * u
        dtx = -dpx
        da2 = -gv * v
        dty = -dpy
    else:
        dpx = gx * s1 * c + gy * s2 * s
        dpy = -gx * s1 * s + gy * s2 * c
        dphi = gx * s1 * (-s * px - c * py) + gy * s2 * (c * px - s * py)
        da1 = gx * s1 * (c * px - s * py)
        dtx = gx
        da2 = gy * s2 * (s * px + c * py)
        dty = gy
    tl.store(DX_ptr + rows * 3 + 0, dpx, mask=rmask)
    tl.store(DX_ptr + rows * 3 + 1, dpy, mask=rmask)
    tl.store(DX_ptr + rows * 3 + 2, gz, mask=rmask)
    oo = o[None, :]
    dth = tl.where(oo == 0, dphi[:, None], tl.where(oo == 1, da1[:, None], tl.where(
        oo == 2, dtx[:, None], tl.where(oo == 3, da2[:, None], tl.where(oo == 4, dty[:, None],
                                                                        0.0)))))
    tl.store(DTH_ptr + rows[:, None] * 5 + oo, dth, mask=rmask[:, None] & (oo < 5))
    for n0 in range(0, H, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < H
        mask = rmask[:, None] & cmask[None, :]
        wo = tl.load(WO_ptr + o[:, None] * H + cols[None, :],
                     mask=(o[:, None] < 5) & cmask[None, :], other=0.0)  # [16, BLOCK_N]
        da = _dot(dth, wo, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT, INTERP)
        a = tl.load(Z_ptr + rows[:, None] * ldz + cols[None, :], mask=mask, other=0.0)
        _store(DA_ptr + rows[:, None] * ldd + cols[None, :], _act_grad(da, a.to(tl.float32), 2),
               mask, BF16_OUT, INTERP)


@triton.jit
def _affine_enc_bwd_kernel(DA_ptr, W_ptr, X_ptr, T_ptr, DX_ptr, DT_ptr, ENC_ptr, M, H, ldd,
                           NF: tl.constexpr, DOT: tl.constexpr, INTERP: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """d enc = DA [M, H] @ W [H, 2 NF + 2], into the depth gradient DX[:, 2] (added in place) and
    the time gradient DT [M]; ENC [M, 16] (fp32) gets the encoding for the first layer's weight
    gradient. Grid (M tiles,)."""
    pid_m = tl.program_id(0).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    zc = tl.load(X_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    tc = tl.load(T_ptr + rows, mask=rmask, other=0.0)
    enc, denc = _affine_encoding(zc, tc, NF)
    e = tl.arange(0, 16)
    tl.store(ENC_ptr + rows[:, None] * 16 + e[None, :], enc, mask=rmask[:, None])
    acc = tl.zeros((BLOCK_M, 16), dtype=tl.float32)
    acc = _gemm(acc, DA_ptr, ldd, 1, rows, rmask, W_ptr, 2 * NF + 2, 1, e, e < 2 * NF + 2, H,
                BLOCK_K, DOT, INTERP)
    dz = tl.sum(acc * denc, axis=1)
    dt = tl.sum(tl.where(e[None, :] == 2 * NF, acc, 0.0), axis=1)
    gz = tl.load(DX_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    tl.store(DX_ptr + rows * 3 + 2, gz + dz, mask=rmask)
    tl.store(DT_ptr + rows, dt, mask=rmask)


# ------------------------------------------------------------------------------------- host side
def unsupported_reason(n_layers: int, H: int, n_freq: int) -> str | None:
    """Why the Triton kernels cannot run this MLP (``None`` when they can)."""
    if H % 16 or not 16 <= H <= MAX_WIDTH:
        return (f"the Triton affine pre-layer needs a hidden width that is a multiple of 16 up "
                f"to {MAX_WIDTH}, got {H}")
    if n_layers < 3:
        return f"the Triton affine pre-layer needs at least 3 linear layers, got {n_layers}"
    if 2 * n_freq + 2 > E_PAD:
        return f"the Triton affine pre-layer takes at most 7 depth frequencies, got {n_freq}"
    return None


def _head_block_n(H: int, interp: bool | None = None) -> int:
    return block_n(H, interp)


def _matrices(ws: list[torch.Tensor], precision: str) -> list[torch.Tensor]:
    w0, b0, w_hid, b_hid, w_out, b_out = ws
    if precision == "bf16":
        w0, w_hid, w_out = (w.to(torch.bfloat16).contiguous() for w in (w0, w_hid, w_out))
    return [w0, b0, w_hid, b_hid, w_out, b_out]


def affine_fwd(x: torch.Tensor, t: torch.Tensor, weights: list[torch.Tensor], n_freq: int,
               inverse: bool, precision: str, save: bool) -> tuple[torch.Tensor, ...]:
    """Run the pre-layer forward (or inverse).

    Args:
        x: points, float32 contiguous. [M, 3]
        t: time code of each point, float32. [M]
        weights: ``[w0 [H, 2 NF + 2], b0 [H], w_hid [NH, H, H], b_hid [NH, H], w_out [5, H],
            b_out [5]]`` float32 contiguous, NH >= 1.
        precision: "fp32", "tf32" or "bf16".
        save: keep what the backward needs.

    Returns:
        ``(y [M, 3], a [NH + 1, M, H], theta [M, 5])``; the last two empty unless ``save``.
    """
    w0, b0, w_hid, b_hid, w_out, b_out = _matrices(weights, precision)
    H, NH, M = w0.shape[0], w_hid.shape[0], x.shape[0]
    dev, adt, dot = x.device, act_dtype(precision), DOT_CODE[precision]
    interp = triton_interpret()
    y = torch.empty_like(x)
    a = torch.empty(NH + 1, M, H, device=dev, dtype=adt)
    th = torch.empty(M if save else 0, 5, device=dev, dtype=torch.float32)
    if M == 0:
        return y, a if save else a[:0], th
    bm = block_m(M)
    bn = block_n(H)
    _affine_in_fwd_kernel[(triton.cdiv(M, bm), triton.cdiv(H, bn))](
        x, t, w0, b0, a[0], M, H, a.stride(1), NF=n_freq, BF16_OUT=adt == torch.bfloat16,
        DOT=dot, INTERP=interp, BLOCK_M=bm, BLOCK_N=bn, num_warps=NUM_WARPS)
    for k in range(NH - 1):
        linear_fwd(a[k], w_hid[k], b_hid[k], ACT_RELU, precision, out=a[k + 1])
    _affine_out_fwd_kernel[(triton.cdiv(M, bm),)](
        a[NH - 1], w_hid[NH - 1], b_hid[NH - 1], w_out, b_out, x, y, a[NH], th if save else y, M,
        H, a.stride(1), a.stride(1), SAVE=save, INVERSE=bool(inverse),
        BF16_OUT=adt == torch.bfloat16, DOT=dot, INTERP=interp, BLOCK_M=bm,
        BLOCK_N=_head_block_n(H), BLOCK_K=block_k(H, dot), num_warps=NUM_WARPS,
        num_stages=num_stages(dot))
    return y, a if save else a[:0], th


def affine_bwd(dy: torch.Tensor, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor,
               th: torch.Tensor, weights: list[torch.Tensor], n_freq: int, inverse: bool,
               precision: str) -> list[torch.Tensor]:
    """The backward of :func:`affine_fwd` from what it saved.

    Returns:
        ``[dx, dt, dw0, db0, dw_hid, db_hid, dw_out, db_out]``, fp32.
    """
    w0, b0, w_hid, b_hid, w_out, b_out = _matrices(weights, precision)
    H, NH, M = w0.shape[0], w_hid.shape[0], dy.shape[0]
    dev, adt, dot = dy.device, act_dtype(precision), DOT_CODE[precision]
    interp = triton_interpret()
    dx = torch.zeros(M, 3, device=dev, dtype=torch.float32)
    dt = torch.zeros(M, device=dev, dtype=torch.float32)
    grads = [torch.zeros(w.shape, device=dev, dtype=torch.float32) for w in weights]
    dw0, db0, dwh, dbh, dwo, dbo = grads
    if M == 0:
        return [dx, dt, *grads]
    g = dy.to(torch.float32).contiguous()
    da = torch.empty(NH + 1, M, H, device=dev, dtype=adt)
    dth = torch.empty(M, 5, device=dev, dtype=torch.float32)
    enc = torch.empty(M, E_PAD, device=dev, dtype=torch.float32)
    bm = block_m(M)
    grid_m = (triton.cdiv(M, bm),)
    _affine_head_bwd_kernel[grid_m](
        g, x, th, a[NH], w_out, dx, dth, da[NH], M, H, a.stride(1), da.stride(1),
        INVERSE=bool(inverse), BF16_OUT=adt == torch.bfloat16, DOT=dot, INTERP=interp,
        BLOCK_M=bm, BLOCK_N=_head_block_n(H), num_warps=NUM_WARPS)
    linear_dw(dth, a[NH], precision, dwo, dbo)
    for k in reversed(range(NH)):
        linear_dw(da[k + 1], a[k], precision, dwh[k], dbh[k])
        linear_dx(da[k + 1], w_hid[k], a[k], ACT_RELU, precision, out=da[k])
    _affine_enc_bwd_kernel[grid_m](
        da[0], w0, x, t, dx, dt, enc, M, H, da.stride(1), NF=n_freq, DOT=dot, INTERP=interp,
        BLOCK_M=bm, BLOCK_K=block_k(H, dot), num_warps=NUM_WARPS, num_stages=num_stages(dot))
    linear_dw(da[0], enc[:, :2 * n_freq + 2], precision, dw0, db0)
    return [dx, dt, *grads]


__all__ = ["affine_bwd", "affine_fwd", "unsupported_reason"]


def sm90_specs():
    """The affine pre-layer's kernels at the launch configurations used on a GPU, at the
    omnimotion width (256; the cpu preset has no affine pre-layer, 64 is checked too), bf16 and
    tf32 (tensor cores) and, at 256, the exact fp32 mode; forward, inverse and backward."""
    from omnifast.kernels._aot import AOTSpec  # noqa: PLC0415

    specs = []
    for prec in ("bf16", "tf32", "fp32"):
        dot = DOT_CODE[prec]
        act = "*bf16" if dot == 2 else "*fp32"
        for width in ((256,) if dot == 0 else (256, 64)):
            bn, bk = _head_block_n(width, False), block_k(width, dot, False)
            tag = f"{prec},{width}"
            common = dict(DOT=dot, INTERP=False, BLOCK_M=GPU_BLOCK_M)
            specs.append(AOTSpec(
                f"affine_in_fwd[{tag}]", _affine_in_fwd_kernel,
                dict(X_ptr="*fp32", T_ptr="*fp32", W_ptr=act, B_ptr="*fp32", Z_ptr=act, M="i32",
                     H="i32", ldz="i32"),
                dict(NF=4, BF16_OUT=dot == 2, BLOCK_N=bn, **common), num_warps=NUM_WARPS,
                expect_tensor_cores=dot != 0))
            for inverse in (False, True):
                specs.append(AOTSpec(
                    f"affine_out_fwd[{tag},inv={int(inverse)}]", _affine_out_fwd_kernel,
                    dict(A_ptr=act, W_ptr=act, B_ptr="*fp32", WO_ptr=act, BO_ptr="*fp32",
                         X_ptr="*fp32", Y_ptr="*fp32", Z_ptr=act, TH_ptr="*fp32", M="i32",
                         H="i32", lda="i32", ldz="i32"),
                    dict(SAVE=True, INVERSE=inverse, BF16_OUT=dot == 2, BLOCK_N=bn, BLOCK_K=bk,
                         **common),
                    num_warps=NUM_WARPS, num_stages=num_stages(dot), expect_tensor_cores=dot != 0))
            specs.append(AOTSpec(
                f"affine_head_bwd[{tag}]", _affine_head_bwd_kernel,
                dict(G_ptr="*fp32", X_ptr="*fp32", TH_ptr="*fp32", Z_ptr=act, WO_ptr=act,
                     DX_ptr="*fp32", DTH_ptr="*fp32", DA_ptr=act, M="i32", H="i32", ldz="i32",
                     ldd="i32"),
                dict(INVERSE=False, BF16_OUT=dot == 2, BLOCK_N=bn, **common),
                num_warps=NUM_WARPS, expect_tensor_cores=dot != 0))
            specs.append(AOTSpec(
                f"affine_enc_bwd[{tag}]", _affine_enc_bwd_kernel,
                dict(DA_ptr=act, W_ptr=act, X_ptr="*fp32", T_ptr="*fp32", DX_ptr="*fp32",
                     DT_ptr="*fp32", ENC_ptr="*fp32", M="i32", H="i32", ldd="i32"),
                dict(NF=4, BLOCK_K=bk, **common), num_warps=NUM_WARPS,
                num_stages=num_stages(dot), expect_tensor_cores=dot != 0))
    return specs
