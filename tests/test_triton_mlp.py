"""Parity of the tensor-core Triton MLP kernels (coupling stack, affine pre-layer, GaborNets)
with the reference, at the original widths (256, 512) on small point counts.

On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1`` on CPU tensors (set by
conftest.py); with a GPU the same tests run on CUDA tensors. Each interpreted program instance
costs milliseconds, so the point counts stay small (the kernels use one program per 256 points
there).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close

import omnifast
from omnifast import ops
from omnifast.dispatch import available_backends, resolve
from omnifast.reference.bijection import CouplingParams, coupling_stack_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
COORDS = (1, 0, 2, 1, 0, 2)
N_FREQ = 4


def _triton_reason(op: str) -> str | None:
    return available_backends(op, DEVICE, torch.float32)["triton"]


def _rel_err(a, e):
    return ((a.double() - e.double()).norm() / e.double().norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------ coupling stack
coupling = pytest.mark.skipif(_triton_reason("coupling_stack") is not None,
                              reason=str(_triton_reason("coupling_stack")))


def coupling_params(L=6, H=256, P=256, C=32, n_hidden=2, n_freq=N_FREQ, seed=0, gain=1.0):
    """Random stacked weights at nn.Linear's scale (times ``gain``), on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    E = 2 + 4 * n_freq

    def u(*shape, fan_in):
        w = (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * gain / math.sqrt(
            fan_in)
        return w.float().to(DEVICE).requires_grad_()

    return CouplingParams(
        proj_w=u(L, P, E, fan_in=E), proj_b=u(L, P, fan_in=E),
        w_in=u(L, H, C + P, fan_in=C + P), b_in=u(L, H, fan_in=C + P),
        w_hidden=tuple(u(L, H, H, fan_in=H) for _ in range(n_hidden)),
        b_hidden=tuple(u(L, H, fan_in=H) for _ in range(n_hidden)),
        w_out=u(L, 2, H, fan_in=H), b_out=u(L, 2, fan_in=H))


def coupling_inputs(M, F, params, seed=1):
    """Points in [-1, 1]^3; frame ids cover 0 and F - 1 (the ends of the code table)."""
    g = torch.Generator().manual_seed(seed)
    L, C = params.num_layers, params.code_dim
    x = (torch.rand(M, 3, generator=g) * 2 - 1).to(DEVICE).requires_grad_()
    fi = torch.randint(0, F, (M,), generator=g)
    if M >= 2:
        fi[0], fi[-1] = 0, F - 1
    codes = torch.randn(F, L, C, generator=g).to(DEVICE).requires_grad_()
    return x, fi.to(DEVICE), codes


def coupling_leaves(x, codes, p):
    return [x, codes, p.proj_w, p.proj_b, p.w_in, p.b_in, *p.w_hidden, *p.b_hidden, p.w_out,
            p.b_out]


def run_coupling(x, fi, codes, p, inverse, backend="triton", coords=COORDS):
    with omnifast.backend(backend):
        return ops.coupling_stack(x, fi, codes, p, coords, N_FREQ, inverse=inverse)


@coupling
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("width,M,F", [(256, 131, 4), (512, 37, 2), (256, 1, 1)],
                         ids=["256-131pts", "512-37pts", "256-1pt"])
def test_coupling_values_and_gradients_fp32(width, M, F, inverse):
    p = coupling_params(H=width, P=width, seed=width + M)
    x, fi, codes = coupling_inputs(M, F, p, seed=M)
    lv = coupling_leaves(x, codes, p)
    y_ref = coupling_stack_ref(x, fi, codes, p, COORDS, N_FREQ, inverse)
    y = run_coupling(x, fi, codes, p, inverse)
    assert_close(y, y_ref, rtol=1e-5, atol=2e-5, name="y")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    g_ref = torch.autograd.grad(y_ref, lv, dy)
    g = torch.autograd.grad(y, lv, dy)
    for i, (a, e) in enumerate(zip(g, g_ref)):
        assert_close(a, e, rtol=1e-4, atol=3e-5 * (e.abs().max().item() + 1e-6),
                     name=f"grad {i}")


@coupling
def test_coupling_narrow_odd_widths_and_one_hidden_layer():
    """Widths that are multiples of 16 but not powers of two (48, 80) and NH = 1."""
    p = coupling_params(L=3, H=48, P=80, C=16, n_hidden=1, seed=5)
    x, fi, codes = coupling_inputs(70, 3, p, seed=6)
    coords = (2, 0, 1)
    lv = coupling_leaves(x, codes, p)
    for inverse in (False, True):
        y_ref = coupling_stack_ref(x, fi, codes, p, coords, N_FREQ, inverse)
        y = run_coupling(x, fi, codes, p, inverse, coords=coords)
        assert_close(y, y_ref, rtol=1e-5, atol=2e-5, name="y")
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(8)).to(DEVICE)
        for i, (a, e) in enumerate(zip(torch.autograd.grad(y, lv, dy),
                                       torch.autograd.grad(y_ref, lv, dy))):
            assert_close(a, e, rtol=1e-4, atol=3e-5 * (e.abs().max().item() + 1e-6),
                         name=f"grad {i}")


