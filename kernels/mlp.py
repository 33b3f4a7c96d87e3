"""The GEMM-chain building block of the point-wise MLPs (coupling stack, affine pre-layer,
GaborNets): one kernel per linear layer, tiles of ``BLOCK_M`` >= 128 points, fused prologues and
epilogues, and the three backward GEMMs.

Design (the FLOP and byte counts are in docs/design.md, "Tensor-core MLP kernels"): a 256-wide
layer over 65,536 points is 8.6 GFLOP and moves 64 MiB of bf16 activations (read + write), 128
FLOP per byte, so one kernel per layer with the activations in global memory / L2 is close to
balanced on an H100 (about 300 bf16 FLOP per byte of HBM bandwidth) and lets every layer use
the whole GPU. Each program computes a ``[BLOCK_M, BLOCK_N]`` output tile with a K loop over
``BLOCK_K`` slices of the input activations and of the weight, both read from global memory
(L2) and software-pipelined by Triton (``num_stages``); no weight matrix is held whole in shared
memory. The elementwise work of each layer (bias, per-frame bias, activation, the networks'
encodings, filters and output maps) lives in the prologue (the A operand computed on the fly)
or the epilogue of the GEMM, never in a separate pass.

Backward per linear ``y = act(x @ W^T + b)`` with ``dy_pre = dL/d(pre-activation)``:

* input gradient: ``dx_pre = act'(x) * (dy_pre @ W)`` (:func:`_linear_dx_kernel`; the
  derivative of the *input's* activation is fused into the epilogue, read from the saved
  post-activation, whose sign is the pre-activation's for ReLU and leaky ReLU);
* weight gradient: ``dW = dy_pre^T @ x`` and ``db = sum dy_pre`` as a GEMM over points
  (:func:`_linear_dw_kernel`): split-K over the points, each split writes its own fp32 partial,
  and the partials are summed in a fixed order afterwards, no atomics, so reruns are
  bit-identical.
* per-frame sums (the coupling layers' frame-bias gradient): :func:`_segment_sum_kernel` sums
  the rows of each frame's segment in order.

Matrix-product precision ``DOT``: 0 = fp32 ("ieee"), 1 = tf32, 2 = bf16 operands; accumulation is
fp32 in all three. In the bf16 mode activations are stored in bf16 (the next layer rounds its
operands to bf16 anyway). Under ``TRITON_INTERPRET=1`` bf16 operands are rounded to bf16 (to
nearest even) and multiplied in fp32, because the interpreter has no bf16 ``tl.dot``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from omnifast.kernels._env import triton_interpret

DOT_CODE = {"fp32": 0, "tf32": 1, "bf16": 2}
ACT_NONE, ACT_LEAKY, ACT_RELU = 0, 1, 2
LEAKY_SLOPE = 0.01
#: points per tile on a GPU (wgmma needs 64 rows per warp group; two warp groups)
GPU_BLOCK_M = 128
NUM_WARPS = 8


# ------------------------------------------------------------------------------------- helpers
@triton.jit
def _round_bf16(x):
    """fp32 -> nearest bf16 value, kept in fp32 (round to nearest even)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, acc, DOT: tl.constexpr, INTERP: tl.constexpr):
    """acc + a @ b, operands at precision DOT, fp32 accumulation."""
    if DOT == 2:
        if INTERP:
            out = tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), acc,
                         input_precision="ieee")
        else:
            out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif DOT == 1:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="tf32")
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return out


@triton.jit
def _store(ptr, v, mask, BF16: tl.constexpr, INTERP: tl.constexpr):
    """Store fp32 ``v``, as bf16 (nearest even) when BF16."""
    if BF16:
        if INTERP:
            v = _round_bf16(v)
        tl.store(ptr, v.to(tl.bfloat16), mask=mask)
    else:
        tl.store(ptr, v, mask=mask)


@triton.jit
def _act(v, ACT: tl.constexpr):
    if ACT == 1:
        v = tl.where(v > 0, v, v * 0.01)
    elif ACT == 2:
        v = tl.maximum(v, 0.0)
    return v


@triton.jit
def _act_grad(g, post, ACT: tl.constexpr):
    """d/d(pre) given d/d(post) and the post-activation value (same sign as pre)."""
    if ACT == 1:
        g = tl.where(post > 0, g, g * 0.01)
    elif ACT == 2:
        g = tl.where(post > 0, g, 0.0)
    return g


