"""Parity of the fused compositing backends with the reference (omnifast.reference.composite)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close

import omnifast
from omnifast._ext import load_extension
from omnifast.dispatch import BackendUnavailableError, available_backends
from omnifast.ops.composite import composite, composite_argmax, occlusion_score
from omnifast.reference.composite import (
    composite_argmax_ref,
    composite_ref,
    occlusion_score_ref,
)


def _has_cpu_kernels() -> bool:
    ext = load_extension()
    return ext is not None and hasattr(ext, "composite_fwd")


def _has_triton() -> bool:
    return available_backends("composite", "cuda" if torch.cuda.is_available() else "cpu")[
        "triton"] is None


def _has_cuda_kernels() -> bool:
    return torch.cuda.is_available() and available_backends("composite", "cuda")["cuda"] is None


# (backend, device, dtype)
CASES = [
    pytest.param("cpu", "cpu", torch.float32, id="cpu-fp32",
                 marks=pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")),
    pytest.param("cpu", "cpu", torch.float64, id="cpu-fp64",
                 marks=pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")),
    pytest.param("triton", "cuda" if torch.cuda.is_available() else "cpu", torch.float32,
                 id="triton-fp32",
                 marks=pytest.mark.skipif(not _has_triton(), reason="triton cannot run here")),
    pytest.param("cuda", "cuda", torch.float32, id="cuda-fp32",
                 marks=pytest.mark.skipif(not _has_cuda_kernels(), reason="no CUDA kernels")),
    pytest.param("cuda", "cuda", torch.float64, id="cuda-fp64",
                 marks=pytest.mark.skipif(not _has_cuda_kernels(), reason="no CUDA kernels")),
]

TOL = {torch.float32: dict(rtol=1e-4, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}

# (batch shape, K, C)
SHAPES = [
    ((37,), 32, 7),     # one training ray batch in miniature: colour 3 + point 3 + depth 1
    ((5,), 1, 3),       # K = 1
    ((2, 3), 33, 1),    # odd K, batch dims, one channel
    ((9,), 13, 5),      # odd K, a channel count with no specialised kernel
    ((4,), 128, 4),     # the longest rays
    ((0,), 8, 3),       # R = 0
    ((6,), 8, 0),       # no value channels
]

def _shape_id(shape) -> str:
    return f"{'x'.join(map(str, shape[0]))}-K{shape[1]}-C{shape[2]}"


OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"num_masked_near": 3}, id="near3"),
    pytest.param({"value_mask": True, "value_mask_from": 2}, id="mask2"),
    pytest.param({"value_mask": True, "value_mask_from": 0, "num_masked_near": 1}, id="mask0near1"),
]


def _inputs(batch, K, C, device, dtype, seed=0, sigma_scale=2.0):
    g = torch.Generator().manual_seed(seed)
    sigma = (torch.rand(*batch, K, generator=g, dtype=torch.float64) * sigma_scale)
    values = torch.randn(*batch, K, C, generator=g, dtype=torch.float64)
    mask = torch.rand(*batch, K, generator=g) > 0.3
    dout = torch.randn(*batch, C, generator=g, dtype=torch.float64)
    dweights = torch.randn(*batch, K, generator=g, dtype=torch.float64)
    cast = dict(device=device, dtype=dtype)
    return (sigma.to(**cast), values.to(**cast), mask.to(device), dout.to(**cast),
            dweights.to(**cast))


def _run(fn, sigma, values, dout, dweights, **kw):
    """Forward, then backward with the given upstream gradients (dweights may be None)."""
    s = sigma.detach().clone().requires_grad_(True)
    v = values.detach().clone().requires_grad_(True)
    out, weights = fn(s, v, **kw)
    outs, grads = [out], [dout]
    if dweights is not None:
        outs.append(weights)
        grads.append(dweights)
    ds, dv = torch.autograd.grad(outs, [s, v], grads, allow_unused=True)
    return out, weights, ds, dv


def _compare(backend, sigma, values, dout, dweights, name, tol, **kw):
    with omnifast.backend(backend):
        out, w, ds, dv = _run(composite, sigma, values, dout, dweights, **kw)
    kw_ref = {k: v for k, v in kw.items() if k != "need_weights"}
    out_r, w_r, ds_r, dv_r = _run(composite_ref, sigma, values, dout, dweights, **kw_ref)
    assert_close(out, out_r, name=f"{name} out", **tol)
    if kw.get("need_weights", True):
        assert_close(w, w_r, name=f"{name} weights", **tol)
    else:
        assert w is None
    assert_close(ds, ds_r, name=f"{name} dsigma", **tol)
    assert_close(dv, dv_r, name=f"{name} dvalues", **tol)


@pytest.mark.parametrize("backend,device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("options", OPTIONS)
def test_parity(backend, device, dtype, shape, options):
    batch, K, C = shape
    sigma, values, mask, dout, dweights = _inputs(batch, K, C, device, dtype)
    kw = dict(options)
    if kw.pop("value_mask", False):
        kw["value_mask"] = mask
    _compare(backend, sigma, values, dout, dweights, backend, TOL[dtype], **kw)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_without_weights(backend, device, dtype):
    """need_weights=False: no weights returned; gradients from the composited values only."""
    sigma, values, mask, dout, _ = _inputs((23,), 17, 7, device, dtype, seed=1)
    _compare(backend, sigma, values, dout, None, backend, TOL[dtype], need_weights=False,
             value_mask=mask, value_mask_from=3)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_partial_grads(backend, device, dtype):
    """Only one input needs a gradient, and only the weights get an upstream gradient."""
    sigma, values, _, _, dweights = _inputs((11,), 9, 3, device, dtype, seed=2)
    with omnifast.backend(backend):
        s = sigma.clone().requires_grad_(True)
        _, w = composite(s, values)
        (ds,) = torch.autograd.grad(w, s, dweights)
    s_r = sigma.clone().requires_grad_(True)
    _, w_r = composite_ref(s_r, values)
    (ds_r,) = torch.autograd.grad(w_r, s_r, dweights)
    assert_close(ds, ds_r, name="dsigma", **TOL[dtype])
    with omnifast.backend(backend):
        v = values.clone().requires_grad_(True)
        out, _ = composite(sigma, v)
        (dv,) = torch.autograd.grad(out, v, torch.ones_like(out) * 0.5)
    _, w_r = composite_ref(sigma, values)
    assert_close(dv, (w_r * 0.5).unsqueeze(-1).expand_as(values), name="dvalues", **TOL[dtype])


@pytest.mark.parametrize("backend,device,dtype", CASES)
@pytest.mark.parametrize("kind", ["zero", "huge", "inf", "mixed"])
def test_extreme_sigma(backend, device, dtype, kind):
    """sigma = 0 (nothing absorbed), very large sigma (alpha = 1, T falls by 1e-10 per sample)."""
    sigma, values, _, dout, dweights = _inputs((8,), 12, 4, device, dtype, seed=3)
    if kind == "zero":
        sigma = torch.zeros_like(sigma)
    elif kind == "huge":
        sigma = torch.full_like(sigma, 1e4)
    elif kind == "inf":
        sigma[:, 2] = float("inf")
    else:
        sigma[:, ::3] = 0.0
        sigma[:, 1::3] = 50.0
    _compare(backend, sigma, values, dout, dweights, f"{backend} {kind}", TOL[dtype])
    if kind == "zero":
        with omnifast.backend(backend):
            out, w = composite(sigma, values)
        assert torch.count_nonzero(out) == 0 and torch.count_nonzero(w) == 0


@pytest.mark.parametrize("backend,device,dtype", CASES)
@pytest.mark.parametrize("where", ["sigma", "values"])
def test_nan_propagates(backend, device, dtype, where):
    """A NaN shows up in exactly the outputs and gradients where the reference has one."""
    sigma, values, _, dout, dweights = _inputs((6,), 10, 3, device, dtype, seed=4)
    if where == "sigma":
        sigma[2, 4] = float("nan")
    else:
        values[3, 6, 1] = float("nan")
    _compare(backend, sigma, values, dout, dweights, f"{backend} nan-{where}", TOL[dtype])
    with omnifast.backend(backend):
        out, w = composite(sigma, values)
    row = 2 if where == "sigma" else 3
    assert torch.isnan(out[row]).any()
    assert not torch.isnan(out[row + 1]).any()


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
@pytest.mark.parametrize("options", OPTIONS)
def test_gradcheck_cpu(options):
    sigma, values, mask, _, _ = _inputs((3,), 6, 4, "cpu", torch.float64, seed=5)
    kw = dict(options)
    if kw.pop("value_mask", False):
        kw["value_mask"] = mask

    def fn(s, v):
        with omnifast.backend("cpu"):
            return composite(s, v, **kw)

    assert torch.autograd.gradcheck(fn, (sigma.requires_grad_(True), values.requires_grad_(True)))


def test_gradcheck_reference():
    sigma, values, mask, _, _ = _inputs((2,), 5, 3, "cpu", torch.float64, seed=6)
    assert torch.autograd.gradcheck(
        lambda s, v: composite_ref(s, v, 1, value_mask=mask, value_mask_from=1),
        (sigma.requires_grad_(True), values.requires_grad_(True)))


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
def test_transmittance_rounding_vs_float64():
    """The fp32 running product of the fused kernel stays within about one ulp per sample of the
    exact (fp64) transmittance, like the reference's fp32 cumprod. sigma in [0.2, 0.4] keeps
    alpha = 1 - exp(-sigma) well conditioned, so the error measured is the transmittance's."""
    K = 64
    g = torch.Generator().manual_seed(7)
    sigma = (0.2 + 0.2 * torch.rand(512, K, generator=g)).double()
    values = torch.zeros(512, K, 0, dtype=torch.float64)
    _, w64 = composite_ref(sigma, values)
    with omnifast.backend("cpu"):
        _, w32 = composite(sigma.float(), values.float())
    _, w32_ref = composite_ref(sigma.float(), values.float())
    rel = ((w32.double() - w64).abs() / w64).max().item()
    rel_ref = ((w32_ref.double() - w64).abs() / w64).max().item()
    eps = torch.finfo(torch.float32).eps
    assert rel < (K + 16) * eps, f"fused fp32 weights: max rel error {rel:.3g} vs fp64"
    assert rel_ref < (K + 16) * eps, f"reference fp32 weights: max rel error {rel_ref:.3g}"