@coupling
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_coupling_round_trip(precision):
    p = coupling_params(seed=3)
    x, fi, codes = coupling_inputs(100, 3, p, seed=4)
    with torch.no_grad(), omnifast.matmul_precision(precision):
        y = run_coupling(x, fi, codes, p, inverse=False)
        back = run_coupling(y, fi, codes, p, inverse=True)
    assert (y - x).abs().max() > 1e-2  # the map is not the identity
    assert_close(back, x, rtol=0, atol=2e-5, name="round trip")


@coupling
def test_coupling_empty_input():
    p = coupling_params(H=64, P=64)
    x, fi, codes = coupling_inputs(0, 2, p)
    y = run_coupling(x, fi, codes, p, inverse=False)
    assert y.shape == (0, 3)
    (y.sum() + 0.0).backward()
    assert p.w_out.grad is not None and torch.count_nonzero(p.w_out.grad) == 0


@coupling
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
def test_coupling_bf16_error_at_most_twice_torch_bf16(inverse):
    p = coupling_params(seed=11)
    x, fi, codes = coupling_inputs(96, 3, p, seed=12)
    dy = torch.randn(96, 3, generator=torch.Generator().manual_seed(13)).to(DEVICE)
    lv = coupling_leaves(x, codes, p)
    y32 = coupling_stack_ref(x, fi, codes, p, COORDS, N_FREQ, inverse)
    g32 = torch.autograd.grad(y32, lv, dy)
    with omnifast.matmul_precision("bf16"):
        ytb = coupling_stack_ref(x, fi, codes, p, COORDS, N_FREQ, inverse)
        gtb = torch.autograd.grad(ytb, lv, dy)
        y = run_coupling(x, fi, codes, p, inverse)
    g = torch.autograd.grad(y, lv, dy)  # the backward runs at the forward's precision
    torch_err = _rel_err(ytb, y32)
    assert torch_err > 1e-5, "the reference did not run in bf16"
    assert _rel_err(y, y32) <= 2 * torch_err, (_rel_err(y, y32), torch_err)
    for i, (a, t, e) in enumerate(zip(g, gtb, g32)):
        ours, theirs = _rel_err(a, e), _rel_err(t, e)
        assert ours <= 2 * theirs + 1e-6, f"grad {i}: bf16 error {ours:.3g} vs torch {theirs:.3g}"


@coupling
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_coupling_backward_is_deterministic(precision):
    p = coupling_params(seed=21)
    x, fi, codes = coupling_inputs(150, 4, p, seed=22)
    lv = coupling_leaves(x, codes, p)
    dy = torch.randn(150, 3, generator=torch.Generator().manual_seed(23)).to(DEVICE)
    runs = []
    for _ in range(2):
        with omnifast.matmul_precision(precision):
            y = run_coupling(x, fi, codes, p, inverse=False)
        runs.append(torch.autograd.grad(y, lv, dy))
    for i, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(a, b), f"grad {i} differs between two runs"


@coupling
def test_coupling_dispatch_sees_widths():
    """Auto dispatch skips Triton for widths it has no kernel for; an explicit request says
    why. There is no fallback inside the Triton implementation."""
    ok = coupling_params(H=64, P=64)
    bad = coupling_params(H=40, P=64)
    shapes = dict(L=6, E=18, P=64, H=40, n_hidden=2)
    reason = available_backends("coupling_stack", DEVICE, torch.float32, shapes)["triton"]
    assert reason is not None and "multiples of 16" in reason
    x, fi, codes = coupling_inputs(20, 2, ok)
    with omnifast.backend("triton"), pytest.raises(omnifast.BackendUnavailableError,
                                                   match="multiples of 16"):
        ops.coupling_stack(x, fi, codes, bad, COORDS, N_FREQ)
    assert resolve("coupling_stack", torch.device(DEVICE), torch.float32,
                   dict(shapes, H=64))[0] in ("cpu", "cuda", "triton")
    if DEVICE == "cuda":
        assert resolve("coupling_stack", torch.device(DEVICE), torch.float32, shapes)[0] == "torch"


@coupling
def test_coupling_custom_op_fake_and_schema():
    """The custom op's fake implementation gives the real outputs' shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from omnifast.ops.bijection import _stacked, frame_bias
    from omnifast.ops.triton_mlp import coupling_stack_fwd_op

    p = coupling_params(H=32, P=48, C=16)
    x, fi, codes = coupling_inputs(33, 2, p)
    with torch.no_grad():
        fb = frame_bias(codes, p).contiguous()
        ws = _stacked(p, torch.float32)
        for precision in ("fp32", "bf16"):
            args = (x.detach(), fi, fb, *ws, list(COORDS), N_FREQ, False, precision, True)
            real = coupling_stack_fwd_op(*args)
            with FakeTensorMode(allow_non_fake_inputs=True):
                fake = coupling_stack_fwd_op(*args)
            for r, f in zip(real, fake):
                assert r.shape == f.shape and r.dtype == f.dtype, (r.shape, f.shape, r.dtype)
    torch.library.opcheck(coupling_stack_fwd_op, args,
                          test_utils=("test_schema", "test_faketensor"))
