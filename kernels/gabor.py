"""Triton kernels of the GaborNet (multiplicative filter network: the colour/density network, 512
wide, and the latent-code network, 256 wide), on tensor cores, at any hidden width that is a
multiple of 16 up to 512.

    g_k(x) = sin(x @ fw_k^T + fb_k) * exp(-0.5 gamma_k ||x - mu_k||^2)        (D = 1..4 inputs)
    z_0 = g_0(x);  a_k = z_{k-1} @ lin_w[k-1]^T + lin_b[k-1];  z_k = g_k(x) a_k   (k = 1..NL)
    out = z_NL @ out_w^T + out_b

One kernel per hidden linear, :func:`_gabor_fwd_kernel`: the filter g_k of the D inputs is
computed in the epilogue of linear k (fp32, as the reference's filters), and the last one fuses
the output layer (each of its programs loops over all columns of its rows). z_0 = g_0(x), the
first linear's input, is written once by :func:`_gabor_filter_kernel` (computing it in the first
linear's prologue instead would repeat its H sines and exponentials per point for every column
tile, 8 times at H = 512: more than the GEMM's own time). The forward saves z_0, a_1..a_NL and
z_1..z_NL (bf16 in the bf16 mode). Backward, :func:`_gabor_bwd_kernel` per filter k = NL..0:
dz_k = (the gradient above) @ W as a GEMM, and in the epilogue da_k = dz_k g_k (stored for the
weight gradient and the next GEMM) and the filter's parameter and input gradients, reduced over
the tile's points and columns into per-tile partials that are summed in a fixed order afterwards;
the linears' weight gradients are the generic GEMMs over points of :mod:`omnifast.kernels.mlp`.
Deterministic throughout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from omnifast.kernels._env import triton_interpret
from omnifast.kernels.mlp import (
    DOT_CODE,
    GPU_BLOCK_M,
    NUM_WARPS,
    _dot,
    _gemm,
    _store,
    act_dtype,
    block_for,
    block_k,
    block_m,
    linear_dw,
    num_stages,
)

MAX_WIDTH = 512
MAX_INPUTS = 4
MAX_OUTPUTS = 128


@triton.jit
def _filter(X_ptr, rows, rmask, FW_ptr, FB_ptr, MU_ptr, GA_ptr, cols, cmask, D: tl.constexpr):
    """The filter's sine argument p, squared distance d2, envelope and gamma on a tile."""
    p = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    d2 = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    for d in tl.static_range(D):
        xd = tl.load(X_ptr + rows * D + d, mask=rmask, other=0.0)
        p += xd[:, None] * tl.load(FW_ptr + cols * D + d, mask=cmask, other=0.0)[None, :]
        diff = xd[:, None] - tl.load(MU_ptr + cols * D + d, mask=cmask, other=0.0)[None, :]
        d2 += diff * diff
    p += tl.load(FB_ptr + cols, mask=cmask, other=0.0)[None, :]
    ga = tl.load(GA_ptr + cols, mask=cmask, other=0.0)
    env = tl.exp(-0.5 * d2 * ga[None, :])
    return p, d2, env, ga


