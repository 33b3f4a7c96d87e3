"""Triton kernels of the fused affine coupling stack (OmniMotion's invertible map).

One program takes ``BLOCK_M`` points through every layer of the stack; the point coordinates,
the positional encoding and the hidden activations live in registers / shared memory, never in
global memory. Per layer l, transforming coordinate s = coords[l] conditioned on (u_a, u_b):

    pe  = [u_a, u_b, sin(w u_a), cos(w u_a), sin(w u_b), cos(w u_b)]   (w = pi 2^k, padded to
                                                                         E_PAD columns)
    h   = leaky(pe @ proj_w[l]^T + proj_b[l])
    z_0 = leaky(h @ w_in_h[l]^T + frame_bias[frame, l])     (hoisted code term, spec 6.5)
    z_k = leaky(z_{k-1} @ w_hid[k-1, l]^T + b_hid[k-1, l])
    (s, t) = z_NH @ w_out[l]^T + b_out[l],  s <- clamp(s, -8, 8)
    forward: x_s <- (x_s - t) exp(-s);  inverse: x_s <- x_s exp(s) + t

Backward recomputes each layer's activations from the saved layer inputs ``[L, M, 3]`` and
backpropagates through it, layers in reverse order of application. Weight, bias and
frame-bias gradients are reduced across programs with atomic adds into fp32 buffers.

Matrix-product precision (``DOT``): 0 = fp32 ("ieee"), 1 = tf32, 2 = bf16 operands with fp32
accumulation. Under ``TRITON_INTERPRET=1`` bf16 operands are rounded to bf16 (to nearest even)
and multiplied in fp32, because the interpreter has no bf16 ``tl.dot``. Coordinates and the
coupling update are always fp32.

Layout limits: P and H powers of two >= 16, at most 2 extra hidden layers (omnimotion: 2).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from omnifast.dispatch import triton_interpret

S_CLAMP = 8.0
SLOPE = 0.01
MAX_HIDDEN = 2


@triton.jit
def _round_bf16(x):
    """fp32 -> nearest bf16 value, kept in fp32 (round to nearest even)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _mm(a, b, DOT: tl.constexpr, INTERP: tl.constexpr):
    """a @ b with fp32 accumulation at the requested operand precision."""
    if DOT == 2:
        if INTERP:
            out = tl.dot(_round_bf16(a), _round_bf16(b), input_precision="ieee")
        else:
            out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT == 1:
        out = tl.dot(a, b, input_precision="tf32")
    else:
        out = tl.dot(a, b, input_precision="ieee")
    return out


@triton.jit
def _leaky(v):
    return tl.where(v > 0, v, v * 0.01)


@triton.jit
def _leaky_grad(g, post):
    return tl.where(post > 0, g, g * 0.01)


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
    # d pe / d u per column
    dpe = tl.where(c < 2, 1.0, tl.where(is_cos, -freq * sn, freq * cs))
    dpe = tl.where(c < E, dpe, 0.0)
    return pe, dpe, is_a


