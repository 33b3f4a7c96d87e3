"""Parity of the fused CPU affine pre-layer with the reference (omnifast.reference.affine_ref).

Small widths keep the suite fast (H = 32, 5 linears, i.e. 3 extra hidden layers); the omnimotion
widths are exercised by benchmarks/bench_train_step.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close, saved_bytes_per_point

import omnifast
from omnifast import ops
from omnifast.dispatch import available_backends, resolve
from omnifast.ops import bijection as ops_bijection
from omnifast.reference.bijection import affine_ref

N_FREQ = 4


def _unavailable() -> str | None:
    return available_backends("affine", "cpu", torch.float32)["cpu"]


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


def make_weights(H=32, n_layers=5, n_freq=N_FREQ, dtype=torch.float64, seed=0, gain=1.0):
    """nn.Linear-like weights (times ``gain``) of an MLP (2 n_freq + 2) -> H ... H -> 5."""
    g = torch.Generator().manual_seed(seed)
    sizes = [2 * n_freq + 2] + [H] * (n_layers - 1) + [5]
    ws, bs = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = gain / math.sqrt(fan_in)
        w = (torch.rand(fan_out, fan_in, generator=g, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=g, dtype=torch.float64) * 2 - 1) * bound
        ws.append(w.to(dtype).requires_grad_())
        bs.append(b.to(dtype).requires_grad_())
    return ws, bs


def make_inputs(M, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(M, 3, generator=g, dtype=torch.float64) * 2 - 1).to(dtype).requires_grad_()
    t = torch.rand(M, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return x, t


def run(backend, x, t, ws, bs, inverse, n_freq=N_FREQ):
    with omnifast.backend(backend):
        return ops.affine(x, t, ws, bs, n_freq, inverse=inverse)


def _keep(monkeypatch, k):
    monkeypatch.setattr(ops_bijection, "CPU_AFFINE_SAVE_HIDDEN", {"fp32": k, "bf16": k})


def _names(ws):
    return (["x", "t"] + [f"w{i}" for i in range(len(ws))] + [f"b{i}" for i in range(len(ws))])


@pytest.mark.parametrize("keep", [0, 1, 4, 9])
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("M", [1, 257, 1100])
def test_values_and_gradients_match_reference(monkeypatch, keep, inverse, M):
    """Every number of kept activations (4 = all of them with 5 linears, 9 is capped to 4); 1100
    points are two full tiles of 512 and a partial one."""
    _keep(monkeypatch, keep)
    ws, bs = make_weights(dtype=torch.float32)
    x, t = make_inputs(M)
    leaves = [x, t, *ws, *bs]
    y_ref = affine_ref(x, t, ws, bs, N_FREQ, inverse)
    y = run("cpu", x, t, ws, bs, inverse)
    assert_close(y, y_ref, rtol=1e-5, atol=2e-5, name=f"keep {keep} y")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    g_ref = torch.autograd.grad(y_ref, leaves, dy)
    g = torch.autograd.grad(y, leaves, dy)
    for name, a, e in zip(_names(ws), g, g_ref):
        scale = e.abs().max().item() + 1e-6
        assert_close(a, e, rtol=1e-4, atol=2e-5 * scale, name=f"keep {keep} d{name}")


def test_two_layers_no_hidden_product():
    """The smallest MLP (first and output linear only, no H x H layer)."""
    ws, bs = make_weights(n_layers=2, dtype=torch.float32, seed=2)
    assert len(ws) == 2
    x, t = make_inputs(100, seed=3)
    y_ref = affine_ref(x, t, ws, bs, N_FREQ, False)
    y = run("cpu", x, t, ws, bs, False)
    assert_close(y, y_ref, rtol=1e-5, atol=2e-5, name="y")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
    leaves = [x, t, *ws, *bs]
    for name, a, e in zip(_names(ws), torch.autograd.grad(y, leaves, dy),
                          torch.autograd.grad(y_ref, leaves, dy)):
        assert_close(a, e, rtol=1e-4, atol=2e-5 * (e.abs().max().item() + 1e-6), name=name)


def test_forward_then_inverse_is_identity():
    ws, bs = make_weights(dtype=torch.float32, seed=5)
    x, t = make_inputs(300, seed=6)
    with torch.no_grad():
        y = run("cpu", x, t, ws, bs, inverse=False)
        back = run("cpu", y, t, ws, bs, inverse=True)
    assert (y - x).abs().max() > 1e-2  # the map is not the identity
    assert_close(back, x, rtol=0, atol=1e-5, name="round trip")


def test_empty_input():
    ws, bs = make_weights(dtype=torch.float32)
    x, t = make_inputs(0)
    y = run("cpu", x, t, ws, bs, inverse=False)
    assert y.shape == (0, 3)
    (y.sum() + 0.0).backward()
    assert ws[-1].grad is not None and torch.count_nonzero(ws[-1].grad) == 0
    assert x.grad.shape == (0, 3) and t.grad.shape == (0,)


@pytest.mark.parametrize("keep", [0, 2])
def test_gradcheck_float64(monkeypatch, keep):
    _keep(monkeypatch, keep)
    ws, bs = make_weights(H=4, n_layers=3, n_freq=2, dtype=torch.float64, seed=8)
    x, t = make_inputs(5, dtype=torch.float64, seed=9)
    n = len(ws)
    for inverse in (False, True):
        def fn(x, t, *flat, inverse=inverse):
            return run("cpu", x, t, list(flat[:n]), list(flat[n:]), inverse, n_freq=2)

        assert torch.autograd.gradcheck(fn, (x, t, *ws, *bs), eps=1e-6, atol=1e-6)


def _rel_err(a, e):
    return ((a.double() - e.double()).norm() / e.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("keep", [0, 2])
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
def test_bf16_error_at_most_twice_torch_bf16(monkeypatch, keep, inverse):
    _keep(monkeypatch, keep)
    ws, bs = make_weights(dtype=torch.float32, seed=11)
    x, t = make_inputs(600, seed=12)
    dy = torch.randn(600, 3, generator=torch.Generator().manual_seed(13))
    leaves = [x, t, *ws, *bs]
    y32 = affine_ref(x, t, ws, bs, N_FREQ, inverse)
    g32 = torch.autograd.grad(y32, leaves, dy)
    with omnifast.matmul_precision("bf16"):
        ytb = affine_ref(x, t, ws, bs, N_FREQ, inverse)
        gtb = torch.autograd.grad(ytb, leaves, dy)
        y = run("cpu", x, t, ws, bs, inverse)
        g = torch.autograd.grad(y, leaves, dy)
    torch_err = _rel_err(ytb, y32)
    assert torch_err > 1e-5, "the reference did not run in bf16"
    assert _rel_err(y, y32) <= 2 * torch_err, (
        f"y: bf16 error {_rel_err(y, y32):.3g} vs torch bf16 {torch_err:.3g}")
    for name, a, tb, e in zip(_names(ws), g, gtb, g32):
        ours, theirs = _rel_err(a, e), _rel_err(tb, e)
        assert ours <= 2 * theirs + 1e-6, f"d{name}: bf16 error {ours:.3g} vs torch {theirs:.3g}"


@pytest.mark.parametrize("keep", [0, 2])
def test_backward_saves_only_inputs_and_kept_activations(monkeypatch, keep):
    """Autograd keeps x, t and keep x H activations per point; the reference keeps every
    layer's input."""
    _keep(monkeypatch, keep)
    ws, bs = make_weights(H=64, dtype=torch.float32)
    M = 2000
    x, t = make_inputs(M)
    fused = saved_bytes_per_point(lambda: run("cpu", x, t, ws, bs, inverse=False), M)
    assert fused == M * 4 * (3 + 1 + keep * 64), fused / M
    ref = saved_bytes_per_point(lambda: run("torch", x, t, ws, bs, inverse=False), M)
    assert ref / M > 4 * 4 * 64