# --------------------------------------------------------------------------- CPU float32 tiles
# The CPU float32 kernels run tiles of 8 rays (one per vector lane) for 1 <= C <= 8 channels and
# K <= 128 samples; other shapes take the per-ray path. These shapes cover partial tiles (R not
# a multiple of 8), several threads' chunks (R above the parallel grain of 64 tiles), K tails
# (K not a multiple of 8), every channel count of the tile path and both sides of its limits.
TILE_SHAPES = [
    ((1037,), 13, 8),   # 129 full tiles + 5 rays, K tail of 5, all 8 channel lanes
    ((8,), 8, 2),       # exactly one tile, one sample block
    ((3,), 1, 6),       # one partial tile, K = 1
    ((17,), 127, 7),    # K tail of 7 at the largest block count
    ((9,), 129, 7),     # K above the tile limit: per-ray path
    ((30,), 20, 9),     # C above the tile limit: per-ray path
    ((600,), 32, 7),    # the training shape, several threads
    # K a multiple of 8 without a value mask: whole tiles take the block backward, every C
    ((21,), 16, 1),
    ((19,), 24, 2),
    ((17,), 8, 3),
    ((23,), 16, 4),
    ((18,), 40, 5),
    ((25,), 8, 6),
    ((9,), 128, 8),
]


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
@pytest.mark.parametrize("shape", TILE_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("options", OPTIONS)
def test_cpu_tiles(shape, options):
    batch, K, C = shape
    sigma, values, mask, dout, dweights = _inputs(batch, K, C, "cpu", torch.float32, seed=11)
    kw = dict(options)
    if kw.pop("value_mask", False):
        kw["value_mask"] = mask
    _compare("cpu", sigma, values, dout, dweights, "cpu tiles", TOL[torch.float32], **kw)
    _compare("cpu", sigma, values, dout, None, "cpu tiles no-weights", TOL[torch.float32],
             need_weights=False, **kw)


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
def test_cpu_tiles_nan_stays_in_its_lane():
    """A NaN in one ray of a tile reaches that ray's outputs and gradients only, not the other
    seven rays of its tile (they share vector registers)."""
    sigma, values, _, dout, dweights = _inputs((16,), 11, 7, "cpu", torch.float32, seed=12)
    sigma[3, 5] = float("nan")
    values[12, 9, 6] = float("nan")
    values[13, 10, 0] = float("inf")
    _compare("cpu", sigma, values, dout, dweights, "cpu tiles nan", TOL[torch.float32])
    with omnifast.backend("cpu"):
        s = sigma.clone().requires_grad_(True)
        v = values.clone().requires_grad_(True)
        out, w = composite(s, v)
        ds, dv = torch.autograd.grad([out, w], [s, v], [dout, dweights])
    for r in range(16):
        has_nan = bool(torch.isnan(out[r]).any() or torch.isnan(ds[r]).any()
                       or torch.isnan(dv[r]).any())
        if r in (3, 12):
            assert has_nan, r
        elif r != 13:  # the Inf row: its NaN pattern is compared with the reference's above
            assert not has_nan and torch.isfinite(out[r]).all(), r


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
@pytest.mark.parametrize("C", [1, 3, 7, 8])
def test_cpu_block_backward_matches_tile_backward_bitwise(C):
    """Whole tiles of 8 rays (K a multiple of 8, no value mask) take the block backward, the
    last partial tile the general tile backward. The same rays, shifted by 5 rows, move from
    one kernel to the other: their gradients must be bit-identical."""
    sigma, values, _, dout, dweights = _inputs((21,), 16, C, "cpu", torch.float32, seed=13)

    def grads(lo, hi):
        with omnifast.backend("cpu"):
            s = sigma[lo:hi].clone().requires_grad_(True)
            v = values[lo:hi].clone().requires_grad_(True)
            out, w = composite(s, v, 2)
            return torch.autograd.grad([out, w], [s, v], [dout[lo:hi], dweights[lo:hi]])

    ds_a, dv_a = grads(0, 13)    # rays 0-7 block, 8-12 tile
    ds_b, dv_b = grads(5, 21)    # rays 5-12 block, 13-20 block
    assert torch.equal(ds_a[5:13], ds_b[:8]) and torch.equal(dv_a[5:13], dv_b[:8])
    ds_c, dv_c = grads(13, 21)   # rays 13-20 block again, as the first tile
    assert torch.equal(ds_b[8:], ds_c) and torch.equal(dv_b[8:], dv_c)


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
@pytest.mark.parametrize("C", [1, 3, 7, 8])
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_block_forward_matches_tile_forward_bitwise(C, masked):
    """The forward of whole tiles of 8 rays with K a multiple of 8 is the block kernel, that of
    the last partial tile the general tile kernel. The same rays, shifted by 5 rows, move from
    one to the other: outputs and weights must be bit-identical (with a value mask too)."""
    sigma, values, mask, _, _ = _inputs((21,), 16, C, "cpu", torch.float32, seed=17)

    def fwd(lo, hi):
        kw = dict(value_mask=mask[lo:hi], value_mask_from=C // 2) if masked else {}
        with omnifast.backend("cpu"), torch.no_grad():
            return composite(sigma[lo:hi], values[lo:hi], 2, **kw)

    out_a, w_a = fwd(0, 13)    # rays 0-7 block, 8-12 tile
    out_b, w_b = fwd(5, 21)    # rays 5-12 block, 13-20 block
    assert torch.equal(out_a[5:13], out_b[:8]) and torch.equal(w_a[5:13], w_b[:8])
    out_c, w_c = fwd(13, 21)   # rays 13-20 block again, as the first tile
    assert torch.equal(out_b[8:], out_c) and torch.equal(w_b[8:], w_c)
    # and both agree with the reference
    ref_out, ref_w = composite_ref(sigma[5:21], values[5:21], 2,
                                   **(dict(value_mask=mask[5:21], value_mask_from=C // 2)
                                      if masked else {}))
    torch.testing.assert_close(out_b, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_b, ref_w, rtol=1e-5, atol=1e-6)


def _run_with_switch_off_and_on(script: str, switch: str) -> list:
    """Runs `script` (which saves its results to the path in argv[1]) in two subprocesses, with
    the environment switch set to "0" and unset (switches are read once per process); returns
    the two loaded results in that order."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for flag in ("0", None):
            path = os.path.join(tmp, f"r{flag}.pt")
            env = {k: v for k, v in os.environ.items() if k != switch}
            if flag is not None:
                env[switch] = flag
            subprocess.run([sys.executable, "-c", script, path], check=True, env=env)
            results.append(torch.load(path))
    return results


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
def test_cpu_plain_stores_match_streaming_stores():
    """By default dvalues above 32 MiB and weights and dsigma from 4 MiB are written with
    streaming stores (weights and dsigma staged per tile); with OMNIFAST_COMPOSITE_STREAM=0
    every output is written with plain stores. Both give bit-identical results. The switch is
    read once per process, so each runs in a subprocess. Shapes: [40001, 32, 7] streams
    dvalues (36 MB), weights and dsigma (5 MB each) through the block kernels and the last
    partial tile; [66003, 128, 1] streams all three (34 MB each); R is not a multiple of the
    tile or of the parallel grain."""
    script = (
        "import sys, torch, omnifast\n"
        "from omnifast.ops.composite import composite\n"
        "out = []\n"
        "for R, K, C in ((40001, 32, 7), (66003, 128, 1)):\n"
        "    g = torch.Generator().manual_seed(R)\n"
        "    s = (torch.rand(R, K, generator=g) * 2).requires_grad_(True)\n"
        "    v = torch.randn(R, K, C, generator=g).requires_grad_(True)\n"
        "    with omnifast.backend('cpu'):\n"
        "        o, w = composite(s, v)\n"
        "    ones = [torch.ones_like(o), torch.ones_like(w)]\n"
        "    ds, dv = torch.autograd.grad([o, w], [s, v], ones)\n"
        "    out += [o, w, ds, dv]\n"
        "torch.save(out, sys.argv[1])\n"
    )
    results = _run_with_switch_off_and_on(script, "OMNIFAST_COMPOSITE_STREAM")
    for a, b in zip(*results):
        assert torch.equal(a, b)
    # and they are right (the last ray of each shape ends exactly at the tensor's end)
    o, w, ds, dv = results[1][:4]
    g = torch.Generator().manual_seed(40001)
    s = (torch.rand(40001, 32, generator=g) * 2).requires_grad_(True)
    v = torch.randn(40001, 32, 7, generator=g).requires_grad_(True)
    o_r, w_r = composite_ref(s, v)
    ds_r, dv_r = torch.autograd.grad([o_r, w_r], [s, v], [torch.ones_like(o_r),
                                                         torch.ones_like(w_r)])
    for a, e, n in ((o, o_r, "out"), (w, w_r, "weights"), (ds, ds_r, "dsigma"),
                    (dv, dv_r, "dvalues")):
        assert_close(a, e, name=n, **TOL[torch.float32])


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
def test_cpu_output_cache_reuses_blocks_without_stale_data():
    """Outputs of 4 MiB and more come from a cache of freed blocks. A block handed out again
    still holds the previous call's data: poison it with NaN, free it, and check that the
    next call (same sizes, so the same blocks) overwrites every element and matches the
    reference; float64 and an odd R take the same cache."""
    ext = load_extension()
    for R, K, C, dtype in ((5001, 32, 7, torch.float32), (3003, 33, 6, torch.float64)):
        g = torch.Generator().manual_seed(R)
        s = (torch.rand(R, K, generator=g) * 2).to(dtype)
        v = torch.randn(R, K, C, generator=g).to(dtype)
        go, gw = torch.randn(R, C, generator=g).to(dtype), torch.randn(R, K, generator=g).to(dtype)
        ds, dv = ext.composite_bwd(s, v, None, go, gw, 0, 0, True, True)
        o, w = ext.composite_fwd(s, v, None, 0, 0, True)
        ptrs = {ds.data_ptr(), dv.data_ptr(), w.data_ptr()}
        for t in (ds, dv, o, w):
            t.fill_(float("nan"))
        del ds, dv, o, w
        assert ext.composite_output_cache_bytes() >= R * K * C * v.element_size()
        o, w = ext.composite_fwd(s, v, None, 0, 0, True)
        ds, dv = ext.composite_bwd(s, v, None, go, gw, 0, 0, True, True)
        assert dv.data_ptr() in ptrs  # the block was reused
        sr, vr = s.clone().requires_grad_(True), v.clone().requires_grad_(True)
        o_r, w_r = composite_ref(sr, vr)
        ds_r, dv_r = torch.autograd.grad([o_r, w_r], [sr, vr], [go, gw])
        for a, e, n in ((o, o_r, "out"), (w, w_r, "weights"), (ds, ds_r, "dsigma"),
                        (dv, dv_r, "dvalues")):
            assert_close(a, e, name=n, **TOL[dtype])


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
def test_cpu_output_cache_off():
    """OMNIFAST_COMPOSITE_CACHE=0 (read once per process, so in a subprocess) keeps nothing
    cached and gives bit-identical outputs."""
    script = (
        "import sys, torch\n"
        "from omnifast._ext import load_extension\n"
        "ext = load_extension()\n"
        "g = torch.Generator().manual_seed(1)\n"
        "R, K, C = 5001, 32, 7\n"
        "s, v = torch.rand(R, K, generator=g), torch.randn(R, K, C, generator=g)\n"
        "go, gw = torch.randn(R, C, generator=g), torch.randn(R, K, generator=g)\n"
        "res = [t.clone() for t in ext.composite_bwd(s, v, None, go, gw, 0, 0, True, True)]\n"
        "res += [t.clone() for t in ext.composite_fwd(s, v, None, 0, 0, True)]\n"
        "torch.save([res, ext.composite_output_cache_bytes()], sys.argv[1])\n"
    )
    results = _run_with_switch_off_and_on(script, "OMNIFAST_COMPOSITE_CACHE")
    (off, off_cached), (on, on_cached) = results
    assert off_cached == 0 and on_cached > 0
    for a, b in zip(off, on):
        assert torch.equal(a, b)


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
def test_cpu_output_cache_reported_to_profiler():
    """Blocks from the output cache are reported to the profiler's memory events like torch's
    own allocations (the benchmarks' memory columns rely on it): a backward's allocations add
    up to at least dsigma + dvalues, and its frees bring the balance back to zero."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    ext = load_extension()
    R, K, C = 5001, 32, 7
    s, v = torch.rand(R, K), torch.randn(R, K, C)
    go, gw = torch.randn(R, C), torch.randn(R, K)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        ds, dv = ext.composite_bwd(s, v, None, go, gw, 0, 0, True, True)
        del ds, dv
    usage = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage]
    assert sum(u for u in usage if u > 0) >= R * K * (C + 1) * 4
    assert sum(usage) == 0


# --------------------------------------------------------------------------- inference helpers
@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_argmax(backend, device, dtype):
    sigma, _, _, _, _ = _inputs((2, 50), 19, 0, device, dtype, seed=8)
    sigma[0, 0] = 0.0                    # all weights 0: tie, first index wins
    sigma[0, 1, :2] = 0.0                # leading zero weights
    sigma[0, 2, 5] = float("nan")        # NaN weight counts as the maximum, like torch.argmax
    sigma[0, 3, :7] = 0.01               # light reaches sample 7 ...
    sigma[0, 3, 7] = float("inf")        # ... where alpha = 1: the clear maximum
    with omnifast.backend(backend):
        idx = composite_argmax(sigma)
    ref = composite_argmax_ref(sigma)
    assert idx.dtype == torch.int64 and idx.shape == ref.shape
    assert torch.equal(idx.cpu(), ref.cpu()), (idx != ref).nonzero()[:5]
    assert idx[0, 0] == 0 and idx[0, 2] == 5 and idx[0, 3] == 7


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_argmax_k1_and_empty(backend, device, dtype):
    with omnifast.backend(backend):
        assert torch.equal(composite_argmax(torch.rand(7, 1, device=device, dtype=dtype)).cpu(),
                           torch.zeros(7, dtype=torch.int64))
        assert composite_argmax(torch.rand(0, 4, device=device, dtype=dtype)).shape == (0,)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_occlusion_score(backend, device, dtype):
    sigma, _, _, _, _ = _inputs((3, 40), 32, 0, device, dtype, seed=9)
    depths = torch.linspace(0, 2, 32, device=device, dtype=dtype).expand_as(sigma).contiguous()
    limit = torch.rand(3, 40, device=device, dtype=dtype) * 2.2 - 0.1
    limit[0, 0] = depths[0, 0, 5]        # a sample exactly at the limit is left out
    sigma[1, 0, 3] = float("nan")        # NaN weights are not hidden, even behind the limit
    limit[1, 0] = 0.0
    with omnifast.backend(backend):
        score = occlusion_score(sigma, depths, limit)
    ref = occlusion_score_ref(sigma, depths, limit)
    assert_close(score, ref, name="occlusion", **TOL[dtype])
    assert torch.isnan(score[1, 0])
    with omnifast.backend(backend):
        assert occlusion_score(sigma[:0], depths[:0], limit[:0]).shape == (0, 40)


# --------------------------------------------------------------------------- dispatch
def test_auto_backend_and_errors():
    sigma = torch.rand(4, 8)
    values = torch.rand(4, 8, 3)
    out, w = composite(sigma, values)
    out_r, w_r = composite_ref(sigma, values)
    assert_close(out, out_r, name="auto out", rtol=1e-5, atol=1e-6)
    # half precision falls back to the reference under auto, and an explicit fused backend
    # says why it cannot run
    out_h, _ = composite(sigma.bfloat16(), values.bfloat16())
    assert out_h.dtype == torch.bfloat16
    with pytest.raises(BackendUnavailableError, match="float32"):
        with omnifast.backend("cpu"):
            composite(sigma.bfloat16(), values.bfloat16())
    with pytest.raises(ValueError, match="values must be"):
        composite(sigma, values[:, :7])
    with pytest.raises(ValueError, match="value_mask"):
        composite(sigma, values, value_mask=torch.ones(4, 7, dtype=torch.bool))


@pytest.mark.skipif(not _has_cpu_kernels(), reason="omnifast._C not built")
def test_noncontiguous_inputs():
    sigma, values, _, dout, dweights = _inputs((10,), 6, 3, "cpu", torch.float32, seed=10)
    s_t = sigma.t().contiguous().t()                   # same values, column-major
    v_t = values.transpose(0, 1).contiguous().transpose(0, 1)
    assert not s_t.is_contiguous() and not v_t.is_contiguous()
    _compare("cpu", s_t, v_t, dout, dweights, "noncontiguous", TOL[torch.float32])


def test_sm90_specs_cover_every_kernel():
    """``make check-sm90`` compiles ``sm90_specs()`` for the H100; every kernel is listed."""
    from omnifast.kernels import composite as kc

    names = {spec.fn.fn.__name__ if hasattr(spec.fn, "fn") else spec.fn.__name__
             for spec in kc.sm90_specs()}
    assert names == {"_composite_fwd_kernel", "_composite_bwd_kernel",
                     "_composite_argmax_kernel", "_occlusion_score_kernel"}