@triton.jit
def _layer_net(ua, ub, fidx, l, FB_ptr, PW_ptr, PB_ptr, WI_ptr, WH_ptr, BH_ptr, WO_ptr, BO_ptr,
               L: tl.constexpr, NH: tl.constexpr, NF: tl.constexpr, E: tl.constexpr,
               E_PAD: tl.constexpr, P: tl.constexpr, H: tl.constexpr, DOT: tl.constexpr,
               INTERP: tl.constexpr):
    """One coupling layer's network on a tile: pe, h, z_0..z_2 (unused ones = z_0), s_raw, t."""
    pe, dpe, is_a = _encoding(ua, ub, NF, E, E_PAD)
    e_r = tl.arange(0, E_PAD)[:, None]
    p_c = tl.arange(0, P)[None, :]
    p_r = tl.arange(0, P)[:, None]
    h_c = tl.arange(0, H)[None, :]
    h_r = tl.arange(0, H)[:, None]
    hs = tl.arange(0, H)
    # proj_w[l]^T: [E_PAD, P]
    pw_t = tl.load(PW_ptr + (l * P + p_c) * E + e_r, mask=(e_r < E) & (p_c < P), other=0.0)
    pb = tl.load(PB_ptr + l * P + tl.arange(0, P))
    h = _leaky(_mm(pe, pw_t, DOT, INTERP) + pb[None, :])
    # w_in_h[l]^T: [P, H]
    wi_t = tl.load(WI_ptr + (l * H + h_c) * P + p_r)
    fb = tl.load(FB_ptr + (fidx[:, None] * L + l) * H + h_c)
    z0 = _leaky(_mm(h, wi_t, DOT, INTERP) + fb)
    z1 = z0
    z2 = z0
    if NH >= 1:
        w1_t = tl.load(WH_ptr + ((0 * L + l) * H + h_c) * H + h_r)
        b1 = tl.load(BH_ptr + (0 * L + l) * H + hs)
        z1 = _leaky(_mm(z0, w1_t, DOT, INTERP) + b1[None, :])
    if NH >= 2:
        w2_t = tl.load(WH_ptr + ((1 * L + l) * H + h_c) * H + h_r)
        b2 = tl.load(BH_ptr + (1 * L + l) * H + hs)
        z2 = _leaky(_mm(z1, w2_t, DOT, INTERP) + b2[None, :])
    if NH == 0:
        zl = z0
    elif NH == 1:
        zl = z1
    else:
        zl = z2
    ws = tl.load(WO_ptr + l * 2 * H + hs)
    wt = tl.load(WO_ptr + l * 2 * H + H + hs)
    if DOT == 2:
        ws = _round_bf16(ws)
        wt = _round_bf16(wt)
        zr = _round_bf16(zl)
    else:
        zr = zl
    s = tl.sum(zr * ws[None, :], axis=1) + tl.load(BO_ptr + l * 2)
    t = tl.sum(zr * wt[None, :], axis=1) + tl.load(BO_ptr + l * 2 + 1)
    return pe, dpe, is_a, h, z0, z1, z2, zl, s, t


@triton.jit
def _conditioning(x0, x1, x2, sidx):
    """u_a, u_b (the two unchanged coordinates, increasing index) and x_s."""
    ua = tl.where(sidx == 0, x1, x0)
    ub = tl.where(sidx == 2, x1, x2)
    xs = tl.where(sidx == 0, x0, tl.where(sidx == 1, x1, x2))
    return ua, ub, xs