@triton.jit
def _gabor_filter_kernel(X_ptr, FW_ptr, FB_ptr, MU_ptr, GA_ptr, Z_ptr, M, H, ldz,
                         D: tl.constexpr, BF16_OUT: tl.constexpr, INTERP: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Z [M, H] = g_0(X): the first filter, the first linear's input. Grid (M tiles, H tiles)."""
    pid_m = tl.program_id(0).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < H
    p, _, env, _ = _filter(X_ptr, rows, rmask, FW_ptr, FB_ptr, MU_ptr, GA_ptr, cols, cmask, D)
    _store(Z_ptr + rows[:, None] * ldz + cols[None, :], tl.sin(p) * env,
           rmask[:, None] & cmask[None, :], BF16_OUT, INTERP)


@triton.jit
def _gabor_fwd_kernel(X_ptr, FW_ptr, FB_ptr, MU_ptr, GA_ptr, A_ptr, W_ptr, B_ptr, WO_ptr, BO_ptr,
                      AS_ptr, Z_ptr, OUT_ptr, M, H, O, lda, ldz, layer, n_chunks,
                      D: tl.constexpr, HEAD: tl.constexpr, SAVE: tl.constexpr,
                      BF16_OUT: tl.constexpr, DOT: tl.constexpr, INTERP: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      O_PAD: tl.constexpr):
    """Linear ``layer`` (k >= 1): a = A @ W [H, H]^T + B with A = z_{k-1} [M, H], and the filter
    in the epilogue: z = g_k(X) a. a -> AS and z -> Z when SAVE (z also when not HEAD). HEAD:
    OUT [M, O] = z @ WO [O, H]^T + BO. Grid (M tiles, H tiles / n_chunks); a program does
    n_chunks column chunks (all of them when HEAD)."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    foff = layer * H
    o = tl.arange(0, O_PAD)
    out = tl.zeros((BLOCK_M, O_PAD), dtype=tl.float32)
    for c in range(0, n_chunks):
        cols = (pid_n * n_chunks + c) * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < H
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _gemm(acc, A_ptr, lda, 1, rows, rmask, W_ptr, 1, H, cols, cmask, H, BLOCK_K, DOT,
                    INTERP)
        a = acc + tl.load(B_ptr + cols, mask=cmask, other=0.0)[None, :]
        p, _, env, _ = _filter(X_ptr, rows, rmask, FW_ptr + foff * D, FB_ptr + foff,
                               MU_ptr + foff * D, GA_ptr + foff, cols, cmask, D)
        z = tl.sin(p) * env * a
        mask = rmask[:, None] & cmask[None, :]
        if SAVE:
            _store(AS_ptr + rows[:, None] * ldz + cols[None, :], a, mask, BF16_OUT, INTERP)
        if SAVE or not HEAD:
            _store(Z_ptr + rows[:, None] * ldz + cols[None, :], z, mask, BF16_OUT, INTERP)
        if HEAD:
            wo_t = tl.load(WO_ptr + o[None, :] * H + cols[:, None],
                           mask=(o[None, :] < O) & cmask[:, None], other=0.0)  # [BN, O_PAD]
            out = _dot(z, wo_t, out, DOT, INTERP)
    if HEAD:
        out += tl.load(BO_ptr + o, mask=o < O, other=0.0)[None, :]
        tl.store(OUT_ptr + rows[:, None] * O + o[None, :], out,
                 mask=rmask[:, None] & (o[None, :] < O))


@triton.jit
def _gabor_bwd_kernel(G_ptr, W_ptr, X_ptr, FW_ptr, FB_ptr, MU_ptr, GA_ptr, AS_ptr, DA_ptr,
                      PART_ptr, DXP_ptr, M, H, R, ldg, lda, layer, D: tl.constexpr,
                      HAS_A: tl.constexpr, BF16_OUT: tl.constexpr, DOT: tl.constexpr,
                      INTERP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """Filter ``layer``'s backward: dz = G [M, R] @ W [R, H] (the gradient from the layer
    above), then through z = g a (HAS_A; z = g for filter 0): DA [M, H] = dz g and dg = dz a;
    through g = sin(p) env: PART [M tiles, 3 + 2D, H] gets the tile's column sums of dp,
    dp x_d, d gamma, dd2 and dd2 x_d, and DXP [H tiles, M, D] the tile's part of dx. Grid
    (M tiles, H tiles)."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < H
    mask = rmask[:, None] & cmask[None, :]
    dz = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    dz = _gemm(dz, G_ptr, ldg, 1, rows, rmask, W_ptr, H, 1, cols, cmask, R, BLOCK_K, DOT, INTERP)
    foff = layer * H
    p, d2, env, ga = _filter(X_ptr, rows, rmask, FW_ptr + foff * D, FB_ptr + foff,
                             MU_ptr + foff * D, GA_ptr + foff, cols, cmask, D)
    sp = tl.sin(p)
    cp = tl.cos(p)
    if HAS_A:
        a = tl.load(AS_ptr + rows[:, None] * lda + cols[None, :], mask=mask, other=0.0)
        _store(DA_ptr + rows[:, None] * lda + cols[None, :], dz * sp * env, mask, BF16_OUT,
               INTERP)
        dg = dz * a.to(tl.float32)
    else:
        dg = dz
    dg = tl.where(mask, dg, 0.0)
    dp = dg * cp * env
    de = dg * sp * env  # d / d(-0.5 gamma d2)
    dd2 = -0.5 * de * ga[None, :]
    dga = -0.5 * de * d2
    nj = 3 + 2 * D
    pbase = PART_ptr + (pid_m * nj) * H + cols
    tl.store(pbase, tl.sum(dp, axis=0), mask=cmask)
    tl.store(pbase + (D + 1) * H, tl.sum(dga, axis=0), mask=cmask)
    tl.store(pbase + (D + 2) * H, tl.sum(dd2, axis=0), mask=cmask)
    for d in tl.static_range(D):
        xd = tl.load(X_ptr + rows * D + d, mask=rmask, other=0.0)
        fw = tl.load(FW_ptr + (foff + cols) * D + d, mask=cmask, other=0.0)
        mu = tl.load(MU_ptr + (foff + cols) * D + d, mask=cmask, other=0.0)
        tl.store(pbase + (1 + d) * H, tl.sum(dp * xd[:, None], axis=0), mask=cmask)
        tl.store(pbase + (D + 3 + d) * H, tl.sum(dd2 * xd[:, None], axis=0), mask=cmask)
        dxd = tl.sum(dp * fw[None, :] + 2.0 * dd2 * (xd[:, None] - mu[None, :]), axis=1)
        tl.store(DXP_ptr + (pid_n * M + rows) * D + d, dxd, mask=rmask)