@triton.jit
def _gemm(acc, A_ptr, sam, sak, rows, rmask, B_ptr, sbk, sbn, cols, cmask, K,
          BLOCK_K: tl.constexpr, DOT: tl.constexpr, INTERP: tl.constexpr):
    """acc[BM, BN] += A[rows, 0:K] @ B[0:K, cols], A(m, k) at ``A_ptr + m sam + k sak``,
    B(k, n) at ``B_ptr + k sbk + n sbn``; K a multiple of BLOCK_K. The K loop is a runtime loop
    (pipelined, not unrolled)."""
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = A_ptr + rows[:, None] * sam + ks[None, :] * sak
    b_ptrs = B_ptr + ks[:, None] * sbk + cols[None, :] * sbn
    for _k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=rmask[:, None], other=0.0)
        b = tl.load(b_ptrs, mask=cmask[None, :], other=0.0)
        acc = _dot(a, b, acc, DOT, INTERP)
        a_ptrs += BLOCK_K * sak
        b_ptrs += BLOCK_K * sbk
    return acc


# ------------------------------------------------------------------------------ generic kernels
@triton.jit
def _linear_fwd_kernel(A_ptr, W_ptr, B_ptr, FB_ptr, FIDX_ptr, Y_ptr, M, N, K, lda, ldy, ldfb,
                       ACT: tl.constexpr, FRAME_BIAS: tl.constexpr, BF16_OUT: tl.constexpr,
                       DOT: tl.constexpr, INTERP: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Y [M, N] = act(A [M, K] @ W[N, K]^T + b [+ FB[FIDX[m]]]). Grid (M tiles, N tiles)."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _gemm(acc, A_ptr, lda, 1, rows, rmask, W_ptr, 1, K, cols, cmask, K, BLOCK_K, DOT,
                INTERP)
    acc += tl.load(B_ptr + cols, mask=cmask, other=0.0)[None, :]
    if FRAME_BIAS:
        f = tl.load(FIDX_ptr + rows, mask=rmask, other=0)
        acc += tl.load(FB_ptr + f[:, None] * ldfb + cols[None, :],
                       mask=rmask[:, None] & cmask[None, :], other=0.0)
    acc = _act(acc, ACT)
    _store(Y_ptr + rows[:, None] * ldy + cols[None, :], acc, rmask[:, None] & cmask[None, :],
           BF16_OUT, INTERP)


@triton.jit
def _linear_dx_kernel(G_ptr, W_ptr, Z_ptr, DX_ptr, M, N, K, ldg, ldz, ldx, ACT: tl.constexpr,
                      BF16_OUT: tl.constexpr, DOT: tl.constexpr, INTERP: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """DX [M, K] = act'(Z) * (G [M, N] @ W [N, K]); Z is the layer's input (post-activation of
    the layer below). Grid (M tiles, K tiles of BLOCK_N); the reduction runs over N."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < M
    cols = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _gemm(acc, G_ptr, ldg, 1, rows, rmask, W_ptr, K, 1, cols, cmask, N, BLOCK_K, DOT,
                INTERP)
    mask = rmask[:, None] & cmask[None, :]
    if ACT != 0:
        z = tl.load(Z_ptr + rows[:, None] * ldz + cols[None, :], mask=mask, other=0.0)
        acc = _act_grad(acc, z.to(tl.float32), ACT)
    _store(DX_ptr + rows[:, None] * ldx + cols[None, :], acc, mask, BF16_OUT, INTERP)


@triton.jit
def _linear_dw_kernel(G_ptr, Z_ptr, DW_ptr, DB_ptr, M, N, K, ldg, ldz, rows_per_split,
                      HAS_BIAS: tl.constexpr, DOT: tl.constexpr, INTERP: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """Split s of dW [N, K] = G [M, N]^T @ Z [M, K] over points ``[s rows_per_split, ...)``:
    DW [S, N, K] and (HAS_BIAS, K-tile 0 only) DB [S, N] = column sums of G. Grid (N tiles,
    K tiles, S). ``N``, ``K`` need not be multiples of the blocks (masked)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2).to(tl.int64)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = ns < N
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    start = pid_s * rows_per_split
    stop = tl.minimum(start + rows_per_split, M)
    ps = tl.arange(0, BLOCK_P).to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    bsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for p0 in range(start, stop, BLOCK_P):
        pts = p0 + ps
        pmask = pts < stop
        g = tl.load(G_ptr + pts[None, :] * ldg + ns[:, None], mask=nmask[:, None] & pmask[None, :],
                    other=0.0)  # [BLOCK_N, BLOCK_P]: G^T
        z = tl.load(Z_ptr + pts[:, None] * ldz + ks[None, :], mask=pmask[:, None] & kmask[None, :],
                    other=0.0)  # [BLOCK_P, BLOCK_K]
        acc = _dot(g, z, acc, DOT, INTERP)
        if HAS_BIAS:
            bsum += tl.sum(g.to(tl.float32), axis=1)
    tl.store(DW_ptr + (pid_s * N + ns[:, None]) * K + ks[None, :], acc,
             mask=nmask[:, None] & kmask[None, :])
    if HAS_BIAS:
        first = (tl.zeros((BLOCK_N,), dtype=tl.int32) + pid_k) == 0
        tl.store(DB_ptr + pid_s * N + ns, bsum, mask=nmask & first)