@triton.jit
def _coupling_stack_fwd_kernel(X_ptr, Y_ptr, SAVED_ptr, FIDX_ptr, COORDS_ptr, FB_ptr, PW_ptr,
                               PB_ptr, WI_ptr, WH_ptr, BH_ptr, WO_ptr, BO_ptr, M,
                               L: tl.constexpr, NH: tl.constexpr, NF: tl.constexpr,
                               E: tl.constexpr, E_PAD: tl.constexpr, P: tl.constexpr,
                               H: tl.constexpr, INVERSE: tl.constexpr, SAVE: tl.constexpr,
                               DOT: tl.constexpr, INTERP: tl.constexpr,
                               BLOCK_M: tl.constexpr):
    """y [M, 3] = stack(x [M, 3]); SAVED [L, M, 3] gets every layer's input when SAVE."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    valid = rows < M
    x0 = tl.load(X_ptr + rows * 3 + 0, mask=valid, other=0.0)
    x1 = tl.load(X_ptr + rows * 3 + 1, mask=valid, other=0.0)
    x2 = tl.load(X_ptr + rows * 3 + 2, mask=valid, other=0.0)
    fidx = tl.load(FIDX_ptr + rows, mask=valid, other=0)
    for step in tl.static_range(L):
        if INVERSE:
            l = L - 1 - step
        else:
            l = step
        if SAVE:
            base = SAVED_ptr + (l * M + rows) * 3
            tl.store(base + 0, x0, mask=valid)
            tl.store(base + 1, x1, mask=valid)
            tl.store(base + 2, x2, mask=valid)
        sidx = tl.load(COORDS_ptr + l)
        ua, ub, xs = _conditioning(x0, x1, x2, sidx)
        _, _, _, _, _, _, _, _, s_raw, t = _layer_net(
            ua, ub, fidx, l, FB_ptr, PW_ptr, PB_ptr, WI_ptr, WH_ptr, BH_ptr, WO_ptr, BO_ptr,
            L, NH, NF, E, E_PAD, P, H, DOT, INTERP)
        s = tl.minimum(tl.maximum(s_raw, -8.0), 8.0)
        if INVERSE:
            new = xs * tl.exp(s) + t
        else:
            new = (xs - t) * tl.exp(-s)
        x0 = tl.where(sidx == 0, new, x0)
        x1 = tl.where(sidx == 1, new, x1)
        x2 = tl.where(sidx == 2, new, x2)
    tl.store(Y_ptr + rows * 3 + 0, x0, mask=valid)
    tl.store(Y_ptr + rows * 3 + 1, x1, mask=valid)
    tl.store(Y_ptr + rows * 3 + 2, x2, mask=valid)


@triton.jit
def _backprop_hidden(dA, z_in, WH_ptr, BH_ptr, DWH_ptr, DBH_ptr, k: tl.constexpr, l,
                     L: tl.constexpr, H: tl.constexpr, DOT: tl.constexpr,
                     INTERP: tl.constexpr):
    """Through z_out = leaky(z_in @ W^T + b): accumulate dW, db; return dpre of z_in."""
    h_c = tl.arange(0, H)[None, :]
    h_r = tl.arange(0, H)[:, None]
    hs = tl.arange(0, H)
    off = ((k * L + l) * H + h_r) * H + h_c
    tl.atomic_add(DWH_ptr + off, _mm(tl.trans(dA), z_in, DOT, INTERP))
    tl.atomic_add(DBH_ptr + (k * L + l) * H + hs, tl.sum(dA, axis=0))
    w = tl.load(WH_ptr + off)  # [H_out, H_in]
    return _leaky_grad(_mm(dA, w, DOT, INTERP), z_in)


@triton.jit
def _coupling_stack_bwd_kernel(DY_ptr, DX_ptr, SAVED_ptr, FIDX_ptr, COORDS_ptr, FB_ptr,
                               PW_ptr, PB_ptr, WI_ptr, WH_ptr, BH_ptr, WO_ptr, BO_ptr,
                               DFB_ptr, DPW_ptr, DPB_ptr, DWI_ptr, DWH_ptr, DBH_ptr, DWO_ptr,
                               DBO_ptr, M, L: tl.constexpr, NH: tl.constexpr,
                               NF: tl.constexpr, E: tl.constexpr, E_PAD: tl.constexpr,
                               P: tl.constexpr, H: tl.constexpr, INVERSE: tl.constexpr,
                               DOT: tl.constexpr, INTERP: tl.constexpr,
                               BLOCK_M: tl.constexpr):
    """dx [M, 3] and (atomically accumulated) gradients of every weight and frame bias."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    valid = rows < M
    g0 = tl.load(DY_ptr + rows * 3 + 0, mask=valid, other=0.0)
    g1 = tl.load(DY_ptr + rows * 3 + 1, mask=valid, other=0.0)
    g2 = tl.load(DY_ptr + rows * 3 + 2, mask=valid, other=0.0)
    fidx = tl.load(FIDX_ptr + rows, mask=valid, other=0)
    hs = tl.arange(0, H)
    h_c = tl.arange(0, H)[None, :]
    h_r = tl.arange(0, H)[:, None]
    p_c = tl.arange(0, P)[None, :]
    p_r = tl.arange(0, P)[:, None]
    e_c = tl.arange(0, E_PAD)[None, :]
    for step in tl.static_range(L):
        if INVERSE:
            l = step
        else:
            l = L - 1 - step
        base = SAVED_ptr + (l * M + rows) * 3
        x0 = tl.load(base + 0, mask=valid, other=0.0)
        x1 = tl.load(base + 1, mask=valid, other=0.0)
        x2 = tl.load(base + 2, mask=valid, other=0.0)
        sidx = tl.load(COORDS_ptr + l)
        ua, ub, xs = _conditioning(x0, x1, x2, sidx)
        pe, dpe_du, is_a, h, z0, z1, z2, zl, s_raw, t = _layer_net(
            ua, ub, fidx, l, FB_ptr, PW_ptr, PB_ptr, WI_ptr, WH_ptr, BH_ptr, WO_ptr, BO_ptr,
            L, NH, NF, E, E_PAD, P, H, DOT, INTERP)
        # through the coordinate update
        s = tl.minimum(tl.maximum(s_raw, -8.0), 8.0)
        gy = tl.where(sidx == 0, g0, tl.where(sidx == 1, g1, g2))
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
        g0 = tl.where(sidx == 0, gx, g0)
        g1 = tl.where(sidx == 1, gx, g1)
        g2 = tl.where(sidx == 2, gx, g2)
        # output layer
        ws = tl.load(WO_ptr + l * 2 * H + hs)
        wt = tl.load(WO_ptr + l * 2 * H + H + hs)
        if DOT == 2:
            ws = _round_bf16(ws)
            wt = _round_bf16(wt)
        tl.atomic_add(DWO_ptr + l * 2 * H + hs, tl.sum(ds[:, None] * zl, axis=0))
        tl.atomic_add(DWO_ptr + l * 2 * H + H + hs, tl.sum(dt[:, None] * zl, axis=0))
        tl.atomic_add(DBO_ptr + l * 2, tl.sum(ds, axis=0))
        tl.atomic_add(DBO_ptr + l * 2 + 1, tl.sum(dt, axis=0))
        dA = _leaky_grad(ds[:, None] * ws[None, :] + dt[:, None] * wt[None, :], zl)
        # hidden layers, top down
        if NH >= 2:
            dA = _backprop_hidden(dA, z1, WH_ptr, BH_ptr, DWH_ptr, DBH_ptr, 1, l, L, H, DOT,
                                  INTERP)
        if NH >= 1:
            dA = _backprop_hidden(dA, z0, WH_ptr, BH_ptr, DWH_ptr, DBH_ptr, 0, l, L, H, DOT,
                                  INTERP)
        # first layer (non-code columns) and the frame bias
        tl.atomic_add(DWI_ptr + (l * H + h_r) * P + p_c, _mm(tl.trans(dA), h, DOT, INTERP))
        tl.atomic_add(DFB_ptr + (fidx[:, None] * L + l) * H + h_c, dA, mask=valid[:, None])
        wi = tl.load(WI_ptr + (l * H + h_r) * P + p_c)  # [H, P]
        dh = _leaky_grad(_mm(dA, wi, DOT, INTERP), h)
        # projection of the encoding
        tl.atomic_add(DPW_ptr + (l * P + p_r) * E + e_c, _mm(tl.trans(dh), pe, DOT, INTERP),
                      mask=(p_r < P) & (e_c < E))
        tl.atomic_add(DPB_ptr + l * P + tl.arange(0, P), tl.sum(dh, axis=0))
        pw = tl.load(PW_ptr + (l * P + p_r) * E + e_c, mask=(p_r < P) & (e_c < E), other=0.0)
        dpe = _mm(dh, pw, DOT, INTERP) * dpe_du
        ga = tl.sum(tl.where(is_a, dpe, 0.0), axis=1)
        gb = tl.sum(tl.where(is_a, 0.0, dpe), axis=1)
        # a = 1 if s == 0 else 0; b = 1 if s == 2 else 2
        g0 = g0 + tl.where(sidx != 0, ga, 0.0)
        g1 = g1 + tl.where(sidx == 0, ga, 0.0) + tl.where(sidx == 2, gb, 0.0)
        g2 = g2 + tl.where(sidx != 2, gb, 0.0)
    tl.store(DX_ptr + rows * 3 + 0, g0, mask=valid)
    tl.store(DX_ptr + rows * 3 + 1, g1, mask=valid)
    tl.store(DX_ptr + rows * 3 + 2, g2, mask=valid)