# ------------------------------------------------------------------------------------- host side
def unsupported_reason(D: int, H: int, O: int, n_linear: int) -> str | None:
    """Why the Triton kernels cannot run this GaborNet (``None`` when they can)."""
    if H % 16 or not 16 <= H <= MAX_WIDTH:
        return (f"the Triton GaborNet needs a hidden width that is a multiple of 16 up to "
                f"{MAX_WIDTH}, got {H}")
    if not 1 <= D <= MAX_INPUTS:
        return f"the Triton GaborNet takes 1 to {MAX_INPUTS} inputs, got {D}"
    if not 1 <= O <= MAX_OUTPUTS:
        return f"the Triton GaborNet takes 1 to {MAX_OUTPUTS} outputs, got {O}"
    if n_linear < 1:
        return "the Triton GaborNet needs at least one hidden linear, got 0"
    return None


def _block_n(H: int, interp: bool | None = None) -> int:
    """Column tile: 64 on a GPU (the filters' fp32 temporaries share the registers with the
    accumulator)."""
    return block_for(H, 512 if (triton_interpret() if interp is None else interp) else 64)


def _o_pad(O: int) -> int:
    return max(16, triton.next_power_of_2(O))


def gabor_net_fwd(x: torch.Tensor, weights: list[torch.Tensor], precision: str, save: bool
                  ) -> tuple[torch.Tensor, ...]:
    """Run the network forward.

    Args:
        x: inputs, float32 contiguous. [M, D]
        weights: ``[filt_w [NL + 1, H, D], filt_b [NL + 1, H], mu [NL + 1, H, D],
            gamma [NL + 1, H], lin_w [NL, H, H], lin_b [NL, H], out_w [O, H], out_b [O]]``,
            float32 contiguous, NL >= 1.
        precision: "fp32", "tf32" or "bf16".
        save: keep what the backward needs.

    Returns:
        ``(out [M, O], z0 [M, H], a [NL, M, H], z [NL, M, H])``; the last three empty unless
        ``save``.
    """
    fw, fb, mu, ga, lw, lb, ow, ob = weights
    if precision == "bf16":
        lw, ow = lw.to(torch.bfloat16).contiguous(), ow.to(torch.bfloat16).contiguous()
    NL, H, D, O, M = lw.shape[0], lw.shape[1], fw.shape[2], ow.shape[0], x.shape[0]
    dev, adt, dot = x.device, act_dtype(precision), DOT_CODE[precision]
    interp = triton_interpret()
    out = torch.empty(M, O, device=dev, dtype=torch.float32)
    z0 = torch.empty(M, H, device=dev, dtype=adt)
    a = torch.empty(NL if save else 0, M, H, device=dev, dtype=adt)
    z = torch.empty(NL if save else min(2, NL - 1), M, H, device=dev, dtype=adt)
    if M == 0:
        return out, z0 if save else z0[:0], a, z if save else z[:0]
    bm, bn, bk = block_m(M), _block_n(H), block_k(H, dot)
    _gabor_filter_kernel[(triton.cdiv(M, bm), triton.cdiv(H, bn))](
        x, fw, fb, mu, ga, z0, M, H, H, D=D, BF16_OUT=adt == torch.bfloat16, INTERP=interp,
        BLOCK_M=bm, BLOCK_N=bn, num_warps=NUM_WARPS)
    for k in range(1, NL + 1):
        head = k == NL
        chunks = triton.cdiv(H, bn) if head else 1
        zin = z0 if k == 1 else (z[k - 2] if save else z[(k - 2) % 2])
        zout = z[k - 1] if save else (z[(k - 1) % 2] if not head else out)
        _gabor_fwd_kernel[(triton.cdiv(M, bm), triton.cdiv(H, bn) // chunks)](
            x, fw, fb, mu, ga, zin, lw[k - 1], lb[k - 1], ow, ob, a[k - 1] if save else out,
            zout, out, M, H, O, H, H, k, chunks, D=D, HEAD=head, SAVE=save,
            BF16_OUT=adt == torch.bfloat16, DOT=dot, INTERP=interp, BLOCK_M=bm, BLOCK_N=bn,
            BLOCK_K=bk, O_PAD=_o_pad(O), num_warps=NUM_WARPS, num_stages=num_stages(dot))
    return out, z0 if save else z0[:0], a, z if save else z[:0]


def gabor_net_bwd(dout: torch.Tensor, x: torch.Tensor, z0: torch.Tensor, a: torch.Tensor,
                  z: torch.Tensor, weights: list[torch.Tensor], precision: str
                  ) -> list[torch.Tensor]:
    """The backward of :func:`gabor_net_fwd` from what it saved.

    Returns:
        ``[dx, dfilt_w, dfilt_b, dmu, dgamma, dlin_w, dlin_b, dout_w, dout_b]``, fp32.
    """
    fw, fb, mu, ga, lw, lb, ow, ob = weights
    NL, H, D, O, M = lw.shape[0], lw.shape[1], fw.shape[2], ow.shape[0], x.shape[0]
    dev, adt, dot = x.device, act_dtype(precision), DOT_CODE[precision]
    interp = triton_interpret()
    wdt = torch.bfloat16 if precision == "bf16" else torch.float32
    grads = [torch.zeros(w.shape, device=dev, dtype=torch.float32) for w in weights]
    dfw, dfb, dmu, dga, dlw, dlb, dow, dob = grads
    dx = torch.zeros(M, D, device=dev, dtype=torch.float32)
    if M == 0:
        return [dx, *grads]
    lw = lw.to(wdt).contiguous()
    o_pad = _o_pad(O)
    g = torch.zeros(M, o_pad, device=dev, dtype=torch.float32)
    g[:, :O] = dout
    w = torch.zeros(o_pad, H, device=dev, dtype=wdt)
    w[:O] = ow
    linear_dw(dout.to(torch.float32).contiguous(), z[NL - 1], precision, dow, dob)
    bm, bn = block_m(M), _block_n(H)
    tiles_m, tiles_n = triton.cdiv(M, bm), triton.cdiv(H, bn)
    nj = 3 + 2 * D
    part = torch.empty(tiles_m, nj, H, device=dev, dtype=torch.float32)
    dxp = torch.empty(tiles_n, M, D, device=dev, dtype=torch.float32)
    da = torch.empty(2, M, H, device=dev, dtype=adt)
    for k in range(NL, -1, -1):
        dak = da[k % 2] if k >= 1 else da[0]
        _gabor_bwd_kernel[(tiles_m, tiles_n)](
            g, w, x, fw, fb, mu, ga, a[k - 1] if k >= 1 else g, dak, part, dxp, M, H,
            g.shape[1], g.stride(0), H, k, D=D, HAS_A=k >= 1, BF16_OUT=adt == torch.bfloat16,
            DOT=dot, INTERP=interp, BLOCK_M=bm, BLOCK_N=bn,
            BLOCK_K=block_k(g.shape[1], dot), num_warps=NUM_WARPS,
            num_stages=num_stages(dot))
        s = part.sum(0)  # [3 + 2D, H], summed over the point tiles in order
        dfb[k] = s[0]
        dfw[k] = s[1:D + 1].t()
        dga[k] = s[D + 1]
        dmu[k] = (-2.0 * s[D + 3:2 * D + 3] + 2.0 * mu[k].t() * s[D + 2]).t()
        dx += dxp.sum(0)
        if k >= 1:
            linear_dw(dak, z0 if k == 1 else z[k - 2], precision, dlw[k - 1], dlb[k - 1])
            g, w = dak, lw[k - 1]
    return [dx, *grads]


__all__ = ["gabor_net_bwd", "gabor_net_fwd", "unsupported_reason"]


def sm90_specs():
    """The GaborNet kernels at the launch configurations used on a GPU: the colour network
    (D = 3, H = 512, O = 4; cpu preset H = 128) and the latent-code network (D = 1, H = 256,
    O = 128; cpu preset H = 64, O = 32), bf16 and tf32 (the exact fp32 mode at the omnimotion
    widths), the filter, a middle and the last linear, and the backward of a filter with and
    without a linear below it."""
    from omnifast.kernels._aot import AOTSpec  # noqa: PLC0415

    specs = []
    for prec in ("bf16", "tf32", "fp32"):
        dot = DOT_CODE[prec]
        act = "*bf16" if dot == 2 else "*fp32"
        f = "*fp32"
        fwd_sig = dict(X_ptr=f, FW_ptr=f, FB_ptr=f, MU_ptr=f, GA_ptr=f, A_ptr=act, W_ptr=act,
                       B_ptr=f, WO_ptr=act, BO_ptr=f, AS_ptr=act, Z_ptr=act, OUT_ptr=f,
                       M="i32", H="i32", O="i32", lda="i32", ldz="i32", layer="i32",
                       n_chunks="i32")
        filt_sig = dict(X_ptr=f, FW_ptr=f, FB_ptr=f, MU_ptr=f, GA_ptr=f, Z_ptr=act, M="i32",
                        H="i32", ldz="i32")
        bwd_sig = dict(G_ptr=act, W_ptr=act, X_ptr=f, FW_ptr=f, FB_ptr=f, MU_ptr=f, GA_ptr=f,
                       AS_ptr=act, DA_ptr=act, PART_ptr=f, DXP_ptr=f, M="i32", H="i32",
                       R="i32", ldg="i32", lda="i32", layer="i32")
        nets = (("colour", 3, 512, 4), ("colour-cpu", 3, 128, 4), ("code", 1, 256, 128),
                ("code-cpu", 1, 64, 32))
        for name, D, H, O in (nets[::2] if dot == 0 else nets):
            bn, bk = _block_n(H, False), block_k(H, dot, False)
            common = dict(D=D, BF16_OUT=dot == 2, DOT=dot, INTERP=False, BLOCK_M=GPU_BLOCK_M,
                          BLOCK_N=bn)
            if prec == "bf16":
                specs.append(AOTSpec(
                    f"gabor_filter[{name}]", _gabor_filter_kernel, filt_sig,
                    dict(D=D, BF16_OUT=True, INTERP=False, BLOCK_M=GPU_BLOCK_M, BLOCK_N=bn),
                    num_warps=NUM_WARPS))
            for head in (False, True):
                specs.append(AOTSpec(
                    f"gabor_fwd[{prec},{name},head={int(head)}]", _gabor_fwd_kernel, fwd_sig,
                    dict(HEAD=head, SAVE=True, BLOCK_K=bk, O_PAD=_o_pad(O), **common),
                    num_warps=NUM_WARPS, num_stages=num_stages(dot), expect_tensor_cores=dot != 0))
            for has_a, r in ((True, _o_pad(O)), (True, H), (False, H)):
                specs.append(AOTSpec(
                    f"gabor_bwd[{prec},{name},R={r},lin={int(has_a)}]", _gabor_bwd_kernel,
                    bwd_sig, dict(HAS_A=has_a, BLOCK_K=block_k(r, dot, False),
                                  **common),
                    num_warps=NUM_WARPS, num_stages=num_stages(dot), expect_tensor_cores=dot != 0))
    return specs