def test_auto_dispatch_prefers_fused_cpu_and_falls_back():
    name, _ = resolve("affine", torch.device("cpu"), torch.float32)
    assert name == "cpu"
    name, _ = resolve("affine", torch.device("cpu"), torch.bfloat16)
    assert name == "torch"
    with omnifast.backend("cpu"), pytest.raises(omnifast.BackendUnavailableError, match="float"):
        resolve("affine", torch.device("cpu"), torch.float16)


def test_model_uses_fused_affine():
    from omnifast.config import ModelConfig
    from omnifast.model.nvp import InvertibleMap

    torch.manual_seed(0)
    cfg = ModelConfig(code_dim=16, coupling_hidden=(32, 32), proj_dim=32, use_affine=True,
                      affine_hidden=32, affine_layers=4)
    net = InvertibleMap(cfg, coords=(1, 0, 2, 1, 0, 2))
    x = torch.rand(300, 3) * 2 - 1
    fi = torch.randint(0, 3, (300,))
    psi, t = torch.randn(3, 16), torch.rand(3)
    dy = torch.randn(300, 3)
    out = {}
    for backend in ("torch", "auto"):
        net.zero_grad()
        with omnifast.backend(backend):
            y = net(x, fi, psi, t, inverse=True)
        y.backward(dy)
        out[backend] = (y.detach(), net.affine_mlp.hidden[1][0].weight.grad.clone())
    calls = []
    orig = ops_bijection.AffineFunction.apply

    def spy(*args):
        calls.append(1)
        return orig(*args)

    ops_bijection.AffineFunction.apply = spy
    try:
        net(x, fi, psi, t)
    finally:
        ops_bijection.AffineFunction.apply = orig
    assert calls, "the automatic backend did not run the fused affine pre-layer"
    assert_close(out["auto"][0], out["torch"][0], rtol=1e-5, atol=1e-5, name="InvertibleMap")
    assert_close(out["auto"][1], out["torch"][1], rtol=1e-4, atol=1e-5, name="dW_1")


def test_affine_save_hidden_env_parsing():
    base = dict(ops_bijection.CPU_AFFINE_SAVE_HIDDEN)
    name = "OMNIFAST_CPU_AFFINE_SAVE_HIDDEN"
    parse = ops_bijection._save_hidden_from_env
    assert parse("3", base, name) == {"fp32": 3, "bf16": 3}
    assert parse("bf16=1", base, name) == {**base, "bf16": 1}
    with pytest.raises(ValueError, match=name):
        parse("fp16=1", base, name)