def _pow2(n: int) -> bool:
    return n >= 16 and (n & (n - 1)) == 0


#: widest P / H the GPU kernels are compiled and checked for (``make check-sm90``)
MAX_GPU_WIDTH = 64


def unsupported_reason(L: int, E: int, P: int, H: int, n_hidden: int) -> str | None:
    """Why the Triton kernels cannot run these widths (``None`` when they can)."""
    if not _pow2(P) or not _pow2(H):
        return f"the Triton coupling stack needs P and H powers of two >= 16, got P={P}, H={H}"
    if n_hidden > MAX_HIDDEN:
        return f"the Triton coupling stack supports at most {MAX_HIDDEN} extra hidden layers"
    if not triton_interpret() and max(P, H) > MAX_GPU_WIDTH:
        return (f"the Triton coupling stack is built for widths <= {MAX_GPU_WIDTH} on GPUs so "
                f"far, got P={P}, H={H} (at 256 the per-program weight tiles need 262 KB of "
                "shared memory, above the H100's 227 KB: they must be split first)")
    return None


def _config(M: int, H: int) -> tuple[int, int]:
    """(BLOCK_M, num_warps)."""
    if triton_interpret():
        # few, large programs: each interpreted program instance has a fixed cost
        return max(16, min(1024, triton.next_power_of_2(max(M, 1)))), 4
    return (64 if H <= 128 else 32), 8