@triton.jit
def _segment_sum_kernel(G_ptr, ORDER_ptr, OFFS_ptr, OUT_ptr, N, ldg, ldo,
                        BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """OUT[f * ldo + n] = sum over r in [OFFS[f], OFFS[f+1]) of G[ORDER[r], n], in order.
    Grid (segments, N tiles)."""
    f = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    lo = tl.load(OFFS_ptr + f)
    hi = tl.load(OFFS_ptr + f + 1)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    rs = tl.arange(0, BLOCK_R)
    for r0 in range(lo, hi, BLOCK_R):
        r = r0 + rs
        rmask = r < hi
        idx = tl.load(ORDER_ptr + r, mask=rmask, other=0)
        g = tl.load(G_ptr + idx[:, None] * ldg + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0.0)
        acc += tl.sum(g.to(tl.float32), axis=0)
    tl.store(OUT_ptr + f * ldo + cols, acc, mask=cmask)


# -------------------------------------------------------------------------------- launch config
def block_for(n: int, cap: int) -> int:
    """The largest power of two <= cap that divides n (n a multiple of 16)."""
    b = cap
    while b > 16 and n % b:
        b //= 2
    return b


def block_m(M: int) -> int:
    """Points per tile: 128 on a GPU; under the interpreter few, large programs."""
    if triton_interpret():
        return max(16, min(256, triton.next_power_of_2(max(M, 1))))
    return GPU_BLOCK_M


def _interp(interp: bool | None) -> bool:
    return triton_interpret() if interp is None else interp


def block_n(N: int, interp: bool | None = None) -> int:
    """Output columns per tile: 128 on a GPU (``interp=False``: the GPU choice anywhere, as
    ``make check-sm90`` compiles it)."""
    return block_for(N, 512 if _interp(interp) else 128)


def block_k(K: int, dot: int, interp: bool | None = None) -> int:
    """K slice: 64 (bf16) or 32 (fp32/tf32) values = 128 bytes per row on a GPU."""
    return block_for(K, 512 if _interp(interp) else (64 if dot == 2 else 32))


def num_stages(dot: int) -> int:
    """Software-pipeline depth of the K loops: 3 for every precision (at most 96 KB of shared
    memory with the fp32 tiles, 48 KB with bf16)."""
    return 3


def act_dtype(precision: str) -> torch.dtype:
    """Storage dtype of saved / passed activations at a matmul precision."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def linear_fwd(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: int, precision: str,
               out: torch.Tensor | None = None, fb: torch.Tensor | None = None,
               fidx: torch.Tensor | None = None) -> torch.Tensor:
    """``act(a @ w^T + b [+ fb[fidx]])``.

    Args:
        a: inputs, row stride free, unit column stride. [M, K]
        w: weight, contiguous. [N, K]
        b: bias, fp32. [N]
        act: ACT_NONE / ACT_LEAKY / ACT_RELU.
        precision: "fp32", "tf32" or "bf16".
        out: output view [M, N] (unit column stride), else allocated in :func:`act_dtype`.
        fb, fidx: optional per-frame bias ``[F, N]`` (row stride free) and frame index [M].

    Returns:
        ``out``. [M, N]
    """
    M, K = a.shape
    N = w.shape[0]
    if out is None:
        out = torch.empty(M, N, device=a.device, dtype=act_dtype(precision))
    if M == 0:
        return out
    dot = DOT_CODE[precision]
    bm, bn, bk = block_m(M), block_n(N), block_k(K, dot)
    has_fb = fb is not None
    _linear_fwd_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](
        a, w, b, fb if has_fb else b, fidx if has_fb else b, out, M, N, K, a.stride(0),
        out.stride(0), fb.stride(0) if has_fb else 0, ACT=act, FRAME_BIAS=has_fb,
        BF16_OUT=out.dtype == torch.bfloat16, DOT=dot, INTERP=triton_interpret(),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=NUM_WARPS, num_stages=num_stages(dot))
    return out


def linear_dx(g: torch.Tensor, w: torch.Tensor, z: torch.Tensor | None, act: int,
              precision: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """``act'(z) * (g @ w)``: the gradient at the pre-activation of the layer below.

    Args:
        g: gradient at this layer's pre-activation. [M, N]
        w: weight, contiguous. [N, K]
        z: this layer's input (post-activation below), or None with ``act`` = ACT_NONE. [M, K]
        out: output view, else allocated in :func:`act_dtype`. [M, K]
    """
    M, N = g.shape
    K = w.shape[1]
    if out is None:
        out = torch.empty(M, K, device=g.device, dtype=act_dtype(precision))
    if M == 0:
        return out
    dot = DOT_CODE[precision]
    bm, bn, bk = block_m(M), block_n(K), block_k(N, dot)
    _linear_dx_kernel[(triton.cdiv(M, bm), triton.cdiv(K, bn))](
        g, w, z if z is not None else g, out, M, N, K, g.stride(0),
        z.stride(0) if z is not None else 0, out.stride(0), ACT=act,
        BF16_OUT=out.dtype == torch.bfloat16, DOT=dot, INTERP=triton_interpret(),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=NUM_WARPS, num_stages=num_stages(dot))
    return out


def _dw_blocks(N: int, K: int, dot: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, BLOCK_P) of the weight-gradient kernel."""
    if triton_interpret():
        return (max(16, min(512, triton.next_power_of_2(N))),
                max(16, min(512, triton.next_power_of_2(K))), 256)
    return _dw_blocks_gpu(N, K, dot)


def dw_splits(M: int, tiles: int) -> int:
    """How many point splits: enough programs for two waves of 132 SMs, >= 1024 points each;
    one under the interpreter."""
    if triton_interpret():
        return 1
    return max(1, min(triton.cdiv(264, tiles), triton.cdiv(M, 1024)))


def linear_dw(g: torch.Tensor, z: torch.Tensor, precision: str, out_w: torch.Tensor,
              out_b: torch.Tensor | None = None, splits: int | None = None) -> None:
    """``out_w = g^T @ z`` and ``out_b = g.sum(0)`` in fp32, deterministic: split-K partials
    summed in a fixed order (a single split writes the outputs directly).

    Args:
        g: gradient at the layer's pre-activation (unit column stride). [M, N]
        z: the layer's input (unit column stride). [M, K]
        precision: "fp32", "tf32" or "bf16" (the products' operands).
        out_w: fp32, contiguous. [N, K]
        out_b: fp32, contiguous, or None for no bias. [N]
        splits: how many point splits (default: :func:`dw_splits`).
    """
    M, N = g.shape
    K = z.shape[1]
    if not out_w.is_contiguous() or (out_b is not None and not out_b.is_contiguous()):
        raise ValueError("linear_dw: out_w and out_b must be contiguous")
    if M == 0:
        out_w.zero_()
        if out_b is not None:
            out_b.zero_()
        return
    dot = DOT_CODE[precision]
    bn, bk, bp = _dw_blocks(N, K, dot)
    tiles = triton.cdiv(N, bn) * triton.cdiv(K, bk)
    S = dw_splits(M, tiles) if splits is None else max(1, int(splits))
    per = triton.cdiv(triton.cdiv(M, S), bp) * bp
    S = triton.cdiv(M, per)
    bias = out_b is not None
    if S == 1:
        dw, db = out_w, (out_b if bias else out_w)
    else:
        dw = torch.empty(S, N, K, device=g.device, dtype=torch.float32)
        db = torch.empty(S, N, device=g.device, dtype=torch.float32) if bias else dw
    _linear_dw_kernel[(triton.cdiv(N, bn), triton.cdiv(K, bk), S)](
        g, z, dw, db, M, N, K, g.stride(0), z.stride(0), per, HAS_BIAS=bias, DOT=dot,
        INTERP=triton_interpret(), BLOCK_N=bn, BLOCK_K=bk, BLOCK_P=bp, num_warps=NUM_WARPS,
        num_stages=num_stages(dot))
    if S > 1:
        torch.sum(dw, 0, out=out_w)
        if bias:
            torch.sum(db, 0, out=out_b)


def segments(fidx: torch.Tensor, F: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order [M] int64, offsets [F + 1] int64): the points of frame f are
    ``order[offsets[f]:offsets[f + 1]]``, in increasing index (a stable sort). No host
    synchronisation (``bincount`` would read the largest id back), so CUDA graphs can capture
    it; the counts are integer sums, exact in any order."""
    order = torch.argsort(fidx, stable=True)
    counts = torch.zeros(F, dtype=torch.int64, device=fidx.device)
    counts.scatter_add_(0, fidx, torch.ones_like(fidx))
    offs = torch.zeros(F + 1, dtype=torch.int64, device=fidx.device)
    torch.cumsum(counts, 0, out=offs[1:])
    return order, offs


def segment_sum(g: torch.Tensor, order: torch.Tensor, offs: torch.Tensor,
                out: torch.Tensor) -> torch.Tensor:
    """``out[f] = sum of g[order[offs[f]:offs[f+1]]]`` (fp32, fixed order).

    Args:
        g: rows to sum (unit column stride). [M, N]
        order, offs: from :func:`segments`.
        out: fp32 output view, unit column stride. [F, N]
    """
    F, N = out.shape
    if F == 0:
        return out
    bn = max(16, min(512 if triton_interpret() else 128, triton.next_power_of_2(N)))
    br = 256 if triton_interpret() else 64
    _segment_sum_kernel[(F, triton.cdiv(N, bn))](g, order, offs, out, N, g.stride(0),
                                                 out.stride(0), BLOCK_R=br, BLOCK_N=bn,
                                                 num_warps=4)
    return out


def sm90_specs():
    """The generic layer kernels at the launch configurations used on a GPU, for the omnimotion
    widths (256, 512) and the cpu preset's (64): bf16 and tf32 (tensor cores), and the exact
    fp32 mode at the omnimotion widths."""
    from omnifast.kernels._aot import AOTSpec  # noqa: PLC0415

    specs = []
    for prec in ("bf16", "tf32", "fp32"):
        dot = DOT_CODE[prec]
        act = "*bf16" if dot == 2 else "*fp32"
        for width in ((256, 512) if dot == 0 else (256, 512, 64)):
            bn, bk = block_n(width, False), block_k(width, dot, False)
            sig = dict(A_ptr=act, W_ptr=act, B_ptr="*fp32", FB_ptr="*fp32", FIDX_ptr="*i64",
                       Y_ptr=act, M="i32", N="i32", K="i32", lda="i32", ldy="i32", ldfb="i32")
            for fb in ((False, True) if width != 512 else (False,)):
                specs.append(AOTSpec(
                    f"linear_fwd[{prec},{width},fb={int(fb)}]", _linear_fwd_kernel, sig,
                    dict(ACT=ACT_LEAKY, FRAME_BIAS=fb, BF16_OUT=dot == 2, DOT=dot, INTERP=False,
                         BLOCK_M=GPU_BLOCK_M, BLOCK_N=bn, BLOCK_K=bk),
                    num_warps=NUM_WARPS, num_stages=num_stages(dot), expect_tensor_cores=dot != 0))
            sig = dict(G_ptr=act, W_ptr=act, Z_ptr=act, DX_ptr=act, M="i32", N="i32", K="i32",
                       ldg="i32", ldz="i32", ldx="i32")
            specs.append(AOTSpec(
                f"linear_dx[{prec},{width}]", _linear_dx_kernel, sig,
                dict(ACT=ACT_LEAKY, BF16_OUT=dot == 2, DOT=dot, INTERP=False,
                     BLOCK_M=GPU_BLOCK_M, BLOCK_N=bn, BLOCK_K=bk),
                num_warps=NUM_WARPS, num_stages=num_stages(dot), expect_tensor_cores=dot != 0))
            bn, bk, bp = _dw_blocks_gpu(width, width, dot)
            sig = dict(G_ptr=act, Z_ptr=act, DW_ptr="*fp32", DB_ptr="*fp32", M="i32", N="i32",
                       K="i32", ldg="i32", ldz="i32", rows_per_split="i32")
            specs.append(AOTSpec(
                f"linear_dw[{prec},{width}]", _linear_dw_kernel, sig,
                dict(HAS_BIAS=True, DOT=dot, INTERP=False, BLOCK_N=bn, BLOCK_K=bk, BLOCK_P=bp),
                num_warps=NUM_WARPS, num_stages=num_stages(dot), expect_tensor_cores=dot != 0))
    specs.append(AOTSpec(
        "segment_sum[256]", _segment_sum_kernel,
        dict(G_ptr="*bf16", ORDER_ptr="*i64", OFFS_ptr="*i64", OUT_ptr="*fp32", N="i32",
             ldg="i32", ldo="i32"), dict(BLOCK_R=64, BLOCK_N=128), num_warps=4))
    return specs


def _dw_blocks_gpu(N: int, K: int, dot: int) -> tuple[int, int, int]:
    return (max(16, min(128, triton.next_power_of_2(N))),
            max(16, min(128, triton.next_power_of_2(K))), 64 if dot == 2 else 32)