_DOT = {"fp32": 0, "tf32": 1, "bf16": 2}


def _dims(proj_w, w_in_h, w_hid):
    L, P, E = proj_w.shape
    return L, P, E, max(16, triton.next_power_of_2(E)), w_in_h.shape[1], w_hid.shape[0]


def coupling_stack_fwd(x: torch.Tensor, frame_idx: torch.Tensor, coords: torch.Tensor,
                       weights: list[torch.Tensor], n_freq: int, inverse: bool, save: bool,
                       precision: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel.

    Args:
        x: points, float32 contiguous. [M, 3]
        frame_idx: int64. [M]
        coords: int32 coordinate of each layer. [L]
        weights: ``[frame_bias [F, L, H], proj_w [L, P, E], proj_b [L, P], w_in_h [L, H, P],
            w_hid [NH, L, H, H], b_hid [NH, L, H], w_out [L, 2, H], b_out [L, 2]]``, float32.
        n_freq: encoding frequencies (E = 2 + 4 n_freq).
        inverse: run the inverse map.
        save: also return the layer inputs ``[L, M, 3]``.
        precision: "fp32", "tf32" or "bf16".

    Returns:
        ``(y [M, 3], saved [L, M, 3] or None)``.
    """
    fb, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out = weights
    L, P, E, E_PAD, H, NH = _dims(proj_w, w_in_h, w_hid)
    M = x.shape[0]
    y = torch.empty_like(x)
    saved = torch.empty(L, M, 3, device=x.device, dtype=x.dtype) if save else None
    if M == 0:
        return y, saved
    block, warps = _config(M, H)
    wh = w_hid if NH > 0 else proj_b  # any valid pointer when there are no hidden layers
    bh = b_hid if NH > 0 else proj_b
    _coupling_stack_fwd_kernel[(triton.cdiv(M, block),)](
        x, y, saved if save else y, frame_idx, coords, fb, proj_w, proj_b, w_in_h, wh, bh,
        w_out, b_out, M, L=L, NH=NH, NF=n_freq, E=E, E_PAD=E_PAD, P=P, H=H,
        INVERSE=bool(inverse), SAVE=bool(save), DOT=_DOT[precision],
        INTERP=triton_interpret(), BLOCK_M=block, num_warps=warps)
    return y, saved


def coupling_stack_bwd(dy: torch.Tensor, saved: torch.Tensor, frame_idx: torch.Tensor,
                       coords: torch.Tensor, weights: list[torch.Tensor], n_freq: int,
                       inverse: bool, precision: str) -> list[torch.Tensor]:
    """Launch the backward kernel (same arguments as :func:`coupling_stack_fwd`).

    Returns:
        ``[dx, dframe_bias, dproj_w, dproj_b, dw_in_h, dw_hid, db_hid, dw_out, db_out]``.
    """
    fb, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out = weights
    L, P, E, E_PAD, H, NH = _dims(proj_w, w_in_h, w_hid)
    M = dy.shape[0]
    dx = torch.empty_like(dy)
    grads = [torch.zeros(w.shape, device=w.device, dtype=torch.float32) for w in weights]
    if M > 0:
        block, warps = _config(M, H)
        dfb, dpw, dpb, dwi, dwh, dbh, dwo, dbo = grads
        wh, bh = (w_hid, b_hid) if NH > 0 else (proj_b, proj_b)
        gwh, gbh = (dwh, dbh) if NH > 0 else (dpb, dpb)
        _coupling_stack_bwd_kernel[(triton.cdiv(M, block),)](
            dy, dx, saved, frame_idx, coords, fb, proj_w, proj_b, w_in_h, wh, bh, w_out, b_out,
            dfb, dpw, dpb, dwi, gwh, gbh, dwo, dbo, M, L=L, NH=NH, NF=n_freq, E=E,
            E_PAD=E_PAD, P=P, H=H, INVERSE=bool(inverse), DOT=_DOT[precision],
            INTERP=triton_interpret(), BLOCK_M=block, num_warps=warps)
    return [dx, *grads]


def flops_per_point(L: int, E: int, P: int, H: int, n_hidden: int) -> int:
    """Matrix-product FLOPs of one point through the hoisted stack (one direction)."""
    return 2 * L * (E * P + P * H + n_hidden * H * H + 2 * H)


__all__ = ["coupling_stack_bwd", "coupling_stack_fwd", "flops_per_point", "unsupported_reason"]


def sm90_specs():
    """The compiles ``make check-sm90`` checks: the widths the GPU path accepts (the cpu
    preset's 64; see ``MAX_GPU_WIDTH``), fp32 and bf16, forward and backward, with the launch
    configuration of ``_config``."""
    from omnifast.kernels._aot import AOTSpec  # noqa: PLC0415

    width = MAX_GPU_WIDTH
    dims = dict(L=6, NH=2, NF=4, E=18, E_PAD=32, P=width, H=width, INVERSE=False,
                INTERP=False)
    block, warps = 64 if width <= 128 else 32, 8  # _config() on a GPU
    common = {n: "*fp32" for n in ("FB_ptr", "PW_ptr", "PB_ptr", "WI_ptr", "WH_ptr", "BH_ptr",
                                   "WO_ptr", "BO_ptr")}
    common.update(FIDX_ptr="*i64", COORDS_ptr="*i32", SAVED_ptr="*fp32", M="i32")
    fwd = {"X_ptr": "*fp32", "Y_ptr": "*fp32", **common}
    bwd = {"DY_ptr": "*fp32", "DX_ptr": "*fp32", **common,
           **{n: "*fp32" for n in ("DFB_ptr", "DPW_ptr", "DPB_ptr", "DWI_ptr", "DWH_ptr",
                                   "DBH_ptr", "DWO_ptr", "DBO_ptr")}}
    specs = []
    for precision in ("fp32", "bf16"):
        dot = _DOT[precision]
        specs.append(AOTSpec(f"coupling_stack_fwd[{precision},H{width}]",
                             _coupling_stack_fwd_kernel, fwd,
                             {**dims, "DOT": dot, "SAVE": True, "BLOCK_M": block},
                             num_warps=warps, expect_tensor_cores=dot != 0))
        specs.append(AOTSpec(f"coupling_stack_bwd[{precision},H{width}]",
                             _coupling_stack_bwd_kernel, bwd,
                             {**dims, "DOT": dot, "BLOCK_M": block}, num_warps=warps,
                             expect_tensor_cores=dot != 0))
    return specs
